"""An emulated chat platform that censors its own users: it drops messages naming listed keywords.

The Weibo/WeChat case of 2017: searches for "Winnie the Pooh" were filtered on
Weibo and messages naming it on WeChat ([Pooh2017]), by the platforms' own
servers, which Citizen Lab showed by sending messages with and without a
keyword between test accounts and comparing what arrived ([CitizenLab2016],
[CitizenLab2017]). WeChat filters silently: the sender sees the message sent,
the recipient never gets it. This platform does the same, over a small
HTTPS/JSON API (the lab's own; no real platform publishes one for this):

    POST /v1/messages        {"from", "to", "id", "text"} -> 200 {"id", "status": "sent"}, always
    GET  /v1/inbox/<user>    -> 200 {"messages": [{"id", "from", "text"}, ...]}

A message whose text contains a listed keyword (case-insensitive) is accepted
and never delivered. The keyword list is data: `Lab.set_platform_filter`
writes it to `<workdir>/platform-filter.json`, which the platform re-reads
when it changes, so a test turns filtering on and off while the lab runs
(`scenarios/keywords/*.yaml` holds lists with their sources).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Sequence

import yaml

from wallwatch.lab.https_server import NOT_FOUND, Request, Response, json_response

log = logging.getLogger(__name__)

FILTER_FILE = "platform-filter.json"
MAX_USERS = 1024  # inboxes kept, oldest dropped first: memory bounded by configuration
MAX_INBOX = 256  # messages kept per inbox
MAX_TEXT = 4096  # characters of a message


class ChatPlatform:
    """The platform's server: accepts every message, delivers those no listed keyword is in."""

    def __init__(self, filter_path: Path) -> None:
        self.filter_path = filter_path
        self._inboxes: OrderedDict[str, deque[dict[str, str]]] = OrderedDict()
        self._keywords: tuple[str, ...] = ()
        self._filter_stamp: tuple[int, int] | None = None
        self.withheld = 0  # messages dropped by the filter, for the log

    def keywords(self) -> tuple[str, ...]:
        """The keyword list in force, re-read when its file changes (a missing file: no filtering)."""
        try:
            stat = os.stat(self.filter_path)
        except FileNotFoundError:
            self._keywords, self._filter_stamp = (), None
            return self._keywords
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._filter_stamp:
            try:
                listed = json.loads(self.filter_path.read_text()).get("keywords") or []
                self._keywords = tuple(str(k).casefold() for k in listed if str(k).strip())
            except (OSError, ValueError, AttributeError) as exc:  # a bad file filters nothing, loudly
                log.warning("platform: unreadable keyword list %s: %s", self.filter_path, exc)
                self._keywords = ()
            self._filter_stamp = stamp
        return self._keywords

    def filtered(self, text: str) -> bool:
        folded = text.casefold()
        return any(keyword in folded for keyword in self.keywords())

    def handle(self, request: Request) -> Response:
        path = request.path.split("?", 1)[0]
        if request.method == "POST" and path == "/v1/messages":
            return self._post(request.body)
        if request.method == "GET" and path.startswith("/v1/inbox/"):
            user = path[len("/v1/inbox/"):]
            return json_response(200, {"messages": list(self._inboxes.get(user, ()))})
        return NOT_FOUND

    def _post(self, body: bytes) -> Response:
        try:
            message = json.loads(body)
            sender, recipient, message_id, text = (str(message[k]) for k in ("from", "to", "id", "text"))
        except (ValueError, KeyError, TypeError):
            return json_response(400, {"status": "fail", "reason": "a message is {from, to, id, text}"})
        if len(text) > MAX_TEXT:
            return json_response(413, {"status": "fail", "reason": "message too long"})
        if self.filtered(text):
            self.withheld += 1  # accepted, never delivered: what the sender sees is the same
        else:
            inbox = self._inboxes.setdefault(recipient, deque(maxlen=MAX_INBOX))
            self._inboxes.move_to_end(recipient)
            inbox.append({"id": message_id, "from": sender, "text": text})
            while len(self._inboxes) > MAX_USERS:
                self._inboxes.popitem(last=False)
        return json_response(200, {"id": message_id, "status": "sent"})


def write_filter(workdir: Path, keywords: Sequence[str] | None) -> Path:
    """Put a keyword list in force (None or empty: no filtering), atomically."""
    path = workdir / FILTER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keywords": list(keywords or ())}, ensure_ascii=False))
    os.replace(tmp, path)
    return path


def load_keyword_list(path: str | Path) -> tuple[str, ...]:
    """A keyword list file (`scenarios/keywords/*.yaml`: name, sources, keywords)."""
    document: Any = yaml.safe_load(Path(path).read_text())
    keywords = document.get("keywords") if isinstance(document, dict) else None
    if not isinstance(keywords, list) or not all(isinstance(k, str) and k.strip() for k in keywords):
        raise ValueError(f"{path}: `keywords` must be a list of non-empty strings")
    return tuple(keywords)
