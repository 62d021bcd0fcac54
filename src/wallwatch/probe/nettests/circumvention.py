"""The `circumvention` nettest: which ways around the censor still work from this network.

After a block users ask "OK, now what?" (ooni/probe#1931). This nettest tries
each option with a real client and a bounded timeout, and says per option
whether it worked and, if not, how it was stopped:

* OpenVPN over UDP and TCP: the probe speaks the handshake itself up to the
  server's TLS answer (the `openvpn` nettest's code: client reset, server
  reset, ClientHello in P_CONTROL_V1), which is where an opcode fingerprint
  decides ([Xue2022]);
* WireGuard: Debian's `wireguard-go` and `wg` bring a tunnel up in the probe's
  namespace; it works when the handshake completes and an HTTP request to the
  target behind the server crosses the tunnel;
* Shadowsocks: Debian's `ss-local` (shadowsocks-libev) as a SOCKS5 proxy; it
  works when the target's HTTP answer comes back through it;
* obfs4: Debian's `obfs4proxy` as a Tor managed pluggable transport (pt-spec
  §3), SOCKS5 with the bridge's arguments; the same HTTP test;
* Tor, plain and through an obfs4 bridge: Debian's `tor` bootstrapping with
  the lab's bridge, read as OONI's vanilla_tor reads it (bootstrap progress
  and the reason it stopped). The lab runs one real Tor relay as a bridge and
  no directory authority, so no client can reach 100% there: the option works
  when the bridge answers a directory request over the Tor circuit it
  completed (bootstrap 25-30%, the consensus then 404s), which needs every
  byte of Tor's link protocol to cross the censor. Outside the lab, 100% is
  what counts.

When an option fails the probe looks at the path itself, as the other
nettests do: a TCP connect to the server's address and a same-size printable
payload (`first flight` control: fully-encrypted-traffic rules exempt it,
[Wu2023]); for Tor a plain TLS ClientHello. The control's bytes are
"delivered" when the server's kernel acknowledged them (TCP_INFO), which tells
a silent server (obfs4 says nothing to a probe, by design) from a path that
drops. The verdicts are derived from these facts by
`verdicts.derive_circumvention_features` (pure, versioned).

Targets come from the lab state file's `vpn_servers` (probe/settings.py); a
kind the file does not name is not measured. The client binaries run as
child processes in the probe's own namespace and are always stopped.

Real clients dial for themselves, and Tor knows the real network's directory
authorities and fallbacks by heart, so the nettest starts nothing from a
network namespace with a route out of the machine (a default route: a lab
namespace has none, lab/topology.py), and the client's torrc names no
address but the lab bridge's (`tor_client_torrc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping, Sequence

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.nettests import TargetError
from wallwatch.probe.primitives import tcp_connect
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace, Transaction
from wallwatch.vocabulary import Circumvention

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "circumvention"
TEST_VERSION = "0.1.0"
OPTIONS: tuple[str, ...] = tuple(option.value for option in Circumvention)
# Printable, so fully-encrypted-traffic rules exempt it [Wu2023]; no proxy protocol parses it.
CONTROL_FILLER = b"wallwatch control, not a circumvention protocol. "
CONTROL_SIZE = 256  # about a proxy client's first flight (a Shadowsocks AEAD salt + request, an obfs4 hello)
# Tor's bootstrap tags (control-spec "BOOTSTRAP"), in order, up to what a lone bridge can serve.
_BOOTSTRAPPED = re.compile(r"Bootstrapped (\d+)% \(([a-z_]+)\)")
_DIRECTORY_ANSWER = re.compile(r"Received http status code (\d+) .* from server (\S+) while fetching")
_TOR_PROBLEM = re.compile(r"Problem bootstrapping\. Stuck at (\d+)% \(([a-z_]+)\).*?\((\w+);")


@dataclass(frozen=True)
class CircumventionConfig:
    """What to try: the lab state file's `vpn_servers` entries, and per-option bounds in seconds."""

    servers: Mapping[str, Mapping[str, Any]]
    option_timeout: float = 12.0  # everything one option may take, client start to answer
    step: float = 3.0  # one connect, one control, one read
    dns_control_name: str = "example.com"


# --- never outside the lab -----------------------------------------------------------------

RTF_UP, RTF_REJECT = 0x0001, 0x0200  # route flags (linux/route.h, include/uapi/linux/ipv6_route.h)


def routes_out(ipv4_table: str, ipv6_table: str) -> list[str]:
    """The default routes in /proc/net/route and /proc/net/ipv6_route text: ways out of this namespace.

    The kernel's own IPv6 "unreachable" default (flag RTF_REJECT, on lo) leads nowhere and is not one."""
    found = []
    for line in ipv4_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            flags = int(fields[3], 16)
            if flags & RTF_UP and not flags & RTF_REJECT:
                found.append(f"default via {fields[0]}")
    for line in ipv6_table.splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[0] == "0" * 32 and fields[1] == "00" and not int(fields[8], 16) & RTF_REJECT:
            found.append(f"::/0 via {fields[9]}")
    return found


def namespace_routes_out() -> list[str]:
    """`routes_out` of the namespace this process runs in (/proc/net is per network namespace)."""
    tables = []
    for path in ("/proc/net/route", "/proc/net/ipv6_route"):
        try:
            tables.append(Path(path).read_text())
        except OSError:
            tables.append("")
    return routes_out(*tables)


def tor_client_torrc(data: Path, bridge_lines: Sequence[str], bridge_ip: str) -> str:
    """The Tor client's torrc: its bridge only, and nothing that could dial the real Tor network.

    Without a DirAuthority line tor uses the real authorities, and without
    `UseDefaultFallbackDirs 0` its built-in fallback directories (tor(1)); so
    one authority is named that is not one: the bridge's own lab address, on a
    port where nothing listens."""
    zeros = "0" * 40
    return "\n".join([
        f"DataDirectory {data}", "SocksPort 0", "UseBridges 1", *bridge_lines, "Log notice stdout",
        "UseDefaultFallbackDirs 0",
        f"DirAuthority nowhere orport=9 no-v2 v3ident={zeros} {bridge_ip}:9 {zeros}", ""])


# --- small helpers -------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tcp_unacked(sock: socket.socket) -> int | None:
    """Bytes the peer has not acknowledged (struct tcp_info's tcpi_unacked, Linux tcp(7), offset 24)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    return struct.unpack_from("I", info, 24)[0] if len(info) >= 28 else None


async def _socks5_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int],
                          credentials: tuple[bytes, bytes] | None) -> None:
    """RFC 1928 CONNECT to an IPv4 target, RFC 1929 username/password when given."""
    method = 0x02 if credentials else 0x00
    writer.write(bytes([5, 1, method]))
    await writer.drain()
    if await reader.readexactly(2) != bytes([5, method]):
        raise ProbeFailure(failures.unknown_failure("the local proxy refused the SOCKS method"))
    if credentials:
        user, password = credentials
        writer.write(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        await writer.drain()
        if (await reader.readexactly(2))[1] != 0:
            raise ProbeFailure(failures.unknown_failure("the local proxy refused the SOCKS credentials"))
    writer.write(bytes([5, 1, 0, 1]) + ipaddress.IPv4Address(target[0]).packed + struct.pack("!H", target[1]))
    await writer.drain()
    reply = await reader.readexactly(10)
    if reply[1] != 0:
        raise ProbeFailure(failures.unknown_failure(f"SOCKS CONNECT failed (reply {reply[1]})"))


async def _http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> int:
    """One HTTP/1.1 GET / on an open stream; the status code (a status line is all we need)."""
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n")
    parts = head.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ProbeFailure(failures.unknown_failure("not an HTTP answer"))
    return int(parts[1])


def _failure(exc: BaseException) -> str:
    if isinstance(exc, ProbeFailure):
        return exc.failure
    if isinstance(exc, asyncio.IncompleteReadError):
        return failures.EOF_ERROR
    return failures.classify(exc) if isinstance(exc, (OSError, asyncio.TimeoutError)) else \
        failures.unknown_failure(f"{exc.__class__.__name__}: {exc}")


class _Client:
    """A client binary run as a child in its own session (process group), always stopped."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.argv, self.env = list(argv), env
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(self.env or {})}, start_new_session=True)

    async def lines_until(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """Read output lines until one matches (None at EOF or after `timeout`)."""
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                raw = await asyncio.wait_for(self.process.stdout.readline(), remaining)
            except asyncio.TimeoutError:
                return None
            if not raw:
                return None
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            match = pattern.search(line)
            if match:
                return match
        return None

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 3.0)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()

    def tail(self, count: int = 8) -> list[str]:
        return self.lines[-count:]


async def _wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        await asyncio.sleep(0.05)
    return False


async def _run(argv: Sequence[str], timeout: float = 5.0) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return -1, "timed out"
    return process.returncode or 0, out.decode(errors="replace")


# --- the nettest ---------------------------------------------------------------------------------


class CircumventionTest:
    def __init__(self, config: CircumventionConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        self.config, self.settings = config, settings
        self.trace = trace or Trace()
        self.options: dict[str, dict[str, Any]] = {}
        self.openvpn_keys: dict[str, Any] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="wallwatch-circumvention-"))

    async def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        say = progress or (lambda message: None)
        out = namespace_routes_out()
        if out:
            # Real clients here would reach past the machine (Tor to its real authorities).
            raise TargetError(f"circumvention runs only in a lab namespace, with no route out; this one has "
                              f"{', '.join(out)} (run it with `wallwatch lab exec`)")
        servers = self.config.servers
        jobs = []
        if "openvpn" in servers:
            jobs.append(self._openvpn(servers["openvpn"]))
        for kind, job in (("wireguard", self._wireguard), ("shadowsocks", self._shadowsocks),
                          ("obfs4", self._obfs4)):
            if kind in servers:
                jobs.append(self._bounded(kind, job(servers[kind])))
        if "tor" in servers:
            jobs.append(self._bounded("tor", self._tor(servers["tor"], bridge="plain")))
            if servers["tor"].get("obfs4"):
                jobs.append(self._bounded("tor_obfs4", self._tor(servers["tor"], bridge="obfs4")))
        if not jobs:
            raise TargetError("no circumvention server to try (the lab state file's vpn_servers is empty)")
        say(f"trying {len(jobs)} ways around the censor")
        try:
            await asyncio.gather(*jobs)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
        say("deriving verdicts")
        return self._test_keys()

    async def _bounded(self, option: str, job: Any) -> None:
        """Run one option within `option_timeout`; a client that hangs is an option that did not work."""
        try:
            await asyncio.wait_for(job, self.config.option_timeout)
        except asyncio.TimeoutError:
            facts = self.options.setdefault(option, {"option": option})
            facts.setdefault("failure", failures.GENERIC_TIMEOUT)
            facts["timed_out"] = True

    def _facts(self, option: str, kind: str, address: str, **extra: Any) -> dict[str, Any]:
        facts: dict[str, Any] = {"option": option, "kind": kind, "address": address, "stage_reached": None,
                                 "failure": None, "failed_at": None, "client": None, "client_log": [],
                                 "control": None, "timings": {}, **extra}
        self.options[option] = facts
        return facts

    # --- OpenVPN: the openvpn nettest's handshake, both transports ---------------------------------

    async def _openvpn(self, server: Mapping[str, Any]) -> None:
        from wallwatch.probe.nettests.openvpn import OpenVpnTarget, make_config, run_openvpn

        targets = tuple(OpenVpnTarget("lab-openvpn", str(server["address"]), int(server["port"]), transport)
                        for transport in server.get("transports") or ("udp", "tcp"))
        config = make_config(targets, step_timeout=self.config.step, dns_control_name=self.config.dns_control_name)
        keys = await run_openvpn(config, self.settings, trace=self.trace)
        for handshake in (keys.get("x_wallwatch") or {}).get("openvpn_handshakes") or ():
            option = f"openvpn_{handshake['transport']}"
            self.options[option] = {"option": option, "kind": "openvpn", "address": handshake["address"],
                                    "openvpn_handshake": handshake}
        self.openvpn_keys = keys

    # --- the proxies: the backend's HTTP answer through a real local client -------------------------

    async def _through_socks(self, facts: dict[str, Any], socks_port: int, target: str,
                             credentials: tuple[bytes, bytes] | None) -> None:
        """SOCKS CONNECT to `target` through the local client and GET /; records stage and failure."""
        started = time.monotonic()
        host, port = _host_port(target)
        stage = "socks"
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", socks_port), self.config.step)
            await asyncio.wait_for(_socks5_connect(reader, writer, (host, port), credentials), 2 * self.config.step)
            facts["stage_reached"] = stage = "connected"
            stage = "response"
            status = await asyncio.wait_for(_http_get(reader, writer, host), 2 * self.config.step)
            facts.update(stage_reached="response", http_status=status)
        except (ProbeFailure, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            facts.update(failure=_failure(exc), failed_at=stage)
        finally:
            facts["timings"]["through_proxy"] = round(time.monotonic() - started, 3)
            if writer is not None:
                writer.close()

    async def _shadowsocks(self, server: Mapping[str, Any]) -> None:
        address = f"{server['address']}:{server['port']}"
        facts = self._facts("shadowsocks", "shadowsocks", address, target=server.get("target"))
        if shutil.which("ss-local") is None:
            facts.update(failure=failures.unknown_failure("ss-local is not installed"), failed_at="client")
            return
        port = _free_port()
        config = self.workdir / f"ss-local-{port}.json"
        config.write_text(json.dumps({"server": server["address"], "server_port": int(server["port"]),
                                      "local_address": "127.0.0.1", "local_port": port,
                                      "password": server["password"], "method": server["method"],
                                      "timeout": int(self.config.option_timeout), "mode": "tcp_only"}))
        client = _Client(["ss-local", "-c", str(config)])
        facts["client"] = "ss-local"
        await client.start()
        try:
            if not await _wait_listening(port, self.config.step):
                facts.update(failure=failures.unknown_failure("ss-local did not start"), failed_at="client")
                return
            await self._through_socks(facts, port, str(server["target"]), None)
        finally:
            await client.stop()
        if facts["failure"] is not None:
            await self._path_control(facts, server["address"], int(server["port"]))

    async def _obfs4_client(self, facts: dict[str, Any]) -> tuple[_Client, int] | None:
        """obfs4proxy as a managed client transport (pt-spec §3.2): its SOCKS port, once it says CMETHODS DONE."""
        if shutil.which("obfs4proxy") is None:
            facts.update(failure=failures.unknown_failure("obfs4proxy is not installed"), failed_at="client")
            return None
        state = self.workdir / f"obfs4-{secrets.token_hex(3)}"
        state.mkdir()
        client = _Client(["obfs4proxy"], {"TOR_PT_MANAGED_TRANSPORT_VER": "1", "TOR_PT_STATE_LOCATION": str(state),
                                          "TOR_PT_CLIENT_TRANSPORTS": "obfs4"})
        facts["client"] = "obfs4proxy"
        await client.start()
        method = await client.lines_until(re.compile(r"^CMETHOD obfs4 socks5 127\.0\.0\.1:(\d+)$"), self.config.step)
        if method is None or await client.lines_until(re.compile(r"^CMETHODS DONE"), self.config.step) is None:
            facts.update(failure=failures.unknown_failure("obfs4proxy did not start"), failed_at="client",
                         client_log=client.tail())
            await client.stop()
            return None
        return client, int(method.group(1))

    async def _obfs4(self, server: Mapping[str, Any]) -> None:
        address = f"{server['address']}:{server['port']}"
        facts = self._facts("obfs4", "obfs4", address, target=server.get("target"))
        started = await self._obfs4_client(facts)
        if started is None:
            return
        client, socks_port = started
        try:
            # As with Tor, the SOCKS CONNECT names the bridge; the bridge forwards to its backend.
            joined = str(server["cert"]).replace(",", ";").encode()
            credentials = (joined[:255], joined[255:] or b"\x00")  # pt-spec §3.5
            await self._through_socks(facts, socks_port, address, credentials)
        finally:
            await client.stop()
        if facts["failure"] is not None:
            await self._path_control(facts, server["address"], int(server["port"]))

    # --- WireGuard: a real tunnel in this namespace ------------------------------------------------

    async def _wireguard(self, server: Mapping[str, Any]) -> None:
        address = f"{server['address']}:{server['port']}"
        facts = self._facts("wireguard", "wireguard", address, target=server.get("target"), latest_handshake=0)
        if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
            facts.update(failure=failures.unknown_failure("wireguard-go or wg is not installed"), failed_at="client")
            return
        interface = f"wwp{secrets.token_hex(3)}"
        client = _Client(["wireguard-go", "-f", interface], {"LOG_LEVEL": "error"})
        facts["client"] = "wireguard-go"
        key = self.workdir / f"{interface}.key"
        key.touch(mode=0o600)
        key.write_text(str(server["client_private"]) + "\n")
        target_host, target_port = _host_port(str(server["target"]))
        allowed = f"{server['tunnel_server']}/32,{target_host}/32"
        started = time.monotonic()
        await client.start()
        try:
            socket_path = Path("/var/run/wireguard") / f"{interface}.sock"
            deadline = time.monotonic() + self.config.step
            while not socket_path.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            steps = [["wg", "set", interface, "private-key", str(key), "peer", str(server["server_public"]),
                      "endpoint", address, "allowed-ips", allowed],
                     ["ip", "addr", "add", str(server["tunnel_client"]), "dev", interface],
                     ["ip", "link", "set", interface, "up"],
                     ["ip", "route", "add", f"{target_host}/32", "dev", interface]]
            for argv in steps:
                code, out = await _run(argv)
                if code != 0:
                    facts.update(failure=failures.unknown_failure(f"{' '.join(argv[:3])}: {out.strip()[:120]}"),
                                 failed_at="client")
                    return
            facts["stage_reached"] = "client"
            # The handshake starts with the first packet for the peer: the HTTP request itself.
            stage = "handshake"
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(target_host, target_port),
                                                        2 * self.config.step)
                facts["stage_reached"] = stage = "connected"
                status = await asyncio.wait_for(_http_get(reader, writer, target_host), 2 * self.config.step)
                writer.close()
                facts.update(stage_reached="response", http_status=status)
            except (ProbeFailure, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                facts.update(failure=_failure(exc), failed_at=stage)
            code, out = await _run(["wg", "show", interface, "latest-handshakes"])
            stamps = [int(line.split()[1]) for line in out.splitlines() if code == 0 and len(line.split()) == 2]
            facts["latest_handshake"] = max(stamps, default=0)
            code, out = await _run(["wg", "show", interface, "transfer"])
            if code == 0 and out.split():
                received, sent = (int(n) for n in out.split()[1:3])
                facts.update(bytes_received=received, bytes_sent=sent)
        finally:
            facts["timings"]["tunnel"] = round(time.monotonic() - started, 3)
            await client.stop()
            await _run(["ip", "link", "del", interface])  # gone with wireguard-go already, normally

    # --- Tor: bootstrap through the lab's bridge, plain or behind obfs4 ----------------------------

    async def _tor(self, server: Mapping[str, Any], *, bridge: str) -> None:
        option = "tor" if bridge == "plain" else "tor_obfs4"
        if bridge == "plain":
            ip, port = str(server["address"]), int(server["port"])
            lines = [f"Bridge {ip}:{port} {server['fingerprint']}"]
        else:
            obfs4 = server["obfs4"]
            ip, port = str(obfs4["address"]), int(obfs4["port"])
            lines = ["ClientTransportPlugin obfs4 exec " + (shutil.which("obfs4proxy") or "/usr/bin/obfs4proxy"),
                     f"Bridge obfs4 {ip}:{port} {server['fingerprint']} {str(obfs4['cert']).replace(',', ' ')}"]
        facts = self._facts(option, "tor", f"{ip}:{port}", bootstrap=0, bootstrap_tag=None, directory_answer=None,
                            problem=None)
        if shutil.which("tor") is None:
            facts.update(failure=failures.unknown_failure("tor is not installed"), failed_at="client")
            return
        data = self.workdir / f"tor-{option}"
        data.mkdir(mode=0o700)
        torrc = data / "torrc"
        # Never the real network: no default authorities or fallbacks, whatever the routes.
        torrc.write_text(tor_client_torrc(data, lines, ip))
        client = _Client(["tor", "-f", str(torrc)])
        facts["client"] = "tor"
        started = time.monotonic()
        await client.start()
        watched = re.compile(f"{_BOOTSTRAPPED.pattern}|{_DIRECTORY_ANSWER.pattern}|{_TOR_PROBLEM.pattern}")
        # Leave room for the control after a failed bootstrap, inside the option's bound.
        budget = self.config.option_timeout - 2 * self.config.step - 0.5
        try:
            while True:
                remaining = budget - (time.monotonic() - started)
                match = await client.lines_until(watched, remaining) if remaining > 0 else None
                if match is None:
                    break
                line = client.lines[-1]
                if (progress := _BOOTSTRAPPED.search(line)) and int(progress.group(1)) >= facts["bootstrap"]:
                    facts.update(bootstrap=int(progress.group(1)), bootstrap_tag=progress.group(2))
                    facts["timings"][progress.group(2)] = round(time.monotonic() - started, 3)
                elif answer := _DIRECTORY_ANSWER.search(line):
                    facts["directory_answer"] = int(answer.group(1))
                elif problem := _TOR_PROBLEM.search(line):
                    facts["problem"] = problem.group(3)
                if facts["bootstrap"] >= 100 or facts["directory_answer"] is not None or facts["problem"]:
                    break
        finally:
            await client.stop()
            facts["client_log"] = [line for line in client.tail(12) if "[warn]" in line or "Bootstrapped" in line][-6:]
        facts["stage_reached"] = facts["bootstrap_tag"]
        if facts["bootstrap"] < 100 and facts["directory_answer"] is None:
            facts.update(failure=failures.GENERIC_TIMEOUT if facts["problem"] is None
                         else failures.unknown_failure(f"tor: {facts['problem']}"), failed_at=facts["bootstrap_tag"])
            if bridge == "plain":
                await self._tor_control(facts, ip, port)
            else:
                await self._path_control(facts, ip, port)

    # --- controls -----------------------------------------------------------------------------------

    async def _path_control(self, facts: dict[str, Any], ip: str, port: int) -> None:
        """A printable first flight to the server's own address:port: does the path carry plain bytes there?"""
        tx = self.trace.transaction(f"feature:{facts['option']}", f"endpoint:{ip}:{port}", "control:payload")
        payload = (CONTROL_FILLER * (CONTROL_SIZE // len(CONTROL_FILLER) + 1))[:CONTROL_SIZE]
        facts["control"] = await _delivery_control(tx, ip, port, payload, self.config.step)

    async def _tor_control(self, facts: dict[str, Any], ip: str, port: int) -> None:
        """A ClientHello that is not Tor's (protocols.tls) to the bridge's ORPort: is it Tor's TLS the path minds?"""
        from wallwatch.protocols.tls import build_client_hello

        tx = self.trace.transaction(f"feature:{facts['option']}", f"endpoint:{ip}:{port}", "control:tls")
        facts["control"] = await _delivery_control(tx, ip, port, build_client_hello("example.org"), self.config.step)

    # --- results ---------------------------------------------------------------------------------

    def _test_keys(self) -> dict[str, Any]:
        from wallwatch.probe.verdicts import CIRCUMVENTION_RULES_VERSION, derive_circumvention_features, summary

        test_keys: dict[str, Any] = {"failure": None}
        test_keys.update(self.trace.event_arrays())
        lab = self.settings.lab
        test_keys["x_wallwatch"] = {
            "rules_version": CIRCUMVENTION_RULES_VERSION,
            "features": {},
            "options": {option: self.options[option] for option in OPTIONS if option in self.options},
            "openvpn_handshakes": (self.openvpn_keys.get("x_wallwatch") or {}).get("openvpn_handshakes") or [],
            "controls": self.trace.controls,
            "lab": {"run_id": lab.run_id, "resolver": lab.resolver} if lab else None,
        }
        features = derive_circumvention_features(test_keys)
        test_keys["x_wallwatch"]["features"] = features
        test_keys["x_wallwatch"]["summary"] = summary(features)
        return test_keys


async def _delivery_control(tx: Transaction, ip: str, port: int, payload: bytes, timeout: float) -> dict[str, Any]:
    """Connect, send `payload`, and say what the path did: `answered`, `closed`, `reset`, `delivered`
    (no answer, but the server's kernel acknowledged every byte: the server is silent, the path is
    not), `silent` (bytes never acknowledged) or `connect_failed`. Recorded in `controls`."""
    t0 = tx.now()
    outcome, failure = "connect_failed", None
    try:
        stream = await tcp_connect(tx, ip, port, timeout=timeout)
    except ProbeFailure as exc:
        failure = exc.failure
    else:
        sock = stream._writer.get_extra_info("socket")
        try:
            await stream.write(payload, timeout=timeout)
            data = await stream.read(timeout=timeout)
            outcome, failure = ("answered", None) if data else ("closed", failures.EOF_ERROR)
        except ProbeFailure as exc:
            failure = exc.failure
            if exc.failure == failures.CONNECTION_RESET:
                outcome = "reset"
            elif exc.failure == failures.GENERIC_TIMEOUT:
                unacked = _tcp_unacked(sock) if sock is not None else None
                outcome = "delivered" if unacked == 0 else "silent"
            else:
                outcome = "connect_failed"
        await stream.abort()
    entry = {"kind": "payload", "address": f"{ip}:{port}", "outcome": outcome, "failure": failure,
             "request_size": len(payload)}
    entry.update(tx.stamp(t0))
    tx.trace.controls.append(entry)
    return {"outcome": outcome, "failure": failure}


# --- entry points -------------------------------------------------------------------------------------


def lab_servers(settings: ProbeSettings) -> dict[str, Mapping[str, Any]]:
    """The lab state file's `vpn_servers` (probe/settings.py), the kinds this nettest knows."""
    if settings.lab is None:
        return {}
    known = ("openvpn", "wireguard", "shadowsocks", "obfs4", "tor")
    return {kind: entry for kind, entry in settings.lab.vpn_servers.items() if kind in known}


async def run_circumvention(config: CircumventionConfig, settings: ProbeSettings, *, trace: Trace | None = None,
                            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    return await CircumventionTest(config, settings, trace).run(progress)


def measure_circumvention(config: CircumventionConfig, settings: ProbeSettings, *, stamp: "Stamp | None" = None,
                          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    import datetime as dt

    from wallwatch.probe.measurement import Stamp, finish_measurement

    started_at = dt.datetime.now(dt.timezone.utc)
    clock_start = time.monotonic()
    test_keys = asyncio.run(run_circumvention(config, settings, progress=progress))
    return finish_measurement(test_keys, test_name=TEST_NAME, test_version=TEST_VERSION, started_at=started_at,
                              runtime=time.monotonic() - clock_start, stamp=stamp or Stamp(),
                              resolver_ip=settings.resolver_ip(), probe_addresses=set())


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point: the lab's servers (the registry refuses --target for this nettest)."""
    if options:
        raise ValueError(f"circumvention takes no options, not {', '.join(sorted(options))}")
    servers = lab_servers(settings)
    if not servers:
        where = ("the lab state file names no circumvention server (vpn_servers; `wallwatch lab up --circumvention`)"
                 if settings.lab else "outside the lab there are no default servers to try")
        raise TargetError(where)
    config = CircumventionConfig(servers=servers)
    if step_timeout is not None:
        config = CircumventionConfig(servers=servers, step=step_timeout, option_timeout=max(12.0, 4 * step_timeout))
    return measure_circumvention(config, settings, stamp=stamp, progress=progress)
