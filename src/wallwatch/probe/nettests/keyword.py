"""The `keyword` nettest: does a chat platform withhold messages that name certain words?

This measures the platform, not the network. It follows Citizen Lab's method
for WeChat ([CitizenLab2016], [CitizenLab2017]): one test account sends
another a canary message without a keyword and the same message with it, over
the same connection; then the recipient, on its own connection, reads what
arrived. A message the platform accepted and never delivered, while its twin
without the keyword was, was withheld by the platform itself
(`blocked/platform_filter`): the network carried both. In 2017 Weibo and
WeChat filtered "Winnie the Pooh" this way ([Pooh2017]), the default list.

The network comes first: if the platform cannot be reached (a forged DNS
answer, a reset ClientHello, a black-holed address), the verdict is that
network method, judged by the rules every messaging nettest uses, and no
finding about the platform is made (`probe.verdicts.derive_keyword_features`).

No real platform publishes an API for this; the nettest speaks the small
HTTPS/JSON API of the lab's emulated platform (`lab/chat_platform.py`):
`POST /v1/messages`, `GET /v1/inbox/<user>`. Outside the lab it needs
`--target https://HOST/` of a platform serving the same API.

Options: `keywords=A|B|...` (the words to test; default: [Pooh2017]'s).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from wallwatch.probe.nettests.base import Common, Reached, ServiceTest, configured, measure
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "keyword"
FEATURE = "keywords"
LAB_PLATFORM = "https://chat-platform.test/"  # the lab's emulated platform (an RFC 2606 `.test` name)
DEFAULT_KEYWORDS = ("小熊维尼", "Winnie the Pooh")  # [Pooh2017]
CONTROL_WORDS = "see you at the station at noon"  # the neutral words the control carries in the keyword's place
SEND_STAGES = ("sent",)
RECEIVE_STAGES = ("inbox",)
POLL_INTERVAL = 0.25  # seconds between two reads of the inbox while the controls are awaited
OPTIONS = ("keywords",)


@dataclass(frozen=True)
class KeywordConfig:
    platform_url: str = LAB_PLATFORM
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    delivery_wait: float = 2.0  # how long the recipient waits for the messages without a keyword
    common: Common = field(default_factory=Common)


class KeywordTest(ServiceTest):
    test_name = TEST_NAME

    def __init__(self, config: KeywordConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        super().__init__(config.common, settings, trace)
        self.config = config
        run = os.urandom(4).hex()
        self.sender, self.recipient = f"wallwatch-a-{run}", f"wallwatch-b-{run}"
        self.canaries: list[dict[str, Any]] = [
            {"keyword": keyword, "control_id": f"{run}-{index}-c", "keyword_id": f"{run}-{index}-k",
             "control_status": None, "keyword_status": None, "control_delivered": None, "keyword_delivered": None}
            for index, keyword in enumerate(config.keywords)]

    def attempts(self) -> list[Awaitable[Any]]:
        return [self._send_then_read()]

    async def _send_then_read(self) -> None:
        """The sender's connection, then the recipient's: one after the other, as two phones would."""
        host = urlsplit(self.config.platform_url).hostname or ""
        port = self.port_for(self.config.platform_url)
        sent = await self.session(FEATURE, host, port, self._send, SEND_STAGES, tls_name=host)
        if sent["completed"]:
            await self.session(FEATURE, host, port, self._read, RECEIVE_STAGES, tls_name=host)

    def _url(self, path: str) -> str:
        return self.config.platform_url.rstrip("/") + path

    async def _send(self, stream: Any, reached: Reached, session: dict[str, Any]) -> None:
        """Each canary twice over this one connection: without its keyword, then with it."""
        from wallwatch.probe.primitives import http_request
        from wallwatch.protocols.errors import ProtocolError

        for canary in self.canaries:
            for role, words in (("control", CONTROL_WORDS), ("keyword", canary["keyword"])):
                message = {"from": self.sender, "to": self.recipient, "id": canary[f"{role}_id"],
                           "text": f"wallwatch canary {canary['control_id'][:-2]}: {words}"}
                response = await http_request(stream, self._url("/v1/messages"), method="POST", keep_alive=True,
                                              body=json.dumps(message, ensure_ascii=False).encode(),
                                              headers=(("Content-Type", "application/json"),),
                                              timeout=self.common.timeouts.http)
                canary[f"{role}_status"] = response.status
        if not any(canary["control_status"] == 200 for canary in self.canaries):
            raise ProtocolError("the platform accepted no message, not even those without a keyword")
        reached("sent")

    async def _read(self, stream: Any, reached: Reached, session: dict[str, Any]) -> None:
        """Read the recipient's inbox until every control arrived or `delivery_wait` passed."""
        from wallwatch.probe.primitives import http_request
        from wallwatch.protocols.errors import ProtocolError

        deadline = time.monotonic() + self.config.delivery_wait
        while True:
            response = await http_request(stream, self._url(f"/v1/inbox/{self.recipient}"), keep_alive=True,
                                          timeout=self.common.timeouts.http)
            try:
                delivered = {str(m["id"]) for m in json.loads(response.body)["messages"]}
            except (ValueError, KeyError, TypeError):
                raise ProtocolError(f"HTTP {response.status}: not an inbox") from None
            for canary in self.canaries:
                canary["control_delivered"] = canary["control_id"] in delivered
                canary["keyword_delivered"] = canary["keyword_id"] in delivered
            if all(c["control_delivered"] for c in self.canaries) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_INTERVAL)
        reached("inbox")

    def extra_facts(self) -> dict[str, Any]:
        return {"platform": self.config.platform_url, "canaries": self.canaries}

    def ooni_keys(self) -> dict[str, Any]:
        """In the style of OONI's IM tests: was the platform reached, which keywords were withheld."""
        reached = len(self.sessions) == 2 and all(s["completed"] for s in self.sessions)
        return {
            "keyword_platform_reachable": reached,
            "keyword_withheld": [c["keyword"] for c in self.canaries if reached and c["control_delivered"]
                                 and c["keyword_status"] == 200 and not c["keyword_delivered"]],
            "keyword_delivered": [c["keyword"] for c in self.canaries if c["keyword_delivered"]],
        }


def parse_keywords(text: str) -> tuple[str, ...]:
    """`A|B|C` -> the words; `|` because keywords hold spaces and commas."""
    words = tuple(word.strip() for word in text.split("|") if word.strip())
    if not words:
        raise ValueError("keyword: keywords= names at least one word (separated by |)")
    return words


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point: `targets` (at most one platform URL), `options` keywords=A|B."""
    from wallwatch.probe.nettests import TargetError

    config = KeywordConfig()
    if len(targets) > 1:
        raise TargetError("keyword measures one platform at a time")
    if targets:
        target = urlsplit(targets[0])
        if target.scheme != "https" or not target.hostname:
            raise TargetError(f"keyword: {targets[0]!r} is not https://HOST/")
        config = replace(config, platform_url=targets[0])
    elif settings.lab is None:
        raise TargetError("keyword needs --target https://HOST/ of a platform outside the lab")
    if (options or {}).get("keywords") is not None:
        config = replace(config, keywords=parse_keywords(options["keywords"]))  # type: ignore[index]
    return measure(KeywordTest(configured(config, settings, step_timeout), settings), stamp, progress)
