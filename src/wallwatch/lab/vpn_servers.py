"""Real VPN and circumvention servers (and their real clients) in a running lab.

Programs nobody here wrote, run inside the lab's namespaces, so the censor's
fingerprints are tested against the real thing: Debian's `openvpn`,
`wireguard-go` + `wg`, `shadowsocks-libev` and `obfs4proxy`; plus an emulated
Telegram data centre that speaks MTProto obfuscated2 on the server side (with
`wallwatch.protocols.mtproto`) for Telethon to dial.

Lab addresses (svc namespace, on the lab-internet link, added when a server
starts and removed when it stops; all in 198.19.4.0/24, so inside the lab
block 198.18.0.0/15 that no lab route leaves):

    198.19.4.1   OpenVPN       udp/1194 and tcp/1194 (IANA "openvpn")
                 tunnels 198.18.100.0/25 (udp), 198.18.100.128/25 (tcp)
    198.19.4.2   WireGuard     udp/51820 (wg(8)'s customary port); tunnel 198.18.101.0/24
    198.19.4.3   shadowsocks   tcp/8388 (shadowsocks-libev's default), chacha20-ietf-poly1305
    198.19.4.4   obfs4         tcp/443 (where public obfs4 bridges commonly listen)
    198.19.4.5   Telegram DC   tcp/443 (Telegram DCs accept obfuscated2 on 443)
    198.19.4.6   Tor bridge    tcp/9001 (Tor's customary ORPort): Debian's `tor` as an
                 unpublished bridge relay
    198.19.4.7   obfs4 bridge  tcp/443: obfs4proxy in front of the Tor bridge's ORPort
    198.19.4.10  plain HTTP    tcp/80: the target behind the proxies and tunnels

Every process runs in its own session (process group) under
`<lab workdir>/realservers/<name>/` with its config and log; a handle's
`stop()` ends the group and removes the addresses, links and files it made.
Every `start_*` function stops what it started before re-raising, so a failed
start leaves nothing behind. `Lab.down()` is the last safety net (it kills
whatever still runs in the namespaces).

Run `python -m wallwatch.lab.vpn_servers telegram-dc|http-backend ...` for the
two servers written here (that is how the start functions run them).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from wallwatch.lab import netns
from wallwatch.lab.netns import log_tail

# --- addresses and ports (see the module docstring) ---------------------------
OPENVPN_ADDRESS = "198.19.4.1"
WIREGUARD_ADDRESS = "198.19.4.2"
SHADOWSOCKS_ADDRESS = "198.19.4.3"
OBFS4_ADDRESS = "198.19.4.4"
TELEGRAM_DC_ADDRESS = "198.19.4.5"
TOR_BRIDGE_ADDRESS = "198.19.4.6"
TOR_OBFS4_ADDRESS = "198.19.4.7"
HTTP_BACKEND_ADDRESS = "198.19.4.10"
ADDRESSES: Mapping[str, str] = {
    "openvpn": OPENVPN_ADDRESS,
    "wireguard": WIREGUARD_ADDRESS,
    "shadowsocks": SHADOWSOCKS_ADDRESS,
    "obfs4": OBFS4_ADDRESS,
    "telegram-dc": TELEGRAM_DC_ADDRESS,
    "tor": TOR_BRIDGE_ADDRESS,
    "tor-obfs4": TOR_OBFS4_ADDRESS,
    "http-backend": HTTP_BACKEND_ADDRESS,
}

OPENVPN_PORT = 1194  # IANA service name "openvpn"
OPENVPN_TUNNELS = {"udp": "198.18.100.0/25", "tcp": "198.18.100.128/25"}
WIREGUARD_PORT = 51820
WIREGUARD_TUNNEL = "198.18.101.0/24"
SHADOWSOCKS_PORT = 8388
# An AEAD cipher: shadowsocks-libev's stream ciphers are deprecated (SIP004).
SHADOWSOCKS_METHOD = "chacha20-ietf-poly1305"
OBFS4_PORT = 443
TELEGRAM_DC_PORT = 443
TOR_ORPORT = 9001
HTTP_BACKEND_PORT = 80
HTTP_BACKEND_BODY = b"wallwatch real-clients backend: ok\n"

START_TIMEOUT = 15.0  # a daemon that is not listening by then has failed
STOP_GRACE = 3.0  # SIGTERM to SIGKILL

REAL_SERVERS_DIR = "realservers"


class RealServerError(RuntimeError):
    """A real server or client could not be started; the message has its log tail."""


class LabLike(Protocol):
    """What the start functions need of a running lab (topology.Lab has it)."""

    @property
    def namespaces(self) -> Mapping[str, str]: ...  # role ("client", "services") -> namespace

    workdir: Path
    run_id: str


# --- processes -----------------------------------------------------------------


def _ns_must(namespace: str, argv: Sequence[str], what: str) -> str:
    return netns.must(["ip", "netns", "exec", namespace, *argv], what, RealServerError)


@dataclass
class Daemon:
    """One long-running process in a namespace, in its own process group."""

    name: str
    namespace: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def spawn(cls, name: str, namespace: str, argv: Sequence[str], workdir: Path,
              env: Mapping[str, str] | None = None) -> Daemon:
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / f"{name}.log"
        return cls(name, namespace, netns.spawn(namespace, argv, log_path, cwd=workdir, env=env), log_path)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, ready: Callable[[], Any], what: str, timeout: float = START_TIMEOUT) -> Any:
        """Poll `ready()` until it returns something truthy; fail if the process dies first."""
        return netns.wait_for(ready, self.process, name=self.name, what=what, timeout=timeout,
                              log_path=self.log_path, error=RealServerError)

    def wait_for_log(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        regex = re.compile(pattern)
        return self.wait_for(lambda: regex.search(self.log()), repr(pattern), timeout)

    def stop(self) -> None:
        netns.stop_group(self.process.pid, grace=STOP_GRACE, child=self.process)


@dataclass
class Running:
    """What a start function made: daemons plus undo steps, stopped in reverse order.

    Also a context manager. `info` holds what a client needs (keys, ports, ...).
    """

    name: str
    address: str
    port: int
    workdir: Path
    daemons: list[Daemon] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> bool:
        return bool(self.daemons) and all(d.alive() for d in self.daemons)

    def logs(self) -> str:
        return "\n".join(f"--- {d.name}\n{log_tail(d.log_path, 40)}" for d in self.daemons)

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.stop()
        for step in reversed(self.undo):
            with contextlib.suppress(Exception):  # best effort: the namespace may already be gone
                step()
        self.daemons.clear()
        self.undo.clear()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def _stop_on_error(running: Running):  # type: ignore[no-untyped-def]
    try:
        yield running
    except BaseException:
        running.stop()
        raise


def _workdir(lab: LabLike, name: str) -> Path:
    path = Path(lab.workdir) / REAL_SERVERS_DIR / f"{name}-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _add_service_address(lab: LabLike, running: Running, address: str) -> None:
    """Give the svc namespace `address`/32, unless it has it already (then the owner removes it)."""
    namespace = lab.namespaces["services"]
    if ipaddress.ip_address(address) not in ipaddress.ip_network("198.19.0.0/16"):
        raise ValueError(f"{address} is not a lab-internet address (198.19.0.0/16)")
    device = netns.internet_device(namespace)
    result = netns.run_in(namespace, ["ip", "addr", "add", f"{address}/32", "dev", device])
    if result.returncode == 0:
        running.undo.append(lambda: netns.run_in(namespace, ["ip", "addr", "del", f"{address}/32", "dev", device]) and None)
    elif "File exists" not in result.stderr:
        raise RealServerError(f"adding {address} in {namespace}: {result.stderr.strip()}")


def _listening(namespace: str, proto: str, address: str, port: int) -> bool:
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    out = netns.run_in(namespace, ["ss", flag]).stdout
    return any(f"{address}:{port} " in line or f"0.0.0.0:{port} " in line or f"*:{port} " in line for line in out.splitlines())


def _start_python_server(lab: LabLike, kind: str, address: str, port: int, workdir: Path,
                         args: Sequence[str] = ()) -> Running:
    """One of the servers written here (`main`) on `address`:`port` in the svc namespace, once it listens."""
    running = Running(kind, address, port, workdir)
    with _stop_on_error(running):
        _add_service_address(lab, running, address)
        argv = [sys.executable, "-m", "wallwatch.lab.vpn_servers", kind, "--listen", f"{address}:{port}", *args]
        daemon = Daemon.spawn(kind, lab.namespaces["services"], argv, workdir)
        running.daemons.append(daemon)
        daemon.wait_for(lambda: _listening(lab.namespaces["services"], "tcp", address, port), f"listener on {address}:{port}")
    return running


# --- the plain HTTP backend ----------------------------------------------------


def start_http_backend(lab: LabLike, address: str = HTTP_BACKEND_ADDRESS, port: int = HTTP_BACKEND_PORT) -> Running:
    """A plain HTTP/1.1 server answering every request with HTTP_BACKEND_BODY (the target behind proxies)."""
    return _start_python_server(lab, "http-backend", address, port, _workdir(lab, "http-backend"))


# --- the emulated Telegram data centre ----------------------------------------


def start_telegram_dc(lab: LabLike, address: str = TELEGRAM_DC_ADDRESS, port: int = TELEGRAM_DC_PORT) -> Running:
    """The emulated DC. `info["record"]` is its JSON-lines record (read it with `telegram_dc_records`)."""
    workdir = _workdir(lab, "telegram-dc")
    record = workdir / "dc-record.jsonl"
    running = _start_python_server(lab, "telegram-dc", address, port, workdir, ["--record", str(record)])
    running.info["record"] = record
    return running


def telegram_dc_records(dc: Running) -> list[dict[str, Any]]:
    path: Path = dc.info["record"]
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- OpenVPN -------------------------------------------------------------------


def _openvpn_pki(directory: Path) -> dict[str, Path]:
    """A throwaway CA, server and client certificate for OpenVPN's TLS control channel.

    The lab CA (lab/ca.py) discards its key after signing the one server
    certificate, and OpenVPN wants a client certificate and the EKUs that
    `remote-cert-tls server` checks (OpenVPN manual, --remote-cert-tls), so
    the VPN gets its own short-lived CA. ECDSA P-256 like the lab CA.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wallwatch lab"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def key_usage(ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                             key_encipherment=False, data_encipherment=False, key_agreement=not ca,
                             encipher_only=False, decipher_only=False)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("wallwatch lab OpenVPN CA")

    def issue(subject: x509.Name, key: ec.EllipticCurvePrivateKey, *, ca: bool, eku: Any = None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
            .add_extension(key_usage(ca), critical=True)
        )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    paths: dict[str, Path] = {}
    ca_cert = issue(ca_name, ca_key, ca=True)
    paths["ca"] = directory / "ca.pem"
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role, eku in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(name(f"wallwatch-openvpn-{role}"), key, ca=False, eku=eku)
        paths[role] = directory / f"{role}.pem"
        paths[f"{role}-key"] = directory / f"{role}-key.pem"
        paths[role].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(paths[f"{role}-key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


OPENVPN_READY = r"Initialization Sequence Completed"


def start_openvpn_server(lab: LabLike, address: str = OPENVPN_ADDRESS, port: int = OPENVPN_PORT,
                         protos: Sequence[str] = ("udp", "tcp")) -> Running:
    """Debian's openvpn as a TLS-mode server, one process per transport.

    `info["pki"]` has the certificates a client needs; `info["tunnel_gateway"][proto]`
    is the server's address inside each tunnel (ping it through the tunnel).
    """
    running = Running("openvpn", address, port, _workdir(lab, "openvpn"))
    namespace = lab.namespaces["services"]
    with _stop_on_error(running):
        _add_service_address(lab, running, address)
        pki = _openvpn_pki(running.workdir)
        running.info.update(pki=pki, tunnel_gateway={})
        for proto in protos:
            tunnel = ipaddress.ip_network(OPENVPN_TUNNELS[proto])
            config = running.workdir / f"server-{proto}.conf"
            config.write_text("\n".join([
                f"local {address}",
                f"port {port}",
                "proto " + ("udp4" if proto == "udp" else "tcp4-server"),
                f"dev ovpn-{proto}", "dev-type tun",
                "topology subnet",
                f"server {tunnel.network_address} {tunnel.netmask}",
                f"ca {pki['ca']}", f"cert {pki['server']}", f"key {pki['server-key']}",
                "dh none",  # ECDHE only (OpenVPN 2.4+)
                "keepalive 2 10",
                "verb 3",
                *(["explicit-exit-notify 1"] if proto == "udp" else []),
                "",
            ]))
            daemon = Daemon.spawn(f"openvpn-server-{proto}", namespace, ["openvpn", "--config", str(config)], running.workdir)
            running.daemons.append(daemon)
            running.info["tunnel_gateway"][proto] = str(next(tunnel.hosts()))
        for daemon in running.daemons:
            daemon.wait_for_log(OPENVPN_READY)
    return running


def start_openvpn_client(lab: LabLike, server: Running, proto: str = "udp", *,
                         route_through_tunnel: Sequence[str] = (HTTP_BACKEND_ADDRESS,)) -> Running:
    """Debian's openvpn as a client in the client namespace. Does not wait for the tunnel:
    call `openvpn_client_connected(client, timeout)`.

    `route_through_tunnel` are host routes sent into the tunnel, so that a TCP
    connection to the lab backend provably goes through it.
    """
    pki = server.info["pki"]
    running = Running(f"openvpn-client-{proto}", server.address, server.port, _workdir(lab, f"openvpn-client-{proto}"))
    with _stop_on_error(running):
        config = running.workdir / "client.conf"
        config.write_text("\n".join([
            "client",
            f"remote {server.address} {server.port}",
            "proto " + ("udp4" if proto == "udp" else "tcp4-client"),
            "dev ovpn-c", "dev-type tun",
            "nobind",
            f"ca {pki['ca']}", f"cert {pki['client']}", f"key {pki['client-key']}",
            "remote-cert-tls server",
            "connect-retry 1 1", "server-poll-timeout 5",
            *(f"route {host} 255.255.255.255" for host in route_through_tunnel),
            "verb 3",
            "",
        ]))
        running.daemons.append(Daemon.spawn("openvpn-client", lab.namespaces["client"], ["openvpn", "--config", str(config)],
                                            running.workdir))
    return running


def openvpn_client_connected(client: Running, timeout: float) -> bool:
    """Whether the client logs "Initialization Sequence Completed" within `timeout` seconds."""
    try:
        client.daemons[0].wait_for_log(OPENVPN_READY, timeout)
    except RealServerError:
        return False
    return True


# --- WireGuard -----------------------------------------------------------------


def _wireguard_keypair() -> tuple[str, str]:
    """(private, public), base64 as wg(8) writes them (Curve25519, whitepaper §5.4)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


WIREGUARD_SOCKET_DIR = Path("/var/run/wireguard")  # wireguard-go's UAPI sockets, shared by all namespaces


def _interface_name(prefix: str, lab: LabLike) -> str:
    # UAPI sockets live in one directory for every namespace, so names carry the
    # run id (IFNAMSIZ: at most 15 characters).
    return f"{prefix}{lab.run_id}"[:12] + secrets.token_hex(1)[:2]


def _start_wireguard_interface(lab: LabLike, running: Running, role: str, interface: str, private_key: str,
                               address_cidr: str, wg_args: Sequence[str]) -> None:
    namespace = lab.namespaces[role]
    key_file = running.workdir / f"{interface}.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(private_key + "\n")
    # -f: stay in the foreground, so the process group is the daemon.
    daemon = Daemon.spawn(f"wireguard-go-{role}", namespace, ["wireguard-go", "-f", interface], running.workdir)
    running.daemons.append(daemon)
    socket = WIREGUARD_SOCKET_DIR / f"{interface}.sock"
    running.undo.append(lambda: socket.unlink(missing_ok=True))
    daemon.wait_for(socket.exists, f"UAPI socket {socket}")
    _ns_must(namespace, ["wg", "set", interface, "private-key", str(key_file), *wg_args], "wg set")
    _ns_must(namespace, ["ip", "addr", "add", address_cidr, "dev", interface], "addressing the tunnel")
    _ns_must(namespace, ["ip", "link", "set", interface, "up"], "bringing the tunnel up")


def start_wireguard_server(lab: LabLike, address: str = WIREGUARD_ADDRESS, port: int = WIREGUARD_PORT) -> Running:
    """wireguard-go over TUN in the svc namespace, configured with wg(8), one peer slot.

    `info` has the server's public key, the client's key pair and both tunnel
    addresses, for `start_wireguard_client`.
    """
    running = Running("wireguard", address, port, _workdir(lab, "wireguard"))
    tunnel = ipaddress.ip_network(WIREGUARD_TUNNEL)
    server_ip, client_ip = (str(h) for h, _ in zip(tunnel.hosts(), range(2)))
    server_private, server_public = _wireguard_keypair()
    client_private, client_public = _wireguard_keypair()
    interface = _interface_name("wgs", lab)
    running.info.update(server_public=server_public, client_private=client_private, client_public=client_public,
                        tunnel_server=server_ip, tunnel_client=client_ip, interface=interface)
    with _stop_on_error(running):
        _add_service_address(lab, running, address)
        _start_wireguard_interface(
            lab, running, "services", interface, server_private, f"{server_ip}/{tunnel.prefixlen}",
            ["listen-port", str(port), "peer", client_public, "allowed-ips", f"{client_ip}/32"],
        )
    return running


def start_wireguard_client(lab: LabLike, server: Running, *,
                           route_through_tunnel: Sequence[str] = (HTTP_BACKEND_ADDRESS,)) -> Running:
    """wireguard-go + wg in the client namespace, peered with `server`. No handshake is
    sent until traffic is: ping `server.info["tunnel_server"]` to start one."""
    info = server.info
    tunnel = ipaddress.ip_network(WIREGUARD_TUNNEL)
    interface = _interface_name("wgc", lab)
    running = Running("wireguard-client", server.address, server.port, _workdir(lab, "wireguard-client"),
                      info={"interface": interface})
    allowed = [f"{info['tunnel_server']}/32", *(f"{h}/32" for h in route_through_tunnel)]
    with _stop_on_error(running):
        _start_wireguard_interface(
            lab, running, "client", interface, info["client_private"], f"{info['tunnel_client']}/{tunnel.prefixlen}",
            ["peer", info["server_public"], "endpoint", f"{server.address}:{server.port}", "allowed-ips", ",".join(allowed)],
        )
        for host in route_through_tunnel:
            _ns_must(lab.namespaces["client"], ["ip", "route", "add", f"{host}/32", "dev", interface], "routing into the tunnel")
    return running


def wireguard_latest_handshake(lab: LabLike, role: str, interface: str) -> int:
    """Unix time of the interface's latest handshake with its peer (0: none), from `wg show`."""
    out = _ns_must(lab.namespaces[role], ["wg", "show", interface, "latest-handshakes"], "wg show")
    stamps = [int(line.split()[1]) for line in out.splitlines() if len(line.split()) == 2]
    return max(stamps, default=0)


# --- shadowsocks ---------------------------------------------------------------


def start_shadowsocks_server(lab: LabLike, address: str = SHADOWSOCKS_ADDRESS, port: int = SHADOWSOCKS_PORT,
                             method: str = SHADOWSOCKS_METHOD) -> Running:
    """shadowsocks-libev's ss-server (TCP only); `info` has the password and method."""
    running = Running("shadowsocks", address, port, _workdir(lab, "shadowsocks"))
    password = secrets.token_urlsafe(16)
    running.info.update(password=password, method=method)
    with _stop_on_error(running):
        _add_service_address(lab, running, address)
        config = running.workdir / "ss-server.json"
        config.write_text(json.dumps({"server": address, "server_port": port, "password": password,
                                      "method": method, "timeout": 30, "mode": "tcp_only"}))
        daemon = Daemon.spawn("ss-server", lab.namespaces["services"], ["ss-server", "-c", str(config)], running.workdir)
        running.daemons.append(daemon)
        daemon.wait_for(lambda: _listening(lab.namespaces["services"], "tcp", address, port), f"listener on {address}:{port}")
    return running


SOCKS_ADDRESS = "127.0.0.1"  # the client-side proxies listen on the client namespace's loopback only


def start_shadowsocks_client(lab: LabLike, server: Running, socks_port: int = 1080) -> Running:
    """ss-local in the client namespace: a SOCKS5 proxy at 127.0.0.1:`socks_port` (`info["socks"]`)."""
    running = Running("shadowsocks-client", server.address, server.port, _workdir(lab, "shadowsocks-client"))
    running.info["socks"] = (SOCKS_ADDRESS, socks_port)
    with _stop_on_error(running):
        config = running.workdir / "ss-local.json"
        config.write_text(json.dumps({
            "server": server.address, "server_port": server.port, "local_address": SOCKS_ADDRESS,
            "local_port": socks_port, "password": server.info["password"], "method": server.info["method"],
            "timeout": 30, "mode": "tcp_only",
        }))
        daemon = Daemon.spawn("ss-local", lab.namespaces["client"], ["ss-local", "-c", str(config)], running.workdir)
        running.daemons.append(daemon)
        daemon.wait_for(lambda: _listening(lab.namespaces["client"], "tcp", SOCKS_ADDRESS, socks_port), "SOCKS listener")
    return running


# --- obfs4 ---------------------------------------------------------------------
# obfs4proxy runs as a Tor managed pluggable transport: configured by TOR_PT_*
# variables and answering on stdout (Tor pt-spec.txt §3.2-3.3).

_SMETHOD = re.compile(r"^SMETHOD obfs4 (\S+) ARGS:(\S+)$", re.M)
_CMETHOD = re.compile(r"^CMETHOD obfs4 socks5 127\.0\.0\.1:(\d+)$", re.M)


def _obfs4proxy(namespace: str, running: Running, role: str, env: Mapping[str, str]) -> re.Match[str]:
    """Start obfs4proxy as the `role` ("server", "client") of a managed transport with
    the TOR_PT_* variables `env`, and return its announcement of obfs4 (SMETHOD / CMETHOD),
    once it has said "SMETHODS DONE" / "CMETHODS DONE"."""
    state = running.workdir / "state"
    state.mkdir()
    env = {"TOR_PT_MANAGED_TRANSPORT_VER": "1", "TOR_PT_STATE_LOCATION": str(state), **env}
    daemon = Daemon.spawn(f"obfs4proxy-{role}", namespace, ["obfs4proxy", "-enableLogging", "-logLevel", "INFO"],
                          running.workdir, env)
    running.daemons.append(daemon)
    method, announcement = ("SMETHOD", _SMETHOD) if role == "server" else ("CMETHOD", _CMETHOD)
    daemon.wait_for_log(rf"{method}S DONE")
    match = announcement.search(daemon.log())
    if match is None:
        raise RealServerError(f"obfs4proxy {role} did not announce obfs4:\n{daemon.log()}")
    return match


def start_obfs4_server(lab: LabLike, address: str = OBFS4_ADDRESS, port: int = OBFS4_PORT,
                       backend: tuple[str, int] = (HTTP_BACKEND_ADDRESS, HTTP_BACKEND_PORT)) -> Running:
    """obfs4proxy server forwarding to `backend` (Tor's ORPort in a real bridge).

    `info["args"]` is the bridge line's "cert=...,iat-mode=0".
    """
    running = Running("obfs4", address, port, _workdir(lab, "obfs4"))
    env = {
        "TOR_PT_SERVER_TRANSPORTS": "obfs4",
        "TOR_PT_SERVER_BINDADDR": f"obfs4-{address}:{port}",
        "TOR_PT_ORPORT": f"{backend[0]}:{backend[1]}",
    }
    with _stop_on_error(running):
        _add_service_address(lab, running, address)
        running.info["args"] = _obfs4proxy(lab.namespaces["services"], running, "server", env).group(2)
    return running


def obfs4_socks_credentials(args: str) -> tuple[bytes, bytes]:
    """SOCKS5 username/password carrying the bridge arguments (pt-spec.txt §3.5):
    the `;`-joined arguments split at 255 bytes, the password at least one NUL."""
    joined = args.replace(",", ";").encode()
    return joined[:255], joined[255:] or b"\x00"


def start_obfs4_client(lab: LabLike, server: Running) -> Running:
    """obfs4proxy client in the client namespace: `info["socks"]` is its SOCKS5 address,
    `info["credentials"]` the username/password to send (see obfs4_socks_credentials).

    As with Tor, the SOCKS CONNECT names the *bridge* (`server.address:port`);
    the bridge then forwards the stream to its backend.
    """
    running = Running("obfs4-client", server.address, server.port, _workdir(lab, "obfs4-client"))
    with _stop_on_error(running):
        match = _obfs4proxy(lab.namespaces["client"], running, "client", {"TOR_PT_CLIENT_TRANSPORTS": "obfs4"})
        running.info.update(socks=(SOCKS_ADDRESS, int(match.group(1))),
                            credentials=obfs4_socks_credentials(server.info["args"]))
    return running


# --- Tor ------------------------------------------------------------------------
# A private Tor network needs directory authorities voting a consensus (TestingTorNetwork);
# what runs here is one real relay, configured as an unpublished bridge. A client reaches
# it, completes Tor's link handshake (TLS + VERSIONS/CERTS/NETINFO, tor-spec §4) and opens
# a one-hop directory circuit to it; it can go no further (no consensus to fetch), which
# is what the circumvention nettest measures, as OONI's vanilla_tor reports bootstrap
# progress (docs in probe/nettests/circumvention.py).

TOR_READY = r"Bootstrapped 0%|Self-testing indicates|Now checking whether"


def tor_offline_lines() -> list[str]:
    """torrc lines that keep a tor process from ever dialling the real Tor network: no default
    authorities or fallback directories (the lab has no route out either; this is belt and braces)."""
    return [
        "UseDefaultFallbackDirs 0",
        # One authority that is not: a lab address where nothing votes. Without any
        # DirAuthority line tor would use the real ones.
        "DirAuthority wallwatchlab orport=9001 no-v2 v3ident=0000000000000000000000000000000000000000 "
        f"{TOR_BRIDGE_ADDRESS}:9030 0000000000000000000000000000000000000000",
    ]


def start_tor_bridge(lab: LabLike, address: str = TOR_BRIDGE_ADDRESS, port: int = TOR_ORPORT) -> Running:
    """Debian's tor as an unpublished bridge relay; `info["fingerprint"]` is its identity for a bridge line."""
    running = Running("tor", address, port, _workdir(lab, "tor"))
    namespace = lab.namespaces["services"]
    with _stop_on_error(running):
        _add_service_address(lab, running, address)
        data = running.workdir / "data"
        data.mkdir(mode=0o700)
        torrc = running.workdir / "torrc"
        torrc.write_text("\n".join([
            f"DataDirectory {data}", "SocksPort 0", f"ORPort {address}:{port}", f"Address {address}",
            "BridgeRelay 1", "PublishServerDescriptor 0", "AssumeReachable 1", "ExitRelay 0",
            "Nickname wallwatchlab", "Log notice stdout", *tor_offline_lines(), "",
        ]))
        daemon = Daemon.spawn("tor-bridge", namespace, ["tor", "-f", str(torrc)], running.workdir)
        running.daemons.append(daemon)
        fingerprint = data / "fingerprint"
        daemon.wait_for(lambda: fingerprint.exists() and _listening(namespace, "tcp", address, port),
                        f"ORPort {address}:{port} and {fingerprint.name}", timeout=30)
        running.info["fingerprint"] = fingerprint.read_text().split()[1]
    return running


# === the servers written here (run as `python -m wallwatch.lab.vpn_servers ...`) ===

READ_TIMEOUT = 10.0  # a client that sends nothing for this long is gone
MAX_HEAD = 16 * 1024



def _record(path: Path, entry: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def describe_first_message(payload: bytes) -> dict[str, Any]:
    """What the DC learns from the first decrypted transport packet (a client's first is
    unencrypted: req_pq_multi, protocols.mtproto.REQ_PQ_MULTI)."""
    from wallwatch.protocols.errors import Incomplete, ProtocolError
    from wallwatch.protocols.mtproto import parse_message_head

    try:
        head = parse_message_head(payload)
    except ProtocolError as exc:
        return {"auth_key_id": None, "length": len(payload), "malformed": str(exc)}
    if isinstance(head, Incomplete):
        return {"auth_key_id": None, "length": len(payload)}
    return {
        "auth_key_id": head.auth_key_id,
        "message_id": head.message_id,
        "message_length": head.data_length,
        "constructor": f"0x{head.constructor:08x}" if head.constructor is not None else None,
        "length": len(payload),
    }


async def _serve_dc_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: Path) -> None:
    """Decrypt the client's stream and record the first MTProto packet; never answer it."""
    from wallwatch.protocols import mtproto
    from wallwatch.protocols.errors import Incomplete, ProtocolError

    peer = writer.get_extra_info("peername")
    received = 0
    entry: dict[str, Any] = {"event": "connection", "peer": f"{peer[0]}:{peer[1]}"}
    try:
        header = await asyncio.wait_for(reader.readexactly(mtproto.HEADER_SIZE), READ_TIMEOUT)
        received = len(header)
        session = mtproto.server(header)
        entry.update(transport=session.header.transport, dc_id=session.header.dc_id)
        plain = b""
        while True:
            framed = mtproto.unframe(session.header.tag, plain)
            if not isinstance(framed, Incomplete):
                entry.update(event="message", **describe_first_message(framed[0]))
                break
            chunk = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT)
            if not chunk:
                break
            received += len(chunk)
            plain += session.receive.apply(chunk)
        _record(record, {**entry, "bytes": received})
        entry = {}
        # Hold the connection (as a DC that is slow to answer) until the client leaves.
        while await asyncio.wait_for(reader.read(65536), READ_TIMEOUT):
            pass
    except asyncio.IncompleteReadError as exc:
        entry.update(error="closed before a full obfuscated2 header", bytes=len(exc.partial))
    except ProtocolError as exc:
        entry.update(error=f"not obfuscated2: {exc}", bytes=received)
    except (TimeoutError, asyncio.TimeoutError, ConnectionError, OSError) as exc:
        entry.update(error=f"{exc.__class__.__name__}", bytes=received)
    finally:
        if entry:
            _record(record, entry)
        writer.close()


async def _serve_http_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read one request head, answer 200 with the backend body, close."""
    try:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            chunk = await asyncio.wait_for(reader.read(4096), READ_TIMEOUT)
            if not chunk:
                return
            head += chunk
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(HTTP_BACKEND_BODY), HTTP_BACKEND_BODY))
        await writer.drain()
    except (TimeoutError, asyncio.TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve_forever(handler: Callable[..., Any], host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(handler, host, port)
    async with server:
        await stop.wait()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wallwatch.lab.vpn_servers",
                                     description="Servers for the real-client tests (run inside the lab's svc namespace).")
    commands = parser.add_subparsers(dest="command", required=True)
    dc = commands.add_parser("telegram-dc", help="emulated Telegram DC: decrypts obfuscated2, records the first message")
    dc.add_argument("--listen", required=True, help="ADDRESS:PORT")
    dc.add_argument("--record", required=True, type=Path, help="JSON-lines record of connections")
    http = commands.add_parser("http-backend", help="plain HTTP/1.1 server answering every request with 200")
    http.add_argument("--listen", required=True, help="ADDRESS:PORT")
    args = parser.parse_args(argv)
    host, port = _host_port(args.listen)
    if args.command == "telegram-dc":
        record: Path = args.record

        async def on_dc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _serve_dc_connection(reader, writer, record)

        asyncio.run(_serve_forever(on_dc, host, port))
    else:
        asyncio.run(_serve_forever(_serve_http_connection, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
