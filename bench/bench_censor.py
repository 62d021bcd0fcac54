"""What the censor costs, side by side in one run (run as root; not part of the tests).

In fresh namespaces (client -- router -- svc, torn down at the end) it pushes
a bulk iperf3 TCP transfer and a small-packet UDP stream through the router
with:

  (a) plain        : the veth path, no queue
  (b) nfq-accept   : every packet to an accept-all NFQUEUE loop in Python
  (c) full-offload : `wallwatch censor run --policy policies/all-techniques.yaml`: every
                     analyzer on, every issue-4 rule present, none matching the bench
                     traffic; decided flows handed to the kernel (connmark)
  (d) full-per-pkt : the same with --no-offload: every packet through Python (the cost
                     of a packet before its flow is offloaded)
  (e) throttled    : the full rule set plus a throttle rule on the bench flow at --rate

and prints Mbit/s and packets/s per variant with ratios to (a) and (b), the
issue-4 targets (full rule set >= 0.8x the accept-all loop's packets/s; a
decided flow >= 0.5x the no-censor path) and the throttled flow's rate next
to the configured one. It also times the sans-IO engine alone (no kernel).

    sudo .venv/bin/python bench/bench_censor.py [--seconds 3] [--rate 20mbit]
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.censor.conftest import PYTHON, Topology, _build, _teardown, lab_skip_reason, sh  # noqa: E402

SERVER = "198.19.2.2"
POLICY = REPO / "policies" / "all-techniques.yaml"
IPERF_PORT = 5301

ACCEPT_ALL = textwrap.dedent("""
    import signal, subprocess, sys
    from netfilterqueue import NetfilterQueue
    subprocess.run(["iptables", "-I", "FORWARD", "1", "-j", "NFQUEUE", "--queue-num", "9"], check=True)
    q = NetfilterQueue()
    q.bind(9, lambda p: p.accept(), max_len=4096, sock_len=8 << 20)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("ready", flush=True)
    try:
        q.run()
    finally:
        subprocess.run(["iptables", "-D", "FORWARD", "-j", "NFQUEUE", "--queue-num", "9"])
        q.unbind()
""")


def forwarded_packets(topo: Topology) -> int:
    """Packets the router has sent toward the services (both TCP data and UDP)."""
    out = sh("ip", "-n", topo.router, "-s", "-j", "link", "show", "to-sv").stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["packets"])


def iperf(topo: Topology, seconds: float, udp: bool) -> dict[str, float]:
    server = subprocess.Popen(["ip", "netns", "exec", topo.svc, "iperf3", "-s", "-1", "-B", SERVER, "-p", str(IPERF_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        argv = ["iperf3", "-c", SERVER, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
        if udp:
            argv += ["-u", "-b", "0", "-l", "64"]  # small datagrams: the per-packet cost shows
        before = forwarded_packets(topo)
        done = topo.in_ns(topo.client, *argv, timeout=seconds + 30)
        packets = forwarded_packets(topo) - before
        result = json.loads(done.stdout)
        if "error" in result:
            raise RuntimeError(result["error"])
        end = result["end"]
        summary = end["sum"] if udp else end["sum_received"]
        seconds_measured = summary["seconds"]
        return {"mbit_s": summary["bits_per_second"] / 1e6, "pps": packets / seconds_measured,
                "lost_percent": summary.get("lost_percent", 0.0)}
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=10)


def start_accept_all(topo: Topology) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["ip", "netns", "exec", topo.router, PYTHON, "-c", ACCEPT_ALL],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    topo.processes.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)


def throttled_policy(workdir: Path, rate: str) -> Path:
    """The full rule set with the bench flow throttled first (decided at its SYN)."""
    import yaml

    document = yaml.safe_load(POLICY.read_text())
    document["name"] = "all-techniques-throttled"
    document["rules"].insert(0, {"name": "bench-throttle", "match": {"proto": "tcp", "port.dst": IPERF_PORT},
                                 "action": "throttle", "rate": rate})
    path = workdir / "throttled.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def engine_micro(n: int = 20000) -> dict[str, float]:
    """µs per packet of the sans-IO engine alone."""
    from wallwatch.censor.engine import Censor
    from wallwatch.censor.policy import load_policy
    from wallwatch.protocols import inet, tls

    censor = Censor(load_policy(POLICY), offload=False)
    hello = tls.build_client_hello("example.org")
    flows = []
    for i in range(n):
        sport = 1024 + i % 60000
        flows.append((
            inet.build_tcp("198.18.0.2", SERVER, sport, 443, seq=1, flags=inet.SYN),
            inet.build_tcp("198.18.0.2", SERVER, sport, 443, seq=2, ack=1, flags=inet.ACK | inet.PSH, payload=hello),
        ))
    start = time.perf_counter()
    for syn, data in flows:
        censor.handle(syn, 1.0)
        censor.handle(data, 1.0)  # parses the ClientHello and decides
    new_flow = (time.perf_counter() - start) / (2 * n) * 1e6
    bulk = inet.build_tcp("198.18.0.2", SERVER, 1024, 443, seq=5000, ack=1, payload=b"\xa5" * 1400)
    start = time.perf_counter()
    for _ in range(n):
        censor.handle(bulk, 1.0)  # a decided flow's packet (what --no-offload pays)
    decided = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n):
        inet.parse_packet(bulk)
    parse = (time.perf_counter() - start) / n * 1e6
    return {"new_flow_us_per_packet": new_flow, "decided_flow_us_per_packet": decided, "parse_only_us": parse}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", default="20mbit", help="the throttled variant's configured rate (tc units)")
    args = parser.parse_args()
    from wallwatch.censor.policy import parse_rate

    rate_bps = parse_rate(args.rate)
    reason = lab_skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    workdir = Path(sh("mktemp", "-d").stdout.strip())
    run = secrets.token_hex(3)
    topo = Topology(run, f"wwt{run}-cl", f"wwt{run}-ce", f"wwt{run}-sv", workdir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    counters: dict[str, dict[str, int]] = {}
    try:
        _build(topo)
        for variant in ("plain", "nfq-accept", "full-offload", "full-per-pkt", "throttled"):
            proc = None
            censor = None
            if variant == "nfq-accept":
                proc = start_accept_all(topo)
            elif variant in ("full-offload", "full-per-pkt"):
                extra = ("--no-offload",) if variant == "full-per-pkt" else ()
                censor = topo.start_censor(POLICY, *extra, queue=7)
            elif variant == "throttled":
                censor = topo.start_censor(throttled_policy(workdir, args.rate), queue=7)
            try:
                results[variant] = {"tcp": iperf(topo, args.seconds, udp=False)}
                if variant != "throttled":
                    results[variant]["udp"] = iperf(topo, args.seconds, udp=True)
                if censor is not None:
                    counters[variant] = censor.counters()
            finally:
                if proc is not None:
                    stop(proc)
                if censor is not None:
                    censor.stop()
    finally:
        _teardown(topo)
        sh("rm", "-rf", str(workdir))

    print(f"\ncensor benchmark: {args.seconds:g} s per run, iperf3 client -> router -> server, policy {POLICY.name}\n")
    header = f"{'variant':<12} {'test':<10} {'Mbit/s':>10} {'packets/s':>11} {'vs plain':>9} {'vs nfq-accept':>13}"
    print(header)
    print("-" * len(header))
    # Ratios: Mbit/s for TCP (with no queue the veth forwards 64 KiB GSO
    # super-packets, so packet counts are not comparable across variants; a
    # queue makes the kernel segment them), delivered packets/s for UDP.
    for test, label, metric in (("tcp", "tcp bulk", "mbit_s"), ("udp", "udp 64B", "pps")):
        for variant, row in results.items():
            if test not in row:
                continue
            r = row[test]
            vs_a = r[metric] / results["plain"][test][metric]
            vs_b = r[metric] / results["nfq-accept"][test][metric]
            print(f"{variant:<12} {label:<10} {r['mbit_s']:>10.1f} {r['pps']:>11.0f} {vs_a:>8.2f}x {vs_b:>12.2f}x")
    print("(TCP ratios on Mbit/s; UDP ratios on packets/s delivered; UDP Mbit/s is the sender's rate)")
    print("\nissue-4 targets:")
    per_packet = results["full-per-pkt"]["udp"]["pps"] / results["nfq-accept"]["udp"]["pps"]
    decided = results["full-offload"]["tcp"]["mbit_s"] / results["plain"]["tcp"]["mbit_s"]
    for name, ratio, target in (("full rule set, per packet, packets/s vs accept-all loop", per_packet, 0.8),
                                ("decided flow (offloaded), Mbit/s vs no-censor path", decided, 0.5)):
        verdict = "met" if ratio >= target else f"MISSED by {(target - ratio) / target:.0%}"
        print(f"  {name:<58} {ratio:5.2f}x (target >= {target}x): {verdict}")
    throttled = results["throttled"]["tcp"]["mbit_s"] * 1e6
    print(f"  throttled flow: {throttled / 1e6:.2f} Mbit/s for a configured {rate_bps / 1e6:g} Mbit/s "
          f"({throttled / rate_bps:.2f}x)")
    print("\nqueued packets per censor run (status-file counters):")
    for variant, c in counters.items():
        blocked = sum(c.get(f"decisions.{a}", 0) for a in ("drop", "reset", "dns-inject")) + c.get("residual_drops", 0)
        print(f"  {variant:<13} queued={c['packets']} undecided={c['undecided']} "
              f"after_decision={c['queued_after_decision']} flows={c['flows_created']} "
              f"throttled={c.get('decisions.throttle', 0)} blocked={blocked} enobufs={c.get('enobufs', 0)}")
    micro = engine_micro()
    print("\nsans-IO engine alone (µs per packet): " + ", ".join(f"{k}={v:.1f}" for k, v in micro.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
