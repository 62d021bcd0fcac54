"""The nettests this probe can run, by name: the one registry the CLI, the lab's replays and monitors read.

Each nettest module has `run_once(settings, stamp, *, step_timeout, targets,
progress, options) -> measurement`: one complete OONI-format measurement.
`options` are the nettest's own `key=value` settings (`wallwatch probe run
--option`; a scenario's `options`), e.g. whatsapp's `opening=2017`; each entry
declares the options it takes (`Option`), so the CLI and the scenario loader
refuse any other before a lab is built.
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
class Option:
    """One `key=value` setting a nettest takes (`--option`, a scenario's `options`)."""

    name: str
    description: str
    choices: tuple[str, ...] | None = None  # None: any non-empty value (the nettest checks it)

    def __str__(self) -> str:
        return f"{self.name}={'|'.join(self.choices) if self.choices else '...'}: {self.description}"


@dataclass(frozen=True, slots=True)
class Nettest:
    name: str
    description: str
    module: str
    # The OONI-style input it takes (`--target`); None: fixed targets.
    target_syntax: str | None = None
    # The `key=value` options it takes (`--option`, a scenario's `options`).
    options: tuple[Option, ...] = ()

    def check_options(self, options: Mapping[str, str]) -> None:
        """ValueError naming the option (or value) this nettest does not take, and what it takes."""
        accepted = {option.name: option for option in self.options}
        for key, value in options.items():
            option = accepted.get(key)
            if option is None:
                takes = "; ".join(map(str, self.options)) or "none"
                raise ValueError(f"{self.name} takes no option {key!r}; it takes: {takes}")
            if not str(value).strip() or (option.choices is not None and value not in option.choices):
                raise ValueError(f"{self.name}: {key} must be one of {', '.join(option.choices or ('a non-empty value',))}"
                                 f", not {value!r}")

    def run_once(self, settings: "ProbeSettings", stamp: "Stamp", *, step_timeout: float | None = None,
                 targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
                 options: Mapping[str, str] | None = None) -> dict[str, Any]:
        if targets and self.target_syntax is None:
            raise TargetError(f"{self.name} has fixed targets; --target is not for it")
        self.check_options(options or {})
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
        self.check_options(options or {})
        return module.run_inputs(settings, stamp, step_timeout=step_timeout, targets=targets, progress=progress,
                                 options=dict(options or {}))


# The messaging nettests that time their transfer features against a control (base.with_options).
THROUGHPUT = Option("throughput", "time media, web and calls against a control after the reachability attempts "
                    "(throttled verdicts); default off", ("on", "off"))

NETTESTS: Mapping[str, Nettest] = MappingProxyType({
    nettest.name: nettest for nettest in (
        Nettest("whatsapp", "WhatsApp per feature: text (chat transport), media, calls (STUN), web, registration",
                "wallwatch.probe.nettests.whatsapp",
                # The choices are protocols.whatsapp.OPENINGS (tests hold the two in step; not imported here,
                # so listing nettests stays fast).
                options=(Option("opening", "the chat client's era: 2017 (WA 1 5), 2022 (ED + WA 2 0), today",
                                ("2017", "2022", "today")),)),
        Nettest("openvpn", "OpenVPN handshake over UDP and TCP (client reset, server reset, TLS ClientHello -> "
                "ServerHello); feature: tunnel", "wallwatch.probe.nettests.openvpn",
                target_syntax="openvpn://NAME/?address=IP:PORT&transport=udp|tcp (OONI ts-040 input)"),
        Nettest("telegram", "Telegram per feature: text (MTProto req_pq_multi -> resPQ at each DC by address, "
                "443 and 80), media (file CDN), web (web.telegram.org); OONI ts-020 keys",
                "wallwatch.probe.nettests.telegram", options=(THROUGHPUT,)),
        Nettest("signal", "Signal per feature: text (chat), media (attachment CDNs), storage, calls (SFU over "
                "HTTPS + STUN); OONI ts-029 keys", "wallwatch.probe.nettests.signal", options=(THROUGHPUT,)),
        Nettest("facebook_messenger", "Messenger per feature: text (MQTT CONNECT/CONNACK over TLS at the edge, "
                "APIs), media (CDN), calls (STUN), web; OONI ts-019 keys",
                "wallwatch.probe.nettests.facebook_messenger", options=(THROUGHPUT,)),
        Nettest("wechat", "WeChat per feature: text (mmtls ClientHello/ServerHello on the long link, 8080, and "
                "the short link, HTTP POST /mmtls/), media (Moments CDN), calls (STUN), web (wx.qq.com, "
                "web.wechat.com)", "wallwatch.probe.nettests.wechat", options=(THROUGHPUT,)),
        Nettest("skype", "Skype per feature: text (a message to the chat service), media (upload and download "
                "of an object), calls (STUN with Microsoft's ICE attribute), web", "wallwatch.probe.nettests.skype", options=(THROUGHPUT,)),
        Nettest("facetime", "FaceTime calls: Apple's push courier (TLS on 5223, connect -> connect response) "
                "and a relay (STUN); all-of", "wallwatch.probe.nettests.facetime", options=(THROUGHPUT,)),
        Nettest("viber", "Viber per feature: text (the 154-byte chat hello and its ack on 4244 and 5242, by "
                "address), media (upload and download), calls (the call ping/pong on UDP 7985)",
                "wallwatch.probe.nettests.viber", options=(THROUGHPUT,)),
        Nettest("keyword", "Platform-side filtering (Citizen Lab's method): the same message with and without a "
                "keyword between two accounts; withheld by the platform while its twin arrives -> "
                "blocked/platform_filter (a verdict about the platform, not the network)",
                "wallwatch.probe.nettests.keyword",
                target_syntax="https://HOST/ (a chat platform serving the lab's canary API; default in the lab: "
                "the lab's emulated platform)",
                options=(Option("keywords", "the words to test, separated by | (default: 小熊维尼|Winnie the Pooh)"),)),
        Nettest("web_connectivity", "Web pages: DNS, TCP, TLS and HTTP compared with a test helper's control "
                "(OONI ts-017 keys); one measurement per URL, default list: sites blocked in China by 2017",
                "wallwatch.probe.nettests.web_connectivity",
                target_syntax="http:// or https:// URL (OONI ts-017 input; --input-file for a list)",
                options=(Option("helper", "the test helper's URL (default in the lab: the state file's test_helpers)"),
                         Option("parallelism", "URLs measured at once, 1..64 (default 8)"))),
        Nettest("circumvention", "Which ways around still work: OpenVPN (UDP, TCP), WireGuard, Shadowsocks, obfs4 "
                "and Tor (plain, obfs4 bridge) with real clients against the lab's servers",
                "wallwatch.probe.nettests.circumvention"),
    )
})
