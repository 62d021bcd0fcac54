"""The openvpn nettest against Debian's real openvpn 2.6 on loopback, with relays that play the censor."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from tests.probe import servers
from tests.probe.openvpn_servers import (
    LOOPBACK,
    PASS_ALL,
    OpenVpnServer,
    TcpRelay,
    UdpRelay,
    openvpn_available,
    write_pki,
)
from wallwatch.probe.nettests.openvpn import (
    OpenVpnTarget,
    TargetError,
    Timeouts,
    OpenVpnConfig,
    lab_targets,
    run_openvpn,
)
from wallwatch.probe.settings import LAB_ENV, LabInfo, ProbeSettings

pytestmark = pytest.mark.timeout(90)
needs_openvpn = pytest.mark.skipif(not openvpn_available(), reason="the openvpn binary is not installed "
                                   "(scripts/install.sh)")

# The server closes a garbage TCP connection after about a second, so the control waits longer than that.
FAST = Timeouts(connect=1.0, reset=1.5, hello=1.5, control=2.5, dns=0.5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pki(tmp_path_factory.mktemp("ovpn"))


class Bench:
    """Fresh real servers for one measurement (openvpn's point-to-point mode serves one client, then
    restarts): one UDP server behind a `UdpRelay`, two TCP servers behind one `TcpRelay`."""

    def __init__(self, stack: ExitStack, pki: Path, *, udp_first: int = PASS_ALL, tcp_first: int = PASS_ALL,
                 tcp_action: str = "reset") -> None:
        udp = stack.enter_context(OpenVpnServer(pki, "udp"))
        tcp = [stack.enter_context(OpenVpnServer(pki, "tcp")) for _ in range(2)]
        self.udp_relay = stack.enter_context(UdpRelay(udp.port, udp_first))
        self.tcp_relay = stack.enter_context(TcpRelay([s.port for s in tcp], tcp_first, tcp_action))
        self.udp = OpenVpnTarget("loopback", LOOPBACK, self.udp_relay.port, "udp")
        self.tcp = OpenVpnTarget("loopback", LOOPBACK, self.tcp_relay.port, "tcp")


@pytest.fixture
def bench(pki: Path) -> Iterator[Any]:
    with ExitStack() as stack:
        yield lambda **kwargs: Bench(stack, pki, **kwargs)


def measure(*targets: OpenVpnTarget, settings: ProbeSettings | None = None) -> dict[str, Any]:
    config = OpenVpnConfig(targets=targets, timeouts=FAST)
    return asyncio.run(run_openvpn(config, settings or ProbeSettings()))


def tunnel(keys: dict[str, Any]) -> dict[str, Any]:
    return keys["x_wallwatch"]["features"]["tunnel"]


def handshakes(keys: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["transport"]: h for h in keys["x_wallwatch"]["openvpn_handshakes"]}


@needs_openvpn
def test_real_server_completes_both_steps_over_udp_and_tcp(bench: Any) -> None:
    b = bench()
    keys = measure(b.udp, b.tcp)
    assert (tunnel(keys)["verdict"], tunnel(keys)["rule"], tunnel(keys)["targets_ok"]) == ("ok", "feature.all_ok", 2)
    for transport, h in handshakes(keys).items():
        assert (h["stage_reached"], h["failure"], h["server_tls"]) == ("server_tls", None, "server_hello"), transport
        assert h["server_session_acked"] and "P_CONTROL_HARD_RESET_SERVER_V2" in h["opcodes_received"]
        assert "P_CONTROL_V1" in h["opcodes_received"]
        assert list(h["timings"]) == (["connect"] if transport == "tcp" else []) + [
            "client_reset_sent", "server_reset", "client_hello_sent", "server_tls"]
    assert keys["success"] is True and keys["failure"] is None
    assert [o["status"]["success"] for o in keys["openvpn_handshake"]] == [True, True]
    assert {o["endpoint"] for o in keys["openvpn_handshake"]} == {b.udp.endpoint, b.tcp.endpoint}
    assert [c["status"]["success"] for c in keys["tcp_connect"]] == [True]
    udp_events = [e for e in keys["network_events"] if e.get("proto") == "udp"]
    assert {e["operation"] for e in udp_events} == {"write", "read"}
    assert all("transport:udp" in e["tags"] and "feature:tunnel" in e["tags"] for e in udp_events)
    assert keys["x_wallwatch"]["controls"] == []  # nothing failed, so no control ran


@needs_openvpn
@pytest.mark.parametrize("tcp_action", ["reset", "drop"])
def test_censor_deciding_after_the_server_reset_is_caught(bench: Any, tcp_action: str) -> None:
    # Both relays pass the client reset and the server's answer, then kill the flow: OpenGFW's order.
    b = bench(udp_first=1, tcp_first=1, tcp_action=tcp_action)
    keys = measure(b.udp, b.tcp)
    result = tunnel(keys)
    assert (result["verdict"], result["method"], result["partial"]) == ("blocked", "protocol_dpi", False)
    assert result["rule"] == "feature.none_ok_blocked+openvpn.stalled_after_server_reset"
    for h in handshakes(keys).values():
        assert (h["stage_reached"], h["failed_at"]) == ("client_hello_sent", "server_tls")
        assert h["server_session_acked"] and h["server_tls"] is None
    expected = "connection_reset" if tcp_action == "reset" else "generic_timeout_error"
    assert handshakes(keys)["tcp"]["failure"] == expected
    assert b.udp_relay.dropped >= 1 and b.tcp_relay.interfered >= 1
    assert keys["success"] is False


@needs_openvpn
def test_udp_blocked_after_the_exchange_while_tcp_works_is_partial(bench: Any) -> None:
    b = bench(udp_first=1)
    result = tunnel(measure(b.udp, b.tcp))
    assert (result["verdict"], result["method"], result["partial"], result["blocked_share"]) == (
        "blocked", "protocol_dpi", True, 0.5)
    assert result["rule"] == "feature.partial_blocked+openvpn.stalled_after_server_reset"
    assert result["confidence"] < 0.8


@needs_openvpn
def test_udp_silent_while_tcp_works_is_udp_blocking_evidence_but_not_a_block(bench: Any) -> None:
    # Nothing at all comes back over UDP: no proof a censor looked at the bytes, so TCP working keeps it ok.
    b = bench(udp_first=0)
    keys = measure(b.udp, b.tcp)
    result = tunnel(keys)
    assert (result["verdict"], result["rule"], result["blocked_share"]) == ("ok", "feature.some_ok", 0.5)
    assert "nothing reaches this address" in result["evidence"][1]
    udp = handshakes(keys)["udp"]
    assert (udp["stage_reached"], udp["failed_at"], udp["packets_received"]) == ("client_reset_sent", "server_reset", 0)
    assert udp["packets_sent"] >= 2  # the reset is resent, as OpenVPN's reliable layer does


@needs_openvpn
def test_reset_of_openvpn_bytes_only_is_protocol_dpi_verified_by_the_control(bench: Any) -> None:
    b = bench(tcp_first=0)  # RST on the client reset itself; the printable control passes to the server
    keys = measure(b.tcp)
    result = tunnel(keys)
    assert (result["verdict"], result["method"]) == ("blocked", "protocol_dpi")
    assert result["rule"].endswith("openvpn.reset_dpi")
    tcp = handshakes(keys)["tcp"]
    assert (tcp["failed_at"], tcp["failure"]) == ("server_reset", "connection_reset")
    # The real server hangs up on a payload that is not OpenVPN: a clean close, no reset.
    assert tcp["control"] == {"outcome": "closed", "failure": "eof_error"}
    [control] = keys["x_wallwatch"]["controls"]
    assert control["kind"] == "payload" and "control:payload" in control["tags"]


def test_silent_udp_port_is_udp_blocking_only_when_the_resolver_answers(tmp_path: Path) -> None:
    async def scenario(with_resolver: bool) -> dict[str, Any]:
        silent = await servers.start_stun(answer=False)  # swallows every datagram
        dns = await servers.start_dns(servers.DnsServer({}))  # NXDOMAIN for all: still an answer
        try:
            settings = ProbeSettings(resolver=(LOOPBACK, dns.port)) if with_resolver else ProbeSettings()
            target = OpenVpnTarget("silent", LOOPBACK, silent.port, "udp")
            return await run_openvpn(OpenVpnConfig(targets=(target,), timeouts=FAST), settings)
        finally:
            silent.transport.close()
            dns.transport.close()

    with_resolver = asyncio.run(scenario(True))
    assert (tunnel(with_resolver)["verdict"], tunnel(with_resolver)["method"]) == ("blocked", "udp_blocking")
    assert tunnel(with_resolver)["rule"].endswith("openvpn.udp_silent")
    assert [q["tags"] for q in with_resolver["queries"]] == [["control:dns", "endpoint:example.com:53"]]
    without = asyncio.run(scenario(False))
    assert (tunnel(without)["verdict"], tunnel(without)["rule"]) == ("unknown", "feature.unknown+openvpn.no_network")
    assert without["queries"] == []  # no configured resolver: the probe resolves nothing


def test_closed_ports_are_down() -> None:
    udp = OpenVpnTarget("closed", LOOPBACK, servers.free_udp_port(), "udp")
    tcp = OpenVpnTarget("closed", LOOPBACK, servers.free_tcp_port(), "tcp")
    keys = measure(udp, tcp)
    assert (tunnel(keys)["verdict"], tunnel(keys)["method"]) == ("down", None)
    assert {h["failure"] for h in handshakes(keys).values()} == {"connection_refused"}
    assert handshakes(keys)["tcp"]["failed_at"] == "connect" and handshakes(keys)["udp"]["failed_at"] == "server_reset"


def test_unmapped_address_in_the_lab_is_never_dialled(tmp_path: Path) -> None:
    lab = LabInfo("r1", "198.19.0.53", str(tmp_path / "ca.pem"), {"157.240.0.0/16": "198.19.3.1"}, "state.json")
    settings = ProbeSettings(address_map=lab.address_map, lab=lab)
    keys = measure(OpenVpnTarget("real", "192.0.2.7", 1194, "udp"), settings=settings)
    [h] = keys["x_wallwatch"]["openvpn_handshakes"]
    assert "not dialled" in h["failure"] and h["packets_sent"] == 0 and keys["network_events"] == []
    assert tunnel(keys)["verdict"] == "unknown"


# --- targets and the CLI ------------------------------------------------------------------


def test_target_uris_round_trip_and_bad_ones_are_refused() -> None:
    target = OpenVpnTarget.parse("openvpn://riseup/?address=198.19.4.1:1194&transport=tcp")
    assert target == OpenVpnTarget("riseup", "198.19.4.1", 1194, "tcp")
    assert OpenVpnTarget.parse(target.uri) == target and target.endpoint == "openvpn://198.19.4.1:1194/tcp"
    assert OpenVpnTarget.parse("openvpn://x/?address=198.19.4.1").port == 1194
    assert OpenVpnTarget.parse("openvpn://x/?address=[::1]:443&transport=UDP").ip == "::1"
    for bad in ("https://x/?address=1.2.3.4:1", "openvpn://x/?address=vpn.example:1194",
                "openvpn://x/?address=198.19.4.1:1194&transport=quic", "openvpn://x/?address=198.19.4.1:0",
                "openvpn:///?address=198.19.4.1:1194"):
        with pytest.raises(TargetError):
            OpenVpnTarget.parse(bad)


def write_state(tmp_path: Path, **extra: Any) -> Path:
    pki = servers.make_pki(tmp_path, ["web.whatsapp.com"], tag="lab")
    state = {"run_id": "abc", "resolver": "198.19.0.53", "ca_cert": str(pki.ca_pem), "address_map": {}, **extra}
    path = tmp_path / "lab.json"
    path.write_text(json.dumps(state))
    return path


def test_lab_default_targets_come_from_the_state_file(tmp_path: Path) -> None:
    server = {"openvpn": {"address": "198.19.4.1", "port": 1194, "transports": ["udp", "tcp"]}}
    settings = ProbeSettings.from_environment({LAB_ENV: str(write_state(tmp_path, vpn_servers=server))})
    assert [t.uri for t in lab_targets(settings)] == [
        "openvpn://lab-openvpn/?address=198.19.4.1:1194&transport=udp",
        "openvpn://lab-openvpn/?address=198.19.4.1:1194&transport=tcp"]
    bare = ProbeSettings.from_environment({LAB_ENV: str(write_state(tmp_path, vpn_servers={"openvpn": {}}))})
    assert lab_targets(bare) == () and lab_targets(ProbeSettings()) == ()


def test_cli_requires_a_target_where_there_is_no_default(tmp_path: Path) -> None:
    from wallwatch.cli import app

    runner = CliRunner()
    assert "openvpn\t" in runner.invoke(app, ["probe", "list"]).output
    outside = runner.invoke(app, ["probe", "run", "openvpn"], env={LAB_ENV: ""})
    assert outside.exit_code == 2 and "no default target" in outside.output
    lab = runner.invoke(app, ["probe", "run", "openvpn"], env={LAB_ENV: str(write_state(tmp_path))})
    assert lab.exit_code == 2 and "names no OpenVPN server" in lab.output
    # A missing lab state as a second guard: this must never measure the real WhatsApp.
    wrong = runner.invoke(app, ["probe", "run", "whatsapp", "--target", "openvpn://x/?address=1.2.3.4:1"],
                          env={LAB_ENV: str(tmp_path / "missing.json"), "COLUMNS": "200"})
    # Every nettest that takes --target is named, in the registry's order.
    assert wrong.exit_code == 2 and "--target is for the openvpn, keyword and web_connectivity nettests" in wrong.output


@needs_openvpn
def test_cli_runs_openvpn_and_stamps_a_replayed_day(bench: Any, tmp_path: Path) -> None:
    from wallwatch.cli import app

    b = bench()
    output = tmp_path / "m.jsonl"
    argv = ["probe", "run", "openvpn", "--target", b.udp.uri, "--timeout", "2", "-o", str(output),
            "--measurement-time", "2017-09-25 08:00:00", "--probe-asn", "AS4837", "--probe-cc", "CN",
            "--probe-network-name", "China Unicom", "--annotation", "scenario=cn-2017-09",
            "--annotation", "isp=unicom"]
    result = CliRunner().invoke(app, argv, env={LAB_ENV: ""})
    assert result.exit_code == 0, result.output
    assert "tunnel" in result.output and "OpenVPN handshakes" in result.output and "(simulated)" in result.output
    [line] = output.read_text().splitlines()
    m = json.loads(line)
    assert m["test_name"] == "openvpn" and m["input"] == b.udp.uri
    assert m["measurement_start_time"] == m["test_start_time"] == "2017-09-25 08:00:00"
    assert m["report_id"].startswith("20170925T080000Z_openvpn_CN_4837_n1_")
    assert (m["probe_asn"], m["probe_cc"], m["probe_network_name"]) == ("AS4837", "CN", "China Unicom")
    assert m["annotations"]["scenario"] == "cn-2017-09" and m["annotations"]["isp"] == "unicom"
    assert m["annotations"]["wallwatch_wall_time"][:4] >= "2025" and m["annotations"]["engine_name"] == "wallwatch"
    assert m["test_keys"]["x_wallwatch"]["features"]["tunnel"]["verdict"] == "ok"


@pytest.mark.parametrize("args, message", [
    (["--measurement-time", "2017-09-25"], "YYYY-MM-DD hh:mm:ss"),
    (["--annotation", "novalue"], "key=value"),
    (["--annotation", "engine_name=x"], "written by wallwatch"),
])
def test_cli_refuses_bad_stamps_before_measuring(args: list[str], message: str) -> None:
    from wallwatch.cli import app

    # openvpn without a target measures nothing even if a stamp were wrongly accepted.
    result = CliRunner().invoke(app, ["probe", "run", "openvpn", *args], env={LAB_ENV: ""})
    assert result.exit_code == 2 and message in result.output
