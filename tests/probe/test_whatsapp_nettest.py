"""The whatsapp nettest end to end on loopback: real servers, a first-bytes 'censor', real verdicts."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.probe import servers
from tests.probe.loopback_whatsapp import CHAT_NAMES, LoopbackWhatsApp, Policy
from wallwatch.probe.measurement import append_jsonl, scrub_addresses
from wallwatch.probe.nettests.whatsapp import measure_whatsapp, run_whatsapp
from wallwatch.probe.settings import ProbeSettings
from wallwatch.protocols.tls import parse_client_hello

pytestmark = pytest.mark.timeout(60)


def measure(tmp_path: Path, policy: Policy, **config: Any) -> dict[str, Any]:
    with LoopbackWhatsApp(tmp_path, policy) as service:
        return asyncio.run(run_whatsapp(service.config(**config), service.settings()))


def verdicts(test_keys: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {name: (f["verdict"], f["method"]) for name, f in test_keys["x_wallwatch"]["features"].items()}


def is_whatsapp(first: bytes) -> bool:
    """The censor's own fingerprint (protocols.whatsapp): the edge prefix of today's clients, or a bare header."""
    from wallwatch.protocols.errors import ProtocolError
    from wallwatch.protocols.whatsapp import parse_stream_header

    try:
        parse_stream_header(first)
    except ProtocolError:
        return False
    return True


def whatsapp_header(first: bytes) -> str:
    return servers.RESET if is_whatsapp(first) else servers.PASS


def sni_is(name: str, action: str = servers.RESET) -> Any:
    def decide(first: bytes) -> str:
        hello = parse_client_hello(first)
        return action if getattr(hello, "sni", None) == name else servers.PASS

    return decide


def test_unblocked_every_feature_ok_and_ooni_keys_ok(tmp_path: Path) -> None:
    keys = measure(tmp_path, Policy())
    assert verdicts(keys) == {f: ("ok", None) for f in ("text", "media", "calls", "web", "registration")}
    text = keys["x_wallwatch"]["features"]["text"]
    assert (text["targets_ok"], text["targets_total"], text["rule"]) == (4, 4, "feature.all_ok")
    assert {s["stage_reached"] for s in keys["x_wallwatch"]["chat_sessions"]} == {"echo"}
    assert keys["whatsapp_endpoints_status"] == "ok" and keys["whatsapp_endpoints_blocked"] == []
    assert keys["registration_server_status"] == "ok" and keys["registration_server_failure"] is None
    assert keys["whatsapp_web_status"] == "ok" and keys["whatsapp_web_failure"] is None
    assert keys["x_wallwatch"]["controls"] == []  # nothing failed, so no control ran
    assert keys["x_wallwatch"]["features"]["media"]["targets_total"] == 2  # upload and download
    # A STUN answer names the probe's public address: its bytes are never kept.
    assert [u["raw_response"] for u in keys["x_wallwatch"]["udp_exchanges"]] == [None]


def test_scrubbing_replaces_whole_probe_addresses_only() -> None:
    measurement = {"probe_ip": "127.0.0.1", "test_keys": {"e": ["198.18.0.2:443", "198.18.0.25", "a 198.18.0.2"]}}
    scrubbed = scrub_addresses(measurement, {"198.18.0.2", "127.0.0.1"})
    assert scrubbed == {"probe_ip": "127.0.0.1", "test_keys": {"e": ["[scrubbed]:443", "198.18.0.25", "a [scrubbed]"]}}


def test_chat_protocol_reset_is_protocol_dpi_and_nothing_else_is_blocked(tmp_path: Path) -> None:
    keys = measure(tmp_path, Policy(chat_a=whatsapp_header, chat_b=whatsapp_header))
    found = verdicts(keys)
    assert found["text"] == ("blocked", "protocol_dpi")
    assert all(found[f] == ("ok", None) for f in ("media", "calls", "web", "registration"))
    sessions = keys["x_wallwatch"]["chat_sessions"]
    assert {(s["stage_reached"], s["failed_at"], s["failure"]) for s in sessions} == {
        ("header_sent", "handshake", "connection_reset")}
    assert {s["control"]["outcome"] for s in sessions} == {"closed"}
    # OONI's test only connects, so it sees nothing wrong: the gap this nettest closes.
    assert keys["whatsapp_endpoints_status"] == "ok"


class OnAndOff:
    """Resets exactly `fraction` of the WhatsApp flows it sees, whatever their order: a censor rule that fires
    per flow with a probability (the GFW against WhatsApp text, September 2017), made deterministic so the
    expected share is exact. Anything that is not a WhatsApp header passes."""

    def __init__(self, fraction: float) -> None:
        self.fraction, self.credit, self.seen, self.reset = fraction, 0.0, 0, 0

    def __call__(self, first: bytes) -> str:
        if not is_whatsapp(first):
            return servers.PASS
        self.seen += 1
        self.credit += self.fraction
        if self.credit >= 1.0 - 1e-9:
            self.credit -= 1.0
            self.reset += 1
            return servers.RESET
        return servers.PASS


@pytest.mark.parametrize("fraction", [0.25, 1 / 32])
def test_on_and_off_chat_blocking_is_blocked_and_partial(tmp_path: Path, fraction: float) -> None:
    gate = OnAndOff(fraction)  # one state for both ports, as one censor sees every flow
    keys = measure(tmp_path, Policy(chat_a=gate, chat_b=gate), chat_hosts=CHAT_NAMES)
    text = keys["x_wallwatch"]["features"]["text"]
    assert gate.seen == 32 and gate.reset == round(32 * fraction)
    assert (text["verdict"], text["method"], text["partial"]) == ("blocked", "protocol_dpi", True)
    assert text["rule"] == "feature.partial_blocked+chat.protocol_dpi"
    assert (text["targets_total"], text["targets_ok"], text["blocked_share"]) == (32, 32 - gate.reset,
                                                                                   round(gate.reset / 32, 4))
    assert 0.0 < text["confidence"] < 0.9
    # The controls of the reset flows passed, which is what makes the evidence strong.
    assert [c["outcome"] for c in keys["x_wallwatch"]["controls"]] == ["closed"] * gate.reset
    assert all(verdicts(keys)[f] == ("ok", None) for f in ("media", "calls", "web", "registration"))


def test_chat_protocol_blackholed_after_header_is_protocol_dpi(tmp_path: Path) -> None:
    drop_wa = lambda first: servers.DROP if is_whatsapp(first) else servers.PASS  # noqa: E731
    keys = measure(tmp_path, Policy(chat_a=drop_wa, chat_b=drop_wa))
    assert verdicts(keys)["text"] == ("blocked", "protocol_dpi")
    assert {s["failure"] for s in keys["x_wallwatch"]["chat_sessions"]} == {"generic_timeout_error"}


def test_one_port_blocked_leaves_text_working(tmp_path: Path) -> None:
    keys = measure(tmp_path, Policy(chat_b=lambda first: servers.RESET))
    text = keys["x_wallwatch"]["features"]["text"]
    assert (text["verdict"], text["rule"], text["targets_ok"]) == ("ok", "feature.some_ok", 2)
    assert any("tcp_reset" in line or "reset" in line for line in text["evidence"][1:])


def test_sni_filtering_blocks_web_only(tmp_path: Path) -> None:
    keys = measure(tmp_path, Policy(https=sni_is("web.whatsapp.com")))
    found = verdicts(keys)
    assert found["web"] == ("blocked", "tls_sni")
    assert found["registration"] == ("ok", None) and found["media"] == ("ok", None) and found["text"] == ("ok", None)
    assert keys["whatsapp_web_status"] == "blocked" and keys["whatsapp_web_failure"] == "connection_reset"
    [control] = keys["x_wallwatch"]["controls"]
    assert (control["kind"], control["server_name"], control["outcome"]) == ("tls_sni", "example.org", "answered")
    assert keys["x_wallwatch"]["features"]["web"]["rule"].endswith("tls.sni_filtered")


def test_every_clienthello_reset_is_address_filtering_not_sni(tmp_path: Path) -> None:
    keys = measure(tmp_path, Policy(https=lambda first: servers.RESET if first[:1] == b"\x16" else servers.PASS))
    assert verdicts(keys)["web"] == ("blocked", "tcp_reset")
    assert keys["x_wallwatch"]["features"]["web"]["rule"].endswith("tls.address_filtered")


def test_dns_injection_race_blocks_registration_by_dns(tmp_path: Path) -> None:
    keys = measure(tmp_path, Policy(dns_inject={"v.whatsapp.net": "127.0.0.2"}))
    found = verdicts(keys)
    assert found["registration"] == ("blocked", "dns")
    assert keys["x_wallwatch"]["features"]["registration"]["rule"].endswith("dns.injection_race")
    assert found["web"] == ("ok", None) and found["text"] == ("ok", None)
    query = next(q for q in keys["queries"] if q["hostname"] == "v.whatsapp.net")
    assert len(query["x_dns_duplicate_responses"]) == 1
    assert keys["registration_server_status"] == "blocked"


def test_dropped_dns_queries_with_a_live_resolver_are_dns_blocking(tmp_path: Path) -> None:
    keys = measure(tmp_path, Policy(dns_drop=frozenset({"mmg.whatsapp.net"})))
    assert verdicts(keys)["media"] == ("blocked", "dns")


def test_silent_stun_relays_are_udp_blocking_and_closed_ones_are_down(tmp_path: Path) -> None:
    assert verdicts(measure(tmp_path, Policy(stun="silent")))["calls"] == ("blocked", "udp_blocking")
    assert verdicts(measure(tmp_path / "2", Policy(stun="closed")))["calls"] == ("down", None)


def test_server_error_is_down_not_blocked(tmp_path: Path) -> None:
    keys = measure(tmp_path, Policy(), registration_url="https://v.whatsapp.net/broken")
    assert verdicts(keys)["registration"] == ("down", None)
    assert keys["registration_server_status"] == "ok"  # OONI ignores HTTP status codes


def test_no_resolver_is_unknown_not_blocked(tmp_path: Path) -> None:
    keys = measure(tmp_path, Policy(resolver="gone"))
    found = verdicts(keys)
    assert all(found[f] == ("unknown", None) for f in ("text", "media", "web", "registration"))
    assert found["calls"] == ("ok", None)  # STUN goes by address, no DNS needed


def test_everything_blocked_stays_within_bounds(tmp_path: Path) -> None:
    drop_all = lambda first: servers.DROP  # noqa: E731
    started = time.monotonic()
    keys = measure(tmp_path, Policy(chat_a=drop_all, chat_b=drop_all, https=drop_all, stun="silent"))
    elapsed = time.monotonic() - started
    found = verdicts(keys)
    assert found["web"] == found["registration"] == found["media"] == ("blocked", "tcp_ip")
    assert found["calls"] == ("blocked", "udp_blocking")
    # A chat server may wait on a payload it does not understand, so silence
    # to both the WhatsApp header and the control proves nothing.
    assert found["text"] == ("unknown", None)
    assert keys["x_wallwatch"]["features"]["text"]["rule"].endswith("chat.ambiguous_silence")
    assert elapsed < 6  # FAST timeouts: dns + connect + 2 x chat + control, all concurrent


def test_system_resolver_mode_records_getaddrinfo_queries(tmp_path: Path) -> None:
    # Only "localhost" (from /etc/hosts): the system resolver must never be asked about a real name here.
    with LoopbackWhatsApp(tmp_path, Policy()) as service:
        config = service.config(
            chat_hosts=("localhost",), dns_control_name="localhost", expected_networks=("127.0.0.1/32", "::1/128"),
            registration_url="https://localhost/v2/register", web_url="https://localhost/",
            media_upload_url="https://localhost/upload", media_download_url="https://localhost/d/sample.jpg")
        settings = ProbeSettings(resolver=None, ca_file=str(service.pki.ca_pem))
        keys = asyncio.run(run_whatsapp(config, settings))
    assert {f: v for f, (v, _) in verdicts(keys).items()} == {f: "ok" for f in verdicts(keys)}
    assert {(q["engine"], q["query_type"]) for q in keys["queries"]} == {("getaddrinfo", "ANY")}
    assert len([q for q in keys["queries"] if "feature:text" in q["tags"]]) == 2  # one entry per attempt


def test_measurement_envelope_and_jsonl(tmp_path: Path) -> None:
    with LoopbackWhatsApp(tmp_path, Policy()) as service:
        measurement = measure_whatsapp(service.config(), service.settings(), probe_cc="IT", probe_asn="AS30722")
    assert measurement["probe_ip"] == "127.0.0.1" and measurement["probe_cc"] == "IT"
    assert measurement["data_format_version"] == "0.2.0" and measurement["test_name"] == "whatsapp"
    assert measurement["report_id"].split("_")[1:5] == ["whatsapp", "IT", "30722", "n1"]
    assert measurement["resolver_ip"] == "127.0.0.1" and measurement["input"] is None
    output = tmp_path / "out" / "m.jsonl"
    append_jsonl(output, measurement)
    append_jsonl(output, measurement)
    lines = output.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["test_keys"]["x_wallwatch"]["features"]["text"]["verdict"] == "ok"
