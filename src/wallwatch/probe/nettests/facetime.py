"""The `facetime` nettest: can a FaceTime call be made? Its push channel and its relay.

OONI has no FaceTime test. FaceTime was left alone in China in 2017 while
WhatsApp's calls were blocked ([NYT2017]); the replay must show it `ok`. A
call needs two things (all-of, `probe.verdicts.EXTRA_ALL_OF`):

* the push channel that rings the callee: Apple's courier,
  `1-courier.push.apple.com:5223`, TLS with ALPN `apns-security-v3`, then the
  courier's connect command answered by a connect response with status ok
  ([pypush]; TCP 5223 per [Apple-Enterprise]);
* a relay for the media: a STUN Binding to an address in Apple's 17.0.0.0/8
  on UDP 3478 ([Apple-Enterprise]: FaceTime uses UDP 3478-3497).

Keys in OONI's style: `facetime_calls_status`/`_failure`, `facetime_endpoints_blocked`.
"""

from __future__ import annotations

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
from wallwatch.vocabulary import NETTEST_FEATURES

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "facetime"
FEATURES: tuple[str, ...] = tuple(map(str, NETTEST_FEATURES[TEST_NAME]))
COURIER_STAGES = ("connect_sent", "connected")
APPLE_NETWORKS = ("17.0.0.0/8",)  # [Apple-Enterprise]
# With `--option throughput=on`: the call relay's round trips against TCP connects to the same
# address (base.ServiceTest.measure_throughput); FaceTime has no bulk transfer of its own.
THROUGHPUT = Throughput(calls=("calls",))


@dataclass(frozen=True)
class FaceTimeConfig:
    courier_host: str = "1-courier.push.apple.com"
    courier_port: int = 5223
    call_relays: tuple[str, ...] = ("17.173.254.10",)  # an address of Apple's 17.0.0.0/8
    stun_port: int = STUN_PORT
    common: Common = field(default_factory=lambda: Common(expected_networks=APPLE_NETWORKS))


class FaceTimeTest(ServiceTest):
    test_name = TEST_NAME

    def __init__(self, config: FaceTimeConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        super().__init__(config.common, settings, trace)
        self.config = config

    def attempts(self) -> list[Awaitable[Any]]:
        from wallwatch.protocols.apns import ALPN

        c = self.config
        return [self.session("calls", c.courier_host, c.courier_port, self._connect, COURIER_STAGES,
                             tls_name=c.courier_host, alpn=(ALPN,)),
                *(self.stun("calls", relay, c.stun_port) for relay in c.call_relays)]

    async def _connect(self, stream: Any, reached: Reached, session: dict[str, Any]) -> None:
        from wallwatch.protocols import apns
        from wallwatch.protocols.errors import ProtocolError

        answer = await exchange_opening(stream, apns.build_connect(), apns.parse_command, reached, "connect_sent",
                                        session, self.common.timeouts.chat)
        if answer.command != apns.CONNECT_RESPONSE or answer.field(apns.FIELD_STATUS) != apns.STATUS_OK:
            raise ProtocolError(f"command {answer.command} with status {answer.field(apns.FIELD_STATUS)!r}")
        reached("connected")

    def ooni_keys(self) -> dict[str, Any]:
        return self.status_keys(TEST_NAME, FEATURES, all_of=frozenset({"calls"}))


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point (fixed targets); `options`: throughput=on|off (`base.with_options`)."""
    return run_service(FaceTimeTest, FaceTimeConfig(), settings, stamp, step_timeout=step_timeout, options=options,
                       throughput=THROUGHPUT, progress=progress)
