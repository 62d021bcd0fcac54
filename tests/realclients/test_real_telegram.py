"""Telethon's obfuscated2 transport to the emulated Telegram DC, with allow-all and under `mtproto.obfuscated2`."""

from __future__ import annotations

import time
from typing import Iterator

import pytest
from realclients_helpers import DecisionLog, client_tool, require_properties, rule_policy

from wallwatch.lab import vpn_servers
from wallwatch.lab.topology import Lab
from wallwatch.protocols import mtproto

pytestmark = pytest.mark.lab

TELETHON_TIMEOUT = "2"  # seconds Telethon waits per step; the DC never answers req_pq_multi


@pytest.fixture(scope="module")
def telegram_dc(lab: Lab) -> Iterator[vpn_servers.Running]:
    pytest.importorskip("telethon", reason="Telethon (pyproject `test` extra) is not installed")
    with vpn_servers.start_telegram_dc(lab) as running:
        yield running


def _dial(lab: Lab, dc: vpn_servers.Running) -> dict[str, object]:
    return client_tool(lab, "telethon", "--dc", f"{dc.address}:{dc.port}", "--timeout", TELETHON_TIMEOUT, timeout=60)


def _records_after(dc: vpn_servers.Running, seen: int, settle: float = 1.0) -> list[dict[str, object]]:
    time.sleep(settle)  # the DC writes its record when the connection ends
    return vpn_servers.telegram_dc_records(dc)[seen:]


def test_telethon_first_message_reaches_the_dc_with_allow_all(allow_all: Lab, telegram_dc: vpn_servers.Running) -> None:
    seen = len(vpn_servers.telegram_dc_records(telegram_dc))
    outcome = _dial(allow_all, telegram_dc)
    assert outcome["outcome"] != "connected", outcome  # no key exchange: the DC only listens
    messages = [r for r in _records_after(telegram_dc, seen) if r["event"] == "message"]
    assert messages, vpn_servers.telegram_dc_records(telegram_dc)
    first = messages[0]
    # Telethon's ConnectionTcpObfuscated frames with the abridged codec and opens the key exchange with req_pq_multi.
    assert first["transport"] == "abridged"
    assert first["auth_key_id"] == 0
    assert first["constructor"] == f"0x{mtproto.REQ_PQ_MULTI:08x}"
    assert first["message_length"] == 20  # constructor + int128 nonce


def test_obfuscated2_rule_resets_telethon(allow_all: Lab, telegram_dc: vpn_servers.Running) -> None:
    require_properties("mtproto.obfuscated2")
    allow_all.set_policy(rule_policy("block-mtproto", {"mtproto.obfuscated2": True}, "reset"))
    seen = len(vpn_servers.telegram_dc_records(telegram_dc))
    log = DecisionLog(allow_all)
    outcome = _dial(allow_all, telegram_dc)
    assert "ConnectionError" in str(outcome["outcome"]), outcome  # reset: Telethon fails at once, no timeout
    records = _records_after(telegram_dc, seen)
    assert not [r for r in records if r["event"] == "message"], records
    assert all("transport" not in r for r in records), records  # not even the header got through
    decided = log.decisions(f"{telegram_dc.address}:{telegram_dc.port}")
    assert [(d["rule"], d["action"], d["props"].get("mtproto.tag")) for d in decided] == [("block-mtproto", "reset", "abridged")]
