"""A minimal three-namespace topology for the censor's lab tests.

client (198.18.0.2) -- censor (198.18.0.1 | 198.18.254.1) -- svc (198.18.254.2,
lab "internet" 198.19.x.y on its loopback). Same addressing as the lab
contract, but our own per-run namespace names, built and torn down here so
the censor's tests do not depend on the lab package. No link to the root
namespace and no default route: nothing can leave.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT = Path(__file__).with_name("nsagent.py")
PYTHON = sys.executable
SVC_ADDRESSES = ["198.19.0.53", "198.19.1.1", "198.19.2.2", "198.19.2.3", "198.19.3.1", "198.19.3.2"]


def sh(*argv: str, check: bool = True, timeout: float = 10, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout, **kw)


def lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and iptables"
    for tool in ("ip", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    name = f"wwt{secrets.token_hex(3)}-probe"
    try:
        if sh("ip", "netns", "add", name, check=False).returncode != 0:
            return "cannot create network namespaces"
        probe = sh("ip", "netns", "exec", name, "iptables", "-A", "FORWARD", "-j", "NFQUEUE", "--queue-num", "1",
                   check=False)
        if probe.returncode != 0:
            return f"iptables NFQUEUE is unusable: {probe.stderr.strip()}"
        probe = sh("ip", "netns", "exec", name, "iptables", "-A", "FORWARD", "-m", "connmark", "--mark", "1",
                   "-j", "ACCEPT", check=False)
        if probe.returncode != 0:
            return f"iptables connmark is unusable: {probe.stderr.strip()}"
        probe = sh("ip", "netns", "exec", name, "iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID",
                   "-j", "ACCEPT", check=False)
        if probe.returncode != 0:
            return f"iptables conntrack match is unusable: {probe.stderr.strip()}"
    finally:
        sh("ip", "netns", "del", name, check=False)
    return None


@dataclass
class Censor:
    proc: subprocess.Popen[bytes]
    status_path: Path
    log_path: Path
    policy_path: Path

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    def wait_status(self, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status and predicate(status):
                return status
            if self.proc.poll() is not None:
                raise AssertionError(f"censor exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"censor status never satisfied the condition: {self.status()}")

    def counters(self) -> dict[str, int]:
        """Fresh counters: the status file is rewritten about once a second."""
        before = self.status().get("counters", {})
        time.sleep(1.3)
        return self.status().get("counters", before)

    def decisions(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e.get("event") == "decision"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@dataclass
class Topology:
    run: str
    client: str
    router: str
    svc: str
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def in_ns(self, ns: str, *argv: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *argv, timeout=timeout, check=False)

    def client_run(self, *args: str, timeout: float = 15) -> dict[str, Any]:
        done = self.in_ns(self.client, PYTHON, str(AGENT), *args, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def start_censor(self, policy: Path | str, *extra: str, queue: int = 7) -> Censor:
        status = self.workdir / "status.json"
        log = self.workdir / "censor.log"
        status.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.router, PYTHON, "-m", "wallwatch.censor", "run", "--policy", str(policy),
             "--queue", str(queue), "--status-file", str(status), "--log", str(log), *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.processes.append(proc)
        censor = Censor(proc, status, log, Path(policy))
        censor.wait_status(lambda s: s.get("generation", 0) >= 1)
        return censor

    def iptables_rules(self, table: str = "filter") -> str:
        return self.in_ns(self.router, "iptables", "-t", table, "-S").stdout

    def raw(self, host: str, port: int, payloads: list[bytes], timeout: float = 1.5) -> list[str]:
        """One TCP connection per payload (in parallel); each connection's result."""
        answer = self.client_run("raw", host, str(port), str(timeout), *(p.hex() for p in payloads),
                                 timeout=timeout * 3 + 15)
        return [r["result"] for r in answer["results"]]

    def udp(self, host: str, port: int, payloads: list[bytes], sport: int = 0, timeout: float = 1.0) -> list[str]:
        answer = self.client_run("udpraw", host, str(port), str(timeout), str(sport), *(p.hex() for p in payloads),
                                 timeout=timeout * 3 + 15)
        return [r["result"] for r in answer["results"]]


class LiveCensor:
    """One censor for a whole test module, re-targeted by SIGHUP (a reload is ms, a start ~1 s)."""

    def __init__(self, topology: Topology, censor: Censor) -> None:
        self.topology = topology
        self.censor = censor
        self.policy_path = censor.policy_path

    def use(self, policy: dict[str, Any]) -> None:
        """Install `policy` and wait until the censor runs it."""
        generation = self.censor.status()["generation"]
        self.policy_path.write_text(json.dumps(policy))  # JSON is YAML
        os.kill(self.censor.proc.pid, signal.SIGHUP)
        status = self.censor.wait_status(lambda s: s["generation"] > generation or "error" in s)
        assert "error" not in status, status["error"]


def _build(topo: Topology) -> None:
    for ns in (topo.client, topo.router, topo.svc):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    # veths created inside the namespaces: nothing ever appears in the root namespace
    sh("ip", "-n", topo.router, "link", "add", "to-cl", "type", "veth", "peer", "name", "eth0", "netns", topo.client)
    sh("ip", "-n", topo.router, "link", "add", "to-sv", "type", "veth", "peer", "name", "eth0", "netns", topo.svc)
    sh("ip", "-n", topo.client, "addr", "add", "198.18.0.2/24", "dev", "eth0")
    sh("ip", "-n", topo.router, "addr", "add", "198.18.0.1/24", "dev", "to-cl")
    sh("ip", "-n", topo.router, "addr", "add", "198.18.254.1/24", "dev", "to-sv")
    sh("ip", "-n", topo.svc, "addr", "add", "198.18.254.2/24", "dev", "eth0")
    # The lab "internet" addresses live on the svc namespace's loopback (this kernel has no dummy links).
    for address in SVC_ADDRESSES:
        sh("ip", "-n", topo.svc, "addr", "add", f"{address}/32", "dev", "lo")
    for ns, dev in ((topo.client, "eth0"), (topo.router, "to-cl"), (topo.router, "to-sv"), (topo.svc, "eth0")):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", topo.client, "route", "add", "198.18.0.0/15", "via", "198.18.0.1")
    sh("ip", "-n", topo.router, "route", "add", "198.19.0.0/16", "via", "198.18.254.2")
    sh("ip", "-n", topo.svc, "route", "add", "198.18.0.0/16", "via", "198.18.254.1")
    sh("ip", "netns", "exec", topo.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    server = subprocess.Popen(["ip", "netns", "exec", topo.svc, PYTHON, str(AGENT), "serve"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    topo.processes.append(server)
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"


def _teardown(topo: Topology) -> None:
    for proc in reversed(topo.processes):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    for ns in (topo.client, topo.router, topo.svc):
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def shared_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """One topology for a whole module (building one costs ~1 s of `ip` calls)."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    run = secrets.token_hex(3)
    topo = Topology(run, f"wwt{run}-cl", f"wwt{run}-ce", f"wwt{run}-sv", tmp_path_factory.mktemp("censor-lab"))
    try:
        _build(topo)
        yield topo
    finally:
        _teardown(topo)


@pytest.fixture(scope="module")
def live_censor(shared_topology: Topology) -> Iterator[LiveCensor]:
    policy = shared_topology.workdir / "live.yaml"
    policy.write_text("name: none\nrules: []\n")
    censor = shared_topology.start_censor(policy, "--seed", "1", queue=11)
    try:
        yield LiveCensor(shared_topology, censor)
    finally:
        censor.stop()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    run = secrets.token_hex(3)
    topo = Topology(run, f"wwt{run}-cl", f"wwt{run}-ce", f"wwt{run}-sv", tmp_path)
    try:
        _build(topo)
        yield topo
    finally:
        _teardown(topo)
