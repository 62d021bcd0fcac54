"""The `viber` nettest: Viber's chat protocol, media and calls.

OONI has no Viber test. Each feature at the endpoint the app uses, as the
public classifiers and a real Viber capture describe them
(`protocols.viber`; [libprotoident], [nDPI]):

* text: the chat server, dialled by address (52.0.253.46, the one in nDPI's
  Viber capture) on TCP 4244 and 5242: the 154-byte hello, answered by the
  24-byte ack echoing its nonce; any of them working is text working, and a
  failure after connecting gets the same-size payload control;
* media: a photo downloaded from `dl-media.viber.com` and one uploaded to
  `share.cdn.viber.com` (hosts nDPI names Viber's), all-of;
* calls: a call ping (type 3, 12 bytes) to the relay of that capture
  (54.169.63.186, UDP 7985), answered by a pong (type 9) echoing its id.

Keys in OONI's style: `viber_<feature>_status`/`_failure`, `viber_endpoints_blocked`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from wallwatch.probe.nettests.base import (
    PHOTO_SIZE,
    Common,
    Reached,
    ServiceTest,
    Throughput,
    exchange_opening,
    run_service,
)
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace
from wallwatch.vocabulary import NETTEST_FEATURES

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "viber"
FEATURES: tuple[str, ...] = tuple(map(str, NETTEST_FEATURES[TEST_NAME]))
CHAT_STAGES = ("hello_sent", "hello_ack")
# With `--option throughput=on`: a video from the media download service, timed against a control
# (base.ServiceTest.measure_throughput). Viber's calls are its own UDP protocol, not STUN: the
# calls' timing (STUN round trips) does not apply to them.
THROUGHPUT = Throughput(bulk=(("media", "https://dl-media.viber.com/download/video.mp4"),))


@dataclass(frozen=True)
class ViberConfig:
    chat_servers: tuple[str, ...] = ("52.0.253.46",)
    chat_ports: tuple[int, ...] = (4244, 5242)
    media_download_url: str = "https://dl-media.viber.com/download/sample.jpg"
    media_upload_url: str = "https://share.cdn.viber.com/upload"
    media_upload_size: int = PHOTO_SIZE
    call_relays: tuple[str, ...] = ("54.169.63.186",)
    call_port: int = 7985
    # Viber's servers live in a public cloud (AWS): no address list is Viber's own.
    common: Common = field(default_factory=Common)


class ViberTest(ServiceTest):
    test_name = TEST_NAME

    def __init__(self, config: ViberConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        super().__init__(config.common, settings, trace)
        self.config = config

    def attempts(self) -> list[Awaitable[Any]]:
        c = self.config
        jobs: list[Awaitable[Any]] = [self.session("text", server, port, self._hello, CHAT_STAGES, by_address=True)
                                      for server in c.chat_servers for port in c.chat_ports]
        jobs += [self.https("media", c.media_download_url), self.upload("media", c.media_upload_url,
                                                                       c.media_upload_size)]
        return jobs + [self._call(relay) for relay in c.call_relays]

    async def _hello(self, stream: Any, reached: Reached, session: dict[str, Any]) -> None:
        from wallwatch.protocols import viber
        from wallwatch.protocols.errors import ProtocolError

        nonce = os.urandom(viber.NONCE_SIZE)
        hello = viber.build_hello(nonce, os.urandom(viber.HELLO_SIZE - viber.HEADER_SIZE - viber.NONCE_SIZE))
        echoed = await exchange_opening(stream, hello, viber.parse_hello_ack, reached, "hello_sent", session,
                                        self.common.timeouts.chat)
        if echoed != nonce:
            raise ProtocolError("an ack for another hello")
        reached("hello_ack")

    async def _call(self, relay: str) -> None:
        from wallwatch.protocols import viber
        from wallwatch.protocols.errors import ProtocolError

        call_id = os.urandom(viber.CALL_ID_SIZE)

        def is_answer(data: bytes) -> bool:
            try:
                return viber.parse_datagram(data, viber.PONG_TYPE, viber.PONG_SIZE) == call_id
            except ProtocolError:
                return False

        await self.udp_request("calls", relay, self.config.call_port, viber.build_ping(call_id), is_answer,
                               kind="viber")

    def ooni_keys(self) -> dict[str, Any]:
        return self.status_keys(TEST_NAME, FEATURES)


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point (fixed targets); `options`: throughput=on|off (`base.with_options`)."""
    return run_service(ViberTest, ViberConfig(), settings, stamp, step_timeout=step_timeout, options=options,
                       throughput=THROUGHPUT, progress=progress)
