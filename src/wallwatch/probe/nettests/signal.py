"""The `signal` nettest: chat, attachments CDN, storage and calls, each at the endpoint the app uses.

OONI's ts-029 (signal 0.2.x) fetches Signal's service hosts over TLS,
trusting only Signal's own CA, and says `signal_backend_status` ok or
blocked for all of them together. Here each feature is judged on its own,
with the same rules and controls as every messaging nettest:

* text: the chat service, `chat.signal.org` (ts-029's chat endpoint);
* media: attachments from the CDNs, `cdn.signal.org` and `cdn2.signal.org`;
* storage: `storage.signal.org` (ts-029);
* calls: the group-call SFU `sfu.voip.signal.org` (ts-029) over HTTPS, and a
  STUN Binding to it, as ICE checks a candidate (RFC 8445); a call needs both.

In the lab the probe trusts the lab CA only, as ts-029 trusts Signal's only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from wallwatch.probe import failures
from wallwatch.probe.nettests.base import (
    STUN_PORT,
    Common,
    ServiceTest,
    Throughput,
    run_service,
)
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "signal"
# With `--option throughput=on`: an attachment-sized video from the first CDN by range, and the
# SFU's STUN answers against TCP connects to it, each against a control (base.ServiceTest).
THROUGHPUT = Throughput(bulk=(("media", "https://cdn.signal.org/attachments/video.mp4"),), calls=("calls",))


@dataclass(frozen=True)
class SignalConfig:
    chat_url: str = "https://chat.signal.org/v1/websocket/"
    attachment_urls: tuple[str, ...] = ("https://cdn.signal.org/attachments/sample.jpg",
                                        "https://cdn2.signal.org/attachments/sample.jpg")
    storage_url: str = "https://storage.signal.org/v1/storage/manifest"
    sfu_url: str = "https://sfu.voip.signal.org/v2/conference/participants"
    sfu_host: str = "sfu.voip.signal.org"
    stun_port: int = STUN_PORT
    # Signal's services sit on several clouds, so no address list is theirs: the DNS rules
    # then rely on racing answers and failed flows, not on unexpected networks.
    common: Common = field(default_factory=Common)


class SignalTest(ServiceTest):
    test_name = TEST_NAME

    def __init__(self, config: SignalConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        super().__init__(config.common, settings, trace)
        self.config = config

    def attempts(self) -> list[Awaitable[Any]]:
        c = self.config
        return [self.https("text", c.chat_url), *(self.https("media", url) for url in c.attachment_urls),
                self.https("storage", c.storage_url), self.https("calls", c.sfu_url),
                self.stun("calls", c.sfu_host, c.stun_port, by_address=False)]

    def ooni_keys(self) -> dict[str, Any]:
        """ts-029: the backend is ok only when every HTTPS endpoint answered; the first failure is kept."""
        failure = next((f["failure"] for f in self.fetches if f["failure"] is not None), None)
        if not self.fetches:
            failure = failures.UNKNOWN_FAILURE
        return {"signal_backend_status": "ok" if failure is None else "blocked", "signal_backend_failure": failure}


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point (fixed targets); `options`: throughput=on|off (`base.with_options`)."""
    return run_service(SignalTest, SignalConfig(), settings, stamp, step_timeout=step_timeout, options=options,
                       throughput=THROUGHPUT, progress=progress)
