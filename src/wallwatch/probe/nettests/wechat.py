"""The `wechat` nettest: WeChat's text (mmtls long and short links), media, calls and web client.

OONI has no WeChat test. WeChat was not blocked in China in 2017 (it was
watched: [CitizenLab2016], [CitizenLab2017]), which is exactly why it
belongs in a 2017 replay: a censor that blocks WhatsApp must leave it alone,
and a measurement must show so. Each feature at the endpoint the app uses:

* text: WeChat's own protocol, mmtls ([CitizenLab2024]), both ways the app
  carries it: the *long link*, `long.weixin.qq.com:8080`, a TCP stream that
  opens with an mmtls ClientHello record, and the *short link*,
  `short.weixin.qq.com:80`, an HTTP POST to `/mmtls/<8 hex digits>` whose body
  is that record; the server must answer a ServerHello echoing the client
  random (`protocols.mmtls` says what is and is not reproduced). Any of them
  working is text working; a failure after connecting gets the same-size
  payload control, which tells a fingerprint from an address block;
* media: a Moments photo from `mmsns.qpic.cn` (a host nDPI lists as WeChat's, [nDPI]);
* calls: a STUN Binding to a relay in Tencent's Hong Kong network, by address
  (the relay a call gets is per call; this one stands for it);
* web: the web client, `wx.qq.com` (mainland) or `web.wechat.com`; any of them.

The keys in OONI's style (`wechat_<feature>_status`/`_failure`,
`wechat_endpoints_blocked`) are filled from the same facts.
"""

from __future__ import annotations

import os
import time
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
from wallwatch.protocols.mmtls import VERSION as MMTLS_VERSION
from wallwatch.vocabulary import NETTEST_FEATURES

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "wechat"
FEATURES: tuple[str, ...] = tuple(map(str, NETTEST_FEATURES[TEST_NAME]))
# With `--option throughput=on`: a video from the Moments CDN, the web client's script bundle and
# the call relay, timed against controls (base.ServiceTest.measure_throughput).
THROUGHPUT = Throughput(bulk=(("media", "https://mmsns.qpic.cn/mmsns/video.mp4"), ("web", "https://wx.qq.com/app.js")),
                        calls=("calls",))
LONG_LINK_STAGES = ("hello_sent", "server_hello")
SHORT_LINK_STAGES = ("server_hello",)  # one HTTP exchange: the request and its answer go together
# An HTTP request head of the short link is about this long; the payload control sends as many bytes.
SHORT_LINK_HEAD_BYTES = 180


@dataclass(frozen=True)
class WeChatConfig:
    long_links: tuple[tuple[str, int], ...] = (("long.weixin.qq.com", 8080),)
    short_links: tuple[tuple[str, int], ...] = (("short.weixin.qq.com", 80),)
    media_url: str = "https://mmsns.qpic.cn/mmsns/sample.jpg"
    call_relays: tuple[str, ...] = ("203.205.151.10",)  # Tencent's Hong Kong network, 203.205.128.0/19
    stun_port: int = STUN_PORT
    web_urls: tuple[str, ...] = ("https://wx.qq.com/", "https://web.wechat.com/")
    mmtls_version: int = MMTLS_VERSION
    # Tencent's servers answer from many networks (and CDNs): the DNS rules rely on racing
    # answers and failed flows, not on a list of Tencent's own.
    common: Common = field(default_factory=Common)


class WeChatTest(ServiceTest):
    test_name = TEST_NAME

    def __init__(self, config: WeChatConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        super().__init__(config.common, settings, trace)
        self.config = config

    def attempts(self) -> list[Awaitable[Any]]:
        c = self.config
        jobs: list[Awaitable[Any]] = [self.session("text", host, port, self._long_link, LONG_LINK_STAGES)
                                      for host, port in c.long_links]
        jobs += [self.session("text", host, port, self._short_link, SHORT_LINK_STAGES) for host, port in c.short_links]
        jobs += [self.https("media", c.media_url)]
        jobs += [self.stun("calls", relay, c.stun_port) for relay in c.call_relays]
        return jobs + [self.https("web", url) for url in c.web_urls]

    def _hello(self) -> tuple[bytes, bytes]:
        from wallwatch.protocols import mmtls

        random = os.urandom(mmtls.RANDOM_SIZE)
        return mmtls.build_client_hello(random, int(time.time()), self.config.mmtls_version), random

    @staticmethod
    def _check(answer: Any, random: bytes) -> None:
        from wallwatch.protocols.errors import ProtocolError

        if answer.client_random != random:
            raise ProtocolError("a ServerHello for another ClientHello")

    async def _long_link(self, stream: Any, reached: Reached, session: dict[str, Any]) -> None:
        """The long link: an mmtls ClientHello record opens the stream; a ServerHello must echo our random."""
        from wallwatch.protocols import mmtls

        hello, random = self._hello()
        answer = await exchange_opening(stream, hello, mmtls.parse_server_hello, reached, "hello_sent", session,
                                        self.common.timeouts.chat)
        self._check(answer, random)
        reached("server_hello")

    async def _short_link(self, stream: Any, reached: Reached, session: dict[str, Any]) -> None:
        """The short link: the same record as the body of `POST /mmtls/<hex>`, the ServerHello as the reply's."""
        from wallwatch.probe.primitives import http_request
        from wallwatch.protocols import mmtls
        from wallwatch.protocols.errors import Incomplete, ProtocolError

        hello, random = self._hello()
        session["first_flight_size"] = SHORT_LINK_HEAD_BYTES + len(hello)
        url = f"http://{session['host']}{mmtls.short_link_path(os.urandom(4))}"
        response = await http_request(stream, url, method="POST", body=hello, timeout=self.common.timeouts.chat,
                                      headers=(("Accept", "*/*"), ("Content-Type", "application/octet-stream"),
                                               ("User-Agent", "MicroMessenger Client")))
        if response.status != 200:
            raise ProtocolError(f"HTTP {response.status} where an mmtls answer was due")
        answer = mmtls.parse_server_hello(response.body)
        if isinstance(answer, Incomplete):
            raise ProtocolError("a truncated mmtls answer")
        self._check(answer, random)
        reached("server_hello")

    def ooni_keys(self) -> dict[str, Any]:
        return self.status_keys(TEST_NAME, FEATURES)


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point (fixed targets); `options`: throughput=on|off (`base.with_options`)."""
    return run_service(WeChatTest, WeChatConfig(), settings, stamp, step_timeout=step_timeout, options=options,
                       throughput=THROUGHPUT, progress=progress)
