"""No packet wedges the censor: bursts of packets conntrack holds INVALID, in real namespaces.

Such a packet has no conntrack entry, so the mark Python gives it can never be
saved to a connmark. Before the fix the censor set the mark, repeated the packet
into FORWARD, found no connmark, and queued it again: forever, at 100 % of a
core, and a burst of them filled the queue so new connections stalled. Each test
sends 10,000 crafted packets of one kind through a running censor and checks,
while and after they pass: the censor's CPU is idle again within a second, the
kernel dropped nothing from the queue, a connection opened mid-burst completes
without a SYN retransmission, and every packet reached the server (stray RSTs
and FINs reach their end, as without a censor).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Iterator

import pytest

from tests.censor.conftest import Censor, Topology

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

BURST = 10_000
SERVER = "198.19.2.2"
ECHO_PORT = 443  # nsagent's TCP server answering "ok": the mid-burst connection
QUEUE = 13
# The kinds of tests/censor/nsagent.py: INVALID by flags, by checksum, or by a flow conntrack forgot.
KINDS = ("rst", "finack", "synfin", "noflags", "badtcp", "badudp", "late-rst")
# A flow decides at its first packet under this policy (no rule can match a TCP flow): the
# case where every INVALID packet got a verdict mark, hence the loop.
POLICY = {"name": "invalid-burst",
          "rules": [{"name": "relay", "match": {"proto": "udp", "ip.dst": "198.19.3.1"}, "action": "drop"}]}
# Half the initial SYN retransmission timeout (RFC 6298 §2.1: 1 s): a connection that
# needed its SYN sent twice cannot pass; one served in the usual milliseconds does.
CONNECT_BOUND = 0.5
# Idle: what the housekeeping tick costs (status file, flow expiry), far below a looping core.
IDLE_CPU_SHARE = 0.1


def dport_of(kind: str) -> int:
    return 7001 + KINDS.index(kind)


@pytest.fixture(scope="module")
def censor(shared_topology: Topology) -> Iterator[Censor]:
    topo = shared_topology
    # late-rst: conntrack forgets an opened, then refused, flow after a second, while the
    # censor's flow table keeps it for the TCP idle timeout (10 minutes).
    for sysctl in ("nf_conntrack_tcp_timeout_syn_sent", "nf_conntrack_tcp_timeout_close"):
        done = topo.in_ns(topo.router, "sysctl", "-qw", f"net.netfilter.{sysctl}=1")
        assert done.returncode == 0, done.stderr
    # What reaches the server, per kind: INPUT counters in the svc namespace (no conntrack there).
    for kind in KINDS:
        proto = "udp" if kind == "badudp" else "tcp"
        done = topo.in_ns(topo.svc, "iptables", "-A", "INPUT", "-p", proto, "-d", SERVER, "--dport",
                          str(dport_of(kind)), "-m", "comment", "--comment", f"burst-{kind}")
        assert done.returncode == 0, done.stderr
    policy = topo.workdir / "invalid-burst.yaml"
    policy.write_text(json.dumps(POLICY))
    censor = topo.start_censor(policy, queue=QUEUE)
    try:
        yield censor
    finally:
        censor.stop()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5): fields 14 and 15, after the parenthesised name)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queue_drops(topo: Topology) -> tuple[int, int]:
    """The kernel's (queue_dropped, user_dropped) for our queue, in the router's namespace."""
    text = topo.in_ns(topo.router, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == str(QUEUE):
            return int(fields[5]), int(fields[6])
    raise AssertionError(f"queue {QUEUE} is not bound: {text!r}")


def reached_server(topo: Topology, kind: str) -> int:
    listing = topo.in_ns(topo.svc, "iptables", "-nvxL", "INPUT").stdout
    match = re.search(rf"^\s*(\d+)\s.*/\* burst-{kind} \*/", listing, re.MULTILINE)
    assert match, listing
    return int(match.group(1))


@pytest.mark.parametrize("kind", KINDS)
def test_a_burst_of_invalid_packets_does_not_wedge_the_censor(shared_topology: Topology, censor: Censor,
                                                              kind: str) -> None:
    topo, pid, dport = shared_topology, censor.proc.pid, dport_of(kind)
    sport = 30000
    if kind == "late-rst":
        # The flow opens (a SYN the censor decides, and the server refuses), then conntrack forgets it.
        topo.client_run("invalid", "syn", SERVER, str(dport), "1", str(sport), SERVER, str(ECHO_PORT))
        time.sleep(2.5)
    before = reached_server(topo, kind)
    result = topo.client_run("invalid", kind, SERVER, str(dport), str(BURST), str(sport), SERVER, str(ECHO_PORT),
                             timeout=60)
    assert result["sent"] == BURST, result
    # The connection opened mid-burst: answered, and within its normal time.
    assert result["probe"]["result"] == "reply", result
    assert result["probe"]["seconds"] < CONNECT_BOUND, result
    time.sleep(1.0)
    cpu_before = cpu_seconds(pid)
    time.sleep(1.0)
    busy = cpu_seconds(pid) - cpu_before
    assert busy < IDLE_CPU_SHARE, f"censor still busy a second after the burst: {busy:.2f} s of CPU in 1 s"
    assert queue_drops(topo) == (0, 0)
    assert reached_server(topo, kind) - before == BURST
    assert censor.proc.poll() is None


def test_an_untracked_flow_is_judged_once_per_packet(shared_topology: Topology, censor: Censor) -> None:
    """UNTRACKED packets (a `-j CT --notrack` rule: not INVALID, still no connmark) reach Python,
    which judges each once: its own mark, back from repeat(), lets it through."""
    topo = shared_topology
    notrack = [["-p", "udp", "--dport", "443", "-d", SERVER], ["-p", "udp", "--sport", "443", "-s", SERVER]]
    for match in notrack:
        done = topo.in_ns(topo.router, "iptables", "-t", "raw", "-A", "PREROUTING", *match, "-j", "CT", "--notrack")
        assert done.returncode == 0, done.stderr
    try:
        before = censor.counters()["packets"]
        assert topo.udp(SERVER, 443, [b"untracked %d" % i for i in range(20)], sport=41000) == ["reply"] * 20
        time.sleep(1.0)
        cpu_before = cpu_seconds(censor.proc.pid)
        time.sleep(1.0)
        assert cpu_seconds(censor.proc.pid) - cpu_before < IDLE_CPU_SHARE
        # Each datagram and each echo queued exactly once.
        assert censor.counters()["packets"] - before == 40
    finally:
        for match in notrack:
            topo.in_ns(topo.router, "iptables", "-t", "raw", "-D", "PREROUTING", *match, "-j", "CT", "--notrack")
