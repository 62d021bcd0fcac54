"""The `skype` nettest: Skype's chat service, media objects, call relays and web client.

OONI has no Skype test. Skype was left alone in China in 2017 while WhatsApp
was blocked ([NYT2017]), so the 2017 replay must show it `ok`. By 2017
Skype had moved to Microsoft's cloud; each feature at the endpoint the app
(and the open client SkPy, [SkPy]) uses:

* text: a message POSTed to the chat service,
  `client-s.gateway.messenger.live.com/v1/users/ME/conversations/<id>/messages`
  (to `8:echo123`, Skype's echo contact);
* media: an image uploaded to and downloaded from the media object store,
  `api.asm.skype.com/v1/objects` (all-of);
* calls: a STUN Binding carrying Microsoft's MS-IMPLEMENTATION-VERSION
  attribute ([MS-ICE2]) to a relay of Microsoft's media block
  ([Microsoft365-Endpoints]), by address, on 3478: what nDPI names SkypeCall;
* web: the web client, `web.skype.com`.

Keys in OONI's style: `skype_<feature>_status`/`_failure`.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from wallwatch.probe.nettests.base import (
    PHOTO_SIZE,
    STUN_PORT,
    Common,
    ServiceTest,
    Throughput,
    run_service,
)
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace
from wallwatch.vocabulary import NETTEST_FEATURES

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "skype"
FEATURES: tuple[str, ...] = tuple(map(str, NETTEST_FEATURES[TEST_NAME]))
MS_ICE_VERSION = 2  # the MS-IMPLEMENTATION-VERSION value of [MS-ICE2]'s examples
# With `--option throughput=on`: a video object from the media service, the web client's script
# bundle and the call relay, timed against controls (base.ServiceTest.measure_throughput).
THROUGHPUT = Throughput(bulk=(("media", "https://api.asm.skype.com/v1/objects/video.mp4"),
                              ("web", "https://web.skype.com/app.js")), calls=("calls",))


@dataclass(frozen=True)
class SkypeConfig:
    chat_url: str = "https://client-s.gateway.messenger.live.com/v1/users/ME/conversations/8:echo123/messages"
    media_upload_url: str = "https://api.asm.skype.com/v1/objects"
    media_download_url: str = "https://api.asm.skype.com/v1/objects/sample.jpg/views/imgpsh_fullsize"
    media_upload_size: int = PHOTO_SIZE
    call_relays: tuple[str, ...] = ("52.112.0.10",)  # Microsoft's media block 52.112.0.0/14
    stun_port: int = STUN_PORT
    web_url: str = "https://web.skype.com/"
    # Microsoft's networks are many and shared with its other services: no list of Skype's own.
    common: Common = field(default_factory=Common)


class SkypeTest(ServiceTest):
    test_name = TEST_NAME

    def __init__(self, config: SkypeConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        super().__init__(config.common, settings, trace)
        self.config = config

    def attempts(self) -> list[Awaitable[Any]]:
        from wallwatch.protocols.stun import MS_IMPLEMENTATION_VERSION

        c = self.config
        message = json.dumps({"content": "wallwatch echo " + os.urandom(4).hex(), "messagetype": "RichText",
                              "contenttype": "text", "clientmessageid": str(int.from_bytes(os.urandom(6), "big"))})
        ms_version = [(MS_IMPLEMENTATION_VERSION, struct.pack("!I", MS_ICE_VERSION))]
        return [self.https("text", c.chat_url, method="POST", body=message.encode(),
                           headers=(("Content-Type", "application/json"),)),
                self.upload("media", c.media_upload_url, c.media_upload_size),
                self.https("media", c.media_download_url),
                *(self.stun("calls", relay, c.stun_port, attributes=ms_version) for relay in c.call_relays),
                self.https("web", c.web_url)]

    def ooni_keys(self) -> dict[str, Any]:
        return self.status_keys(TEST_NAME, FEATURES)


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point (fixed targets); `options`: throughput=on|off (`base.with_options`)."""
    return run_service(SkypeTest, SkypeConfig(), settings, stamp, step_timeout=step_timeout, options=options,
                       throughput=THROUGHPUT, progress=progress)
