"""Where the probe's resolver, trust and addresses come from: the lab or the system.

`wallwatch lab exec` runs the probe with `WALLWATCH_LAB=<state file>`; the
state file (lab contract, docs/architecture.md) names the lab resolver, the
lab CA and the real-world -> lab address map. With it the probe uses that
resolver, trusts that CA *only* (so a real certificate could never pass in the
lab, and a lab certificate never outside it), and translates addresses before
dialling. Without it: the system resolver and the system CA store.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class LabInfo:
    run_id: str
    resolver: str
    ca_cert: str
    address_map: Mapping[str, str]
    state_path: str
    # Real servers the lab runs (lab/vpn_servers.py), by kind: e.g.
    # {"openvpn": {"address": "198.19.4.1", "port": 1194, "transports": ["udp", "tcp"]}}.
    vpn_servers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_state_file(cls, path: str | os.PathLike[str]) -> "LabInfo":
        try:
            state: dict[str, Any] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot read lab state file {path}: {exc}") from None
        missing = [key for key in ("run_id", "resolver", "ca_cert") if not state.get(key)]
        if missing:
            raise SettingsError(f"lab state file {path} lacks {', '.join(missing)}")
        return cls(
            run_id=str(state["run_id"]),
            resolver=str(state["resolver"]),
            ca_cert=str(state["ca_cert"]),
            address_map=MappingProxyType(dict(state.get("address_map") or {})),
            state_path=str(path),
            vpn_servers=MappingProxyType(_vpn_servers(state.get("vpn_servers"))),
        )


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
        from wallwatch.lab.addresses import map_address

        return map_address(ip, self.address_map)

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
