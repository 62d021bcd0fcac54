"""Offline replay on synthetic captures: container formats, link types, damage, and verdicts.

The captures are built here with `protocols.inet` builders and written by
hand (pcapng) so the reader is checked against an independent writer.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wallwatch.censor import pcap
from wallwatch.censor.engine import Censor
from wallwatch.censor.pcap import CaptureDecoder, CaptureError, Frame
from wallwatch.censor.policy import parse_policy
from wallwatch.censor.replay import NOT_QUEUED, UNDECIDED, Replayer, describe_verdict, replay_capture
from wallwatch.cli import app
from wallwatch.protocols import dns, inet, tls

CLIENT, MEDIA, WEB, CHAT, RESOLVER = "198.18.0.2", "198.19.2.3", "198.19.2.2", "198.19.1.1", "198.19.0.53"
T0 = 1_500_000_000.25

POLICY = parse_policy("""
name: replay-test
rules:
  - name: media-sni
    match: {tls.sni: mmg.whatsapp.net}
    action: reset
  - name: whatsapp-dns
    match: {dns.qname: {suffix: whatsapp.net}}
    action: dns-inject
  - name: relay-drop
    match: {proto: udp, ip.dst: 198.19.3.1}
    action: drop
  - name: chat-servers-ip
    match: {ip.dst: {cidr: 198.19.1.0/24}}
    action: blackhole-ip
""")


def tls_flow(server: str, sni: str, sport: int, t: float, *, data_packets: int = 0,
             isn: int = 1000) -> list[tuple[float, bytes]]:
    """SYN, SYN-ACK, ACK, ClientHello, the server's answer, then more client data."""
    hello = tls.build_client_hello(sni)
    data = isn + 1
    packets = [
        (t, inet.build_tcp(CLIENT, server, sport, 443, seq=isn, flags=inet.SYN)),
        (t + 0.001, inet.build_tcp(server, CLIENT, 443, sport, seq=5000, ack=data, flags=inet.SYN | inet.ACK)),
        (t + 0.002, inet.build_tcp(CLIENT, server, sport, 443, seq=data, ack=5001)),
        (t + 0.003, inet.build_tcp(CLIENT, server, sport, 443, seq=data, ack=5001, flags=inet.ACK | inet.PSH,
                                   payload=hello)),
        (t + 0.004, inet.build_tcp(server, CLIENT, 443, sport, seq=5001, ack=data + len(hello), payload=b"x" * 100)),
    ]
    seq = data + len(hello)
    for index in range(data_packets):
        packets.append((t + 0.005 + index / 1000, inet.build_tcp(CLIENT, server, sport, 443, seq=seq, ack=5101,
                                                                   payload=b"y" * 50)))
        seq += 50
    return packets


def dns_query(qname: str, sport: int, t: float) -> tuple[float, bytes]:
    return t, inet.build_udp(CLIENT, RESOLVER, sport, 53, dns.build_query(qname, "A", query_id=sport))


def mixed_capture() -> list[tuple[float, bytes]]:
    packets = tls_flow(MEDIA, "mmg.whatsapp.net", 40001, T0)
    packets += tls_flow(WEB, "example.org", 40002, T0 + 0.1, data_packets=5)
    packets += [dns_query("e1.whatsapp.net", 40003, T0 + 0.2), dns_query("example.org", 40004, T0 + 0.21)]
    packets += [(T0 + 0.3, inet.build_tcp(CLIENT, CHAT, 40005, 5222, seq=1, flags=inet.SYN))] * 2
    packets += [(T0 + 0.4, inet.build_udp(CLIENT, "198.19.3.1", 40006, 3478, b"\x00\x01ping"))]
    packets += [(T0 + 0.5, b"\x45\x00\x00\x1e" + b"\x00" * 6)]  # IPv4 header cut short: garbage
    return packets


def replay(packets: list[tuple[float, bytes]], policy=POLICY, **kw):  # type: ignore[no-untyped-def]
    return replay_capture(io.BytesIO(pcap.encode_pcap(packets, **kw)), policy)


def by_server(report) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {flow.server: flow for flow in report.flows}


# --- verdicts -------------------------------------------------------------------------


def test_each_flow_gets_the_rule_the_engine_gives_it() -> None:
    report = replay(mixed_capture())
    flows = by_server(report)
    media = flows[f"{MEDIA}:443"]
    assert (media.action, media.rule, media.decided_packet, media.decided_frame) == ("reset", "media-sni", 4, 4)
    assert media.props["tls.sni"] == "mmg.whatsapp.net" and media.injected == 6
    # The ClientHello is dropped and the connmark drops the server's answer after it.
    assert media.dropped == 2 and media.packets == 5 and media.client == f"{CLIENT}:40001"
    web = flows[f"{WEB}:443"]
    assert (web.action, web.rule, web.dropped, web.packets) == ("allow", None, 0, 10)
    assert web.props["tls.sni"] == "example.org"
    injected = [f for f in report.flows if f.action == "dns-inject"]
    assert [(f.client, f.props["dns.qname"], f.injected) for f in injected] == [
        (f"{CLIENT}:40003", "e1.whatsapp.net", 1)]
    plain_dns = next(f for f in report.flows if f.client == f"{CLIENT}:40004")
    assert plain_dns.action == UNDECIDED and plain_dns.props["dns.qname"] == "example.org"  # UDP DNS is watched on
    chat = flows[f"{CHAT}:5222"]
    assert (chat.action, chat.rule, chat.packets, chat.dropped) == ("blackhole-ip", "chat-servers-ip", 2, 2)
    relay = flows["198.19.3.1:3478"]
    assert (relay.action, relay.rule, relay.dropped) == ("drop", "relay-drop", 1)
    # Garbage never reaches the queue live (a broken IP header is dropped by the kernel, a broken
    # TCP/UDP header is conntrack INVALID, accepted before the queue): counted, not judged.
    assert report.counters["garbage"] == 1 and report.censor["garbage"] == 0
    assert report.counters["frames"] == len(mixed_capture())
    assert any("garbage" in note for note in report.notes)


def test_decided_flows_leave_the_engine_as_they_leave_the_queue() -> None:
    report = replay(tls_flow(WEB, "example.org", 40002, T0, data_packets=20))
    # Handshake + ClientHello reach the engine; the server's reply and all later data go
    # through the kernel's connmark ACCEPT, as live (the offload).
    assert report.censor["packets"] == 4 and report.censor["queued_after_decision"] == 0
    assert report.counters["kernel_accepted"] == 21
    assert report.flows[0].bytes == sum(len(raw) for _, raw in tls_flow(WEB, "example.org", 40002, T0,
                                                                        data_packets=20))


def test_blackhole_rules_win_over_earlier_python_rules_like_the_kernel_chain() -> None:
    policy = parse_policy({"name": "order", "rules": [
        {"name": "allow-all-tls", "match": {"proto": "tcp"}, "action": "allow"},
        {"name": "chat-ip", "match": {"ip.dst": "198.19.1.1"}, "action": "blackhole-ip"}]})
    report = replay([(T0, inet.build_tcp(CLIENT, CHAT, 40000, 443, seq=1, flags=inet.SYN)),
                     (T0 + 1, inet.build_tcp(CLIENT, WEB, 40000, 443, seq=1, flags=inet.SYN))], policy)
    assert [(f.server, f.action, f.rule) for f in report.flows] == [
        (f"{CHAT}:443", "blackhole-ip", "chat-ip"), (f"{WEB}:443", "allow", "allow-all-tls")]
    assert report.censor["packets"] == 1  # the blackholed SYN never reached the queue


def test_replay_matches_the_engine_packet_by_packet() -> None:
    """Without kernel rules in play, replay reports exactly the engine's own decisions."""
    packets = [p for p in mixed_capture() if not p[1].startswith(b"\x45\x00\x00\x1e")]
    packets = [p for p in packets if inet.parse_packet(p[1]).dst != CHAT]
    engine = Censor(POLICY)
    first: dict[tuple[str, int], tuple[str | None, str | None]] = {}
    for t, raw in packets:
        decision = engine.handle(raw, now=t)
        packet = inet.parse_packet(raw)
        if decision.action and (packet.src, packet.sport) not in first and packet.src == CLIENT:
            first[(packet.src, packet.sport)] = (decision.action, decision.rule)
    report = replay(packets)
    got = {f.client: (f.action, f.rule) for f in report.flows if f.action != UNDECIDED}
    assert got == {f"{ip}:{port}": verdict for (ip, port), verdict in first.items()}


def test_packets_conntrack_holds_invalid_pass_without_the_engine() -> None:
    """As the live chain's `ctstate INVALID -> ACCEPT`: stray RSTs and FINs, and flag combinations
    conntrack refuses, are forwarded and never judged, even inside a flow the censor dropped."""
    def tcp(sport: int, flags: int, t: float, payload: bytes = b"") -> tuple[float, bytes]:
        seq = 7 if flags & inet.SYN else 8  # data after a SYN at 7
        return t, inet.build_tcp(CLIENT, MEDIA, sport, 443, seq=seq, ack=1, flags=flags, payload=payload)

    hello = tls.build_client_hello("mmg.whatsapp.net")
    packets = [tcp(41000, inet.RST, T0), tcp(41000, inet.RST | inet.ACK, T0 + 0.1),  # stray RSTs
               tcp(41001, inet.FIN | inet.ACK, T0 + 0.2),  # a FIN with no connection
               tcp(41002, inet.SYN | inet.FIN, T0 + 0.3), tcp(41003, 0, T0 + 0.4, b"x"),  # refused flags
               tcp(41004, inet.SYN, T0 + 0.5), tcp(41004, inet.ACK | inet.PSH, T0 + 0.6, hello),  # reset flow
               tcp(41004, inet.ACK | inet.PSH, T0 + 0.7, b"more"),  # dropped by its connmark
               tcp(41004, inet.SYN | inet.FIN | inet.PSH, T0 + 0.8)]  # no conntrack entry: no connmark
    report = replay(packets)
    flows = {f.client.rsplit(":")[1]: f for f in report.flows}
    for port in ("41000", "41001", "41002", "41003"):
        assert (flows[port].action, flows[port].dropped) == ("conntrack-invalid", 0), port
        assert describe_verdict(flows[port]) == "passed by the kernel (conntrack INVALID: never queued)"
    assert (flows["41004"].action, flows["41004"].dropped, flows["41004"].packets) == ("reset", 2, 4)
    assert report.counters["conntrack_invalid"] == 6 and report.counters["kernel_dropped"] == 1
    assert report.censor["packets"] == 2  # the reset flow's SYN and ClientHello, nothing else


def test_ipv6_is_reported_but_not_judged() -> None:
    hello = tls.build_client_hello("mmg.whatsapp.net")
    packets = [(T0, inet.build_tcp("2001:db8::2", "2001:db8::1", 40000, 443, seq=1, flags=inet.SYN)),
               (T0 + 0.01, inet.build_tcp("2001:db8::2", "2001:db8::1", 40000, 443, seq=2, payload=hello))]
    report = replay(packets)
    (flow,) = report.flows
    assert (flow.action, flow.client, flow.dropped) == (NOT_QUEUED, "[2001:db8::2]:40000", 0)
    assert report.counters["ipv6_not_queued"] == 2 and report.censor["packets"] == 0


def test_a_reused_five_tuple_after_the_idle_timeout_is_a_new_flow() -> None:
    first = dns_query("example.org", 40000, T0)
    later = dns_query("e1.whatsapp.net", 40000, T0 + 61)  # UDP idle timeout is 60 s
    report = replay([first, later])
    assert [(f.action, f.props["dns.qname"]) for f in report.flows] == [
        (UNDECIDED, "example.org"), ("dns-inject", "e1.whatsapp.net")]


def test_a_new_syn_on_a_decided_five_tuple_is_a_new_flow() -> None:
    """A reused source port seconds later: the new connection gets its own row and verdict."""
    packets = tls_flow(MEDIA, "web.whatsapp.com", 40000, T0) + tls_flow(MEDIA, "mmg.whatsapp.net", 40000, T0 + 5,
                                                                         isn=900_000)
    report = replay(packets)
    assert [(f.action, f.props.get("tls.sni")) for f in report.flows] == [
        ("allow", "web.whatsapp.com"), ("reset", "mmg.whatsapp.net")]


def test_snaplen_cut_packets_hide_the_sni_and_keep_wire_bytes() -> None:
    packets = tls_flow(MEDIA, "mmg.whatsapp.net", 40001, T0)
    snaplen = 96
    report = replay([(t, raw[:snaplen]) for t, raw in packets], snaplen=snaplen,
                    wire_lengths=[len(raw) for _, raw in packets])
    (flow,) = report.flows
    # The censor cannot read a ClientHello it only has the start of: no SNI, not reset.
    assert "tls.sni" not in flow.props and (flow.action, flow.decided_packet) == ("allow", 4)
    assert flow.bytes == sum(len(raw) for _, raw in packets)


def test_penalty_box_drops_later_flows_to_the_triple_until_it_expires() -> None:
    policy = parse_policy({"name": "box", "rules": [{"name": "media-sni", "match": {"tls.sni": "mmg.whatsapp.net"},
                                                    "action": "reset", "residual": {"seconds": 90}}]})
    packets = tls_flow(MEDIA, "mmg.whatsapp.net", 40001, T0)
    packets += tls_flow(MEDIA, "example.org", 40002, T0 + 10)  # same triple, harmless SNI: boxed
    packets += tls_flow(WEB, "example.org", 40003, T0 + 11)  # another server: free
    packets += tls_flow(MEDIA, "example.org", 40004, T0 + 100)  # after 90 s: free again
    report = replay(packets, policy)
    got = [(f.client.rsplit(":")[1], f.action, f.rule, f.residual_drops) for f in report.flows]
    assert got == [("40001", "reset", "media-sni", 0), ("40002", "drop", "media-sni", 5),
                   ("40003", "allow", None, 0), ("40004", "allow", None, 0)]
    assert report.censor["residual_drops"] == 3  # the client's three; the server's two never exist


def test_probability_is_per_flow_and_fixed_by_the_seed() -> None:
    policy = parse_policy({"name": "coin", "rules": [{"name": "media-sni", "match": {"tls.sni": "mmg.whatsapp.net"},
                                                     "action": "reset", "probability": 0.5}]})
    packets = [p for port in range(40000, 40040) for p in tls_flow(MEDIA, "mmg.whatsapp.net", port, T0 + port)]
    data = pcap.encode_pcap(packets)
    first, again = (replay_capture(io.BytesIO(data), policy, seed=7) for _ in range(2))
    actions = [f.action for f in first.flows]
    assert actions == [f.action for f in again.flows]
    assert 8 <= actions.count("reset") <= 32 and set(actions) == {"reset", "allow"}
    engine = Censor(policy, seed=7)
    direct: dict[int, str | None] = {}
    for t, raw in packets:
        decision = engine.handle(raw, now=t)
        direct.setdefault(inet.parse_packet(raw).sport, decision.action)  # the SYN: None
        if direct[inet.parse_packet(raw).sport] is None:
            direct[inet.parse_packet(raw).sport] = decision.action
    assert [direct[port] for port in range(40000, 40040)] == actions


# --- container formats and link types ----------------------------------------------------


def _link_variants(ip: bytes) -> dict[int, bytes]:
    ethertype = struct.pack("!H", pcap.ETHERTYPE_IPV4)
    return {
        pcap.LINKTYPE_RAW: ip,
        pcap.LINKTYPE_ETHERNET: b"\x02" * 12 + b"\x81\x00\x00\x07" + ethertype + ip,  # one VLAN tag
        pcap.LINKTYPE_LINUX_SLL: struct.pack("!HHH8s", 0, 1, 6, b"\x02" * 8) + ethertype + ip,
        pcap.LINKTYPE_LINUX_SLL2: ethertype + b"\x00\x00" + struct.pack("!IHBB8s", 2, 1, 0, 6, b"\x02" * 8) + ip,
        pcap.LINKTYPE_NULL: struct.pack("<I", 2) + ip,
        pcap.LINKTYPE_IPV4: ip,
    }


@pytest.mark.parametrize("link_type", sorted(_link_variants(b"")))
def test_every_link_type_gives_the_same_verdicts(link_type: int) -> None:
    packets = mixed_capture()
    framed = [(t, _link_variants(raw)[link_type]) for t, raw in packets]
    arp = (T0 + 0.6, b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\x00" * 28)
    if link_type == pcap.LINKTYPE_ETHERNET:
        framed.append(arp)
    report = replay(framed, link_type=link_type)
    baseline = replay(packets)
    assert [(f.client, f.action, f.rule, f.packets, f.bytes) for f in report.flows] == \
        [(f.client, f.action, f.rule, f.packets, f.bytes) for f in baseline.flows]
    assert report.counters["not_ip"] == (1 if link_type == pcap.LINKTYPE_ETHERNET else 0)


def test_unknown_link_type_is_counted_not_fatal() -> None:
    report = replay(mixed_capture(), link_type=147)  # LINKTYPE_USER0
    assert report.flows == () and report.counters["link_errors"] == len(mixed_capture())
    assert "unsupported link type 147" in report.notes[0]


def test_nanosecond_big_endian_pcap() -> None:
    raw = inet.build_udp(CLIENT, RESOLVER, 40000, 53, dns.build_query("e1.whatsapp.net", "A"))
    data = struct.pack(">IHHiIII", pcap.PCAP_MAGIC_NS, 2, 4, 0, 0, 65535, pcap.LINKTYPE_RAW)
    data += struct.pack(">IIII", 1_500_000_000, 123_456_789, len(raw), len(raw)) + raw
    report = replay_capture(io.BytesIO(data), POLICY)
    (flow,) = report.flows
    assert flow.action == "dns-inject" and flow.first_seen == pytest.approx(1_500_000_000.123456789)


def _pcapng(packets: list[tuple[float, bytes]], *, tsresol: int | None = None, endian: str = "<") -> bytes:
    def block(kind: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        length = 12 + len(body)
        return struct.pack(endian + "II", kind, length) + body + struct.pack(endian + "I", length)

    out = block(pcap.PCAPNG_SHB, struct.pack(endian + "IHHq", pcap.PCAPNG_BYTE_ORDER_MAGIC, 1, 0, -1))
    options = b""
    if tsresol is not None:
        options = struct.pack(endian + "HH", 9, 1) + bytes([tsresol]) + b"\x00" * 3 + struct.pack(endian + "HH", 0, 0)
    out += block(1, struct.pack(endian + "HHI", pcap.LINKTYPE_ETHERNET, 0, 0) + options)
    out += block(4, b"\x00" * 8)  # a name resolution block: skipped
    tick = 1e-6 if tsresol is None else 10.0 ** -tsresol
    for t, raw in packets:
        frame = pcap.ethernet_frame(raw)
        ticks = round(t / tick)
        out += block(6, struct.pack(endian + "IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
                     + frame)
    return out


@pytest.mark.parametrize("tsresol, endian", [(None, "<"), (9, ">")])
def test_pcapng_gives_the_same_verdicts_and_times(tsresol: int | None, endian: str) -> None:
    packets = mixed_capture()
    report = replay_capture(io.BytesIO(_pcapng(packets, tsresol=tsresol, endian=endian)), POLICY)
    baseline = replay(packets)
    assert [(f.client, f.action, f.rule) for f in report.flows] == [(f.client, f.action, f.rule)
                                                                    for f in baseline.flows]
    assert report.flows[0].first_seen == pytest.approx(T0, abs=1e-6)


# --- damage ------------------------------------------------------------------------------


def test_a_capture_cut_mid_record_keeps_every_frame_before_the_cut() -> None:
    data = pcap.encode_pcap(mixed_capture())
    report = replay_capture(io.BytesIO(data[:-7]), POLICY)
    assert report.counters["frames"] == len(mixed_capture()) - 1
    assert report.problem is not None and "cut short" in report.problem
    assert by_server(report)[f"{MEDIA}:443"].action == "reset"


def test_a_corrupt_record_length_stops_decoding_with_the_reason() -> None:
    good = pcap.encode_pcap(mixed_capture()[:5])
    data = good + struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 60) + b"\x00" * 100
    report = replay_capture(io.BytesIO(data), POLICY)
    assert report.counters["frames"] == 5
    assert report.problem is not None and "corrupt" in report.problem and f"at byte {len(good)}" in report.problem


def test_not_a_capture_is_a_clear_error() -> None:
    with pytest.raises(CaptureError, match="not a pcap or pcapng file"):
        replay_capture(io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"), POLICY)
    with pytest.raises(CaptureError):
        replay_capture(io.BytesIO(b""), POLICY)


def test_decoder_is_incremental_byte_by_byte() -> None:
    data = _pcapng(mixed_capture()[:6])
    decoder = CaptureDecoder()
    frames: list[Frame] = []
    for index in range(len(data)):
        frames += decoder.feed(data[index:index + 1])
    assert decoder.finish() is None and [f.number for f in frames] == list(range(1, 7))


def test_replayer_survives_arbitrary_frames() -> None:
    replayer = Replayer(POLICY)
    blobs = [b"", b"\x45", b"\x60" + b"\x00" * 39, b"\x46" + b"\xff" * 30, bytes(range(256)),
             inet.build_tcp(CLIENT, WEB, 1, 443, seq=0, flags=inet.SYN)[:30]]
    for number, blob in enumerate(blobs, 1):
        for link_type in (pcap.LINKTYPE_RAW, pcap.LINKTYPE_ETHERNET, pcap.LINKTYPE_LINUX_SLL2, 9999):
            replayer.frame(Frame(number, T0, link_type, blob, len(blob)))
    report = replayer.report()
    assert report.counters["frames"] == len(blobs) * 4


# --- command line ----------------------------------------------------------------------------


def test_cli_json_lines_and_errors(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcap"
    capture.write_bytes(pcap.encode_pcap(mixed_capture()))
    policy = tmp_path / "p.yaml"
    policy.write_text("name: media\nrules:\n  - name: media-sni\n    match: {tls.sni: mmg.whatsapp.net}\n"
                      "    action: reset\n")
    runner = CliRunner()
    result = runner.invoke(app, ["censor", "replay", str(capture), "--policy", str(policy), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["type"] == "summary" and lines[-1]["counters"]["garbage"] == 1
    resets = [line for line in lines if line.get("action") == "reset"]
    assert [(r["rule"], r["props"]["tls.sni"], r["decided_packet"]) for r in resets] == [
        ("media-sni", "mmg.whatsapp.net", 4)]
    table = runner.invoke(app, ["censor", "replay", str(capture), "--policy", str(policy)])
    assert table.exit_code == 0 and "reset by media-sni at packet 4" in table.stdout
    bad = runner.invoke(app, ["censor", "replay", str(policy), "--policy", str(policy)])
    assert bad.exit_code == 1 and "not a pcap" in bad.output
    policy.write_text("name: x\nrules:\n  - name: y\n    match: {tls.sni: {cidr: 1}}\n    action: reset\n")
    bad = runner.invoke(app, ["censor", "replay", str(capture), "--policy", str(policy)])
    assert bad.exit_code == 1 and "invalid policy" in bad.output


# --- memory: bounded by --max-flows, not by the capture ---------------------------------------


def _peak_rss_of_replay(capture: Path, policy: Path, *extra: str) -> int:
    """Peak RSS in bytes of a child `wallwatch censor replay --json` (its own rusage, from wait4:
    RUSAGE_CHILDREN would give the largest of every child this test process ever had)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "wallwatch.cli", "censor", "replay", str(capture), "--policy",
                             str(policy), "--json", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else status
    return usage.ru_maxrss * 1024  # kilobytes on Linux (getrusage(2))


def test_replay_memory_is_bounded_by_max_flows_not_by_the_capture(tmp_path: Path) -> None:
    """A SYN scan of 100,000 flows with --max-flows 4096 costs what a one-flow capture costs, plus
    4,096 flows (~3 KB each): flows end (evicted, idle) as live, and are printed and forgotten.
    Kept to the end, the 100,000 flows took ~330 MB more."""
    from tests.censor.captures import write_syn_scan

    policy = tmp_path / "none.yaml"
    policy.write_text("name: none\nrules: []\n")
    baseline = _peak_rss_of_replay(write_syn_scan(tmp_path / "one.pcap", 1), policy, "--max-flows", "4096")
    scan = write_syn_scan(tmp_path / "scan.pcap", 100_000)
    peak = _peak_rss_of_replay(scan, policy, "--max-flows", "4096")
    assert peak - baseline < 48 * 2**20, f"peak {peak / 2**20:.0f} MB vs {baseline / 2**20:.0f} MB for one flow"


def test_flows_end_as_they_go_idle_and_reach_the_sink_in_order() -> None:
    """Idle flows end by capture time (UDP 60 s, TCP 600 s, closed TCP 10 s) and go to `on_flow`
    at once; flows beyond max_flows end least recently seen first; the rest at the end."""
    ended: list[tuple[str, str]] = []
    replayer = Replayer(POLICY, max_flows=3, on_flow=lambda flow: ended.append((flow.client, flow.action)))
    packets = [dns_query("example.org", 41000, T0), dns_query("example.org", 41001, T0 + 1)]
    packets += [(T0 + 2, inet.build_tcp(CLIENT, WEB, 41002, 443, seq=1, flags=inet.SYN))]
    packets += [(T0 + 3, inet.build_tcp(CLIENT, WEB, 41003, 443, seq=1, flags=inet.SYN))]  # evicts 41000
    packets += [(T0 + 70, inet.build_tcp(CLIENT, WEB, 41003, 443, seq=2, flags=inet.ACK))]  # 41001 idle > 60 s
    frames = [Frame(n, t, pcap.LINKTYPE_RAW, raw, len(raw)) for n, (t, raw) in enumerate(packets, 1)]
    for frame in frames[:4]:
        replayer.frame(frame)
    assert ended == [(f"{CLIENT}:41000", UNDECIDED)]
    replayer.frame(frames[4])
    assert ended[1:] == [(f"{CLIENT}:41001", UNDECIDED)]
    report = replayer.report()
    assert ended[2:] == [(f"{CLIENT}:41002", UNDECIDED), (f"{CLIENT}:41003", UNDECIDED)]
    assert report.flows == () and report.flow_count == 4 and report.summary_json()["flows"] == 4
