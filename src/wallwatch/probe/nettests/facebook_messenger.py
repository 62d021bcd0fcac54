"""The `facebook_messenger` nettest: Messenger's chat edge by MQTT, its APIs, media CDN, STUN and web.

OONI's ts-019 resolves seven Facebook endpoints, checks the answers belong
to Facebook's AS32934 and TCP-connects to them. Here each endpoint is used
as the app uses it:

* text: the chat edge `edge-mqtt.facebook.com:443`, TLS then a real MQTT
  CONNECT answered by CONNACK ([MQTT311]; Messenger's chat is MQTT,
  [Facebook2011]); and the APIs `b-api.facebook.com`, `b-graph.facebook.com`
  (ts-019) over HTTPS: text works if any of them does;
* media: photos from the CDN, `scontent.xx.fbcdn.net` and
  `external.xx.fbcdn.net` (ts-019);
* calls: a STUN Binding to `stun.fbsbx.com:3478` (ts-019's STUN endpoint);
* web: `star.c10r.facebook.com` (ts-019's "star" endpoint).

The ts-019 keys (`facebook_<endpoint>_dns_consistent`/`_reachable`,
`facebook_tcp_blocking`, `facebook_dns_blocking`) are filled from the same
facts.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from wallwatch.probe.nettests.base import (
    STUN_PORT,
    Common,
    Reached,
    ServiceTest,
    Throughput,
    exchange_opening,
    run_service,
)
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "facebook_messenger"
MQTT_STAGES = ("connect_sent", "connack")
# AS32934 (Meta), RIPEstat announced prefixes: the networks ts-019 checks answers against.
FACEBOOK_NETWORKS = (
    "31.13.24.0/21", "31.13.64.0/18", "57.144.0.0/14", "66.220.144.0/20", "69.63.176.0/20",
    "69.171.224.0/19", "102.132.96.0/20", "129.134.0.0/16", "157.240.0.0/16", "163.70.128.0/17",
    "173.252.64.0/18", "179.60.192.0/22", "185.60.216.0/22", "204.15.20.0/22", "2a03:2880::/32",
)
# ts-019's endpoint keys -> hosts.
OONI_ENDPOINTS = {
    "b_api": "b-api.facebook.com", "b_graph": "b-graph.facebook.com", "edge": "edge-mqtt.facebook.com",
    "external_cdn": "external.xx.fbcdn.net", "scontent_cdn": "scontent.xx.fbcdn.net",
    "star": "star.c10r.facebook.com", "stun": "stun.fbsbx.com",
}
# With `--option throughput=on`: a video from the scontent CDN and the web client's script bundle
# by range, and the STUN server's answers against TCP connects to it (base.ServiceTest).
THROUGHPUT = Throughput(bulk=(("media", "https://scontent.xx.fbcdn.net/v/video.mp4"),
                              ("web", "https://star.c10r.facebook.com/app.js")), calls=("calls",))


@dataclass(frozen=True)
class MessengerConfig:
    edge_host: str = "edge-mqtt.facebook.com"
    edge_port: int = 443
    api_urls: tuple[str, ...] = ("https://b-api.facebook.com/", "https://b-graph.facebook.com/")
    media_urls: tuple[str, ...] = ("https://scontent.xx.fbcdn.net/v/sample.jpg",
                                   "https://external.xx.fbcdn.net/v/sample.jpg")
    stun_host: str = "stun.fbsbx.com"
    stun_port: int = STUN_PORT
    web_url: str = "https://star.c10r.facebook.com/"
    common: Common = field(default_factory=lambda: Common(expected_networks=FACEBOOK_NETWORKS))


class MessengerTest(ServiceTest):
    test_name = TEST_NAME

    def __init__(self, config: MessengerConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        super().__init__(config.common, settings, trace)
        self.config = config

    def attempts(self) -> list[Awaitable[Any]]:
        c = self.config
        port = c.common.https_port or c.edge_port
        return [self.session("text", c.edge_host, port, self._mqtt, MQTT_STAGES, tls_name=c.edge_host),
                *(self.https("text", url) for url in c.api_urls),
                *(self.https("media", url) for url in c.media_urls),
                self.stun("calls", c.stun_host, c.stun_port, by_address=False),
                self.https("web", c.web_url)]

    async def _mqtt(self, stream: Any, reached: Reached, session: dict[str, Any]) -> None:
        from wallwatch.protocols.errors import ProtocolError
        from wallwatch.protocols.mqtt import build_connect, parse_connack

        connect = build_connect("wallwatch-" + os.urandom(4).hex())
        answer = await exchange_opening(stream, connect, parse_connack, reached, "connect_sent", session,
                                        self.common.timeouts.chat)
        if answer.return_code != 0:
            raise ProtocolError(f"CONNACK refused the connection (code {answer.return_code})")
        reached("connack")

    def ooni_keys(self) -> dict[str, Any]:
        """ts-019's keys: per endpoint, answers inside AS32934 and a TCP connect that succeeded."""
        networks = [ipaddress.ip_network(n, strict=False) for n in self.common.expected_networks]
        answers: dict[str, list[str]] = {}
        for query in self.trace.queries:
            if any(tag.startswith("control:") for tag in query.get("tags") or ()):
                continue
            answers.setdefault(query["hostname"], []).extend(
                a.get("ipv4") or a.get("ipv6") for a in query.get("answers") or () if a.get("ipv4") or a.get("ipv6"))
        connected: dict[str, bool] = {}
        for entry in self.trace.tcp_connect:
            host = _endpoint_host(entry.get("tags") or ())
            connected[host] = connected.get(host, False) or bool(entry["status"]["success"])
        keys: dict[str, Any] = {}
        for name, host in OONI_ENDPOINTS.items():
            addresses = answers.get(host, [])
            consistent = bool(addresses) and all(_inside(a, networks) for a in addresses)
            keys[f"facebook_{name}_dns_consistent"] = consistent
            # ts-019 does not connect to the STUN endpoint (null in OONI's example).
            keys[f"facebook_{name}_reachable"] = None if name == "stun" else connected.get(host, False)
        keys["facebook_dns_blocking"] = not all(keys[f"facebook_{n}_dns_consistent"] for n in OONI_ENDPOINTS)
        keys["facebook_tcp_blocking"] = any(keys[f"facebook_{n}_dns_consistent"] and keys[f"facebook_{n}_reachable"]
                                            is False for n in OONI_ENDPOINTS)
        return keys


def _endpoint_host(tags: Sequence[str]) -> str:
    endpoint = next((t[len("endpoint:"):] for t in tags if t.startswith("endpoint:")), "")
    return endpoint.rsplit(":", 1)[0]


def _inside(address: str, networks: Sequence[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in networks)


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point (fixed targets); `options`: throughput=on|off (`base.with_options`)."""
    return run_service(MessengerTest, MessengerConfig(), settings, stamp, step_timeout=step_timeout, options=options,
                       throughput=THROUGHPUT, progress=progress)
