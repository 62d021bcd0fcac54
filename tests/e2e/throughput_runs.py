"""Run in a lab client namespace: N throughput measurements (media, web, calls) and their judgments, as JSON.

    python tests/e2e/throughput_runs.py N

The same rounds the whatsapp nettest makes after its reachability attempts
(probe/throughput.py), without the rest of the nettest, so fifty runs take
seconds: what `test_no_throttle_is_never_throttled` needs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

from wallwatch.probe.nettests.base import stun_request
from wallwatch.probe.nettests.whatsapp import WhatsAppConfig
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.throughput import HttpsTarget, https_rounds, udp_rounds
from wallwatch.probe.trace import Trace
from wallwatch.probe.verdicts import judge_throughput, throughput_settled


async def one(settings: ProbeSettings, config: WhatsAppConfig) -> list[dict]:
    assert settings.lab is not None
    trace, judged = Trace(), []
    for feature, url in (("media", config.media_bulk_url), ("web", config.web_bulk_url)):
        parts = urlsplit(url)
        host = parts.hostname or ""
        target = HttpsTarget(feature, host, parts.path, settings.lab.names[host], 443, config.control_sni)
        record = await https_rounds(trace, target, target_context=settings.tls_context(("http/1.1",)),
                                    control_context=settings.control_tls_context(("http/1.1",)),
                                    stop_early=throughput_settled)
        judged.append({"feature": feature, "rounds": len(record["rounds"]), "judgment": judge_throughput(record)})
    relay = settings.map_address(config.call_relays[0])
    record = await udp_rounds(trace, "calls", relay, config.stun_port, control_port=config.relay_control_port,
                              make_request=stun_request, stop_early=throughput_settled)
    judged.append({"feature": "calls", "rounds": len(record["rounds"]), "judgment": judge_throughput(record)})
    return judged


def main() -> None:
    settings, config = ProbeSettings.from_environment(), WhatsAppConfig()
    runs = []
    for _ in range(int(sys.argv[1])):
        started = time.monotonic()
        runs.append({"features": asyncio.run(one(settings, config)), "seconds": time.monotonic() - started})
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
