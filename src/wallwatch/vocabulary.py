"""The words wallwatch's findings are written in, each defined once: verdicts, methods, features.

Every part that writes or reads a finding imports its words from here: the
probe's verdict rules, the analysis rule sets and series columns, the lab's
ground truth, the report and the dashboard. A word that is not here is not a
finding (the probe refuses to emit it; ingest and the scenario loader refuse
to read it), so a verdict cannot be lost between two parts that spell it
differently.

The names follow OONI's where OONI has one: OONI's web_connectivity 0.4
`blocking` values (dns, tcp_ip, http-failure, http-diff) and the failure
strings of its data format (df-007-errors); wallwatch adds the methods its own
nettests can tell apart with controls (tls_sni, tls_mitm, protocol_dpi, ...).
A throttled feature worked but slowly: it names a `Throttling` kind (rate,
latency, jitter) where a blocked one names a `Method`; `is_finding` says which
verdict goes with which word, for every part that checks.
Each method says what evidence it needs, and in plain words what happened,
for readers who do not speak in codes (a dashboard shows `plain` next to the
code, never the code alone).

This module imports nothing of wallwatch: it sits under every part.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class Verdict(StrEnum):
    """What a measurement says of one feature of one service on one network.

    Each member carries `plain`: the same in words a journalist can print.
    """

    plain: str

    def __new__(cls, value: str, plain: str) -> "Verdict":
        member = str.__new__(cls, value)
        member._value_ = value
        member.plain = plain
        return member

    OK = ("ok", "it worked")
    """The feature worked: every stage completed and the answer was the service's own."""
    BLOCKED = ("blocked", "it was blocked: interference confirmed by a control")
    """Interference verified by a control or by the service's own networks; names a `Method`."""
    DOWN = ("down", "the service itself was down: an outage, not censorship")
    """The service itself failed (refused, a 5xx from a genuine server, hangs up on the control too)."""
    UNKNOWN = ("unknown", "we cannot tell: the probe had no network, failed, or had no control")
    """Not enough to say: the probe had no network, a probe-side fault, no control ran."""
    THROTTLED = ("throttled", "it worked, but slowed down or delayed against a control: reachable, bad for use")
    """The feature works but slowed or delayed past a threshold against a control on the same path that
    the censor does not target, in every repeat; names a `Throttling` kind. Reachable, but bad for use."""


VERDICTS: tuple[str, ...] = tuple(verdict.value for verdict in Verdict)


class Method(StrEnum):
    """How a blocked feature was blocked, in the order of the stages of a connection.

    A feature blocked at several stages is blocked by the earliest (a connection
    whose DNS answer was forged never reaches TLS), so ties are broken by this
    order. Each member carries `evidence` (what a rule needs before it may
    name the method) and `plain` (the same in words a journalist can print).
    """

    evidence: str
    plain: str

    def __new__(cls, value: str, evidence: str, plain: str) -> "Method":
        member = str.__new__(cls, value)
        member._value_ = value
        member.evidence = evidence
        member.plain = plain
        return member

    DNS = (
        "dns",
        "A DNS answer that cannot be the service's: two different answers to one query (an injector "
        "racing the resolver), an answer outside the service's networks whose connection then failed, "
        "a bogon answer, or an answer matching a known injector fingerprint; or NXDOMAIN / no answer for "
        "a live name while the resolver answers a control name.",
        "the name was answered with a false address, or not at all",
    )
    TCP_IP = (
        "tcp_ip",
        "Connections to the service's addresses time out (SYN black-holed) or are unreachable while other "
        "connections from the same probe succeed.",
        "the service's addresses were made unreachable",
    )
    TCP_RESET = (
        "tcp_reset",
        "The connection is reset at connect time or on its first bytes, without a protocol-specific trigger "
        "shown by a control.",
        "connections were cut by a forged reset",
    )
    TLS_SNI = (
        "tls_sni",
        "A reset or timeout right after the TLS ClientHello naming the service, while a control ClientHello "
        "with a neutral server name to the same address and port is answered.",
        "the service's name in the encrypted handshake was recognised and the connection cut",
    )
    TLS_MITM = (
        "tls_mitm",
        "The TLS handshake completed with a certificate that is not valid for the service (wrong name or an "
        "unknown authority), so something other than the service answered.",
        "an impostor answered in the service's place",
    )
    TLS = (
        "tls",
        "A TLS handshake fails (reset, timeout, EOF) where the control reached the service, but no SNI "
        "control tells whether the name or the address was the trigger (OONI's web_connectivity case).",
        "the encrypted connection to the service was cut",
    )
    PROTOCOL_DPI = (
        "protocol_dpi",
        "A reset or silence right after the app's own protocol opening (the WhatsApp header, an OpenVPN "
        "reset, an MTProto header) while a same-size control to the same address and port passes, or the "
        "address is black-holed right after (a penalty box).",
        "the app's protocol was recognised and cut",
    )
    UDP_BLOCKING = (
        "udp_blocking",
        "UDP to the service (call relays, a UDP tunnel) goes unanswered while the probe's network works "
        "(a TCP connection succeeded or the resolver answered over UDP).",
        "the service's calls or UDP traffic were dropped",
    )
    HTTP_FAILURE = (
        "http_failure",
        "The HTTP request fails (reset, timeout, EOF) while the control fetched the page (OONI's "
        "http-failure).",
        "the web request was cut",
    )
    HTTP_DIFF = (
        "http_diff",
        "The HTTP response differs from the control's in status, body length or title, and matches no "
        "known legitimate variation (OONI's http-diff).",
        "a different page was served in place of the real one",
    )
    BLOCKPAGE = (
        "blockpage",
        "The response matches a known block page fingerprint.",
        "a block page was served",
    )
    MIDDLEBOX = (
        "middlebox",
        "What the probe sent to an echo helper came back altered (OONI's http_header_field_manipulation and "
        "http_invalid_request_line `tampering`): a transparent proxy on the network's path. Judged per "
        "network, not per site.",
        "a device on the network rewrote web traffic (it can censor; this alone does not show it did)",
    )
    PLATFORM_FILTER = (
        "platform_filter",
        "The platform itself withheld content: a canary message carrying a keyword was accepted by the "
        "platform's server and never delivered, while the same message without the keyword, sent over the "
        "same connection, was (Citizen Lab's method for WeChat, [CitizenLab2016], [CitizenLab2017]). The "
        "network carried both: this is the service censoring its users, not a firewall, and only the "
        "keyword nettest names it.",
        "the platform's own servers withheld messages with certain words; the network was not involved",
    )
    RESIDUAL = (
        "residual",
        "A connection that was established was cut on its first bytes (reset or silence), and then clean "
        "connections to the same address and port failed while they had worked moments before: the censor "
        "keeps blocking the server for a while after a trigger (the GFW's penalty box, [Rambert2021]).",
        "after one connection was caught, the server was made unreachable for a while",
    )


METHODS: tuple[str, ...] = tuple(method.value for method in Method)


class Throttling(StrEnum):
    """How a throttled feature was degraded, compared with a control on the same path.

    A throttled verdict names one (the first that applies, in this order); its
    evidence carries the numbers of every kind measured.
    """

    evidence: str
    plain: str

    def __new__(cls, value: str, evidence: str, plain: str) -> "Throttling":
        member = str.__new__(cls, value)
        member._value_ = value
        member.evidence = evidence
        member.plain = plain
        return member

    RATE = (
        "rate",
        "Goodput of the feature's transfer at a fraction of a control transfer of the same bytes from the "
        "same server under a name the censor does not target, in every repeat, and slower than the added "
        "latency alone explains ([Xue2021], [Wehe2015]).",
        "transfers were slowed down",
    )
    LATENCY = (
        "latency",
        "Round trips of the feature's own traffic take longer than those of a control to the same server "
        "that the censor does not target, by more than a threshold, in every repeat.",
        "every exchange was delayed",
    )
    JITTER = (
        "jitter",
        "Round-trip times of the feature's own traffic vary far more than those of the control, in every "
        "repeat.",
        "delays varied, which breaks calls",
    )


THROTTLINGS: tuple[str, ...] = tuple(kind.value for kind in Throttling)


def qualifiers(verdict: str) -> tuple[str, ...]:
    """The words a verdict names in its `method` slot: blocked a `Method`, throttled a `Throttling`, others none."""
    if verdict == Verdict.BLOCKED:
        return METHODS
    if verdict == Verdict.THROTTLED:
        return THROTTLINGS
    return ()


def qualifier_plain(word: str) -> str | None:
    """A `method` slot's word in plain words: a blocking `Method`'s or a `Throttling` kind's, None if neither."""
    for kinds in (Method, Throttling):
        if word in kinds._value2member_map_:
            return kinds(word).plain
    return None


def is_finding(verdict: object, method: object) -> bool:
    """A verdict and method that go together: blocked names a method, throttled a kind, any other nothing."""
    if not is_verdict(verdict):
        return False
    allowed = qualifiers(str(verdict))
    return method is None if not allowed else isinstance(method, str) and method in allowed


class State(StrEnum):
    """What one bucket (hour or day) of a series shows: the `state` column of the series.

    The series decide it from the share of decisive probes that saw blocking
    (`analysis/series/queries.py`: blocked from a half, partial from a fifth,
    as OONI's plan asks that partial blocking not hide under a median: ooni/data
    docs/implementation-plan.md §3.6), throttled when not blocked but half
    the decisive probes saw the feature slowed (a `Verdict.THROTTLED`: its own
    state, neither ok nor blocked). `BLOCKED_ON_AND_OFF` is never stored:
    charts and the dashboard split `blocked` with it when the blocked
    measurements let attempts through. Each member carries `plain`.
    """

    plain: str

    def __new__(cls, value: str, plain: str) -> "State":
        member = str.__new__(cls, value)
        member._value_ = value
        member.plain = plain
        return member

    BLOCKED = ("blocked", "blocked for most probes (half or more)")
    BLOCKED_ON_AND_OFF = ("blocked, on and off",
                          "blocked for most probes, but some attempts still got through (on and off)")
    PARTIAL = ("partial", "blocked for some probes (a fifth to a half)")
    THROTTLED = ("throttled", "slowed down for most probes (half or more), but not blocked: reachable, bad for use")
    DOWN = ("down", "the service was down for everyone: an outage, not censorship")
    OK = ("ok", "worked for the probes that measured it")
    INSUFFICIENT = ("insufficient", "no data: too few measurements to say anything")


# The states a series stores (State.BLOCKED_ON_AND_OFF is derived for display only).
SERIES_STATES: tuple[str, ...] = tuple(state.value for state in State if state is not State.BLOCKED_ON_AND_OFF)


class Service(StrEnum):
    """What a verdict is about: the services the verdict rules judge (`analysis/verdicts/observations.py`
    maps each OONI nettest's endpoints to one), each with the name a reader knows it by (`plain`).

    A nettest the rules do not know keeps its own name as its service (`endpoints`), so stored
    data may hold others; these are the ones a command can be asked about by name.
    """

    plain: str

    def __new__(cls, value: str, plain: str) -> "Service":
        member = str.__new__(cls, value)
        member._value_ = value
        member.plain = plain
        return member

    WHATSAPP = ("whatsapp", "WhatsApp")
    TELEGRAM = ("telegram", "Telegram")
    SIGNAL = ("signal", "Signal")
    FACEBOOK_MESSENGER = ("facebook_messenger", "Facebook Messenger")
    WECHAT = ("wechat", "WeChat")
    VIBER = ("viber", "Viber")
    SKYPE = ("skype", "Skype")
    FACETIME = ("facetime", "FaceTime")
    KEYWORD = ("keyword", "keyword filtering by a platform")
    CIRCUMVENTION = ("circumvention", "ways around the censor")
    WEB = ("web", "websites")
    TOR = ("tor", "Tor")
    OPENVPN = ("openvpn", "OpenVPN")
    RISEUPVPN = ("riseupvpn", "RiseupVPN")


def service_plain(code: str) -> str:
    """The name a reader knows a service by; a code the vocabulary does not list, as it is (stored
    data may hold other nettests' names, see Service)."""
    member = Service._value2member_map_.get(code)
    return member.plain if isinstance(member, Service) else code


class Feature(StrEnum):
    """A part of a service a user would miss on its own (OONI's IM tests measure the same split)."""

    TEXT = "text"
    """Sending and receiving messages: the chat servers' own protocol."""
    MEDIA = "media"
    """Photos, video and voice notes: uploads to and downloads from the media servers."""
    CALLS = "calls"
    """Voice and video calls: the relays' STUN/UDP."""
    WEB = "web"
    """The service's web client (web.whatsapp.com, web.telegram.org)."""
    REGISTRATION = "registration"
    """Signing up and verifying a number: the registration servers."""
    TUNNEL = "tunnel"
    """A circumvention tunnel's handshake and bootstrap (OpenVPN, Tor, ...)."""
    PAGE = "page"
    """One web page (web_connectivity's input)."""
    CONTACTS = "contacts"
    """Contact discovery (Signal's directory)."""
    STORAGE = "storage"
    """Account storage and CDN (Signal)."""
    UPTIME = "uptime"
    """A service's status endpoint (Signal's uptime check)."""
    ENDPOINTS = "endpoints"
    """Endpoints of a test that names no finer feature."""
    RESOLVER = "resolver"
    """A DNS resolver itself (OONI's dnscheck: DoH, DoT, UDP resolvers)."""
    ECH = "ech"
    """TLS handshakes carrying the Encrypted Client Hello extension (OONI's echcheck)."""
    HTTP_HEADERS = "http_headers"
    """HTTP request headers reaching a server unaltered (OONI's http_header_field_manipulation)."""
    REQUEST_LINE = "request_line"
    """An HTTP request line reaching a server unaltered (OONI's http_invalid_request_line)."""
    KEYWORDS = "keywords"
    """Messages naming listed keywords, delivered or withheld by the platform (the keyword nettest)."""


FEATURES: tuple[str, ...] = tuple(feature.value for feature in Feature)


class Circumvention(StrEnum):
    """A way around the censor the `circumvention` nettest tries: its features, one per option."""

    plain: str

    def __new__(cls, value: str, plain: str) -> "Circumvention":
        member = str.__new__(cls, value)
        member._value_ = value
        member.plain = plain
        return member

    OPENVPN_UDP = ("openvpn_udp", "OpenVPN over UDP")
    OPENVPN_TCP = ("openvpn_tcp", "OpenVPN over TCP")
    WIREGUARD = ("wireguard", "WireGuard")
    SHADOWSOCKS = ("shadowsocks", "Shadowsocks")
    OBFS4 = ("obfs4", "obfs4")
    TOR = ("tor", "Tor")
    TOR_OBFS4 = ("tor_obfs4", "Tor through an obfs4 bridge")



def describe_circumvention(results: Mapping[str, tuple[str, str | None]]) -> str:
    """Which ways around worked and how the others were stopped, in words: "Shadowsocks and obfs4
    worked; OpenVPN over UDP and WireGuard were blocked (the app's protocol was recognised and cut)".

    `results` maps each option tried (a `Circumvention` value) to its (verdict, method). One
    definition for the probe's own summary and the report's "what still works" (issue 12).
    """
    def names(options: list[str]) -> str:
        words = [Circumvention(o).plain if o in Circumvention._value2member_map_ else o for o in options]
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

    worked = [option for option, (verdict, _) in results.items() if verdict == Verdict.OK]
    blocked: dict[str, list[str]] = {}
    for option, (verdict, method) in results.items():
        if verdict == Verdict.BLOCKED:
            blocked.setdefault(method or "", []).append(option)
    parts = [f"{names(worked)} worked" if worked else "nothing worked"]
    for method, options in blocked.items():
        how = f" ({Method(method).plain})" if method in METHODS else ""
        parts.append(f"{names(options)} {'were' if len(options) > 1 else 'was'} blocked{how}")
    rest = [option for option, (verdict, _) in results.items() if verdict not in (Verdict.OK, Verdict.BLOCKED)]
    if rest:
        parts.append(f"{names(rest)}: {', '.join(sorted({results[o][0] for o in rest}))}")
    return "; ".join(parts)

# The features each of wallwatch's own nettests reports, in the order it reports them;
# a scenario's ground truth must name every one (lab/scenario.py).
NETTEST_FEATURES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "whatsapp": (Feature.TEXT, Feature.MEDIA, Feature.CALLS, Feature.WEB, Feature.REGISTRATION),
    "openvpn": (Feature.TUNNEL,),
    # The messaging nettests of probe/nettests/ (one module each; docs/services.md says what each
    # feature measures and where the real service's endpoints come from).
    "telegram": (Feature.TEXT, Feature.MEDIA, Feature.WEB),
    "signal": (Feature.TEXT, Feature.MEDIA, Feature.STORAGE, Feature.CALLS),
    "facebook_messenger": (Feature.TEXT, Feature.MEDIA, Feature.CALLS, Feature.WEB),
    "wechat": (Feature.TEXT, Feature.MEDIA, Feature.CALLS, Feature.WEB),
    "viber": (Feature.TEXT, Feature.MEDIA, Feature.CALLS),
    "skype": (Feature.TEXT, Feature.MEDIA, Feature.CALLS, Feature.WEB),
    "facetime": (Feature.CALLS,),
    # Platform-side filtering: a verdict about the service, not the network (Method.PLATFORM_FILTER).
    "keyword": (Feature.KEYWORDS,),
    # Ways around the censor, one feature per option (probe/nettests/circumvention.py).
    "circumvention": tuple(Circumvention),
})


def is_verdict(value: object) -> bool:
    return isinstance(value, str) and value in VERDICTS


def is_method(value: object) -> bool:
    return isinstance(value, str) and value in METHODS
