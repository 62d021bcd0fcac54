"""The lab's network: three namespaces, a censor between client and services.

    client ns                 censor ns                        svc ns
    198.18.0.2/24 --veth-- 198.18.0.1 | 198.18.254.1 --veth-- 198.18.254.2
                                                               198.19.x.y on a dummy link

With `Lab.up(isps=[...])` the lab holds several ISPs (vantage points): ISP k
(1-based) has its own client namespace `ww<run>-client<k>` (198.18.k.2/24)
and its own censor namespace `ww<run>-censor<k>` running its own censor
process (so policies differ per ISP and change on different days), linked to
the one services namespace over 198.18.(200+k).0/24 (addresses.isp_addresses).

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

from wallwatch.lab import addresses, netns
from wallwatch.lab.netns import INTERNET_IF, log_tail, process_is_ours
from wallwatch.probe.settings import LAB_ENV  # set for commands run in the client: the probe's switch to lab mode

DEFAULT_STATE_PATH = Path("/run/wallwatch/lab.json")
STATE_ENV = "WALLWATCH_LAB_STATE"  # overrides where `lab up` writes its state
ROLES = ("client", "censor", "services")
_ROLE_SUFFIX = {"client": "client", "censor": "censor", "services": "svc"}
# The optional digits are the ISP number of a multi-ISP lab.
NAMESPACE_PATTERN = re.compile(r"^ww(?P<run>[0-9a-z]+)-(?P<role>client|censor|svc)(?P<isp>[0-9]*)$")

# Interface names are per namespace, so fixed names are fine and read well in `ip a`
# (the services namespace's lab-internet link is netns.INTERNET_IF).
CLIENT_IF, CENSOR_CLIENT_IF, CENSOR_SERVICES_IF, SERVICES_IF = "to-censor", "to-client", "to-services", "to-censor"
ALLOW_ALL_POLICY: Mapping[str, Any] = {"name": "allow-all", "description": "no rules: every flow is allowed", "rules": []}

ISP_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

START_TIMEOUT = 30.0  # services import cryptography/noise and bind ~40 sockets; seconds on a busy 2-core box
STOP_TIMEOUT = 5.0  # SIGTERM grace before SIGKILL; the censor removes its iptables rules in it


class LabError(RuntimeError):
    """The lab could not be built, reached or changed; the message says why."""


@dataclass(frozen=True, slots=True)
class Isp:
    """One vantage point: what the probe records as its network (OONI's probe_asn, probe_cc, probe_network_name)."""

    id: str
    name: str = ""
    asn: str = "AS0"  # OONI's "hidden" values: the probe's own defaults
    cc: str = "ZZ"
    network_name: str = ""

    def __post_init__(self) -> None:
        if not ISP_ID_PATTERN.match(self.id):
            raise ValueError(f"ISP id {self.id!r} must match {ISP_ID_PATTERN.pattern}")
        if not re.fullmatch(r"AS[0-9]+", self.asn):
            raise ValueError(f"ISP {self.id}: asn {self.asn!r} must look like AS4134")
        if not re.fullmatch(r"[A-Z]{2}", self.cc):
            raise ValueError(f"ISP {self.id}: cc {self.cc!r} must be two capital letters (ISO 3166-1 alpha-2)")

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "asn": self.asn, "cc": self.cc, "network_name": self.network_name}


DEFAULT_ISP = Isp("lab", "lab")  # the single-ISP lab's only vantage point


@dataclass(frozen=True, slots=True)
class IspSite:
    """Where one ISP lives in a lab: its namespaces, addresses, interfaces and censor files."""

    isp: Isp
    index: int  # 0: the single-ISP layout; 1..MAX_ISPS: ISP k of a multi-ISP lab
    client_ns: str
    censor_ns: str
    addresses: addresses.IspAddresses
    services_if: str  # its veth's name in the services namespace
    policy_path: Path
    status_path: Path
    log_name: str


def isp_site(run_id: str, workdir: Path, isp: Isp, index: int) -> IspSite:
    suffix = "" if index == 0 else str(index)
    files = "" if index == 0 else f"-{index}"
    return IspSite(
        isp=isp,
        index=index,
        client_ns=f"ww{run_id}-client{suffix}",
        censor_ns=f"ww{run_id}-censor{suffix}",
        addresses=addresses.isp_addresses(index),
        services_if=f"{SERVICES_IF}{suffix}",  # "to-censor12": within IFNAMSIZ (15)
        policy_path=workdir / f"policy{files}.yaml",
        status_path=workdir / f"censor-status{files}.json",
        log_name=f"censor{files}.log",
    )


def default_state_path() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_PATH)


def namespace_names(run_id: str) -> dict[str, str]:
    return {role: f"ww{run_id}-{_ROLE_SUFFIX[role]}" for role in ROLES}


def _must(argv: Sequence[str], what: str, *, input: str | None = None) -> None:
    netns.must(argv, what, LabError, input=input)


def existing_namespaces() -> set[str]:
    result = netns.run(["ip", "netns", "list"])
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


# --- processes ----------------------------------------------------------------


def _kill_namespace_pids(namespace: str) -> None:
    """Kill whatever still runs inside a lab namespace (e.g. a `lab exec` command), so it can go."""
    result = netns.run(["ip", "netns", "pids", namespace])
    pids = [int(p) for p in result.stdout.split() if p.isdigit()]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + 1.0
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
            time.sleep(netns.POLL_INTERVAL)
        if not pids:
            return


# --- the lab ------------------------------------------------------------------


@dataclass
class Lab:
    run_id: str
    state_path: Path
    workdir: Path
    censor_enabled: bool
    isps: tuple[Isp, ...] = (DEFAULT_ISP,)
    multi_isp: bool = False  # built with `isps=[...]`: the ISP-numbered layout
    _services: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _services_pid: int | None = None
    _censors: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    _censor_pids: dict[str, int] = field(default_factory=dict)
    _vpn_running: dict[str, Any] = field(default_factory=dict, repr=False)  # kind -> vpn_servers.Running
    _vpn_state: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> what the probe reads
    _down: bool = False

    # -- names and paths

    @property
    def sites(self) -> tuple[IspSite, ...]:
        if not self.multi_isp:
            return (isp_site(self.run_id, self.workdir, self.isps[0], 0),)
        return tuple(isp_site(self.run_id, self.workdir, isp, k) for k, isp in enumerate(self.isps, start=1))

    def site(self, isp: str | Isp | None = None) -> IspSite:
        """The site of ISP `isp` (an id or an Isp); None is the first ISP."""
        sites = self.sites
        if isp is None:
            return sites[0]
        wanted = isp.id if isinstance(isp, Isp) else isp
        for site in sites:
            if site.isp.id == wanted:
                return site
        raise LabError(f"no ISP {wanted!r} in this lab (ISPs: {', '.join(s.isp.id for s in sites)})")

    @property
    def namespaces(self) -> dict[str, str]:
        """client/censor of the first ISP and the services namespace (the single-ISP contract)."""
        first = self.sites[0]
        return {"client": first.client_ns, "censor": first.censor_ns, "services": f"ww{self.run_id}-svc"}

    def all_namespaces(self) -> list[str]:
        return [*(ns for site in self.sites for ns in (site.client_ns, site.censor_ns)), self.namespaces["services"]]

    @property
    def client_ns(self) -> str:
        return self.namespaces["client"]

    @property
    def ca_cert(self) -> Path:
        return self.workdir / "certs" / "ca.pem"

    @property
    def policy_path(self) -> Path:
        return self.sites[0].policy_path

    @property
    def censor_status_path(self) -> Path:
        return self.sites[0].status_path

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
        isps: Sequence[Isp] | None = None,
        vpn_servers: Sequence[str] = (),
    ) -> Lab:
        """Build a lab and return it once services (and censors) are ready.

        `policy` is the censors' policy (a YAML path or a dict); None means
        allow-all. `censor=False` makes the censor namespaces plain routers.
        `isps` makes a multi-ISP lab, one client and censor namespace per ISP
        (None: the single-ISP lab). `vpn_servers` names real servers to start
        in the services namespace ("openvpn"), which the probe then finds in
        the state file. On any failure everything built so far is removed
        before the error propagates.
        """
        if policy is not None and not censor:
            raise ValueError("a policy needs the censor; drop censor=False or the policy")
        unknown = set(vpn_servers) - set(VPN_SERVER_KINDS)
        if unknown:
            raise ValueError(f"unknown VPN server kinds {sorted(unknown)}; known: {', '.join(VPN_SERVER_KINDS)}")
        chosen = _check_isps(isps)
        state = Path(state_path) if state_path is not None else default_state_path()
        _refuse_live_lab(state)
        run = run_id or secrets.token_hex(3)
        lab = cls(run_id=run, state_path=state, workdir=state.parent / f"lab-{run}", censor_enabled=censor,
                  isps=chosen or (DEFAULT_ISP,), multi_isp=chosen is not None)
        try:
            lab.workdir.mkdir(parents=True)
            lab._write_state()  # first, so a crash mid-build can still be cleaned from the state file
            lab._build_network()
            from wallwatch.lab.ca import make_lab_certificates

            make_lab_certificates(lab.workdir / "certs", addresses.NAMES, run_id=run)
            lab._start_services(timeout)
            if censor:
                for site in lab.sites:
                    lab._write_policy(site, ALLOW_ALL_POLICY if policy is None else policy)
                lab._start_censors(timeout)
            for kind in vpn_servers:
                lab._start_vpn_server(kind)
            lab._write_state()
        except BaseException:
            lab.down()
            raise
        return lab

    def _build_network(self) -> None:
        services = self.namespaces["services"]
        existing = existing_namespaces() & set(self.all_namespaces())
        if existing:
            raise LabError(f"namespaces {sorted(existing)} already exist; run id {self.run_id} is taken")
        batch = [f"netns add {services}"]
        for site in self.sites:
            batch += [
                f"netns add {site.client_ns}",
                f"netns add {site.censor_ns}",
                # Created inside the namespaces: never in the root namespace, not even briefly.
                f"link add {CLIENT_IF} netns {site.client_ns} type veth peer name {CENSOR_CLIENT_IF} netns {site.censor_ns}",
                f"link add {site.services_if} netns {services} type veth peer name {CENSOR_SERVICES_IF} netns {site.censor_ns}",
            ]
        _must(["ip", "-batch", "-"], "creating namespaces and veths", input="\n".join(batch) + "\n")
        internet = self._internet_device(services)
        link = addresses.LINK_PREFIX_LEN
        per_namespace: dict[str, list[str]] = {
            services: [
                *(f"addr add {a}/32 dev {internet}" for a in addresses.service_addresses()),
            ]
        }
        for site in self.sites:
            a = site.addresses
            per_namespace[site.client_ns] = [
                f"addr add {a.client}/{link} dev {CLIENT_IF}",
                f"link set {CLIENT_IF} up",
                f"route add {addresses.LAB_BLOCK} via {a.censor_client_side}",
            ]
            per_namespace[site.censor_ns] = [
                f"addr add {a.censor_client_side}/{link} dev {CENSOR_CLIENT_IF}",
                f"addr add {a.censor_services_side}/{link} dev {CENSOR_SERVICES_IF}",
                f"link set {CENSOR_CLIENT_IF} up",
                f"link set {CENSOR_SERVICES_IF} up",
                f"route add {addresses.INTERNET_BLOCK} via {a.services_side}",
            ]
            per_namespace[services] += [
                f"addr add {a.services_side}/{link} dev {site.services_if}",
                f"link set {site.services_if} up",
                # Each ISP's clients are reached back through that ISP's censor.
                f"route add {a.client_subnet} via {a.censor_services_side}",
            ]
        for namespace, commands in per_namespace.items():
            _must(["ip", "-n", namespace, "-batch", "-"], f"configuring {namespace}", input="\n".join(["link set lo up", *commands]) + "\n")
        for site in self.sites:
            _must(["ip", "netns", "exec", site.censor_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], "enabling forwarding")
        self._disable_offloads()

    @staticmethod
    def _internet_device(services_ns: str) -> str:
        """The link holding the lab-internet addresses: a dummy, or loopback if the kernel lacks dummy.

        Both are local-only; loopback behaves the same for addresses with /32
        prefixes (the kernel answers for them locally and routes nothing else).
        Kernels built without CONFIG_DUMMY exist (the project's Firecracker guests).
        """
        result = netns.run(["ip", "-n", services_ns, "link", "add", INTERNET_IF, "type", "dummy"])
        if result.returncode != 0:
            return "lo"
        _must(["ip", "-n", services_ns, "link", "set", INTERNET_IF, "up"], "bringing the dummy link up")
        return INTERNET_IF

    def _disable_offloads(self) -> None:
        """Best effort: MTU-sized segments through the censor, as on a real path.

        With TSO/GSO/GRO the censor would see 64 KiB super-packets, which real
        middleboxes never do and netfilterqueue's 4 KiB buffer truncates
        ([netfilterqueue]; [CensorLab] also turns these off).
        """
        if shutil.which("ethtool") is None:
            return
        services = self.namespaces["services"]
        for site in self.sites:
            for namespace, device in (
                (site.client_ns, CLIENT_IF),
                (site.censor_ns, CENSOR_CLIENT_IF),
                (site.censor_ns, CENSOR_SERVICES_IF),
                (services, site.services_if),
            ):
                netns.run_in(namespace, ["ethtool", "-K", device, "tso", "off", "gso", "off", "gro", "off"])

    def _spawn(self, namespace: str, argv: Sequence[str], log_name: str) -> subprocess.Popen[bytes]:
        return netns.spawn(namespace, argv, self.workdir / log_name, cwd=self.workdir)

    def _start_services(self, timeout: float) -> None:
        ready_file = self.workdir / "services-ready.json"
        self._services = self._spawn(
            self.namespaces["services"],
            [sys.executable, "-m", "wallwatch.lab.services", "--workdir", str(self.workdir)],
            "services.log",
        )
        self._services_pid = self._services.pid
        self._write_state()
        netns.wait_for(ready_file.exists, self._services, name="the services process", what=ready_file.name,
                       timeout=timeout, log_path=self.workdir / "services.log", error=LabError)

    def _write_policy(self, site: IspSite, policy: str | Path | Mapping[str, Any]) -> str:
        if isinstance(policy, Mapping):
            import yaml

            data = yaml.safe_dump(dict(policy), sort_keys=False).encode()
        else:
            data = Path(policy).read_bytes()
        _write_atomic(site.policy_path, data)
        return hashlib.sha256(data).hexdigest()

    def _start_censors(self, timeout: float) -> None:
        """One censor per ISP, all started before any is awaited (each takes a second or two to import)."""
        for site in self.sites:
            process = self._spawn(
                site.censor_ns,
                [
                    sys.executable, "-m", "wallwatch.cli", "censor", "run",
                    "--policy", str(site.policy_path),
                    "--status-file", str(site.status_path),
                ],
                site.log_name,
            )
            self._censors[site.isp.id] = process
            self._censor_pids[site.isp.id] = process.pid
        self._write_state()
        for site in self.sites:
            self._await_policy(site, _sha256(site.policy_path), previous=None, timeout=timeout)

    def _start_vpn_server(self, kind: str) -> None:
        from wallwatch.lab import vpn_servers

        binary = VPN_SERVER_BINARIES[kind]
        if shutil.which(binary) is None:
            raise LabError(f"the {binary} binary is not installed (scripts/install.sh)")
        # The probe's contract (probe/settings.py LabInfo.vpn_servers): what a client needs, no more.
        backend = f"{vpn_servers.HTTP_BACKEND_ADDRESS}:{vpn_servers.HTTP_BACKEND_PORT}"
        if kind in ("shadowsocks", "obfs4", "wireguard") and "http-backend" not in self._vpn_running:
            self._vpn_running["http-backend"] = vpn_servers.start_http_backend(self)
        if kind == "openvpn":
            running = vpn_servers.start_openvpn_server(self)
            state: dict[str, Any] = {"transports": ["udp", "tcp"]}
        elif kind == "wireguard":
            running = vpn_servers.start_wireguard_server(self)
            info = running.info
            state = {"server_public": info["server_public"], "client_private": info["client_private"],
                     "tunnel_client": f"{info['tunnel_client']}/{vpn_servers.WIREGUARD_TUNNEL.split('/')[1]}",
                     "tunnel_server": info["tunnel_server"], "target": backend}
        elif kind == "shadowsocks":
            running = vpn_servers.start_shadowsocks_server(self)
            state = {"method": running.info["method"], "password": running.info["password"], "target": backend}
        elif kind == "obfs4":
            running = vpn_servers.start_obfs4_server(self)
            state = {"cert": running.info["args"], "target": backend}
        else:  # tor: a bridge relay, and an obfs4 bridge in front of it
            running = vpn_servers.start_tor_bridge(self)
            self._vpn_running["tor-obfs4"] = obfs4 = vpn_servers.start_obfs4_server(
                self, vpn_servers.TOR_OBFS4_ADDRESS, vpn_servers.OBFS4_PORT, backend=(running.address, running.port))
            state = {"fingerprint": running.info["fingerprint"],
                     "obfs4": {"address": obfs4.address, "port": obfs4.port, "cert": obfs4.info["args"]}}
        self._vpn_running[kind] = running
        self._vpn_state[kind] = {"address": running.address, "port": running.port, **state}
        self._write_state()

    def _censor_alive(self, site: IspSite) -> bool:
        process = self._censors.get(site.isp.id)
        if process is not None:
            return process.poll() is None
        pid = self._censor_pids.get(site.isp.id)
        return pid is not None and process_is_ours(pid, str(self.workdir))

    def _await_policy(self, site: IspSite, sha256: str, previous: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        """Wait for the censor's status to report `sha256`, or an error newer than `previous`."""
        deadline = time.monotonic() + timeout
        where = "" if not self.multi_isp else f" of ISP {site.isp.id}"
        while True:
            status = _read_json(site.status_path)
            # A failed load leaves the old policy (and its sha) in force, so the
            # new sha in the status means the new policy is the one in force.
            if status is not None and status.get("policy_sha256") == sha256:
                return status
            if status is not None and status != previous and status.get("error"):
                raise LabError(f"the censor{where} rejected the policy: {status['error']}")
            if not self._censor_alive(site):
                raise LabError(f"the censor{where} exited:\n{log_tail(self.workdir / site.log_name)}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"the censor{where} did not report policy {sha256[:12]} within {timeout:.0f} s "
                    f"(status: {status}):\n{log_tail(self.workdir / site.log_name)}"
                )
            time.sleep(netns.POLL_INTERVAL)

    # -- state

    def _censor_state(self, site: IspSite) -> dict[str, Any] | None:
        if not self.censor_enabled:
            return None
        return {"pid": self._censor_pids.get(site.isp.id), "policy_path": str(site.policy_path), "status_path": str(site.status_path)}

    def state(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "namespaces": self.namespaces,
            "resolver": addresses.RESOLVER,
            "ca_cert": str(self.ca_cert),
            "address_map": dict(addresses.REAL_TO_LAB),
            "lab_networks": [addresses.LAB_BLOCK],
            "names": dict(addresses.NAMES),
            "censor": self._censor_state(self.sites[0]),
            "services_pid": self._services_pid,
            "workdir": str(self.workdir),
            "multi_isp": self.multi_isp,
            "isps": [
                {
                    **site.isp.as_dict(),
                    "index": site.index,
                    "namespaces": {"client": site.client_ns, "censor": site.censor_ns},
                    "client_address": site.addresses.client,
                    "censor": self._censor_state(site),
                }
                for site in self.sites
            ],
            "vpn_servers": dict(self._vpn_state),
            # The probe's contract (probe/settings.py LabInfo.test_helpers): the helper the services run.
            "test_helpers": {"web_connectivity": addresses.TEST_HELPER_URL},
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
        entries = state.get("isps") or [{**DEFAULT_ISP.as_dict(), "censor": censor}]
        isps = tuple(Isp(**{key: entry[key] for key in ("id", "name", "asn", "cc", "network_name")}) for entry in entries)
        pids = {entry["id"]: entry["censor"]["pid"] for entry in entries if entry.get("censor") and entry["censor"].get("pid")}
        return cls(
            run_id=state["run_id"],
            state_path=path,
            workdir=Path(state["workdir"]),
            censor_enabled=censor is not None,
            isps=isps,
            multi_isp=bool(state.get("multi_isp")),
            _services_pid=state.get("services_pid"),
            _censor_pids=pids,
            _vpn_state=dict(state.get("vpn_servers") or {}),
        )

    # -- using a lab

    def run_in(
        self, role: str, argv: Sequence[str], *, timeout: float = 60.0, text: bool = True, isp: str | Isp | None = None,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in one of the lab's namespaces ("client", "censor" of ISP `isp`, or "services")."""
        if role == "services":
            namespace = self.namespaces["services"]
        elif role in ("client", "censor"):
            site = self.site(isp)
            namespace = site.client_ns if role == "client" else site.censor_ns
        else:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        env = {**os.environ, LAB_ENV: str(self.state_path), **kwargs.pop("env", {})}
        kwargs.setdefault("capture_output", True)
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *argv], env=env, timeout=timeout, text=text, check=False, **kwargs
        )

    def run_in_client(
        self, argv: Sequence[str], *, timeout: float = 60.0, isp: str | Isp | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in ISP `isp`'s client namespace (None: the first) with `WALLWATCH_LAB` set, as the probe runs."""
        return self.run_in("client", argv, timeout=timeout, isp=isp, **kwargs)

    def censor_status(self, isp: str | Isp | None = None) -> dict[str, Any] | None:
        return _read_json(self.site(isp).status_path) if self.censor_enabled else None

    def set_policy(
        self, policy: str | Path | Mapping[str, Any], *, timeout: float = 15.0, isp: str | Isp | None = None
    ) -> dict[str, Any]:
        """Swap the censor's policy on ISP `isp` (None: every ISP); returns the (first) censor's status once loaded.

        The censors reload in parallel: every policy is written and signalled
        before any is awaited.
        """
        sites = self.sites if isp is None else (self.site(isp),)
        return self.set_policies({site.isp.id: policy for site in sites}, timeout=timeout)[sites[0].isp.id]

    def set_policies(
        self, policies: Mapping[str, str | Path | Mapping[str, Any]], *, timeout: float = 15.0
    ) -> dict[str, dict[str, Any]]:
        """Put a (different) policy in force on each named ISP at once; returns each censor's status."""
        if not self.censor_enabled:
            raise LabError("this lab runs without a censor (--no-censor)")
        sites = [self.site(isp_id) for isp_id in policies]
        for site in sites:
            if site.isp.id not in self._censor_pids or not self._censor_alive(site):
                raise LabError(f"the censor of ISP {site.isp.id} is not running:\n{log_tail(self.workdir / site.log_name)}")
        pending = []
        for site in sites:
            previous = _read_json(site.status_path)
            sha256 = self._write_policy(site, policies[site.isp.id])
            os.kill(self._censor_pids[site.isp.id], signal.SIGHUP)
            pending.append((site, sha256, previous))
        return {site.isp.id: self._await_policy(site, sha256, previous, timeout) for site, sha256, previous in pending}

    def set_platform_filter(self, keywords: Sequence[str] | None) -> None:
        """Put a keyword list in force on the emulated chat platform (None or empty: it filters nothing);
        the platform reads it on its next message (lab/chat_platform.py)."""
        from wallwatch.lab.chat_platform import write_filter

        write_filter(self.workdir, keywords)

    def alive(self) -> dict[str, bool]:
        """Which parts are alive: each namespace, the services, the censor(s)."""
        present = existing_namespaces()
        marker = str(self.workdir)
        report = {f"namespace {name}": name in present for name in self.all_namespaces()}
        report["services"] = self._services_pid is not None and process_is_ours(self._services_pid, marker)
        if self.censor_enabled:
            for site in self.sites:
                pid = self._censor_pids.get(site.isp.id)
                key = "censor" if not self.multi_isp else f"censor {site.isp.id}"
                report[key] = pid is not None and process_is_ours(pid, marker)
        return report

    # -- tearing down

    def down(self) -> None:
        """Stop the processes, delete the namespaces, remove workdir and state. Idempotent."""
        marker = str(self.workdir)
        for running in reversed(list(self._vpn_running.values())):
            with contextlib.suppress(Exception):  # best effort: the namespaces go below anyway
                running.stop()
        self._vpn_running.clear()
        # The censors first, so each removes its own rules while its namespace exists.
        for site in self.sites:
            pid = self._censor_pids.get(site.isp.id)
            if pid is not None:
                netns.stop_group(pid, grace=STOP_TIMEOUT, child=self._censors.get(site.isp.id), marker=marker)
        if self._services_pid is not None:
            netns.stop_group(self._services_pid, grace=STOP_TIMEOUT, child=self._services, marker=marker)
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


# What `Lab.up(vpn_servers=...)` can start (lab/vpn_servers.py), and the binary each needs.
VPN_SERVER_BINARIES = {"openvpn": "openvpn", "wireguard": "wireguard-go", "shadowsocks": "ss-server",
                       "obfs4": "obfs4proxy", "tor": "tor"}
VPN_SERVER_KINDS = tuple(VPN_SERVER_BINARIES)
# Every circumvention server: what `probe run circumvention` measures.
CIRCUMVENTION_SERVERS = VPN_SERVER_KINDS


def _check_isps(isps: Sequence[Isp] | None) -> tuple[Isp, ...] | None:
    if isps is None:
        return None
    chosen = tuple(isps)
    if not 1 <= len(chosen) <= addresses.MAX_ISPS:
        raise ValueError(f"a lab holds 1..{addresses.MAX_ISPS} ISPs, not {len(chosen)}")
    ids = [isp.id for isp in chosen]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate ISP ids: {', '.join(duplicates)}")
    return chosen


def run_namespaces(run_id: str, present: set[str] | None = None) -> list[str]:
    """Every namespace of lab `run_id` that exists, whatever its number of ISPs (client/censor first, svc last)."""
    names = present if present is not None else existing_namespaces()
    ours = [name for name in names if (m := NAMESPACE_PATTERN.match(name)) and m["run"] == run_id]
    return sorted(ours, key=lambda name: (name.endswith("-svc"), name))


def _remove_namespaces(run_id: str) -> None:
    for namespace in run_namespaces(run_id):
        _kill_namespace_pids(namespace)
        netns.run(["ip", "netns", "del", namespace])


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
