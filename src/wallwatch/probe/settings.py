"""Where the probe's resolver, trust and addresses come from: the lab or the system.

The probe works on any network. When it runs in the lab, the lab hands it what
it needs through one file, the lab state file, named by `WALLWATCH_LAB`
(`wallwatch lab exec` sets it); this module is the only reader of that file in
the probe, and `LabInfo` is its contract. The keys the probe reads (the lab
writes more, for itself):

* `run_id` (str, required): the lab run, recorded in each measurement;
* `resolver` (IP, required): the lab's DNS resolver, asked on port 53;
* `ca_cert` (path, required): the lab CA; the probe trusts it *only* (so a real
  certificate could never pass in the lab, and a lab certificate never outside it);
* `address_map` ({real IP or CIDR: lab IP}): real-world addresses the probe
  dials by address (call relays) and their lab stand-ins; the longest prefix wins;
* `lab_networks` ([CIDR], default ["198.18.0.0/15"]): the lab's own address
  space, dialled as it is;
* `names` ({name: lab IP}): what the lab's resolver answers; these addresses and
  the `address_map` stand-ins count as the services' own networks;
* `vpn_servers` ({kind: {address, port, ...}}): real servers to measure, with
  what a client needs: `openvpn` {transports} (the openvpn nettest's default
  targets), `wireguard` {server_public, client_private, tunnel_client (CIDR),
  tunnel_server, target}, `shadowsocks` {method, password, target}, `obfs4`
  {cert ("cert=...,iat-mode=0"), target}, `tor` {fingerprint, obfs4 {address,
  port, cert}}; `target` is the ip:port of a plain HTTP server to reach through
  the tunnel or proxy (the circumvention nettest's targets);
* `test_helpers` ({nettest: URL}): the lab's test helpers, e.g.
  {"web_connectivity": "https://th.wallwatch.test/"} (`wallwatch helper serve`
  in the services namespace, outside the censor).

An address that is neither in `lab_networks` nor covered by `address_map` is
never dialled from the lab (`map_address` raises KeyError). Without the file:
the system resolver, the system CA store, addresses dialled as given.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

LAB_ENV = "WALLWATCH_LAB"
DNS_PORT = 53  # RFC 1035 §4.2


class SettingsError(ValueError):
    """The lab state file is missing, unreadable or lacks a field the probe needs."""


DEFAULT_LAB_NETWORKS = ("198.18.0.0/15",)  # RFC 2544's benchmarking block, where every lab address lives


@dataclass(frozen=True)
class AddressMap:
    """Real-world address -> the address to dial, longest prefix first; own networks dial as they are."""

    entries: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]
    own_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, mapping: Mapping[str, str], own_networks: Sequence[str] = DEFAULT_LAB_NETWORKS) -> "AddressMap":
        entries = [(ipaddress.ip_network(real, strict=False), str(lab)) for real, lab in mapping.items()]
        # Longest prefix first, so an exact address beats the block around it.
        entries.sort(key=lambda entry: entry[0].prefixlen, reverse=True)
        return cls(tuple(entries), tuple(ipaddress.ip_network(n, strict=False) for n in own_networks))

    def map(self, ip: str) -> str:
        address = ipaddress.ip_address(ip)
        if any(address.version == net.version and address in net for net in self.own_networks):
            return str(address)
        for network, stand_in in self.entries:
            if address.version == network.version and address in network:
                return stand_in
        covered = ", ".join(str(network) for network, _ in self.entries) or "nothing"
        raise KeyError(f"{ip} has no lab address (the address map covers {covered})")


@dataclass(frozen=True)
class LabInfo:
    """The lab state file as the probe reads it (the contract is in the module docstring)."""

    run_id: str
    resolver: str
    ca_cert: str
    address_map: Mapping[str, str]
    state_path: str
    names: Mapping[str, str] = field(default_factory=dict)
    lab_networks: tuple[str, ...] = DEFAULT_LAB_NETWORKS
    # Real servers the lab runs, by kind: e.g.
    # {"openvpn": {"address": "198.19.4.1", "port": 1194, "transports": ["udp", "tcp"]}}.
    vpn_servers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Test helpers by nettest: {"web_connectivity": "https://th.wallwatch.test/"}.
    test_helpers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_state_file(cls, path: str | os.PathLike[str]) -> "LabInfo":
        try:
            state: dict[str, Any] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot read lab state file {path}: {exc}") from None
        if not isinstance(state, dict):
            raise SettingsError(f"lab state file {path} is not a JSON object")
        missing = [key for key in ("run_id", "resolver", "ca_cert") if not state.get(key)]
        if missing:
            raise SettingsError(f"lab state file {path} lacks {', '.join(missing)}")
        try:
            info = cls(
                run_id=str(state["run_id"]),
                resolver=str(state["resolver"]),
                ca_cert=str(state["ca_cert"]),
                address_map=MappingProxyType(dict(state.get("address_map") or {})),
                state_path=str(path),
                names=MappingProxyType(dict(state.get("names") or {})),
                lab_networks=tuple(state.get("lab_networks") or DEFAULT_LAB_NETWORKS),
                vpn_servers=MappingProxyType(_vpn_servers(state.get("vpn_servers"))),
                test_helpers=MappingProxyType({str(k): str(v) for k, v in (state.get("test_helpers") or {}).items()}),
            )
            info.addresses()  # every entry must parse now, not at the first dial
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"lab state file {path}: {exc}") from None
        return info

    def addresses(self) -> AddressMap:
        return AddressMap.parse(self.address_map, self.lab_networks)

    def service_addresses(self) -> tuple[str, ...]:
        """Lab addresses that stand in for the services: a DNS answer among them is the service's own."""
        return tuple(dict.fromkeys((*self.names.values(), *self.address_map.values())))


def _vpn_servers(raw: Any) -> dict[str, Mapping[str, Any]]:
    """Only entries with an address: a half-written entry is no target."""
    if not isinstance(raw, dict):
        return {}
    return {str(kind): dict(entry) for kind, entry in raw.items() if isinstance(entry, dict) and entry.get("address")}


@dataclass(frozen=True)
class ProbeSettings:
    """Resolver, trust anchors and address translation for one run.

    `resolver=None` means the system resolver (getaddrinfo); `ca_file=None`
    means the system CA store; `address_map=None` dials addresses as given.
    Tests build one pointing at loopback servers.
    """

    resolver: tuple[str, int] | None = None
    ca_file: str | None = None
    address_map: Mapping[str, str] | None = None
    lab: LabInfo | None = None
    _contexts: dict[tuple[str, ...], ssl.SSLContext] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "ProbeSettings":
        environ = os.environ if environ is None else environ
        state_path = environ.get(LAB_ENV)
        if not state_path:
            return cls()
        return cls.for_lab(LabInfo.from_state_file(state_path))

    @classmethod
    def for_lab(cls, lab: LabInfo) -> "ProbeSettings":
        if not Path(lab.ca_cert).is_file():
            raise SettingsError(f"lab CA certificate {lab.ca_cert} does not exist")
        return cls(resolver=(lab.resolver, DNS_PORT), ca_file=lab.ca_cert,
                   address_map=lab.address_map, lab=lab)

    def map_address(self, ip: str) -> str:
        """The address to dial for `ip`; KeyError if the lab has no stand-in (dialling would leave the lab)."""
        if self.address_map is None:
            return ip
        own = self.lab.lab_networks if self.lab is not None else DEFAULT_LAB_NETWORKS
        return _address_map(tuple(self.address_map.items()), tuple(own)).map(ip)

    def tls_context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """A verifying client context (one per ALPN list: contexts are shared, ALPN is per context)."""
        key = tuple(alpn)
        if key not in self._contexts:
            # With a cafile, create_default_context loads that file and nothing else.
            context = ssl.create_default_context(cafile=self.ca_file)
            if alpn:
                context.set_alpn_protocols(list(alpn))
            self._contexts[key] = context
        return self._contexts[key]

    def control_tls_context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """For a control that names a neutral server (probe/throughput.py): the chain is verified
        against the same trust anchors, the name is not (the server's certificate is for the
        service, the ClientHello named something else on purpose)."""
        key = ("control-name", *alpn)
        if key not in self._contexts:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.check_hostname = False
            if alpn:
                context.set_alpn_protocols(list(alpn))
            self._contexts[key] = context
        return self._contexts[key]

    def resolver_ip(self) -> str:
        """For the envelope's `resolver_ip`: the configured resolver, else the system's first nameserver."""
        if self.resolver is not None:
            return self.resolver[0]
        try:
            for line in Path("/etc/resolv.conf").read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1]
        except OSError:
            pass
        return ""


@functools.lru_cache(maxsize=8)
def _address_map(entries: tuple[tuple[str, str], ...], own_networks: tuple[str, ...]) -> AddressMap:
    """Parsed once per map: a nettest maps every address it dials."""
    return AddressMap.parse(dict(entries), own_networks)
