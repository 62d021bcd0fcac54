"""The `telegram` nettest: data centres by their own protocol, the web client, media.

OONI's ts-020 connects to Telegram's data centres by address on ports 80
and 443 and POSTs to them, and fetches web.telegram.org; it cannot tell a
censor that lets TCP through and kills MTProto (Iran and Russia in 2018, by
address and protocol) from a working DC. Here:

* text: each DC address of ts-020 on 443 and 80, dialled by address (the
  app has them built in; core.telegram.org/mtproto/mtproto-transports),
  opens an obfuscated2 connection and sends req_pq_multi, the first message
  of every key exchange; the DC must answer resPQ echoing the nonce
  (core.telegram.org/mtproto/auth_key). A failure after connecting gets a
  same-size control payload, as WhatsApp's chat does;
* media: a photo from Telegram's file CDN, `cdn4.telesco.pe`, where the
  public channel previews of t.me load their photos from (in the app, media
  travels over MTProto to the DCs, so it shares text's fate there);
* web: `GET https://web.telegram.org/`.

The OONI keys are ts-020's (`telegram_tcp_blocking`, `telegram_http_blocking`,
`telegram_web_status`, `telegram_web_failure`), filled from these facts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.nettests.base import (
    Common,
    Reached,
    ServiceTest,
    Throughput,
    run_service,
)
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "telegram"
# ts-020's DC list (OONI's example measurement dials exactly these, on 80 and 443).
DATA_CENTRES = ("149.154.175.50", "149.154.167.51", "149.154.175.100", "149.154.167.91", "149.154.171.5",
                "95.161.76.100")
DC_PORTS = (443, 80)
DC_STAGES = ("opening_sent", "res_pq")
# AS62041 (Telegram Messenger Inc), RIPEstat announced prefixes.
TELEGRAM_NETWORKS = ("149.154.160.0/20", "91.108.4.0/22", "91.108.8.0/22", "91.108.12.0/22", "91.108.16.0/22",
                     "91.108.56.0/22", "95.161.64.0/20", "2001:67c:4e8::/48", "2001:b28:f23d::/48")

# With `--option throughput=on`: a video from the file CDN and the web client's script bundle,
# fetched by range against a control (base.ServiceTest.measure_throughput).
THROUGHPUT = Throughput(bulk=(("media", "https://cdn4.telesco.pe/file/video.mp4"),
                              ("web", "https://web.telegram.org/app.js")))


@dataclass(frozen=True)
class TelegramConfig:
    data_centres: tuple[str, ...] = DATA_CENTRES
    dc_ports: tuple[int, ...] = DC_PORTS
    web_url: str = "https://web.telegram.org/"
    media_url: str = "https://cdn4.telesco.pe/file/sample.jpg"
    common: Common = field(default_factory=lambda: Common(expected_networks=TELEGRAM_NETWORKS))


class TelegramTest(ServiceTest):
    test_name = TEST_NAME

    def __init__(self, config: TelegramConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        super().__init__(config.common, settings, trace)
        self.config = config

    def attempts(self) -> list[Awaitable[Any]]:
        c = self.config
        jobs: list[Awaitable[Any]] = [self.session("text", dc, port, self._key_exchange, DC_STAGES, by_address=True)
                                      for dc in c.data_centres for port in c.dc_ports]
        return jobs + [self.https("media", c.media_url), self.https("web", c.web_url)]

    async def _key_exchange(self, stream: Any, reached: Reached, session: dict[str, Any]) -> None:
        """obfuscated2 header + req_pq_multi; the DC must answer resPQ with our nonce."""
        from wallwatch.protocols import mtproto
        from wallwatch.protocols.errors import Incomplete, ProtocolError

        timeout = self.common.timeouts.chat
        header, crypto = mtproto.client(mtproto.TAG_INTERMEDIATE)
        nonce = os.urandom(mtproto.NONCE_SIZE)
        request = mtproto.build_req_pq_multi(nonce, mtproto.client_message_id(time.time()))
        first_flight = header + crypto.send.apply(mtproto.frame(crypto.header.tag, request))
        session["first_flight_size"] = len(first_flight)
        await stream.write(first_flight, timeout=timeout)
        reached("opening_sent")
        plain = b""
        while True:
            data = await stream.read(timeout=timeout)
            if not data:
                raise ProbeFailure(failures.EOF_ERROR)
            plain += crypto.receive.apply(data)
            framed = mtproto.unframe(crypto.header.tag, plain)
            if isinstance(framed, Incomplete):
                continue
            answer = mtproto.parse_res_pq(framed[0])
            if answer.nonce != nonce:
                raise ProtocolError("resPQ for another nonce")
            reached("res_pq")
            return

    def ooni_keys(self) -> dict[str, Any]:
        """ts-020: TCP blocking when no DC connect succeeded; "HTTP" blocking (here: the DC's own
        protocol) when no DC answered; web blocked on any failure."""
        dcs = [s for s in self.sessions if s["feature"] == "text"]
        web = next((f for f in self.fetches if f["feature"] == "web"), None)
        web_failure = web["failure"] if web is not None else failures.UNKNOWN_FAILURE
        return {
            "telegram_tcp_blocking": not any(s["stage_reached"] for s in dcs),
            "telegram_http_blocking": not any(s["completed"] for s in dcs),
            "telegram_web_failure": web_failure,
            "telegram_web_status": "ok" if web_failure is None else "blocked",
        }


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point (fixed targets); `options`: throughput=on|off (`base.with_options`)."""
    return run_service(TelegramTest, TelegramConfig(), settings, stamp, step_timeout=step_timeout, options=options,
                       throughput=THROUGHPUT, progress=progress)
