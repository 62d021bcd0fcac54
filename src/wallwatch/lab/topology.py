"""The lab's network: three namespaces, a censor between client and services.

    client ns                 censor ns                        svc ns
    198.18.0.2/24 --veth-- 198.18.0.1 | 198.18.254.1 --veth-- 198.18.254.2
                                                               198.19.x.y on a dummy link

Veths are created directly inside their namespaces and no namespace has a
default route or a link to the root namespace, so nothing in the lab can reach
anything outside it (see docs/architecture.md, "The lab").

`Lab.up()` builds it, starts the emulated services (wallwatch.lab.services) in
the svc namespace and the censor (`wallwatch censor run`) in the censor
namespace, and writes a state file others read (the probe, via `WALLWATCH_LAB`).
`Lab.down()` undoes all of it, also for a lab that failed half-way: every name
derives from the run id, and the state file is written before anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from wallwatch.lab import addresses
from wallwatch.lab.state import LAB_ENV  # set for commands run in the client: the probe's switch to lab mode

DEFAULT_STATE_PATH = Path("/run/wallwatch/lab.json")
STATE_ENV = "WALLWATCH_LAB_STATE"  # overrides where `lab up` writes its state
ROLES = ("client", "censor", "services")
_ROLE_SUFFIX = {"client": "client", "censor": "censor", "services": "svc"}
NAMESPACE_PATTERN = re.compile(r"^ww(?P<run>[0-9a-z]+)-(?P<role>client|censor|svc)$")

# Interface names are per namespace, so fixed names are fine and read well in `ip a`.
CLIENT_IF, CENSOR_CLIENT_IF, CENSOR_SERVICES_IF, SERVICES_IF, INTERNET_IF = (
    "to-censor", "to-client", "to-services", "to-censor", "internet",
)
ALLOW_ALL_POLICY: Mapping[str, Any] = {"name": "allow-all", "description": "no rules: every flow is allowed", "rules": []}

START_TIMEOUT = 30.0  # services import cryptography/noise and bind ~40 sockets; seconds on a busy 2-core box
STOP_TIMEOUT = 5.0  # SIGTERM grace before SIGKILL; the censor removes its iptables rules in it
POLL_INTERVAL = 0.05


class LabError(RuntimeError):
    """The lab could not be built, reached or changed; the message says why."""


def default_state_path() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_PATH)


def namespace_names(run_id: str) -> dict[str, str]:
    return {role: f"ww{run_id}-{_ROLE_SUFFIX[role]}" for role in ROLES}


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False)


def _must(argv: Sequence[str], what: str, *, input: str | None = None) -> None:
    result = _run(argv, input=input)
    if result.returncode != 0:
        raise LabError(f"{what} failed ({' '.join(argv)}): {result.stderr.strip() or result.stdout.strip()}")


def existing_namespaces() -> set[str]:
    result = _run(["ip", "netns", "list"])
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- processes ----------------------------------------------------------------


def _process_is_ours(pid: int, marker: str) -> bool:
    """Alive, not a zombie, and its command line names our workdir (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and marker.encode() in cmdline


def _stop_process(pid: int, marker: str, child: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group, wait, then SIGKILL it. Only if it is still ours."""
    if not _process_is_ours(pid, marker):
        if child is not None:
            child.poll()
        return
    for signum, grace in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)  # started with start_new_session: pid is the group id
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                return
            if child is None and not _process_is_ours(pid, marker):
                return
            time.sleep(POLL_INTERVAL)


def _kill_namespace_pids(namespace: str) -> None:
    """Kill whatever still runs inside a lab namespace (e.g. a `lab exec` command), so it can go."""
    result = _run(["ip", "netns", "pids", namespace])
    pids = [int(p) for p in result.stdout.split() if p.isdigit()]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + 1.0
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
            time.sleep(POLL_INTERVAL)
        if not pids:
            return


# --- the lab ------------------------------------------------------------------


@dataclass
class Lab:
    run_id: str
    state_path: Path
    workdir: Path
    censor_enabled: bool
    _services: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _censor: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _services_pid: int | None = None
    _censor_pid: int | None = None
    _down: bool = False

    # -- names and paths

    @property
    def namespaces(self) -> dict[str, str]:
        return namespace_names(self.run_id)

    @property
    def client_ns(self) -> str:
        return self.namespaces["client"]

    @property
    def ca_cert(self) -> Path:
        return self.workdir / "certs" / "ca.pem"

    @property
    def policy_path(self) -> Path:
        return self.workdir / "policy.yaml"

    @property
    def censor_status_path(self) -> Path:
        return self.workdir / "censor-status.json"

    # -- building

    @classmethod
    def up(
        cls,
        policy: str | Path | Mapping[str, Any] | None = None,
        *,
        censor: bool = True,
        state_path: str | Path | None = None,
        run_id: str | None = None,
        timeout: float = START_TIMEOUT,
    ) -> Lab:
        """Build a lab and return it once services (and censor) are ready.

        `policy` is the censor's policy (a YAML path or a dict); None means
        allow-all. `censor=False` makes the censor namespace a plain router.
        On any failure everything built so far is removed before the error
        propagates.
        """
        if policy is not None and not censor:
            raise ValueError("a policy needs the censor; drop censor=False or the policy")
        state = Path(state_path) if state_path is not None else default_state_path()
        _refuse_live_lab(state)
        run = run_id or secrets.token_hex(3)
        lab = cls(run_id=run, state_path=state, workdir=state.parent / f"lab-{run}", censor_enabled=censor)
        try:
            lab.workdir.mkdir(parents=True)
            lab._write_state()  # first, so a crash mid-build can still be cleaned from the state file
            lab._build_network()
            from wallwatch.lab.ca import make_lab_certificates

            make_lab_certificates(lab.workdir / "certs", addresses.NAMES, run_id=run)
            lab._start_services(timeout)
            if censor:
                lab._write_policy(ALLOW_ALL_POLICY if policy is None else policy)
                lab._start_censor(timeout)
            lab._write_state()
        except BaseException:
            lab.down()
            raise
        return lab

    def _build_network(self) -> None:
        ns = self.namespaces
        client, censor, services = ns["client"], ns["censor"], ns["services"]
        existing = existing_namespaces() & set(ns.values())
        if existing:
            raise LabError(f"namespaces {sorted(existing)} already exist; run id {self.run_id} is taken")
        link = addresses.LINK_PREFIX_LEN
        _must(
            ["ip", "-batch", "-"],
            "creating namespaces and veths",
            input="\n".join(
                [
                    f"netns add {client}",
                    f"netns add {censor}",
                    f"netns add {services}",
                    # Created inside the namespaces: never in the root namespace, not even briefly.
                    f"link add {CLIENT_IF} netns {client} type veth peer name {CENSOR_CLIENT_IF} netns {censor}",
                    f"link add {SERVICES_IF} netns {services} type veth peer name {CENSOR_SERVICES_IF} netns {censor}",
                ]
            )
            + "\n",
        )
        internet = self._internet_device(services)
        per_namespace = {
            client: [
                f"addr add {addresses.CLIENT_ADDRESS}/{link} dev {CLIENT_IF}",
                f"link set {CLIENT_IF} up",
                f"route add {addresses.LAB_BLOCK} via {addresses.CENSOR_CLIENT_SIDE}",
            ],
            censor: [
                f"addr add {addresses.CENSOR_CLIENT_SIDE}/{link} dev {CENSOR_CLIENT_IF}",
                f"addr add {addresses.CENSOR_SERVICES_SIDE}/{link} dev {CENSOR_SERVICES_IF}",
                f"link set {CENSOR_CLIENT_IF} up",
                f"link set {CENSOR_SERVICES_IF} up",
                f"route add {addresses.INTERNET_BLOCK} via {addresses.SERVICES_ADDRESS}",
            ],
            services: [
                f"addr add {addresses.SERVICES_ADDRESS}/{link} dev {SERVICES_IF}",
                f"link set {SERVICES_IF} up",
                *(f"addr add {a}/32 dev {internet}" for a in addresses.service_addresses()),
                f"route add {addresses.LINKS_BLOCK} via {addresses.CENSOR_SERVICES_SIDE}",
            ],
        }
        for namespace, commands in per_namespace.items():
            _must(["ip", "-n", namespace, "-batch", "-"], f"configuring {namespace}", input="\n".join(["link set lo up", *commands]) + "\n")
        _must(["ip", "netns", "exec", censor, "sysctl", "-qw", "net.ipv4.ip_forward=1"], "enabling forwarding")
        self._disable_offloads()

    @staticmethod
    def _internet_device(services_ns: str) -> str:
        """The link holding the lab-internet addresses: a dummy, or loopback if the kernel lacks dummy.

        Both are local-only; loopback behaves the same for addresses with /32
        prefixes (the kernel answers for them locally and routes nothing else).
        Kernels built without CONFIG_DUMMY exist (the project's Firecracker guests).
        """
        result = _run(["ip", "-n", services_ns, "link", "add", INTERNET_IF, "type", "dummy"])
        if result.returncode != 0:
            return "lo"
        _must(["ip", "-n", services_ns, "link", "set", INTERNET_IF, "up"], "bringing the dummy link up")
        return INTERNET_IF

    def _disable_offloads(self) -> None:
        """Best effort: MTU-sized segments through the censor, as on a real path.

        With TSO/GSO/GRO the censor would see 64 KiB super-packets, which real
        middleboxes never do and netfilterqueue's 4 KiB buffer truncates
        (censor-lab.md §5; CensorLab also turns these off).
        """
        if shutil.which("ethtool") is None:
            return
        ns = self.namespaces
        for namespace, device in (
            (ns["client"], CLIENT_IF),
            (ns["censor"], CENSOR_CLIENT_IF),
            (ns["censor"], CENSOR_SERVICES_IF),
            (ns["services"], SERVICES_IF),
        ):
            _run(["ip", "netns", "exec", namespace, "ethtool", "-K", device, "tso", "off", "gso", "off", "gro", "off"])

    def _spawn(self, namespace: str, argv: Sequence[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / log_name, "ab") as log:
            return subprocess.Popen(
                ["ip", "netns", "exec", namespace, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: down() stops it and its children together
                cwd=self.workdir,
            )

    def _start_services(self, timeout: float) -> None:
        ready_file = self.workdir / "services-ready.json"
        self._services = self._spawn(
            self.namespaces["services"],
            [sys.executable, "-m", "wallwatch.lab.services", "--workdir", str(self.workdir)],
            "services.log",
        )
        self._services_pid = self._services.pid
        self._write_state()
        deadline = time.monotonic() + timeout
        while not ready_file.exists():
            if self._services.poll() is not None:
                raise LabError(f"the services process exited with {self._services.returncode}:\n{_log_tail(self.workdir / 'services.log')}")
            if time.monotonic() > deadline:
                raise LabError(f"services not ready after {timeout:.0f} s:\n{_log_tail(self.workdir / 'services.log')}")
            time.sleep(POLL_INTERVAL)

    def _write_policy(self, policy: str | Path | Mapping[str, Any]) -> str:
        if isinstance(policy, Mapping):
            import yaml

            data = yaml.safe_dump(dict(policy), sort_keys=False).encode()
        else:
            data = Path(policy).read_bytes()
        _write_atomic(self.policy_path, data)
        return hashlib.sha256(data).hexdigest()

    def _start_censor(self, timeout: float) -> None:
        self._censor = self._spawn(
            self.namespaces["censor"],
            [
                sys.executable, "-m", "wallwatch.cli", "censor", "run",
                "--policy", str(self.policy_path),
                "--status-file", str(self.censor_status_path),
            ],
            "censor.log",
        )
        self._censor_pid = self._censor.pid
        self._write_state()
        self._await_policy(_sha256(self.policy_path), previous=None, timeout=timeout)

    def _censor_alive(self) -> bool:
        if self._censor is not None:
            return self._censor.poll() is None
        return self._censor_pid is not None and _process_is_ours(self._censor_pid, str(self.workdir))

    def _await_policy(self, sha256: str, previous: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        """Wait for the censor's status to report `sha256`, or an error newer than `previous`."""
        deadline = time.monotonic() + timeout
        while True:
            status = _read_json(self.censor_status_path)
            # A failed load leaves the old policy (and its sha) in force, so the
            # new sha in the status means the new policy is the one in force.
            if status is not None and status.get("policy_sha256") == sha256:
                return status
            if status is not None and status != previous and status.get("error"):
                raise LabError(f"the censor rejected the policy: {status['error']}")
            if not self._censor_alive():
                raise LabError(f"the censor exited:\n{_log_tail(self.workdir / 'censor.log')}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"the censor did not report policy {sha256[:12]} within {timeout:.0f} s "
                    f"(status: {status}):\n{_log_tail(self.workdir / 'censor.log')}"
                )
            time.sleep(POLL_INTERVAL)

    # -- state

    def state(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "namespaces": self.namespaces,
            "resolver": addresses.RESOLVER,
            "ca_cert": str(self.ca_cert),
            "address_map": dict(addresses.REAL_TO_LAB),
            "names": dict(addresses.NAMES),
            "censor": (
                {"pid": self._censor_pid, "policy_path": str(self.policy_path), "status_path": str(self.censor_status_path)}
                if self.censor_enabled
                else None
            ),
            "services_pid": self._services_pid,
            "workdir": str(self.workdir),
        }

    def _write_state(self) -> None:
        _write_atomic(self.state_path, json.dumps(self.state(), indent=2).encode())

    @classmethod
    def from_state(cls, state_path: str | Path | None = None) -> Lab:
        """The lab a state file describes (e.g. one `wallwatch lab up` left running)."""
        path = Path(state_path) if state_path is not None else default_state_path()
        state = _read_json(path)
        if state is None:
            raise LabError(f"no lab state at {path} (is a lab up? `wallwatch lab up`)")
        censor = state.get("censor")
        return cls(
            run_id=state["run_id"],
            state_path=path,
            workdir=Path(state["workdir"]),
            censor_enabled=censor is not None,
            _services_pid=state.get("services_pid"),
            _censor_pid=censor.get("pid") if censor else None,
        )

    # -- using a lab

    def run_in(
        self, role: str, argv: Sequence[str], *, timeout: float = 60.0, text: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in one of the lab's namespaces ("client", "censor", "services")."""
        env = {**os.environ, LAB_ENV: str(self.state_path), **kwargs.pop("env", {})}
        kwargs.setdefault("capture_output", True)
        return subprocess.run(
            ["ip", "netns", "exec", self.namespaces[role], *argv], env=env, timeout=timeout, text=text, check=False, **kwargs
        )

    def run_in_client(self, argv: Sequence[str], *, timeout: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in the client namespace with `WALLWATCH_LAB` set, as the probe runs."""
        return self.run_in("client", argv, timeout=timeout, **kwargs)

    def censor_status(self) -> dict[str, Any] | None:
        return _read_json(self.censor_status_path) if self.censor_enabled else None

    def set_policy(self, policy: str | Path | Mapping[str, Any], *, timeout: float = 15.0) -> dict[str, Any]:
        """Swap the censor's policy; returns the censor's status once it reports the new one loaded."""
        if not self.censor_enabled or self._censor_pid is None:
            raise LabError("this lab runs without a censor (--no-censor)")
        if not self._censor_alive():
            raise LabError(f"the censor is not running:\n{_log_tail(self.workdir / 'censor.log')}")
        previous = _read_json(self.censor_status_path)
        sha256 = self._write_policy(policy)
        os.kill(self._censor_pid, signal.SIGHUP)
        return self._await_policy(sha256, previous, timeout)

    def alive(self) -> dict[str, bool]:
        """Which parts are alive: each namespace, the services, the censor."""
        present = existing_namespaces()
        marker = str(self.workdir)
        report = {f"namespace {name}": name in present for name in self.namespaces.values()}
        report["services"] = self._services_pid is not None and _process_is_ours(self._services_pid, marker)
        if self.censor_enabled:
            report["censor"] = self._censor_pid is not None and _process_is_ours(self._censor_pid, marker)
        return report

    # -- tearing down

    def down(self) -> None:
        """Stop the processes, delete the namespaces, remove workdir and state. Idempotent."""
        marker = str(self.workdir)
        # The censor first, so it removes its own rules while its namespace exists.
        if self._censor_pid is not None:
            _stop_process(self._censor_pid, marker, self._censor)
        if self._services_pid is not None:
            _stop_process(self._services_pid, marker, self._services)
        _remove_namespaces(self.run_id)
        shutil.rmtree(self.workdir, ignore_errors=True)
        state = _read_json(self.state_path)
        if state is None or state.get("run_id") == self.run_id:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
        self._down = True

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()


def _remove_namespaces(run_id: str) -> None:
    present = existing_namespaces()
    for namespace in namespace_names(run_id).values():
        if namespace in present:
            _kill_namespace_pids(namespace)
            _run(["ip", "netns", "del", namespace])


def _refuse_live_lab(state_path: Path) -> None:
    """One lab per state file: refuse if it names a live lab; clear it if the lab is gone."""
    state = _read_json(state_path)
    if state is None:
        return
    lab = Lab.from_state(state_path)
    if any(lab.alive().values()):
        raise LabError(
            f"a lab is already up at {state_path} (run {lab.run_id}); "
            f"`wallwatch lab down` first, or set {STATE_ENV} for a second lab"
        )
    lab.down()  # leftovers of a lab whose processes died


def lab_run_ids() -> set[str]:
    """Run ids of every lab namespace present, ours or leftovers."""
    return {m["run"] for name in existing_namespaces() if (m := NAMESPACE_PATTERN.match(name))}


def cleanup_all(state_path: str | Path | None = None) -> list[str]:
    """Remove every `ww*-client/censor/svc` namespace and what runs in it; returns the run ids removed."""
    path = Path(state_path) if state_path is not None else default_state_path()
    if _read_json(path) is not None:
        with contextlib.suppress(LabError, KeyError):
            Lab.from_state(path).down()
    removed = sorted(lab_run_ids())
    for run_id in removed:
        _remove_namespaces(run_id)
        shutil.rmtree(path.parent / f"lab-{run_id}", ignore_errors=True)
    return removed

