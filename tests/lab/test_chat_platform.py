"""The lab's emulated chat platform on its own (no namespaces): the keyword list is data, read when it
changes; withheld messages are accepted all the same; memory is bounded; a malformed message is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wallwatch.lab import chat_platform
from wallwatch.lab.chat_platform import ChatPlatform, load_keyword_list, write_filter
from wallwatch.lab.https_server import Request

CN_2017 = Path(__file__).resolve().parents[2] / "scenarios" / "keywords" / "cn-2017.yaml"


def _post(platform: ChatPlatform, text: str, message_id: str, to: str = "b") -> int:
    body = json.dumps({"from": "a", "to": to, "id": message_id, "text": text}).encode()
    return platform.handle(Request("POST", "/v1/messages", "chat-platform.test", body)).status


def _inbox(platform: ChatPlatform, user: str = "b") -> list[str]:
    response = platform.handle(Request("GET", f"/v1/inbox/{user}", "chat-platform.test", b""))
    return [m["id"] for m in json.loads(response.body)["messages"]]


def test_filtering_turns_on_and_off_with_the_list(tmp_path: Path) -> None:
    platform = ChatPlatform(tmp_path / chat_platform.FILTER_FILE)
    assert _post(platform, "about winnie the pooh", "1") == 200  # no list yet: delivered
    write_filter(tmp_path, load_keyword_list(CN_2017))
    assert _post(platform, "about WINNIE THE POOH", "2") == 200  # accepted, as WeChat accepts it ...
    assert _post(platform, "关于小熊维尼", "3") == 200
    assert _post(platform, "about the weather", "4") == 200
    write_filter(tmp_path, None)
    assert _post(platform, "about winnie the pooh", "5") == 200
    assert _inbox(platform) == ["1", "4", "5"]  # ... and never delivered
    assert platform.withheld == 2


def test_inboxes_and_users_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_platform, "MAX_USERS", 3)
    platform = ChatPlatform(tmp_path / chat_platform.FILTER_FILE)
    for n in range(chat_platform.MAX_INBOX + 10):
        _post(platform, "x", str(n))
    assert len(_inbox(platform)) == chat_platform.MAX_INBOX and _inbox(platform)[0] == "10"
    for user in ("c", "d", "e"):
        _post(platform, "x", "1", to=user)
    assert _inbox(platform) == []  # the oldest inbox went first


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"from": "a"}', b"[1, 2]"])
def test_a_malformed_message_is_refused_not_fatal(tmp_path: Path, body: bytes) -> None:
    platform = ChatPlatform(tmp_path / chat_platform.FILTER_FILE)
    assert platform.handle(Request("POST", "/v1/messages", None, body)).status == 400


def test_an_unreadable_list_filters_nothing(tmp_path: Path) -> None:
    (tmp_path / chat_platform.FILTER_FILE).write_text("{broken")
    platform = ChatPlatform(tmp_path / chat_platform.FILTER_FILE)
    assert _post(platform, "winnie the pooh", "1") == 200 and _inbox(platform) == ["1"]


def test_a_list_file_needs_keywords(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\nkeywords: [ok, '']\n")
    with pytest.raises(ValueError, match="keywords"):
        load_keyword_list(tmp_path / "bad.yaml")
