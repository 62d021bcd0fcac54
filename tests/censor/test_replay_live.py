"""Replay of a real capture: what `censor replay` says equals what the live censor did.

The live censor runs in the router namespace of the censor test topology
(conftest.py) while `tcpdump -w` captures the client side of it; then the
capture is replayed offline with the same policy and every flow's verdict is
compared with the live decision log. The WhatsApp chat uses the real
`ChatClient`/`ChatServer` Noise handshake; this file doubles as the agent
that runs them inside the namespaces (`python test_replay_live.py chat-serve|chat ...`).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

if __name__ != "__main__":
    import pytest

    from tests.censor.conftest import PYTHON, Topology, sh

    pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

MEDIA, WEB, RESOLVER, RELAY = "198.19.2.3", "198.19.2.2", "198.19.0.53", "198.19.3.1"
CHAT = "198.19.4.1"  # our own ChatServer's address, added to the svc namespace's loopback
AGENT_TIMEOUT = 3.0

POLICY = """\
name: replay-live
rules:
  - name: media-sni
    match: {tls.sni: mmg.whatsapp.net}
    action: reset
  - name: whatsapp-dns
    match: {dns.qname: {suffix: whatsapp.net}}
    action: dns-inject
  - name: chat-5222
    match: {whatsapp.header: true, port.dst: 5222}
    action: reset
  - name: relay-ip
    match: {proto: udp, ip.dst: 198.19.3.1}
    action: blackhole-ip
"""


# --- the agent, run inside the namespaces --------------------------------------------------


def chat_serve(address: str, ports: list[int]) -> None:
    from wallwatch.protocols.whatsapp import ChatServer, MessageReceived, generate_static_key

    key = generate_static_key()

    def serve_one(conn: socket.socket) -> None:
        server = ChatServer(static_private=key)
        conn.settimeout(10)
        try:
            while data := conn.recv(65536):
                for event in server.receive_data(data):
                    if isinstance(event, MessageReceived):
                        server.send_message(event.plaintext)
                conn.sendall(server.data_to_send())
        except Exception:  # noqa: BLE001 - a reset or a bad client ends this connection only
            pass
        finally:
            conn.close()

    def accept_loop(listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    for port in ports:
        threading.Thread(target=accept_loop, args=(socket.create_server((address, port)),), daemon=True).start()
    print("ready", flush=True)
    time.sleep(600)


def chat_client(host: str, port: int) -> dict[str, object]:
    """A full Noise XX handshake, then one message that the server echoes."""
    from wallwatch.protocols.whatsapp import ChatClient, HandshakeComplete, MessageReceived

    client = ChatClient()
    client.initiate()
    sock = socket.create_connection((host, port), timeout=AGENT_TIMEOUT)
    sock.settimeout(AGENT_TIMEOUT)
    try:
        sock.sendall(client.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return {"result": "closed"}
            for event in client.receive_data(data):
                if isinstance(event, HandshakeComplete):
                    client.send_message(b"hello through the censor")
                if isinstance(event, MessageReceived):
                    return {"result": "echo", "text": event.plaintext.decode()}
            sock.sendall(client.data_to_send())
    except ConnectionResetError:
        return {"result": "reset"}
    except TimeoutError:
        return {"result": "timeout"}
    finally:
        sock.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    command, args = sys.argv[1], sys.argv[2:]
    if command == "chat-serve":
        chat_serve(args[0], [int(p) for p in args[1:]])
    elif command == "chat":
        print(json.dumps(chat_client(args[0], int(args[1]))), flush=True)
    raise SystemExit(0)


# --- the test ----------------------------------------------------------------------------------


def _start_capture(topology: Topology, path: Path) -> subprocess.Popen[bytes]:
    # -U: write each packet as it comes, so stopping never loses the tail.
    proc = subprocess.Popen(["ip", "netns", "exec", topology.router, "tcpdump", "-i", "to-cl", "-n", "-U", "-s", "0",
                             "-w", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    topology.processes.append(proc)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert "listening on" in line, line
    return proc


def _stop_capture(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    return err.decode()


def test_replay_of_a_real_capture_matches_the_live_censor(topology: Topology, tmp_path: Path) -> None:
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed")
    from wallwatch.censor.policy import load_policy
    from wallwatch.censor.replay import UNDECIDED, replay_capture

    sh("ip", "-n", topology.svc, "addr", "add", f"{CHAT}/32", "dev", "lo")
    chat_server = subprocess.Popen(["ip", "netns", "exec", topology.svc, PYTHON, __file__, "chat-serve", CHAT,
                                    "443", "5222"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    topology.processes.append(chat_server)
    assert chat_server.stdout is not None and chat_server.stdout.readline().strip() == b"ready"
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    censor = topology.start_censor(policy_path)
    capture = tmp_path / "capture.pcap"
    tcpdump = _start_capture(topology, capture)

    def chat(port: int) -> dict[str, object]:
        done = topology.in_ns(topology.client, PYTHON, __file__, "chat", CHAT, str(port))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # What the clients saw through the live censor.
    assert topology.client_run("tls", MEDIA, "443", "mmg.whatsapp.net") == {"result": "reset"}
    assert topology.client_run("tls", WEB, "443", "example.org")["result"] == "reply"
    assert topology.client_run("dns", RESOLVER, "e1.whatsapp.net") == {"answers": [["198.19.250.1"], ["198.19.1.1"]]}
    assert topology.client_run("dns", RESOLVER, "example.org") == {"answers": [["198.19.1.1"]]}
    assert chat(443) == {"result": "echo", "text": "hello through the censor"}
    assert chat(5222) == {"result": "reset"}
    assert topology.client_run("udp", RELAY, "3478") == {"result": "timeout"}
    assert topology.client_run("garbage", WEB) == {"sent": 2}
    live_counters = censor.counters()
    summary = _stop_capture(tcpdump)
    assert "0 packets dropped by kernel" in summary, summary

    report = replay_capture(capture, load_policy(policy_path))
    assert report.problem is None
    live = {(d["client"], d["server"]): (d["action"], d["rule"]) for d in censor.decisions()}
    replayed = {(f.client, f.server): (f.action, f.rule) for f in report.flows
                if f.action not in (UNDECIDED, "blackhole-ip")}
    # Every flow the live censor decided, replay decided the same way, and no other.
    assert replayed == live
    assert sorted(set(live.values()), key=str) == sorted({
        ("reset", "media-sni"), ("allow", None), ("dns-inject", "whatsapp-dns"), ("reset", "chat-5222")}, key=str)
    flows = {f.server: f for f in report.flows}
    assert flows[f"{MEDIA}:443"].props["tls.sni"] == "mmg.whatsapp.net"
    assert flows[f"{WEB}:443"].props["tls.sni"] == "example.org"
    assert flows[f"{CHAT}:443"].props["whatsapp.header"] is True and flows[f"{CHAT}:443"].action == "allow"
    assert flows[f"{CHAT}:443"].packets >= 8  # the whole handshake and echo were captured
    assert (flows[f"{CHAT}:5222"].action, flows[f"{CHAT}:5222"].decided_packet) == ("reset", 4)
    # The blackholed relay never reached the live queue; replay blackholes it in its kernel step.
    relay = flows[f"{RELAY}:3478"]
    assert (relay.action, relay.rule, relay.dropped) == ("blackhole-ip", "relay-ip", relay.packets)
    dns_flows = {f.props.get("dns.qname"): f.action for f in report.flows if f.server == f"{RESOLVER}:53"}
    assert dns_flows == {"e1.whatsapp.net": "dns-inject", "example.org": UNDECIDED}
    # The live censor's own counters agree with the engine's in replay.
    for counter in ("garbage", "rst_injected", "dns_injected", "decisions.reset", "decisions.allow"):
        assert report.censor[counter] == live_counters[counter], counter
    # The two malformed packets: seen in the capture, never queued (conntrack INVALID), live or replayed.
    assert report.counters["garbage"] == 2 and live_counters["garbage"] == 0
