"""MQTT analyzer: a CONNECT packet at a TCP stream's start ([MQTT311] §3.1).

Fixed type byte 0x10, a 1-4 byte remaining length, then the protocol name
"MQTT" (or "MQIsdp") and its level: a fingerprint for MQTT on any port
(nDPI's mqtt.c reads the same). Messenger's chat edge wraps MQTT in TLS, so
there only the SNI shows; plain MQTT (1883, and IoT-style chat transports)
is read here. `protocols.mqtt.parse_connect` does the work.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import PropType, StreamPrefixAnalyzer, Update
from wallwatch.protocols.mqtt import Connect, parse_connect


class MqttAnalyzer(StreamPrefixAnalyzer[Connect]):
    name = "mqtt"
    provides = {"mqtt.connect": PropType.BOOL, "mqtt.client_id": PropType.TEXT}
    parse = staticmethod(parse_connect)
    not_found = {"mqtt.connect": False, "mqtt.client_id": None}

    def properties(self, facts: Connect) -> Update:
        return {"mqtt.connect": True, "mqtt.client_id": facts.client_id}
