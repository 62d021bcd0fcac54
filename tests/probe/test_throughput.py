"""Throttling: the throughput primitive against a control, and the verdicts it leads to.

The pure half (judging rounds) is tested on records shaped as the primitive
writes them; the primitive itself runs on loopback against the lab's own
HTTPS server (Range, keep-alive) behind a relay that slows or delays the
flows whose ClientHello names the target, as the censor's throttle rule does
by SNI. The real censor is exercised in tests/e2e/test_throttling.py.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from tests.probe import servers
from wallwatch.probe.throughput import (
    FIRST_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    HttpsTarget,
    RoundLimits,
    goodput,
    https_rounds,
    next_size,
    stalled_seconds,
    udp_rounds,
)
from wallwatch.probe.trace import Trace
from wallwatch.probe.verdicts import (
    aggregate_feature,
    apply_throttling,
    judge_throughput,
    throughput_settled,
    TargetVerdict,
)
from wallwatch.protocols.tls import parse_client_hello

pytestmark = pytest.mark.timeout(60)


# --- pure: goodput and sizes ----------------------------------------------------------------------


def test_goodput_counts_from_the_first_arrival() -> None:
    # 8 packets of 1000 bytes every 0.125 s after the first: 64 kbit/s exactly.
    arrivals = [(i * 0.125, 1000) for i in range(9)]
    assert goodput(arrivals) == (8000, 1.0, 64000.0)
    assert goodput([(0.0, 5000)]) == (5000, 0.0, None)  # one read: no dispersion to measure


def test_a_loss_recovery_stall_is_not_the_paths_rate() -> None:
    # 1 Mbit/s in 1250-byte packets (10 ms apart), one retransmission timeout of 240 ms in the middle.
    arrivals = [(i * 0.01, 1250) for i in range(30)] + [(0.53 + i * 0.01, 1250) for i in range(30)]
    stalled = stalled_seconds(arrivals, rtt_s=0.001)
    assert stalled == pytest.approx(0.24 - 0.01)
    counted, seconds, rate = goodput(arrivals, stalled)
    assert rate == pytest.approx(1_000_000, rel=0.01)
    assert goodput(arrivals)[2] < 0.75 * 1_000_000  # what the stall made of it before
    # Not stalls: a 64 kbit/s path's ~190 ms spacing, and a window per round trip behind added delay.
    assert stalled_seconds([(i * 0.19, 1500) for i in range(20)], rtt_s=0.002) == 0.0
    bursts = [(rtt * 0.8 + i * 0.0001, 1448) for rtt in range(5) for i in range(10)]
    assert stalled_seconds(bursts, rtt_s=0.8) == 0.0
    assert stalled_seconds([(0.0, 100)]) == 0.0


def test_sizes_follow_the_completed_rate_within_bounds() -> None:
    assert next_size(None) == FIRST_SIZE
    # 16 KB completed in 2 s (64 kbit/s): half a second of that is below the floor.
    assert next_size({"bytes": 16384, "transfer_s": 2.0}) == MIN_SIZE
    # 1 MB in 0.4 s (20 Mbit/s): 0.5 s of it.
    assert next_size({"bytes": 1_000_000, "transfer_s": 0.4}) == 1_250_000
    assert next_size({"bytes": 16384, "transfer_s": 0.0001}) == MAX_SIZE


# --- pure: judging rounds -------------------------------------------------------------------------


def side(rtt: list[float], *, size: int, transfer_s: float, goodput_bps: float | None = None) -> dict[str, Any]:
    counted = int(size * 0.9)  # the first arrival is not counted
    seconds = counted * 8 / goodput_bps if goodput_bps else transfer_s * 0.95
    return {"rtt_ms": rtt, "bytes": size, "counted_bytes": counted, "transfer_s": transfer_s,
            "seconds": seconds, "goodput_bps": goodput_bps, "failure": None}


def https_record(*rounds: tuple[dict[str, Any], dict[str, Any], int]) -> dict[str, Any]:
    return {"kind": "https", "feature": "media", "endpoint": "mmg.whatsapp.net:443", "control_name": "example.org",
            "rounds": [{"round": i, "size": size, "target": t, "control": c} for i, (t, c, size) in enumerate(rounds)]}


FAST = side([0.5, 0.4, 0.4], size=4_000_000, transfer_s=0.03, goodput_bps=1.1e9)


def rate_limited(rate: float, size: int) -> dict[str, Any]:
    return side([60.0, 55.0, 50.0], size=size, transfer_s=size * 8 / rate, goodput_bps=rate)


def test_a_rate_limit_is_throttled_rate_with_the_measured_rate() -> None:
    record = https_record((rate_limited(64_000, 16384), FAST, 16384), (rate_limited(64_000, 16384), FAST, 16384))
    judgment = judge_throughput(record)
    assert judgment is not None and judgment["throttled"] == "rate"
    assert judgment["flagged"]["rate"] == 2 and judgment["rate_bps"] == 64_000
    assert judgment["rate_ratio"] < 0.001 and "goodput 64 kbit/s" in judgment["evidence"][1]
    assert throughput_settled(record)


def test_added_delay_is_latency_not_rate_even_though_goodput_drops() -> None:
    # 400 ms each way: the transfer takes one round trip more than the control, which the
    # latency explains; goodput is low, but the path is not rate-limited.
    delayed = side([801.0, 802.0, 801.5], size=16384, transfer_s=0.81, goodput_bps=None)
    record = https_record((delayed, FAST, 16384), (delayed, FAST, 16384))
    judgment = judge_throughput(record)
    assert judgment is not None and judgment["throttled"] == "latency", judgment
    assert judgment["flagged"]["rate"] == 0 and 800 <= judgment["added_latency_ms"] <= 802


def test_one_round_is_never_enough() -> None:
    judgment = judge_throughput(https_record((rate_limited(64_000, 16384), FAST, 16384)))
    assert judgment is not None and judgment["throttled"] is None
    assert judgment["rule"] == "throughput.not_throttled"


def test_a_clear_round_vetoes_the_others() -> None:
    record = https_record((rate_limited(64_000, 16384), FAST, 16384), (rate_limited(64_000, 16384), FAST, 16384),
                          (FAST, FAST, 4_000_000))
    judgment = judge_throughput(record)
    assert judgment is not None and judgment["throttled"] is None and judgment["flagged"]["rate"] == 2


def test_a_hiccup_of_milliseconds_on_a_fast_path_is_not_rate() -> None:
    hiccup = side([0.5, 0.4, 0.4], size=4_000_000, transfer_s=0.09, goodput_bps=3.7e8)  # 60 ms slower
    record = https_record((hiccup, FAST, 4_000_000), (hiccup, FAST, 4_000_000))
    judgment = judge_throughput(record)
    assert judgment is not None and judgment["throttled"] is None and judgment["flagged"]["rate"] == 0


def udp_record(*rounds: tuple[list[float], list[float]]) -> dict[str, Any]:
    return {"kind": "udp", "feature": "calls", "endpoint": "198.19.3.1:3478", "control_port": 443,
            "rounds": [{"round": i, "target": {"rtt_ms": t, "failure": None}, "control": {"rtt_ms": c, "failure": None}}
                       for i, (t, c) in enumerate(rounds)]}


def test_calls_latency_and_jitter() -> None:
    quiet = [0.3, 0.2, 0.2, 0.2]
    lagged = udp_record(([310.0, 300.0, 305.0, 302.0], quiet), ([300.0, 301.0, 303.0, 300.0], quiet))
    assert judge_throughput(lagged)["throttled"] == "latency"  # type: ignore[index]
    shaky = udp_record(([5.0, 80.0, 2.0, 45.0], quiet), ([3.0, 1.0, 70.0, 4.0], quiet))
    judgment = judge_throughput(shaky)
    assert judgment is not None and judgment["throttled"] == "jitter", judgment
    steady = udp_record((quiet, quiet), (quiet, quiet))
    assert judge_throughput(steady)["throttled"] is None  # type: ignore[index]
    assert judge_throughput(udp_record(([], quiet))) is None  # nothing to compare


def feature(verdict: str, method: str | None = None) -> dict[str, Any]:
    target = TargetVerdict("mmg.whatsapp.net:443", verdict, f"t.{verdict}", "e", method, 0.9, strong=True)
    return aggregate_feature("media", [target])


def test_throttled_only_where_the_feature_worked_or_timed_out() -> None:
    judgment = judge_throughput(https_record((rate_limited(64_000, 16384), FAST, 16384),
                                             (rate_limited(64_000, 16384), FAST, 16384)))
    assert judgment is not None
    for before in ("ok", "unknown"):
        after = apply_throttling(feature(before), [judgment])
        assert (after["verdict"], after["method"]) == ("throttled", "rate")
        assert after["rule"].startswith("throughput.rate_throttled+") and after["throttling"]["rate_bps"] == 64_000
    blocked = apply_throttling(feature("blocked", "tls_sni"), [judgment])
    assert (blocked["verdict"], blocked["method"]) == ("blocked", "tls_sni") and "throttling" in blocked
    untouched = apply_throttling(feature("ok"), [])
    assert untouched == feature("ok")


def test_a_throttled_target_verdict_makes_a_throttled_feature() -> None:
    slow = TargetVerdict("mmg.whatsapp.net:443", "throttled", "t.slow", "e", "rate", 0.8)
    fine = TargetVerdict("mmg.whatsapp.net:443", "ok", "t.ok", "e", None, 1.0)
    result = aggregate_feature("media", [slow, fine])
    assert (result["verdict"], result["method"], result["targets_ok"]) == ("throttled", "rate", 2)


# --- the primitive on loopback ------------------------------------------------------------------------


class Shaper:
    """A relay that slows (bits/s) or delays (seconds each way) flows whose ClientHello names `name`."""

    def __init__(self, name: str, *, rate_bps: float | None = None, delay: float = 0.0) -> None:
        self.name, self.rate_bps, self.delay = name, rate_bps, delay
        self.shaped = 0

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend_port: int) -> None:
        first = await reader.read(65536)
        hello = parse_client_hello(first)
        targeted = getattr(hello, "sni", None) == self.name
        self.shaped += targeted
        up_reader, up_writer = await asyncio.open_connection(servers.LOOPBACK, backend_port)
        up_writer.write(first)
        await asyncio.gather(self._pipe(reader, up_writer, targeted), self._pipe(up_reader, writer, targeted))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, targeted: bool) -> None:
        try:
            while data := await source.read(1448 if targeted and self.rate_bps else 65536):
                if targeted and self.delay:
                    await asyncio.sleep(self.delay)
                if targeted and self.rate_bps:
                    await asyncio.sleep(len(data) * 8 / self.rate_bps)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()


async def _serve_media(tmp_path: Path, shaper: Shaper) -> tuple[list[Any], int, servers.Pki]:
    from wallwatch.lab.https_server import MediaStore, serve_http_connection

    pki = servers.make_pki(tmp_path, ["mmg.whatsapp.net"], tag="tp")
    store = MediaStore()

    async def media(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http_connection(reader, writer, store.handle)

    backend, backend_port = await servers.start_tcp(media, ssl_context=servers.server_context(pki))

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await shaper.relay(reader, writer, backend_port)

    front, port = await servers.start_tcp(relay)
    return [backend, front], port, pki


def _measure(tmp_path: Path, shaper: Shaper) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        handles, port, pki = await _serve_media(tmp_path, shaper)
        try:
            verifying = ssl.create_default_context(cafile=str(pki.ca_pem))
            any_name = ssl.create_default_context(cafile=str(pki.ca_pem))
            any_name.check_hostname = False
            target = HttpsTarget("media", "mmg.whatsapp.net", "/d/video.mp4", servers.LOOPBACK, port, "example.org")
            return await https_rounds(Trace(), target, target_context=verifying, control_context=any_name,
                                      limits=RoundLimits(transfer=8.0), stop_early=throughput_settled)
        finally:
            for handle in handles:
                handle.close()

    return asyncio.run(run())


def test_loopback_rate_limit_by_sni_is_measured_and_judged(tmp_path: Path) -> None:
    shaper = Shaper("mmg.whatsapp.net", rate_bps=2_000_000)
    record = _measure(tmp_path, shaper)
    judgment = judge_throughput(record)
    assert judgment is not None and judgment["throttled"] == "rate", judgment
    assert abs(judgment["rate_bps"] / 2_000_000 - 1) < 0.25, judgment
    # Both sides fetched the same bytes from the same address; only the target was shaped.
    assert shaper.shaped == len(record["rounds"])
    for entry in record["rounds"]:
        assert entry["target"]["server_name"] == "mmg.whatsapp.net" and entry["control"]["server_name"] == "example.org"
        assert entry["target"]["status"] == entry["control"]["status"] == 206


def test_loopback_delay_is_latency(tmp_path: Path) -> None:
    record = _measure(tmp_path, Shaper("mmg.whatsapp.net", delay=0.06))
    judgment = judge_throughput(record)
    assert judgment is not None and judgment["throttled"] == "latency", judgment
    assert judgment["added_latency_ms"] >= 100  # 60 ms each way


def test_loopback_without_a_throttle_is_not_throttled_and_quick(tmp_path: Path) -> None:
    started = time.monotonic()
    record = _measure(tmp_path, Shaper("nobody.example"))
    judgment = judge_throughput(record)
    assert judgment is not None and judgment["throttled"] is None, judgment
    assert len(record["rounds"]) == 2 and time.monotonic() - started < 10


def test_udp_rounds_time_stun_against_tcp_connects() -> None:
    async def run() -> dict[str, Any]:
        stun = await servers.start_stun()
        try:
            from wallwatch.probe.nettests.base import stun_request

            return await udp_rounds(Trace(), "calls", servers.LOOPBACK, stun.port,
                                    control_port=servers.free_tcp_port(), make_request=stun_request,
                                    stop_early=throughput_settled)
        finally:
            assert stun.transport is not None
            stun.transport.close()

    record = asyncio.run(run())
    entry = record["rounds"][0]
    assert len(entry["target"]["rtt_ms"]) == 4 and len(entry["control"]["rtt_ms"]) == 4
    assert set(entry["control"]["outcomes"]) == {"connection_refused"}  # an RST is a round trip too
    judgment = judge_throughput(record)
    assert judgment is not None and judgment["throttled"] is None
