"""The nettests this probe can run, by name: the one registry the CLI, the lab's replays and monitors read.

Each nettest module has `run_once(settings, stamp, *, step_timeout, targets,
progress, options) -> measurement`: one complete OONI-format measurement.
`options` are the nettest's own `key=value` settings (`wallwatch probe run
--option`; a scenario's `probe_options`), e.g. whatsapp's `opening=2017`.
A nettest that takes many inputs and writes one measurement per input (OONI's
web_connectivity: one per URL) also has `run_inputs(...) -> [measurement]`;
`Nettest.run` returns every measurement of a run, one for the others.
A module is imported only when its nettest runs, so listing them stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp
    from wallwatch.probe.settings import ProbeSettings


class TargetError(ValueError):
    """Targets a nettest cannot take (a malformed URI, targets for a nettest with fixed ones, none at all)."""


@dataclass(frozen=True, slots=True)
class Nettest:
    name: str
    description: str
    module: str
    # The OONI-style input it takes (`--target`); None: fixed targets.
    target_syntax: str | None = None

    def run_once(self, settings: "ProbeSettings", stamp: "Stamp", *, step_timeout: float | None = None,
                 targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
                 options: Mapping[str, str] | None = None) -> dict[str, Any]:
        if targets and self.target_syntax is None:
            raise TargetError(f"{self.name} has fixed targets; --target is not for it")
        module = importlib.import_module(self.module)
        return module.run_once(settings, stamp, step_timeout=step_timeout, targets=targets, progress=progress,
                               options=dict(options or {}))

    def run(self, settings: "ProbeSettings", stamp: "Stamp", *, step_timeout: float | None = None,
            targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
            options: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Every measurement of one run: one per input for a nettest with `run_inputs`, else `run_once`'s."""
        module = importlib.import_module(self.module)
        if not hasattr(module, "run_inputs"):
            return [self.run_once(settings, stamp, step_timeout=step_timeout, targets=targets, progress=progress,
                                  options=options)]
        if targets and self.target_syntax is None:
            raise TargetError(f"{self.name} has fixed targets; --target is not for it")
        return module.run_inputs(settings, stamp, step_timeout=step_timeout, targets=targets, progress=progress,
                                 options=dict(options or {}))


NETTESTS: Mapping[str, Nettest] = MappingProxyType({
    nettest.name: nettest for nettest in (
        Nettest("whatsapp", "WhatsApp per feature: text (chat transport), media, calls (STUN), web, registration",
                "wallwatch.probe.nettests.whatsapp"),
        Nettest("openvpn", "OpenVPN handshake over UDP and TCP (client reset, server reset, TLS ClientHello -> "
                "ServerHello); feature: tunnel", "wallwatch.probe.nettests.openvpn",
                target_syntax="openvpn://NAME/?address=IP:PORT&transport=udp|tcp (OONI ts-040 input)"),
        Nettest("telegram", "Telegram per feature: text (MTProto req_pq_multi -> resPQ at each DC by address, "
                "443 and 80), media (file CDN), web (web.telegram.org); OONI ts-020 keys",
                "wallwatch.probe.nettests.telegram"),
        Nettest("signal", "Signal per feature: text (chat), media (attachment CDNs), storage, calls (SFU over "
                "HTTPS + STUN); OONI ts-029 keys", "wallwatch.probe.nettests.signal"),
        Nettest("facebook_messenger", "Messenger per feature: text (MQTT CONNECT/CONNACK over TLS at the edge, "
                "APIs), media (CDN), calls (STUN), web; OONI ts-019 keys",
                "wallwatch.probe.nettests.facebook_messenger"),
        Nettest("web_connectivity", "Web pages: DNS, TCP, TLS and HTTP compared with a test helper's control "
                "(OONI ts-017 keys); one measurement per URL, default list: sites blocked in China by 2017",
                "wallwatch.probe.nettests.web_connectivity",
                target_syntax="http:// or https:// URL (OONI ts-017 input; --input-file for a list)"),
        Nettest("circumvention", "Which ways around still work: OpenVPN (UDP, TCP), WireGuard, Shadowsocks, obfs4 "
                "and Tor (plain, obfs4 bridge) with real clients against the lab's servers",
                "wallwatch.probe.nettests.circumvention"),
    )
})
