"""`derive_openvpn_features` on hand-built facts: each tunnel rule, and the partial semantics."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from wallwatch.probe.verdicts import derive_openvpn_features


def handshake(transport: str = "udp", *, stage: str | None = "server_tls", failed_at: str | None = None,
              failure: str | None = None, control: tuple[str, str | None] | None = None, received: int = 2,
              foreign: int = 0, tx: int = 1) -> dict[str, Any]:
    return {"address": f"198.19.4.1:{1194 + tx}", "transport": transport, "transaction_id": tx,
            "stage_reached": stage, "failed_at": failed_at, "failure": failure,
            "server_tls": "server_hello" if failure is None else None, "packets_sent": 2,
            "packets_received": received, "foreign_packets": foreign,
            "control": None if control is None else {"outcome": control[0], "failure": control[1]}}


def keys(*handshakes: dict[str, Any], resolver: bool = False, tcp_ok: bool = False) -> dict[str, Any]:
    queries = [{"engine": "udp", "rcode": "NXDOMAIN", "failure": "dns_nxdomain_error", "transaction_id": 99,
                "tags": ["control:dns", "endpoint:example.com:53"]}] if resolver else []
    connects = [{"ip": "198.19.9.9", "port": 443, "transaction_id": 98, "status": {"success": True}}] if tcp_ok else []
    return {"queries": queries, "tcp_connect": connects, "network_events": [],
            "x_wallwatch": {"openvpn_handshakes": list(handshakes)}}


def tunnel(test_keys: dict[str, Any]) -> tuple[str, str | None, str]:
    result = derive_openvpn_features(test_keys)["tunnel"]
    return result["verdict"], result["method"], result["rule"]


SILENT_UDP = dict(stage="client_reset_sent", failed_at="server_reset", failure="generic_timeout_error", received=0)
TCP_NO_RESET = dict(stage="client_reset_sent", failed_at="server_reset")
CASES = [
    (handshake(), {}, ("ok", None, "feature.all_ok")),
    (handshake(stage="client_hello_sent", failed_at="server_tls", failure="generic_timeout_error"), {},
     ("blocked", "protocol_dpi", "openvpn.stalled_after_server_reset")),
    (handshake("tcp", stage="client_hello_sent", failed_at="server_tls", failure="connection_reset"), {},
     ("blocked", "protocol_dpi", "openvpn.stalled_after_server_reset")),
    (handshake("tcp", stage="client_hello_sent", failed_at="server_tls", failure="eof_error"), {},
     ("unknown", None, "openvpn.closed_after_hello")),
    (handshake(**SILENT_UDP), dict(resolver=True), ("blocked", "udp_blocking", "openvpn.udp_silent")),
    (handshake(**SILENT_UDP), dict(tcp_ok=True), ("blocked", "udp_blocking", "openvpn.udp_silent")),
    (handshake(**SILENT_UDP), {}, ("unknown", None, "openvpn.no_network")),
    (handshake(**{**SILENT_UDP, "foreign": 3}), dict(resolver=True), ("unknown", None, "openvpn.unexpected_answers")),
    (handshake(stage="client_reset_sent", failed_at="server_reset", failure="connection_refused", received=0), {},
     ("down", None, "openvpn.refused")),
    (handshake("tcp", stage=None, failed_at="connect", failure="connection_refused", received=0), {},
     ("down", None, "openvpn.refused")),
    (handshake("tcp", stage=None, failed_at="connect", failure="generic_timeout_error", received=0),
     dict(resolver=True), ("blocked", "tcp_ip", "openvpn.tcp_silent")),
    (handshake("tcp", stage=None, failed_at="connect", failure="generic_timeout_error", received=0), {},
     ("unknown", None, "openvpn.no_network")),
    (handshake("tcp", stage=None, failed_at="connect", failure="connection_reset", received=0), {},
     ("blocked", "tcp_reset", "openvpn.connect_reset")),
    (handshake("tcp", **TCP_NO_RESET, failure="connection_reset", control=("closed", "eof_error"), received=0), {},
     ("blocked", "protocol_dpi", "openvpn.reset_dpi")),
    (handshake("tcp", **TCP_NO_RESET, failure="generic_timeout_error", control=("closed", "eof_error"),
               received=0), {}, ("blocked", "protocol_dpi", "openvpn.reset_dpi")),
    (handshake("tcp", **TCP_NO_RESET, failure="connection_reset", control=("silent", "generic_timeout_error"),
               received=0), {}, ("blocked", "protocol_dpi", "openvpn.reset_dpi_no_clean_control")),
    (handshake("tcp", **TCP_NO_RESET, failure="connection_reset",
               control=("connect_failed", "generic_timeout_error"), received=0), {},
     ("blocked", "residual", "openvpn.reset_then_blackholed")),
    (handshake("tcp", **TCP_NO_RESET, failure="connection_reset", control=("reset", "connection_reset"),
               received=0), {}, ("blocked", "tcp_reset", "openvpn.address_reset")),
    (handshake("tcp", **TCP_NO_RESET, failure="generic_timeout_error", control=("silent", "generic_timeout_error"),
               received=0), {}, ("blocked", "tcp_ip", "openvpn.address_silent")),
    (handshake("tcp", **TCP_NO_RESET, failure="eof_error", control=("closed", "eof_error"), received=0), {},
     ("down", None, "openvpn.server_hangs_up")),
    (handshake("tcp", **TCP_NO_RESET, failure="connection_reset",
               control=("connect_failed", "connection_refused"), received=0), {},
     ("down", None, "openvpn.control_refused")),
    (handshake("tcp", **TCP_NO_RESET, failure="connection_reset", received=0), {},
     ("unknown", None, "openvpn.failure_no_control")),
    (handshake("tcp", **TCP_NO_RESET, failure="unknown_failure: not OpenVPN: bad opcode", received=0), {},
     ("unknown", None, "openvpn.garbled")),
    (handshake(stage=None, failed_at="connect", failure="unknown_failure: no lab address for 8.8.8.8; not dialled",
               received=0), {}, ("unknown", None, "openvpn.not_measured")),
]


@pytest.mark.parametrize(("handshake_facts", "context", "expected"), CASES)
def test_tunnel_rules(handshake_facts: dict[str, Any], context: dict[str, bool],
                      expected: tuple[str, str | None, str]) -> None:
    verdict, method, rule = tunnel(keys(handshake_facts, **context))
    assert (verdict, method) == expected[:2] and rule.endswith(expected[2]), rule


def test_a_target_does_not_vouch_for_itself() -> None:
    # Its own successful TCP connect is no "other path": the connect is what is being judged.
    facts = keys(handshake("tcp", **TCP_NO_RESET, failure="generic_timeout_error", received=0,
                           control=("silent", "generic_timeout_error")))
    facts["tcp_connect"].append({"ip": "198.19.4.1", "port": 1195, "transaction_id": 1, "status": {"success": True}})
    assert tunnel(facts)[2].endswith("openvpn.address_silent")
    udp = keys(handshake(**SILENT_UDP))
    assert tunnel(udp)[0] == "unknown"


def test_stall_on_one_transport_while_the_other_works_is_partial() -> None:
    facts = keys(handshake("udp", stage="client_hello_sent", failed_at="server_tls", failure="generic_timeout_error"),
                 handshake("tcp", tx=2))
    result = derive_openvpn_features(facts)["tunnel"]
    assert (result["verdict"], result["partial"], result["blocked_share"]) == ("blocked", True, 0.5)
    assert result["rule"] == "feature.partial_blocked+openvpn.stalled_after_server_reset"
    assert result["confidence"] == round(0.8 * 0.75, 2)


def test_silence_on_one_transport_while_the_other_works_stays_ok() -> None:
    facts = keys(handshake(**SILENT_UDP), handshake("tcp", tx=2))
    result = derive_openvpn_features(facts)["tunnel"]
    assert (result["verdict"], result["rule"], result["partial"], result["blocked_share"]) == (
        "ok", "feature.some_ok", False, 0.5)


def test_pure() -> None:
    facts = keys(handshake(**SILENT_UDP), resolver=True)
    before = copy.deepcopy(facts)
    assert derive_openvpn_features(facts) == derive_openvpn_features(facts) and facts == before
