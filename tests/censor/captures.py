"""Large synthetic captures for memory tests and benchmarks, written to a file as they are made."""

from __future__ import annotations

import struct
from pathlib import Path

from wallwatch.censor import pcap
from wallwatch.protocols import inet

SCANNER = "198.18.0.2"
PORTS_PER_HOST = 60000


def syn_scan_target(index: int) -> tuple[str, int]:
    """The index-th target of a SYN scan: every port 1..60000 of 198.19.0.0, then of 198.19.0.1, ..."""
    host, port = divmod(index, PORTS_PER_HOST)
    return f"198.19.{host >> 8 & 0xFF}.{host & 0xFF}", 1 + port


def write_syn_scan(path: Path, flows: int, *, rate: float = 50_000.0, start: float = 1_500_000_000.0) -> Path:
    """A raw-IP pcap of `flows` SYNs from one scanner, each to a distinct (address, port): one flow
    each, as a port scan makes them, `rate` SYNs per second of capture time. Never held whole."""
    with path.open("wb") as out:
        out.write(pcap.encode_pcap([]))
        for index in range(flows):
            host, port = syn_scan_target(index)
            packet = inet.build_tcp(SCANNER, host, 40000, port, seq=index, flags=inet.SYN, window=1024)
            timestamp = start + index / rate
            seconds = int(timestamp)
            out.write(struct.pack("<IIII", seconds, round((timestamp - seconds) * 1e6), len(packet), len(packet)))
            out.write(packet)
    return path
