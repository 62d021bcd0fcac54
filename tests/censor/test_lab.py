"""The censor in real namespaces: each action does what its rule says, and nothing else."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.censor.conftest import REPO, Topology

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

POLICIES = REPO / "policies"
MEDIA, WEB, CHAT, RESOLVER = "198.19.2.3", "198.19.2.2", "198.19.1.1", "198.19.0.53"


def test_sni_reset_and_clean_exit(topology: Topology) -> None:
    censor = topology.start_censor(POLICIES / "whatsapp-media-sni.yaml")
    assert "WALLWATCH" in topology.iptables_rules()
    assert topology.client_run("tls", MEDIA, "443", "mmg.whatsapp.net") == {"result": "reset"}
    assert topology.client_run("tls", WEB, "443", "web.whatsapp.com")["result"] == "reply"
    # The SNI, not the address, decides: the media name toward the web address is reset too.
    assert topology.client_run("tls", WEB, "443", "mmg.whatsapp.net") == {"result": "reset"}
    decisions = censor.decisions()
    assert [d["rule"] for d in decisions if d["action"] == "reset"] == ["media-sni", "media-sni"]
    assert censor.counters()["rst_injected"] == 12  # 3 per direction per reset flow
    assert censor.stop() == 0
    assert "WALLWATCH" not in topology.iptables_rules()


def test_drop_only_the_matching_flow(topology: Topology, tmp_path: Path) -> None:
    policy = tmp_path / "drop.yaml"
    policy.write_text("name: drop-relay\nrules:\n  - name: relay-1\n"
                      "    match: {proto: udp, ip.dst: 198.19.3.1}\n    action: drop\n")
    censor = topology.start_censor(policy)
    assert topology.client_run("udp", "198.19.3.1", "3478") == {"result": "timeout"}
    assert topology.client_run("udp", "198.19.3.2", "3478") == {"result": "reply"}
    assert topology.client_run("tls", WEB, "443", "web.whatsapp.com")["result"] == "reply"
    assert [d["rule"] for d in censor.decisions() if d["action"] == "drop"] == ["relay-1"]


def test_dns_injection_wins_the_race(topology: Topology) -> None:
    censor = topology.start_censor(POLICIES / "whatsapp-dns.yaml")
    # The forged answer arrives first, then the real one (as with the GFW).
    assert topology.client_run("dns", RESOLVER, "e1.whatsapp.net") == {"answers": [["198.19.250.1"], ["198.19.1.1"]]}
    assert topology.client_run("dns", RESOLVER, "example.org") == {"answers": [["198.19.1.1"]]}
    assert censor.counters()["dns_injected"] == 1


def test_blackhole_ip_never_reaches_the_queue(topology: Topology) -> None:
    censor = topology.start_censor(POLICIES / "whatsapp-chat-ip.yaml")
    assert "-A WALLWATCH_STATIC -d 198.19.1.0/24" in topology.iptables_rules()
    before = censor.counters()["packets"]
    assert topology.client_run("chat", CHAT, "5222")["result"] == "connect_timeout"
    assert censor.counters()["packets"] == before  # dropped in the kernel, Python never saw them
    assert topology.client_run("tls", WEB, "443", "web.whatsapp.com")["result"] == "reply"


def test_chat_fingerprint_reset(topology: Topology) -> None:
    topology.start_censor(POLICIES / "whatsapp-chat-dpi.yaml")
    assert topology.client_run("chat", CHAT, "5222") == {"result": "reset"}
    assert topology.client_run("tls", CHAT, "5222", "e1.whatsapp.net")["result"] == "reply"  # not the chat protocol


def test_sighup_reload_and_bad_policy_keeps_the_old_one(topology: Topology, tmp_path: Path) -> None:
    policy = tmp_path / "live.yaml"
    policy.write_bytes((POLICIES / "none.yaml").read_bytes())
    censor = topology.start_censor(policy)
    assert topology.client_run("tls", MEDIA, "443", "mmg.whatsapp.net")["result"] == "reply"
    policy.write_bytes((POLICIES / "whatsapp-media-sni.yaml").read_bytes())
    os.kill(censor.proc.pid, signal.SIGHUP)
    status = censor.wait_status(lambda s: s["generation"] == 2)
    assert status["policy_name"] == "whatsapp-media-sni" and status["rules"] == 1 and "error" not in status
    assert topology.client_run("tls", MEDIA, "443", "mmg.whatsapp.net") == {"result": "reset"}
    policy.write_text("name: broken\nrules:\n  - name: x\n    match: {tls.sni: {cidr: 1}}\n    action: reset\n")
    os.kill(censor.proc.pid, signal.SIGHUP)
    status = censor.wait_status(lambda s: "error" in s)
    assert status["generation"] == 2 and status["policy_name"] == "whatsapp-media-sni"
    assert "rule 'x'" in status["error"]
    assert topology.client_run("tls", MEDIA, "443", "mmg.whatsapp.net") == {"result": "reset"}


def test_offload_only_first_packets_are_queued(topology: Topology) -> None:
    censor = topology.start_censor(POLICIES / "whatsapp-all.yaml")
    before = censor.counters()
    result = topology.client_run("bulk", WEB, "5201", str(4 * 1024 * 1024))
    after = censor.counters()
    queued = after["packets"] - before["packets"]
    # 4 MiB is ~2900 segments at MTU 1500. Queued: the handshake and first data until the
    # verdict (undecided), plus the burst already waiting in the queue when it was given.
    assert result["sent"] >= 4 * 1024 * 1024
    assert after["undecided"] - before["undecided"] <= 10, after
    assert queued <= 40, after
    assert after["decisions.allow"] - before.get("decisions.allow", 0) == 1
    # The kernel's own drop counters for our queue (nfnetlink_queue in /proc) are read and zero.
    assert (after["enobufs"], after["queue_dropped"]) == (0, 0), after


def test_garbage_packets_pass_the_kernel_and_never_reach_the_queue(topology: Topology) -> None:
    """Malformed TCP headers (cut short, a bad data offset) are conntrack INVALID: the kernel
    forwards them without queueing them (iptables.py), so they cannot wedge or crash the censor."""
    censor = topology.start_censor(POLICIES / "whatsapp-all.yaml")
    before = censor.counters()
    assert topology.client_run("garbage", WEB) == {"sent": 2}
    counters = censor.counters()
    assert (counters["packets"], counters["garbage"]) == (before["packets"], 0) and censor.proc.poll() is None
    assert topology.client_run("tls", WEB, "443", "example.org")["result"] == "reply"


@pytest.mark.parametrize("mode, expected", [("--fail-closed", "connect_timeout"), ("--fail-open", "reply")])
def test_a_dead_censor_fails_closed_by_default(topology: Topology, mode: str, expected: str) -> None:
    censor = topology.start_censor(POLICIES / "none.yaml", mode)
    assert topology.client_run("tls", WEB, "443", "web.whatsapp.com")["result"] == "reply"
    censor.proc.kill()  # no clean-up: its rules stay, with nobody serving the queue
    censor.proc.wait(timeout=10)
    assert topology.client_run("tls", WEB, "443", "web.whatsapp.com")["result"] == expected
