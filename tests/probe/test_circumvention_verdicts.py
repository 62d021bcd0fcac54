"""`derive_circumvention_features` on hand-built facts: each option's rules, and the summary in words."""

from __future__ import annotations

from typing import Any

import pytest

from wallwatch.probe.nettests import NETTESTS, TargetError
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.verdicts import derive_circumvention_features, summary
from wallwatch.vocabulary import NETTEST_FEATURES, Circumvention

RESOLVER_OK = {"engine": "udp", "hostname": "example.com", "rcode": "NXDOMAIN", "failure": "dns_nxdomain_error",
               "tags": ["control:dns"], "transaction_id": 1}


def keys(**options: dict[str, Any]) -> dict[str, Any]:
    return {"queries": [RESOLVER_OK], "tcp_connect": [],
            "x_wallwatch": {"options": {name: {"option": name, **facts} for name, facts in options.items()}}}


def proxy(kind: str, failure: str | None = None, control: str | None = None, **extra: Any) -> dict[str, Any]:
    facts = {"kind": kind, "address": "198.19.4.3:8388", "client": "ss-local", "target": "198.19.4.10:80",
             "stage_reached": "response" if failure is None else "connected", "failure": failure,
             "failed_at": None if failure is None else "response", "http_status": 200 if failure is None else None,
             "control": None if control is None else {"outcome": control, "failure": None}}
    return {**facts, **extra}


def verdicts(test_keys: dict[str, Any]) -> dict[str, str]:
    return {o: f"{f['verdict']}/{f['method']}" if f["method"] else f["verdict"]
            for o, f in derive_circumvention_features(test_keys).items()}


@pytest.mark.parametrize(("facts", "expected"), [
    (proxy("shadowsocks"), "ok"),
    (proxy("shadowsocks", "generic_timeout_error", "delivered"), "blocked/protocol_dpi"),
    (proxy("shadowsocks", "generic_timeout_error", "closed"), "blocked/protocol_dpi"),
    (proxy("shadowsocks", "connection_reset", "reset"), "blocked/tcp_reset"),
    (proxy("shadowsocks", "generic_timeout_error", "silent"), "blocked/tcp_ip"),
    (proxy("shadowsocks", "generic_timeout_error"), "unknown"),  # no control: no claim
    (proxy("shadowsocks", "unknown_failure: ss-local is not installed", failed_at="client"), "unknown"),
])
def test_proxy_rules(facts: dict[str, Any], expected: str) -> None:
    assert verdicts(keys(shadowsocks=facts)) == {"shadowsocks": expected}


def test_a_silent_control_is_not_blocking_without_a_working_network() -> None:
    test_keys = keys(obfs4=proxy("obfs4", "generic_timeout_error", "silent"))
    test_keys["queries"] = []
    assert verdicts(test_keys) == {"obfs4": "unknown"}


def test_wireguard_without_an_answer_is_udp_blocking_only_when_the_network_works() -> None:
    silent = {"kind": "wireguard", "address": "198.19.4.2:51820", "failure": "generic_timeout_error",
              "failed_at": "handshake", "latest_handshake": 0, "bytes_received": 0}
    assert verdicts(keys(wireguard=silent)) == {"wireguard": "blocked/udp_blocking"}
    offline = keys(wireguard=silent)
    offline["queries"] = []
    assert verdicts(offline) == {"wireguard": "unknown"}


def tor(**facts: Any) -> dict[str, Any]:
    return {"kind": "tor", "address": "198.19.4.6:9001", "bootstrap": 0, "bootstrap_tag": None,
            "directory_answer": None, "failure": None, "failed_at": None, "control": None, **facts}


def test_tor_rules() -> None:
    reached = tor(bootstrap=30, bootstrap_tag="loading_status", directory_answer=404)
    result = derive_circumvention_features(keys(tor=reached))["tor"]
    assert result["verdict"] == "ok" and "no consensus to serve" in result["evidence"][0]
    assert verdicts(keys(tor=tor(bootstrap=100, bootstrap_tag="done"))) == {"tor": "ok"}
    reset = tor(bootstrap=10, bootstrap_tag="conn_done", failure="unknown_failure: tor: CONNECTRESET",
                failed_at="conn_done", control={"outcome": "answered", "failure": None})
    result = derive_circumvention_features(keys(tor=reset))["tor"]
    assert (result["verdict"], result["method"]) == ("blocked", "protocol_dpi")
    assert "plain TLS ClientHello" in result["evidence"][0] and "Tor's TLS was recognised" in result["evidence"][0]


def test_summary_names_what_worked_and_how_the_rest_was_stopped() -> None:
    test_keys = keys(shadowsocks=proxy("shadowsocks"), obfs4=proxy("obfs4"),
                     wireguard={"kind": "wireguard", "address": "198.19.4.2:51820", "failure": "generic_timeout_error",
                                "failed_at": "handshake", "latest_handshake": 0})
    words = summary(derive_circumvention_features(test_keys))
    assert words == ("Shadowsocks and obfs4 worked; WireGuard was blocked (the service's calls or UDP traffic "
                     "were dropped)")


def test_the_nettest_is_registered_and_needs_servers() -> None:
    assert NETTEST_FEATURES["circumvention"] == tuple(Circumvention)
    with pytest.raises(TargetError, match="outside the lab"):
        NETTESTS["circumvention"].run_once(ProbeSettings(), stamp=None)  # type: ignore[arg-type]
