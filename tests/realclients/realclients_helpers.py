"""Helpers for the real-client tests: the client tool, the censor's decision log, first-packet capture."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from wallwatch.lab.capabilities import missing_lab_features
from wallwatch.lab.topology import CLIENT_IF, Lab
from wallwatch.protocols import inet
from wallwatch.protocols.errors import ProtocolError

CLIENT_TOOL = str(Path(__file__).with_name("client_tool.py"))


def require_lab() -> None:
    missing = missing_lab_features(censor=True)
    if missing:
        pytest.skip("lab unavailable: " + "; ".join(missing))


def client_tool(lab: Lab, *args: str, timeout: float = 90.0) -> dict[str, Any]:
    """Run tests/realclients/client_tool.py in the client namespace; its JSON answer."""
    result = lab.run_in_client([sys.executable, CLIENT_TOOL, *args], timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ping(lab: Lab, address: str, count: int = 2, interval: float = 0.2) -> bool:
    """Whether any of `count` pings from the client namespace is answered."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", address]
    return lab.run_in_client(argv, timeout=15 + count * interval).returncode == 0


# --- the censor's decision log (JSON lines in the lab's censor.log) -------------


class DecisionLog:
    """The censor's `decision` events written after a mark: one per decided flow."""

    def __init__(self, lab: Lab) -> None:
        self.path = lab.workdir / "censor.log"
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def decisions(self, server: str | None = None) -> list[dict[str, Any]]:
        events = []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            for line in handle.read().decode(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == "decision" and (server is None or event.get("server") == server):
                    events.append(event)
        return events


# --- first data packets, captured in the client namespace ----------------------


@dataclass
class Capture:
    """tcpdump on the client's link: every client->server TCP segment to one server."""

    process: subprocess.Popen[bytes]
    path: Path
    server: str
    port: int

    @classmethod
    def start(cls, lab: Lab, server: str, port: int, path: Path) -> Capture:
        # -U: write each packet as it comes; -s 0: whole packets (the FET rules read all of it).
        # --immediate-mode: with TPACKET_V3's buffered blocks this kernel
        # (Firecracker 6.18 guest) handed tcpdump only some packets, none of
        # a short TCP exchange; immediate delivery gets all of them.
        argv = ["ip", "netns", "exec", lab.namespaces["client"], "tcpdump", "-i", CLIENT_IF, "--immediate-mode",
                "-s", "0", "-U", "-n", "-w", str(path), f"tcp and dst host {server} and dst port {port}"]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not path.exists() or path.stat().st_size < 24:  # the pcap file header is written once listening
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"tcpdump did not start: {process.stderr.read().decode() if process.stderr else ''}")
            time.sleep(0.05)
        time.sleep(0.2)
        return cls(process, path, server, port)

    def stop(self) -> None:
        time.sleep(0.3)  # let -U flush the last packets
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def _to_server(self) -> Iterator[inet.Packet]:
        """The captured client->server TCP segments, in capture order."""
        for packet in read_pcap(self.path):
            if packet.proto == inet.PROTO_TCP and (packet.dst, packet.dport) == (self.server, self.port):
                yield packet

    def ports_without_data(self) -> dict[int, int]:
        """Client ports that sent SYNs but no data segment, with how many SYNs: connections
        that never got as far as a first packet for the censor to judge."""
        syns: dict[int, int] = {}
        with_data: set[int] = set()
        for packet in self._to_server():
            if packet.payload:
                with_data.add(packet.sport)
            elif packet.flags & inet.SYN:
                syns[packet.sport] = syns.get(packet.sport, 0) + 1
        return {port: count for port, count in syns.items() if port not in with_data}

    def first_data_packets(self) -> dict[int, bytes]:
        """Per client port, the payload of the flow's first data segment."""
        first: dict[int, bytes] = {}
        for packet in self._to_server():
            if packet.payload and packet.sport not in first:
                first[packet.sport] = packet.payload
        return first


_LINK_HEADER = {1: 14, 101: 0, 113: 16}  # Ethernet, raw IP, Linux cooked (pcap-linktype(7))


def read_pcap(path: Path) -> list[inet.Packet]:
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    skip = _LINK_HEADER[linktype]
    packets, offset = [], 24
    while offset + 16 <= len(data):
        caplen = struct.unpack(endian + "I", data[offset + 8 : offset + 12])[0]
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        try:
            packets.append(inet.parse_packet(frame[skip:]))
        except ProtocolError:
            continue
    return packets


# --- statistics ----------------------------------------------------------------


def binomial_interval(n: int, p: float, alpha: float = 1e-3) -> tuple[int, int]:
    """The central interval [lo, hi] holding a Binomial(n, p) count with probability >= 1 - alpha.

    Exact (summing the pmf), so it is right for small n and p near 0 or 1. alpha
    is small because a flaky test is worse than a slightly wide interval; with
    n ~ 50 and p = 0.26 it still rejects a rate of 0 or of 1.
    """
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, tail = 0, 0.0
    while lo < n and tail + pmf[lo] <= alpha / 2:
        tail += pmf[lo]
        lo += 1
    hi, tail = n, 0.0
    while hi > 0 and tail + pmf[hi] <= alpha / 2:
        tail += pmf[hi]
        hi -= 1
    return lo, hi


def require_properties(*keys: str) -> None:
    """Skip until the censor knows these analyzer properties (the issue-4 analyzers)."""
    from wallwatch.censor.policy import KEY_TYPES

    unknown = [key for key in keys if key not in KEY_TYPES]
    if unknown:
        pytest.skip(f"the censor has no analyzer for {', '.join(unknown)} yet (wallwatch.censor.policy.KEY_TYPES)")


def rule_policy(name: str, match: dict[str, Any], action: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "rules": [{"name": name, "match": match, "action": action, **options}]}
