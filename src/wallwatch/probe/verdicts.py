"""Per-feature verdicts from the recorded facts: a pure function, versioned rules.

`derive_whatsapp_features(test_keys)` reads only what the measurement holds
(the OONI event arrays, grouped by `transaction_id` and `tags`, plus the
`x_wallwatch` session, control and UDP facts), so the pipeline can re-derive
every verdict later and get the same answer. Each verdict names its rule.

Principles (the same as ooni/data's v5 analysis: facts first, then judgment):
* *blocked* needs evidence of interference: a racing second DNS answer, an
  answer outside the service's networks whose flow then fails, connects that
  time out or are reset, a reset/timeout right after the ClientHello or the
  WhatsApp header while a control to the same address:port passes.
* a refused connection, an HTTP 5xx from a server that completed TLS with a
  valid certificate, a server that closes on us as it closes on the control:
  *down*, not blocked.
* a probe-side failure (no route, resolver unreachable even for the control
  name): *unknown*.
* the method is the first stage that was interfered with.

Partial and intermittent blocking (rules version 2)
---------------------------------------------------
A censor that blocks "on and off" (a rule that fires per flow with
probability p: the GFW against WhatsApp text in September 2017, and its 90 s
penalty box that blocks 50-75% of later connections, [Rambert2021])
leaves some targets working. Under rules/1 one working
target made an any-of feature `ok`, so such a censor was invisible. Now:

* a target's verdict is *strong* when the interference is verified by a
  control or by the service's own networks: two different DNS answers to one
  query, a DNS answer outside the service's networks whose flow then failed,
  a reset/timeout after the ClientHello while a control SNI to the same
  address:port was answered, a reset/timeout after the WhatsApp header while
  a same-size control to the same address:port was answered or closed
  normally, or a reset after the header followed by the address:port
  refusing new flows (the penalty box). Everything else that says blocked
  (connect timeouts, resets with no clean control, STUN silence, NXDOMAIN) is
  *weak*: it says blocked only when nothing worked.
* a feature is `blocked` when at least one target shows strong evidence, even
  if others worked. Its result then says `"partial": true` (some targets
  worked), and the confidence is scaled by the share of targets with strong
  evidence: mean strong confidence x (0.5 + 0.5 x strong share), so one
  interfered target of 32 is a weak claim and all 32 a full one. Rule id:
  `feature.partial_blocked+<target rule>`.
* a failure without such evidence never makes a partially working feature
  blocked: weak evidence alone with a working target stays `feature.some_ok`.
* every feature result carries `blocked_share`: targets judged interfered
  with (strong or weak) / targets measured, and `partial`: the verdict is
  blocked while at least one target worked.

The rule ids of rules/1 keep their meaning; rules/2 adds
`feature.partial_blocked`, `chat.reset_then_blackholed` (a rules/1 case of
`chat.address_blackholed` with a reset first), and calls judged `udp_blocking`
when the resolver answered over UDP even if no TCP connection succeeded.

Residual blocking and throttling (rules version 3)
--------------------------------------------------
A censor with a penalty box ([Rambert2021]; the lab censor's `residual`
option) resets the triggering connection and then drops new connections to
the same server and port for a while. rules/3 names that method `residual`
(it was `protocol_dpi` under rules/2) wherever the probe sees both halves: a
reset on the first bytes of an established connection (the WhatsApp header:
`chat.reset_then_blackholed`; a ClientHello: `tls.reset_then_blackholed`; an
OpenVPN client reset: `openvpn.reset_then_blackholed`) followed by a control
connect to the same address:port timing out, or a connect timing out to an
address:port that another attempt of the same measurement had connected to and
seen reset (`tcp.blackholed_after_reset`). A stall (timeout) followed by a
connect timeout stays weak `tcp_ip`: an overloaded server stops answering too.
rules/3 also adds `throttled` (see "throttling" below).

The other messaging nettests (`derive_features(nettest, test_keys)`: telegram,
signal, facebook_messenger, ...) are judged by these same rules under their
own names: their `wallwatch-<nettest>-verdicts/1` judged as whatsapp's rules/2
did, their /2 as its rules/3 (residual, and throttled for each transfer
feature a nettest measures with throughput rounds: `Common.throughput`,
`ServiceTest.measure_throughput`). The keyword nettest's platform rules
(`derive_keyword_features`) came with /2 and have no /1.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from wallwatch.vocabulary import (
    METHODS,
    NETTEST_FEATURES,
    THROTTLINGS,
    VERDICTS,
    Feature,
    Method,
    Throttling,
    Verdict,
    is_finding,
    is_verdict,
)

RULES_VERSION = "wallwatch-whatsapp-verdicts/3"

OK, BLOCKED, DOWN, UNKNOWN, THROTTLED = Verdict.OK, Verdict.BLOCKED, Verdict.DOWN, Verdict.UNKNOWN, Verdict.THROTTLED

# Features whose every target must work (media needs both upload and
# download); the others work if any target does, like OONI's `any_of` targets
# (ooni/data oonipipeline/targets.py).
ALL_OF_FEATURES = frozenset({"media"})
FEATURE_ORDER: tuple[str, ...] = tuple(map(str, NETTEST_FEATURES["whatsapp"]))

_TIMEOUT, _RESET, _EOF, _REFUSED = "generic_timeout_error", "connection_reset", "eof_error", "connection_refused"
_CERT_FAILURES = frozenset({"ssl_invalid_hostname", "ssl_unknown_authority", "ssl_invalid_certificate"})
_MAX_EVIDENCE = 6


@dataclass(frozen=True)
class TargetVerdict:
    """One attempt's judgment; `status` is ok, blocked (interfered), down or unknown."""

    endpoint: str
    status: str
    rule: str
    evidence: str
    method: str | None = None
    confidence: float = 1.0
    # Control- or network-verified interference: enough to call a feature
    # blocked even when other targets worked (see "Partial" above).
    strong: bool = False

    def __post_init__(self) -> None:
        # The vocabulary is the contract with the pipeline: a word outside it would be
        # stored as `unknown` there, so refuse it here, where the rule that said it is.
        if not is_verdict(self.status):
            raise ValueError(f"{self.rule}: {self.status!r} is not a verdict ({', '.join(VERDICTS)})")
        if not is_finding(self.status, self.method):
            raise ValueError(f"{self.rule}: method {self.method!r} with verdict {self.status!r}: a blocked verdict "
                             f"names one of {', '.join(METHODS)}, a throttled one one of {', '.join(THROTTLINGS)}, "
                             "any other names none")


@dataclass
class _Attempt:
    """Everything recorded under one transaction id, controls kept apart."""

    transaction_id: int
    feature: str | None = None
    endpoint: str = "?"
    queries: list[dict[str, Any]] = field(default_factory=list)
    connects: list[dict[str, Any]] = field(default_factory=list)
    handshakes: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    udp: list[dict[str, Any]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Context:
    """Measurement-wide facts some rules need."""

    expected_networks: tuple[Any, ...]
    resolver_alive: bool | None  # did the DNS control get any answer?
    tcp_works: bool  # did any TCP connect in the measurement succeed?
    udp_works: bool  # did the resolver answer a UDP query for the control name?
    chat_sessions: dict[int, dict[str, Any]]
    fetches: dict[int, dict[str, Any]]
    # address:port -> when a connection to it was first reset after it had been established
    # (its first bytes were answered with a reset): the trigger of a penalty box.
    cuts: dict[str, float] = field(default_factory=dict)


# --- grouping ---------------------------------------------------------------------


def _tag_value(tags: Iterable[str], prefix: str) -> str | None:
    return next((tag[len(prefix):] for tag in tags if tag.startswith(prefix)), None)


def _is_control(entry: dict[str, Any]) -> bool:
    return any(tag.startswith("control:") for tag in entry.get("tags") or ())


def _is_throughput(entry: dict[str, Any]) -> bool:
    """Made by the throughput rounds (probe/throughput.py): judged from their record, not as attempts."""
    return any(tag.startswith("throughput:") for tag in entry.get("tags") or ())


def _group(test_keys: dict[str, Any]) -> dict[int, _Attempt]:
    attempts: dict[int, _Attempt] = {}
    x = test_keys.get("x_wallwatch") or {}
    sources = (("queries", "queries"), ("tcp_connect", "connects"), ("tls_handshakes", "handshakes"),
               ("requests", "requests"))
    for key, attr in sources:
        for entry in test_keys.get(key) or ():
            if _is_throughput(entry):
                continue
            attempt = _attempt_for(attempts, entry)
            if attempt is not None and not _is_control(entry):
                getattr(attempt, attr).append(entry)
    for entry in x.get("udp_exchanges") or ():
        attempt = _attempt_for(attempts, entry)
        if attempt is not None:
            attempt.udp.append(entry)
    for entry in x.get("controls") or ():
        attempt = _attempt_for(attempts, entry)
        if attempt is not None:
            attempt.controls.append(entry)
    return attempts


def _attempt_for(attempts: dict[int, _Attempt], entry: dict[str, Any]) -> _Attempt | None:
    tx_id = entry.get("transaction_id")
    if tx_id is None:
        return None
    attempt = attempts.setdefault(tx_id, _Attempt(tx_id))
    tags = entry.get("tags") or ()
    attempt.feature = attempt.feature or _tag_value(tags, "feature:")
    endpoint = _tag_value(tags, "endpoint:")
    if endpoint and attempt.endpoint == "?":
        attempt.endpoint = endpoint
    return attempt


def _context(test_keys: dict[str, Any]) -> _Context:
    x = test_keys.get("x_wallwatch") or {}
    networks = []
    for text in x.get("expected_networks") or ():
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    dns_controls = [q for q in test_keys.get("queries") or () if "control:dns" in (q.get("tags") or ())]
    resolver_alive = None
    if dns_controls:
        resolver_alive = any(_resolver_answered(q) for q in dns_controls)
    tcp_works = any((c.get("status") or {}).get("success") for c in test_keys.get("tcp_connect") or ())
    # The control name is one no censor touches, so its answer came from the
    # resolver itself: UDP datagrams go out and come back on this network.
    udp_works = any(q.get("engine") == "udp" and q.get("rcode") is not None for q in dns_controls)
    return _Context(
        expected_networks=tuple(networks),
        resolver_alive=resolver_alive,
        tcp_works=tcp_works,
        udp_works=udp_works,
        # whatsapp's chat sessions (rules/1 and /2) and every other nettest's app-protocol sessions.
        chat_sessions={s["transaction_id"]: s for key in ("chat_sessions", "sessions")
                       for s in x.get(key) or () if "transaction_id" in s},
        fetches={f["transaction_id"]: f for f in x.get("fetches") or () if "transaction_id" in f},
        cuts=_cuts(test_keys),
    )


def _cuts(test_keys: dict[str, Any]) -> dict[str, float]:
    """Where an established connection was reset on a read, and when (its earliest time)."""
    cuts: dict[str, float] = {}
    for event in test_keys.get("network_events") or ():
        if (event.get("operation") == "read" and event.get("failure") == _RESET and event.get("address")
                and not _is_throughput(event) and not _is_control(event)):
            at = event.get("t", 0.0)
            cuts[event["address"]] = min(at, cuts.get(event["address"], at))
    return cuts


def _resolver_answered(query: dict[str, Any]) -> bool:
    # An NXDOMAIN is an answer: the resolver is there and talking.
    return query.get("rcode") is not None or query.get("failure") in (None, "dns_nxdomain_error", "dns_no_answer")


# --- per-stage rules ----------------------------------------------------------------


def _answer_addresses(answers: Sequence[dict[str, Any]]) -> set[str]:
    return {a.get("ipv4") or a.get("ipv6") for a in answers if a.get("ipv4") or a.get("ipv6")}


def _expected(address: str, ctx: _Context) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in ctx.expected_networks)


def _dns_verdict(attempt: _Attempt, ctx: _Context, flow_failed: bool) -> TargetVerdict | None:
    """Judge the lookup; None when DNS shows nothing wrong and later stages decide."""
    if not attempt.queries:
        return None
    query = attempt.queries[0]
    first = _answer_addresses(query.get("answers") or ())
    racing = [d for d in query.get("x_dns_duplicate_responses") or ()
              if _answer_addresses(d.get("answers") or ()) != first]
    ep = attempt.endpoint
    if racing and flow_failed:
        later = sorted(_answer_addresses(racing[0].get("answers") or ())) or [racing[0].get("rcode")]
        return TargetVerdict(ep, BLOCKED, "dns.injection_race",
                             f"{ep}: two different DNS answers to one query ({', '.join(sorted(first)) or '-'} "
                             f"then {', '.join(map(str, later))}): an on-path injector raced the resolver",
                             Method.DNS, 0.95, strong=True)
    failure = query.get("failure")
    if failure is None:
        if flow_failed and first and ctx.expected_networks and not any(_expected(a, ctx) for a in first):
            return TargetVerdict(ep, BLOCKED, "dns.unexpected_answer",
                                 f"{ep}: DNS answered {', '.join(sorted(first))}, outside the service's networks, "
                                 "and the flow to it failed", Method.DNS, 0.85, strong=True)
        return None
    return _dns_failure_verdict(ep, failure, ctx)


def _dns_failure_verdict(ep: str, failure: str, ctx: _Context) -> TargetVerdict:
    if failure == "dns_nxdomain_error":
        return TargetVerdict(ep, BLOCKED, "dns.nxdomain", f"{ep}: the resolver says the name does not exist "
                             "(NXDOMAIN), but it is a live service name", Method.DNS, 0.8)
    if failure == _TIMEOUT and ctx.resolver_alive:
        return TargetVerdict(ep, BLOCKED, "dns.dropped", f"{ep}: DNS query timed out while the resolver "
                             "answered a control name", Method.DNS, 0.8)
    if failure == _TIMEOUT or failure in ("network_unreachable", "host_unreachable", _REFUSED):
        return TargetVerdict(ep, UNKNOWN, "dns.resolver_unreachable",
                             f"{ep}: DNS {failure} and the control name got no answer either: "
                             "the probe has no working resolver", None, 0.0)
    return TargetVerdict(ep, BLOCKED, "dns.error_answer",
                         f"{ep}: the resolver answered {failure} for a live service name", Method.DNS, 0.5)


def _connect_verdict(attempt: _Attempt) -> TargetVerdict | None:
    """None when some connect succeeded (later stages decide)."""
    ep = attempt.endpoint
    if any((c.get("status") or {}).get("success") for c in attempt.connects):
        return None
    if not attempt.connects:
        return TargetVerdict(ep, UNKNOWN, "tcp.not_dialled", f"{ep}: no address could be dialled", None, 0.0)
    failed = Counter((c.get("status") or {}).get("failure") for c in attempt.connects)
    addresses = ", ".join(f"{c.get('ip')}:{c.get('port')}" for c in attempt.connects)
    if failed[_RESET]:
        return TargetVerdict(ep, BLOCKED, "tcp.connect_reset", f"{ep}: connect to {addresses} reset",
                             Method.TCP_RESET, 0.8)
    if set(failed) == {_TIMEOUT}:
        return TargetVerdict(ep, BLOCKED, "tcp.connect_timeout",
                             f"{ep}: connect to {addresses} timed out (SYN black-holed)", Method.TCP_IP, 0.8)
    if failed["host_unreachable"]:
        return TargetVerdict(ep, BLOCKED, "tcp.host_unreachable", f"{ep}: {addresses} host_unreachable",
                             Method.TCP_IP, 0.6)
    if failed[_REFUSED]:
        return TargetVerdict(ep, DOWN, "tcp.refused", f"{ep}: connect to {addresses} refused: "
                             "the host is there and not listening", None, 0.7)
    if failed["network_unreachable"]:
        return TargetVerdict(ep, UNKNOWN, "tcp.network_unreachable", f"{ep}: the probe has no route",
                             None, 0.0)
    return TargetVerdict(ep, UNKNOWN, "tcp.other_failure", f"{ep}: connect failed: {', '.join(map(str, failed))}",
                         None, 0.2)


def _after_a_cut(attempt: _Attempt, verdict: TargetVerdict, ctx: _Context) -> TargetVerdict:
    """A connect timeout to an address:port that took a connection of this same measurement moments
    before and reset it on its first bytes is the penalty box, not an address block."""
    if verdict.rule != "tcp.connect_timeout":
        return verdict
    for connect in attempt.connects:
        address = f"{connect.get('ip')}:{connect.get('port')}"
        cut = ctx.cuts.get(address)
        if cut is not None and (connect.get("t0") or 0.0) >= cut:
            return TargetVerdict(attempt.endpoint, BLOCKED, "tcp.blackholed_after_reset",
                                 f"{attempt.endpoint}: connect to {address} timed out {connect.get('t0', 0.0) - cut:.2f}"
                                 f" s after another connection to it was reset on its first bytes (residual "
                                 "blocking)", Method.RESIDUAL, 0.7, strong=True)
    return verdict


def _control(attempt: _Attempt, kind: str) -> dict[str, Any] | None:
    return next((c for c in attempt.controls if c.get("kind") == kind), None)


def _control_passed(control: dict[str, Any]) -> bool:
    return control.get("outcome") in ("answered", "closed")


def _tls_verdict(attempt: _Attempt) -> TargetVerdict | None:
    if not attempt.handshakes or attempt.handshakes[0].get("failure") is None:
        return None
    ep, failure = attempt.endpoint, attempt.handshakes[0]["failure"]
    if failure in _CERT_FAILURES:
        return TargetVerdict(ep, BLOCKED, "tls.invalid_certificate",
                             f"{ep}: TLS {failure}: something other than the service answered", Method.TLS_MITM, 0.8)
    if failure not in (_RESET, _TIMEOUT, _EOF):
        return TargetVerdict(ep, UNKNOWN, "tls.other_failure", f"{ep}: TLS handshake failed: {failure}", None, 0.2)
    control = _control(attempt, "tls_sni")
    if control is None:
        return TargetVerdict(ep, UNKNOWN, "tls.failure_no_control", f"{ep}: TLS {failure}, no control ran",
                             None, 0.3)
    sni = control.get("server_name")
    if _control_passed(control):
        return TargetVerdict(ep, BLOCKED, "tls.sni_filtered",
                             f"{ep}: TLS {failure} after the ClientHello, while a ClientHello for {sni} to the "
                             f"same {control.get('address')} was {control.get('outcome')}", Method.TLS_SNI, 0.9,
                             strong=True)
    method = Method.TCP_RESET if failure == _RESET or control.get("outcome") == "reset" else Method.TCP_IP
    says = (f"{ep}: TLS {failure}, and a ClientHello for {sni} to the same {control.get('address')} "
            f"failed too ({control.get('outcome')})")
    if failure == _RESET and control.get("outcome") == "connect_failed" and control.get("failure") == _TIMEOUT:
        # The address took our connection, reset it on the ClientHello, and then stopped taking
        # any: the penalty box after a trigger [Rambert2021], not an address block (that would
        # have failed the first connect too).
        return TargetVerdict(ep, BLOCKED, "tls.reset_then_blackholed", says + ": reset after the ClientHello, then "
                             "new connections black-holed (residual blocking)", Method.RESIDUAL, 0.75, strong=True)
    if failure == _TIMEOUT and control.get("outcome") == "silent":
        # A TLS server must answer a ClientHello (ServerHello or alert, RFC 8446
        # §4.1), so silence to both is someone dropping -- or a hung server.
        return TargetVerdict(ep, BLOCKED, "tls.all_flights_silent", says + ": data to this address:port is "
                             "dropped", method, 0.5)
    return TargetVerdict(ep, BLOCKED, "tls.address_filtered", says + ": the address:port is filtered", method, 0.7)


def _http_verdict(attempt: _Attempt) -> TargetVerdict:
    ep = attempt.endpoint
    if not attempt.requests:
        return TargetVerdict(ep, UNKNOWN, "http.not_sent", f"{ep}: no HTTP request was sent", None, 0.0)
    request = attempt.requests[0]
    failure, code = request.get("failure"), (request.get("response") or {}).get("code") or 0
    if failure is not None:
        return TargetVerdict(ep, UNKNOWN, "http.failure_after_tls",
                             f"{ep}: {failure} after a valid TLS handshake (the censor cannot read this far)",
                             None, 0.3)
    if code >= 500:
        return TargetVerdict(ep, DOWN, "http.server_error",
                             f"{ep}: HTTP {code} from a server with a valid certificate", None, 0.8)
    return TargetVerdict(ep, OK, "http.response", f"{ep}: HTTP {code}", None, 1.0)


def _chat_verdict(attempt: _Attempt, session: dict[str, Any]) -> TargetVerdict:
    """An app-protocol session (WhatsApp's chat, MTProto, MQTT, ...): judged by its payload control."""
    ep = attempt.endpoint
    if session.get("stage_reached") == "echo":
        return TargetVerdict(ep, OK, "chat.echo", f"{ep}: handshake and echo completed", None, 1.0)
    if _session_completed(session):
        return TargetVerdict(ep, OK, "session.completed", f"{ep}: the service's own protocol answered "
                             f"({session.get('stage_reached')})", None, 1.0)
    failure, at = session.get("failure"), session.get("failed_at")
    control = _control(attempt, "payload") or session.get("control")
    if failure is not None and failure.startswith("unknown_failure"):
        return TargetVerdict(ep, UNKNOWN, "chat.garbled", f"{ep}: {failure} at {at}", None, 0.3)
    if control is None:
        return TargetVerdict(ep, UNKNOWN, "chat.failure_no_control", f"{ep}: {failure} at {at}, no control ran",
                             None, 0.3)
    outcome = control.get("outcome")
    says = f"{ep}: {failure} at {at}; a same-size payload of no app protocol to the same address:port was {outcome}"
    if outcome == "closed" and failure == _EOF:
        return TargetVerdict(ep, DOWN, "chat.server_hangs_up", says + ": the server hangs up on everyone",
                             None, 0.6)
    if outcome in ("answered", "closed"):
        confidence = 0.9 if failure == _RESET else 0.8
        return TargetVerdict(ep, BLOCKED, "chat.protocol_dpi", says, Method.PROTOCOL_DPI, confidence, strong=True)
    if outcome == "silent" and failure == _RESET:
        return TargetVerdict(ep, BLOCKED, "chat.protocol_dpi_reset", says, Method.PROTOCOL_DPI, 0.7)
    if outcome == "reset":
        return TargetVerdict(ep, BLOCKED, "chat.address_reset", says, Method.TCP_RESET, 0.7)
    if outcome == "connect_failed" and control.get("failure") == _REFUSED:
        return TargetVerdict(ep, DOWN, "chat.control_refused", says, None, 0.6)
    if outcome == "connect_failed" and failure == _RESET and control.get("failure") == _TIMEOUT:
        # Reset right after the header, then the same address:port stops taking
        # new connections: the GFW's penalty box on (client, server, port)
        # after a trigger [Rambert2021]. A server does not
        # reset a greeting and then vanish from the network.
        return TargetVerdict(ep, BLOCKED, "chat.reset_then_blackholed", says + ": reset after the header, then "
                             "new connections black-holed (residual blocking)", Method.RESIDUAL, 0.75, strong=True)
    if outcome == "connect_failed":
        return TargetVerdict(ep, BLOCKED, "chat.address_blackholed", says + " (residual or address blocking)",
                             Method.TCP_IP, 0.6)
    return TargetVerdict(ep, UNKNOWN, "chat.ambiguous_silence", says, None, 0.3)


def _udp_verdict(attempt: _Attempt, ctx: _Context) -> TargetVerdict:
    ep = attempt.endpoint
    exchange = attempt.udp[0] if attempt.udp else {}
    failure = exchange.get("failure", "unknown_failure: not measured")
    what = "STUN Binding" if exchange.get("kind", "stun") == "stun" else f"{exchange.get('kind')} request"
    if failure is None:
        return TargetVerdict(ep, OK, "udp.answered", f"{ep}: {what} answered", None, 1.0)
    if failure == _REFUSED:
        return TargetVerdict(ep, DOWN, "udp.port_unreachable", f"{ep}: ICMP port unreachable", None, 0.7)
    if failure == _TIMEOUT and (ctx.tcp_works or ctx.udp_works):
        works = " and ".join(name for name, on in (("TCP connections", ctx.tcp_works),
                                                   ("the resolver's UDP answers", ctx.udp_works)) if on)
        return TargetVerdict(ep, BLOCKED, "udp.no_answer",
                             f"{ep}: no answer to {exchange.get('sends')} sends of a {what} while {works} show the "
                             "network works", Method.UDP_BLOCKING, 0.6)
    return TargetVerdict(ep, UNKNOWN, "udp.no_answer_no_network", f"{ep}: {failure}, and nothing else works "
                         "either", None, 0.0)


def _session_completed(session: dict[str, Any] | None) -> bool:
    # rules/1 sessions (whatsapp's chat) have no `completed`: the echo is their proof.
    return session is not None and bool(session.get("completed") or session.get("stage_reached") == "echo")


def judge_attempt(attempt: _Attempt, ctx: _Context) -> TargetVerdict:
    """The first stage that shows something wrong decides."""
    session = ctx.chat_sessions.get(attempt.transaction_id)
    fetch = ctx.fetches.get(attempt.transaction_id)
    if session is None and fetch is None and not attempt.queries:
        return _udp_verdict(attempt, ctx)  # a STUN exchange to a relay dialled by address
    udp_ok = bool(attempt.udp) and attempt.udp[0].get("failure") is None
    succeeded = _session_completed(session) or udp_ok or (fetch is not None and fetch.get("failure") is None)
    dns = _dns_verdict(attempt, ctx, not succeeded)
    if dns is not None:
        return dns
    if attempt.udp:
        return _udp_verdict(attempt, ctx)
    # Sessions dialled by address (Telegram's data centres) have no lookup: the connect decides first.
    if not attempt.queries or attempt.queries[0].get("failure") is None:
        connect = _connect_verdict(attempt)
        if connect is not None:
            return _after_a_cut(attempt, connect, ctx)
    if session is not None and session.get("failed_at") != "tls":
        return _chat_verdict(attempt, session)
    return _tls_verdict(attempt) or _http_verdict(attempt)


# --- feature aggregation ---------------------------------------------------------------


def _evidence(verdicts: Sequence[TargetVerdict]) -> list[str]:
    lines = [v.evidence for v in verdicts[:_MAX_EVIDENCE]]
    if len(verdicts) > _MAX_EVIDENCE:
        lines.append(f"... and {len(verdicts) - _MAX_EVIDENCE} more like these")
    return lines


def _dominant_method(blocked: Sequence[TargetVerdict]) -> str | None:
    counts = Counter(v.method for v in blocked)
    return max(counts, key=lambda m: (counts[m], -METHODS.index(m) if m in METHODS else -99))


def _feature(verdict: str, rule: str, method: str | None, confidence: float, evidence: list[str],
             ok: int, total: int, interfered: int = 0) -> dict[str, Any]:
    return {"verdict": str(verdict), "method": None if method is None else str(method),
            "confidence": round(confidence, 2), "rule": rule,
            "evidence": evidence, "targets_ok": ok, "targets_total": total,
            "partial": verdict == BLOCKED and ok > 0,
            "blocked_share": round(interfered / total, 4) if total else 0.0}


def _blocked_feature(rule: str, blocked: Sequence[TargetVerdict], ok: int, total: int,
                     interfered: int, scale: float = 1.0) -> dict[str, Any]:
    """Blocked, named after the dominant method among `blocked`; its evidence first."""
    method = _dominant_method(blocked)
    same = [v for v in blocked if v.method == method]
    confidence = scale * sum(v.confidence for v in same) / len(same)
    return _feature(BLOCKED, f"{rule}+{same[0].rule}", method, confidence,
                    _evidence(same + [v for v in blocked if v.method != method]), ok, total, interfered)


def partial_confidence_scale(strong: int, total: int) -> float:
    """How much a partial verdict keeps of its targets' confidence: 0.5 plus half the strong share.

    One interfered target in 32 could be a fluke of that one flow; half or
    all of them is a pattern (on-and-off blocking at p = 0.5 interferes with
    half the flows on average).
    """
    return 0.5 + 0.5 * strong / total


def aggregate_feature(feature: str, verdicts: Sequence[TargetVerdict],
                      all_of: frozenset[str] = ALL_OF_FEATURES) -> dict[str, Any]:
    total = len(verdicts)
    # A throttled target worked (slowly): it counts with the working ones for reachability.
    throttled = [v for v in verdicts if v.status == THROTTLED]
    ok = [v for v in verdicts if v.status in (OK, THROTTLED)]
    blocked = [v for v in verdicts if v.status == BLOCKED]
    strong = [v for v in blocked if v.strong]
    down = [v for v in verdicts if v.status == DOWN]
    if total == 0:
        return _feature(UNKNOWN, "feature.not_measured", None, 0.0, ["no target was measured"], 0, 0)
    if len(ok) == total and not throttled:
        return _feature(OK, "feature.all_ok", None, 1.0, [f"{total} of {total} targets worked"], total, total)
    if blocked and (feature in all_of or not ok):
        rule = "feature.any_blocked" if feature in all_of else "feature.none_ok_blocked"
        return _blocked_feature(rule, blocked, len(ok), total, len(blocked))
    if strong:
        # Some targets worked, but at least one shows verified interference:
        # the on-and-off censor (see "Partial" in the module docstring).
        result = _blocked_feature("feature.partial_blocked", strong, len(ok), total, len(blocked),
                                  partial_confidence_scale(len(strong), total))
        result["evidence"] = [f"{len(strong)} of {total} targets show verified interference while "
                              f"{len(ok)} worked: blocked on and off"] + result["evidence"]
        weak = [v for v in blocked if not v.strong]
        result["evidence"] += _evidence(weak)[: max(0, _MAX_EVIDENCE - len(strong))]
        return result
    if throttled:
        # Nothing blocked it (or not enough to say so), and some of it was slowed down.
        counts = Counter(v.method for v in throttled)
        kind = min(counts, key=lambda k: (-counts[k], THROTTLINGS.index(k)))
        same = [v for v in throttled if v.method == kind]
        return _feature(THROTTLED, f"feature.throttled+{same[0].rule}", kind,
                        sum(v.confidence for v in same) / len(same), _evidence(same), len(ok), total,
                        len(blocked))
    if ok:
        failing = [v for v in verdicts if v.status != OK]
        evidence = [f"{len(ok)} of {total} targets worked; the app needs only one"] + _evidence(failing)
        return _feature(OK, "feature.some_ok", None, len(ok) / total, evidence, len(ok), total, len(blocked))
    if down:
        # Nothing worked and nothing showed interference: some targets are
        # down and the rest could not be judged.
        confidence = sum(v.confidence for v in down) / len(down)
        return _feature(DOWN, f"feature.down+{down[0].rule}", None, confidence, _evidence(down), 0, total)
    unknown = [v for v in verdicts if v.status == UNKNOWN]
    return _feature(UNKNOWN, f"feature.unknown+{unknown[0].rule if unknown else 'mixed'}", None, 0.0,
                    _evidence(unknown + down), 0, total)


def derive_whatsapp_features(test_keys: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-feature verdicts for a whatsapp measurement's `test_keys` (pure; reads facts only)."""
    return derive_features("whatsapp", test_keys)


# Features whose every target must work, per nettest, beyond media (ALL_OF_FEATURES): a Signal
# call needs both its SFU and a relay that answers; a FaceTime call both the push channel
# that rings the callee and the relay.
EXTRA_ALL_OF: Mapping[str, frozenset[str]] = MappingProxyType({
    "signal": frozenset({"calls"}),
    "facetime": frozenset({"calls"}),
})


def rules_version(nettest: str) -> str:
    """The rules that judged a nettest's features: whatsapp's rules/3, one shared set for the rest."""
    return RULES_VERSION if nettest == "whatsapp" else f"wallwatch-{nettest}-verdicts/{SERVICE_RULES_REVISION}"


# The other messaging nettests' rules: /1 judged as whatsapp's rules/2 did; /2 as its rules/3
# (residual blocking named as its own method; throttled from throughput rounds, when a nettest runs them).
SERVICE_RULES_REVISION = 2


def derive_features(nettest: str, test_keys: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-feature verdicts of a messaging nettest's `test_keys`, its features in the vocabulary's order.

    The same rules judge every service (the module docstring): attempts are grouped by
    transaction, judged stage by stage with their controls, then aggregated per feature.
    The keyword nettest adds its platform rules on top (`derive_keyword_features`).
    """
    if nettest == "keyword":
        return derive_keyword_features(test_keys)
    return network_features(nettest, test_keys)


def network_features(nettest: str, test_keys: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the network did to each feature's attempts (the rules of the module docstring)."""
    ctx = _context(test_keys)
    order = tuple(map(str, NETTEST_FEATURES[nettest]))
    all_of = ALL_OF_FEATURES | EXTRA_ALL_OF.get(nettest, frozenset())
    by_feature: dict[str, list[TargetVerdict]] = {feature: [] for feature in order}
    for attempt in sorted(_group(test_keys).values(), key=lambda a: a.transaction_id):
        if attempt.feature in by_feature:
            by_feature[attempt.feature].append(judge_attempt(attempt, ctx))
    # Transfer features measured against a control (probe/throughput.py) may be throttled: reachable, slowed.
    return {feature: apply_throttling(aggregate_feature(feature, verdicts, all_of),
                                      _throughput_judgments(test_keys, feature))
            for feature, verdicts in by_feature.items()}


def _throughput_judgments(test_keys: dict[str, Any], feature: str) -> list[dict[str, Any]]:
    records = (test_keys.get("x_wallwatch") or {}).get("throughput") or ()
    judged = (judge_throughput(r) for r in records if isinstance(r, dict) and r.get("feature") == feature)
    return [j for j in judged if j is not None]


# --- keyword: platform-side filtering (the `keywords` feature) ----------------------------------------

KEYWORD_FEATURE = str(Feature.KEYWORDS)
_PLATFORM_NOT_JUDGED = ("the platform could not be reached over the network: this verdict is about the "
                        "network, and says nothing of what the platform filters")


def _judge_canary(canary: dict[str, Any]) -> TargetVerdict:
    """One keyword: its message and its twin without it, sent over one connection, read by the recipient."""
    ep = f"“{canary.get('keyword')}”"
    control, keyword = canary.get("control_status"), canary.get("keyword_status")
    if control != 200:
        return TargetVerdict(ep, UNKNOWN, "keyword.control_refused",
                             f"{ep}: the platform refused even the message without it (HTTP {control})", None, 0.0)
    if keyword != 200:
        return TargetVerdict(ep, BLOCKED, "keyword.refused",
                             f"{ep}: the platform refused the message naming it (HTTP {keyword}) and accepted the "
                             "same message without it", Method.PLATFORM_FILTER, 0.9, strong=True)
    if not canary.get("control_delivered"):
        return TargetVerdict(ep, UNKNOWN, "keyword.nothing_delivered",
                             f"{ep}: not even the message without it was delivered, so delivery tells nothing", None,
                             0.0)
    if not canary.get("keyword_delivered"):
        return TargetVerdict(ep, BLOCKED, "keyword.withheld",
                             f"{ep}: the platform accepted the message naming it (HTTP 200) and never delivered it, "
                             "while the same message without it, sent over the same connection, was delivered",
                             Method.PLATFORM_FILTER, 0.9, strong=True)
    return TargetVerdict(ep, OK, "keyword.delivered", f"{ep}: delivered, as its twin without it", None, 1.0)


def derive_keyword_features(test_keys: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The keyword nettest's one feature: first the network (reaching the platform, judged by the rules
    every messaging nettest uses), then, only if the platform was reached, the platform's own filtering.

    Network blocking of the platform therefore reads as that network method, never as platform
    filtering; `blocked/platform_filter` needs messages the platform accepted and withheld while
    their twins without the keyword arrived ([CitizenLab2016])."""
    network = network_features("keyword", test_keys)[KEYWORD_FEATURE]
    if network["verdict"] != OK:
        network["evidence"] = [_PLATFORM_NOT_JUDGED] + network["evidence"]
        return {KEYWORD_FEATURE: network}
    canaries = (test_keys.get("x_wallwatch") or {}).get("canaries") or []
    verdicts = [_judge_canary(c) for c in canaries if isinstance(c, dict)]
    total = len(verdicts)
    ok = [v for v in verdicts if v.status == OK]
    withheld = [v for v in verdicts if v.status == BLOCKED]
    if not total:
        return {KEYWORD_FEATURE: _feature(UNKNOWN, "keyword.no_canary", None, 0.0, ["no keyword was tested"], 0, 0)}
    if withheld:
        result = _blocked_feature("keyword.filtered", withheld, len(ok), total, len(withheld))
        result["evidence"] = [f"the platform's own servers withheld {len(withheld)} of {total} keywords while the "
                              "network carried every message: a verdict about the platform, not the network"
                              ] + result["evidence"] + _evidence(ok)[:2]
        return {KEYWORD_FEATURE: result}
    if len(ok) == total:
        return {KEYWORD_FEATURE: _feature(OK, "keyword.all_delivered", None, 1.0,
                                          [f"all {total} keywords were delivered, as their twins without them"],
                                          total, total)}
    unknown = [v for v in verdicts if v.status != OK]
    return {KEYWORD_FEATURE: _feature(UNKNOWN, f"keyword.unknown+{unknown[0].rule}", None, 0.0,
                                      _evidence(unknown), len(ok), total)}


# --- openvpn: the `tunnel` feature ----------------------------------------------------------------

OPENVPN_RULES_VERSION = "wallwatch-openvpn-verdicts/2"


def _other_paths_work(test_keys: dict[str, Any], handshake: dict[str, Any]) -> list[str]:
    """What shows the network works apart from this target: other targets' answers, TCP, the resolver."""
    x = test_keys.get("x_wallwatch") or {}
    others = [h for h in x.get("openvpn_handshakes") or () if h is not handshake]
    seen = []
    if any(h.get("packets_received") for h in others):
        seen.append("another OpenVPN target answered")
    if any((c.get("status") or {}).get("success") for c in test_keys.get("tcp_connect") or ()
           if c.get("transaction_id") != handshake.get("transaction_id")):
        seen.append("a TCP connection succeeded")
    controls = [q for q in test_keys.get("queries") or () if "control:dns" in (q.get("tags") or ())]
    if any(_resolver_answered(q) for q in controls):
        seen.append("the resolver answered")
    return seen


def judge_openvpn_handshake(handshake: dict[str, Any], test_keys: dict[str, Any]) -> TargetVerdict:
    """One target's handshake, judged from its stage, failure and (TCP) payload control."""
    ep = f"{handshake.get('address')}/{handshake.get('transport')}"
    stage, at, failure = handshake.get("stage_reached"), handshake.get("failed_at"), handshake.get("failure")
    if failure is None and stage == "server_tls":
        tls = handshake.get("server_tls")
        return TargetVerdict(ep, OK, "openvpn.server_tls", f"{ep}: both resets exchanged and the server answered "
                             f"the ClientHello ({tls}) inside P_CONTROL_V1", None, 1.0)
    if failure is None or (failure.startswith("unknown_failure") and "not dialled" in failure):
        return TargetVerdict(ep, UNKNOWN, "openvpn.not_measured", f"{ep}: {failure or 'no result'}", None, 0.0)
    if failure.startswith("unknown_failure"):
        return TargetVerdict(ep, UNKNOWN, "openvpn.garbled", f"{ep}: {failure} at {at}", None, 0.3)
    if at == "server_tls":
        return _openvpn_after_server_reset(ep, handshake, failure)
    if failure == _REFUSED:
        where = "connect refused" if at == "connect" else "ICMP port unreachable"
        return TargetVerdict(ep, DOWN, "openvpn.refused", f"{ep}: {where}: nothing listens there", None, 0.7)
    if handshake.get("transport") == "tcp" and at == "server_reset":
        return _openvpn_tcp_reset_unanswered(ep, handshake, failure)
    return _openvpn_silent_address(ep, handshake, failure, test_keys, at)


def _openvpn_after_server_reset(ep: str, handshake: dict[str, Any], failure: str) -> TargetVerdict:
    """The server answered our reset, then the flow died once the fingerprint was complete."""
    says = (f"{ep}: the server answered our client reset (session acknowledged), then {failure} after "
            "P_CONTROL_V1 with the ClientHello: the flow died once both resets had crossed the wire, "
            "which is when an opcode fingerprint (OpenGFW, Xue et al. 2022) can decide")
    if failure == _EOF:
        return TargetVerdict(ep, UNKNOWN, "openvpn.closed_after_hello", f"{ep}: the server closed after the "
                             "ClientHello without a TLS answer", None, 0.3)
    if failure in (_RESET, _TIMEOUT):
        return TargetVerdict(ep, BLOCKED, "openvpn.stalled_after_server_reset", says, Method.PROTOCOL_DPI,
                             0.85 if failure == _RESET else 0.8, strong=True)
    return TargetVerdict(ep, UNKNOWN, "openvpn.other_failure", f"{ep}: {failure} after the server's reset",
                         None, 0.2)


def _openvpn_tcp_reset_unanswered(ep: str, handshake: dict[str, Any], failure: str) -> TargetVerdict:
    """TCP connected, client reset sent, no server reset: the payload control decides."""
    control = handshake.get("control")
    if control is None:
        return TargetVerdict(ep, UNKNOWN, "openvpn.failure_no_control", f"{ep}: {failure} after the client "
                             "reset, no control ran", None, 0.3)
    outcome = control.get("outcome")
    says = (f"{ep}: {failure} after the client reset; a same-size non-OpenVPN payload to the same "
            f"address:port was {outcome}")
    if failure == _EOF and outcome == "closed":
        return TargetVerdict(ep, DOWN, "openvpn.server_hangs_up", says + ": the server hangs up on everyone",
                             None, 0.5)
    if outcome in ("answered", "closed") and failure in (_RESET, _TIMEOUT):
        return TargetVerdict(ep, BLOCKED, "openvpn.reset_dpi", says, Method.PROTOCOL_DPI,
                             0.85 if failure == _RESET else 0.75, strong=True)
    if outcome == "silent" and failure == _RESET:
        return TargetVerdict(ep, BLOCKED, "openvpn.reset_dpi_no_clean_control", says, Method.PROTOCOL_DPI, 0.6)
    if outcome == "connect_failed" and failure == _RESET and control.get("failure") == _TIMEOUT:
        return TargetVerdict(ep, BLOCKED, "openvpn.reset_then_blackholed", says + ": reset after the client "
                             "reset, then new connections black-holed (residual blocking)", Method.RESIDUAL,
                             0.75, strong=True)
    if outcome == "connect_failed" and control.get("failure") == _REFUSED:
        return TargetVerdict(ep, DOWN, "openvpn.control_refused", says, None, 0.5)
    if outcome == "reset":
        return TargetVerdict(ep, BLOCKED, "openvpn.address_reset", says, Method.TCP_RESET, 0.7)
    if outcome in ("silent", "connect_failed") and failure == _TIMEOUT:
        # An OpenVPN server must answer a client reset (ssl.c), so silence to
        # it and to the control is data to this address:port being dropped.
        return TargetVerdict(ep, BLOCKED, "openvpn.address_silent", says + ": data to this address:port is "
                             "dropped", Method.TCP_IP, 0.5)
    return TargetVerdict(ep, UNKNOWN, "openvpn.ambiguous", says, None, 0.3)


def _openvpn_silent_address(ep: str, handshake: dict[str, Any], failure: str, test_keys: dict[str, Any],
                            at: str | None) -> TargetVerdict:
    """Nothing came back from the address: blocked only if other paths show the network works."""
    transport = handshake.get("transport")
    if failure == _RESET and at == "connect":
        return TargetVerdict(ep, BLOCKED, "openvpn.connect_reset", f"{ep}: connect reset", Method.TCP_RESET, 0.7)
    if failure in ("network_unreachable",):
        return TargetVerdict(ep, UNKNOWN, "openvpn.network_unreachable", f"{ep}: the probe has no route", None, 0.0)
    works = _other_paths_work(test_keys, handshake)
    if failure in (_TIMEOUT, "host_unreachable") and handshake.get("foreign_packets"):
        return TargetVerdict(ep, UNKNOWN, "openvpn.unexpected_answers", f"{ep}: {failure}; only datagrams that "
                             "were not an answer to our reset came back", None, 0.3)
    if failure in (_TIMEOUT, "host_unreachable") and works:
        method = Method.UDP_BLOCKING if transport == "udp" else Method.TCP_IP
        what = (f"no answer to {handshake.get('packets_sent')} client resets" if transport == "udp"
                else f"connect {failure}")
        return TargetVerdict(ep, BLOCKED, f"openvpn.{'udp' if transport == 'udp' else 'tcp'}_silent",
                             f"{ep}: {what} while {' and '.join(works)}: nothing reaches this address",
                             method, 0.6)
    return TargetVerdict(ep, UNKNOWN, "openvpn.no_network", f"{ep}: {failure} and nothing else shows the "
                         "network works", None, 0.0)


def derive_openvpn_features(test_keys: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `tunnel` verdict of an openvpn measurement (pure): any-of targets, with rules/2 partial semantics."""
    x = test_keys.get("x_wallwatch") or {}
    verdicts = [judge_openvpn_handshake(h, test_keys) for h in x.get("openvpn_handshakes") or ()]
    return {Feature.TUNNEL.value: aggregate_feature(Feature.TUNNEL, verdicts)}


# --- throttling: the feature's own traffic against a control on the same path ---------------------
#
# `probe/throughput.py` records rounds of (target, control) exchanges with the
# same server: HTTPS transfers of the same bytes under the feature's SNI and a
# neutral one ([Xue2021], [Wehe2015]), or STUN round trips against TCP-connect
# round trips to the same relay. Each round is judged on its own for each kind
# of degradation -- flagged, clear, or inconclusive -- and a kind is named only
# when at least two rounds flag it and none is clear: consistent across
# repeats, never one sample.

THROUGHPUT_RULES_VERSION = "wallwatch-throttling/1"
# Rate: the target's goodput at most half the control's ...
RATE_RATIO = 0.5
# ... and its transfer more than twice as long as the control's plus the added
# latency explains (below), by at least this much in absolute terms, so that a
# path that only adds delay is not called rate-limited, and a scheduling hiccup
# of a few milliseconds on a fast path is not either.
RATE_EXPLAINED_FACTOR = 2.0
RATE_MIN_EXCESS_S = 0.1
# A TCP sender's initial window, 10 segments (RFC 6928), of 1448-byte payloads
# (a 1500-byte MTU with timestamps): what one round trip delivers from a cold
# start; every further round trip in slow start doubles it.
INITIAL_WINDOW = 10 * 1448
# Latency: at least this many milliseconds added to the median round trip and
# at least half again the control's (a path with 300 ms of its own must gain
# 150 ms, not 40, to be called delayed).
LATENCY_ADDED_MS = 40.0
LATENCY_FACTOR = 1.5
# Jitter: the spread of round trips (max - min, the first on each connection
# left out: it pays for the connection's warm-up) wider than the control's by this much.
JITTER_ADDED_MS = 30.0
MIN_FLAGGED_ROUNDS = 2


@dataclass(frozen=True)
class RoundView:
    """One round's judgment per kind: True flagged, False clear, None inconclusive; and its numbers."""

    rate: bool | None
    latency: bool | None
    jitter: bool | None
    numbers: dict[str, Any]


def _median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# Round trips a spread is taken over (after the first): fewer is one scheduling hiccup away from a claim.
MIN_JITTER_SAMPLES = 3


def _spread(rtts: Sequence[float]) -> float | None:
    later = list(rtts[1:])
    return max(later) - min(later) if len(later) >= MIN_JITTER_SAMPLES else None


def _rate(facts: dict[str, Any]) -> float | None:
    """Bits per second: the dispersion goodput, else the bytes over the request-to-last-byte time
    (a transfer that came in one read has no dispersion)."""
    if facts.get("goodput_bps"):
        return float(facts["goodput_bps"])
    if facts.get("bytes") and facts.get("transfer_s"):
        return facts["bytes"] * 8 / facts["transfer_s"]
    return None


def _slow_start_round_trips(size: int) -> int:
    """Round trips a cold TCP sender needs to deliver `size` bytes: 1, 2, 4, ... initial windows."""
    return max(1, math.ceil(math.log2(size / INITIAL_WINDOW + 1)))


def _latency_views(target: dict[str, Any], control: dict[str, Any]) -> tuple[bool | None, bool | None, dict[str, Any]]:
    t_rtt, c_rtt = _median(target.get("rtt_ms") or ()), _median(control.get("rtt_ms") or ())
    numbers: dict[str, Any] = {"latency_ms": t_rtt, "control_latency_ms": c_rtt, "added_latency_ms": None,
                               "jitter_ms": _spread(target.get("rtt_ms") or ()),
                               "control_jitter_ms": _spread(control.get("rtt_ms") or ())}
    latency = jitter = None
    if t_rtt is not None and c_rtt is not None:
        added = t_rtt - c_rtt
        numbers["added_latency_ms"] = round(added, 3)
        latency = added >= LATENCY_ADDED_MS and t_rtt >= LATENCY_FACTOR * c_rtt
    if numbers["jitter_ms"] is not None and numbers["control_jitter_ms"] is not None:
        jitter = numbers["jitter_ms"] - numbers["control_jitter_ms"] >= JITTER_ADDED_MS
    return latency, jitter, numbers


def judge_round(entry: dict[str, Any], kind: str) -> RoundView | None:
    """One round of a throughput record; None when either side has nothing to compare."""
    target, control = entry.get("target") or {}, entry.get("control") or {}
    latency, jitter, numbers = _latency_views(target, control)
    if kind == "udp" or latency is None and not target.get("bytes"):
        return None if latency is None else RoundView(None, latency, jitter, numbers)
    t_rate, c_rate = _rate(target), _rate(control)
    rate: bool | None = None
    numbers.update(rate_bps=t_rate, control_rate_bps=c_rate, rate_ratio=None, size=entry.get("size"))
    if t_rate is not None and c_rate:
        ratio = t_rate / c_rate
        numbers["rate_ratio"] = round(ratio, 6)
        added_s = max(0.0, (numbers["added_latency_ms"] or 0.0) / 1000)
        explained = (control.get("transfer_s") or 0.0) + _slow_start_round_trips(entry.get("size") or 0) * added_s
        took = target.get("transfer_s") or 0.0
        numbers["unexplained_s"] = round(took - explained, 6)
        if ratio > RATE_RATIO:
            rate = False
        elif took >= RATE_EXPLAINED_FACTOR * explained and took - explained >= RATE_MIN_EXCESS_S:
            rate = True
        elif took <= RATE_EXPLAINED_FACTOR * explained:
            rate = False  # slower, but the added round trips account for it: latency, not rate
    return RoundView(rate, latency, jitter, numbers)


def _settle(views: Sequence[RoundView], kind: str) -> bool | None:
    """True: flagged in enough rounds and clear in none; False: clear somewhere; None: not enough yet."""
    marks = [getattr(v, kind) for v in views]
    if any(mark is False for mark in marks):
        return False
    return True if sum(mark is True for mark in marks) >= MIN_FLAGGED_ROUNDS else None


def throughput_settled(record: dict[str, Any]) -> bool:
    """Whether more rounds could change the judgment: every kind measured is already flagged or clear."""
    views = [v for v in (judge_round(e, record.get("kind", "https")) for e in record.get("rounds") or ()) if v]
    if len(views) < MIN_FLAGGED_ROUNDS:
        return False
    kinds = ("latency", "jitter") if record.get("kind") == "udp" else ("rate", "latency", "jitter")
    return all(_settle(views, kind) is not None or all(getattr(v, kind) is None for v in views) for kind in kinds)


def _aggregate_rate(record: dict[str, Any], role: str) -> float | None:
    """Bits per second over every round: bytes over seconds summed, so long transfers weigh most."""
    pairs = []
    for entry in record.get("rounds") or ():
        facts = entry.get(role) or {}
        if facts.get("goodput_bps"):
            pairs.append((facts.get("counted_bytes") or 0, facts.get("seconds") or 0.0))
        elif facts.get("bytes") and facts.get("transfer_s"):
            pairs.append((facts["bytes"], facts["transfer_s"]))  # one read: bytes over request-to-last-byte
    seconds = sum(sec for _, sec in pairs)
    return round(sum(n for n, _ in pairs) * 8 / seconds) if seconds > 0 else None


def _bits(bps: float | None) -> str:
    if bps is None:
        return "?"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.0f} bit/s"


def judge_throughput(record: dict[str, Any]) -> dict[str, Any] | None:
    """The throttling facts of one throughput record (pure): which kind, if any, with the numbers.

    Returns None when no round could compare the two sides (the control or
    the target failed throughout); else a dict with `throttled` (a
    `Throttling` value or None), `rule`, `evidence`, and the numbers:
    `rate_bps`/`control_rate_bps`/`rate_ratio` (HTTPS), `latency_ms`/
    `control_latency_ms`/`added_latency_ms`, `jitter_ms`/`control_jitter_ms`
    (medians over rounds), `rounds`, `flagged` (rounds flagged per kind).
    """
    kind = record.get("kind", "https")
    views = [v for v in (judge_round(e, kind) for e in record.get("rounds") or ()) if v]
    if not views:
        return None
    endpoint = record.get("endpoint", "?")
    flagged = {k.value: sum(getattr(v, k.value) is True for v in views) for k in Throttling}
    settled = {k.value: _settle(views, k.value) for k in Throttling}
    chosen = next((k for k in Throttling if settled[k.value]), None)

    def med(key: str) -> float | None:
        value = _median([v.numbers[key] for v in views if v.numbers.get(key) is not None])
        return None if value is None else round(value, 3)

    facts: dict[str, Any] = {
        "rules_version": THROUGHPUT_RULES_VERSION, "kind": kind, "endpoint": endpoint,
        "throttled": None if chosen is None else chosen.value, "rounds": len(views), "flagged": flagged,
        "latency_ms": med("latency_ms"), "control_latency_ms": med("control_latency_ms"),
        "added_latency_ms": med("added_latency_ms"), "jitter_ms": med("jitter_ms"),
        "control_jitter_ms": med("control_jitter_ms"),
    }
    control_what = (f"the same bytes under SNI {record.get('control_name')}" if kind == "https"
                    else f"TCP connects to the same address (port {record.get('control_port')})")
    lines = []
    if kind == "https":
        rate, control_rate = _aggregate_rate(record, "target"), _aggregate_rate(record, "control")
        ratio = med("rate_ratio")
        facts.update(rate_bps=rate, control_rate_bps=control_rate, rate_ratio=ratio)
        lines.append(f"{endpoint}: goodput {_bits(rate)} against {_bits(control_rate)} for {control_what} "
                     f"(median ratio {ratio if ratio is not None else '?'}; rate flagged in {flagged['rate']} of "
                     f"{len(views)} rounds)")
    lines.append(f"{endpoint}: round trips {facts['latency_ms']} ms against {facts['control_latency_ms']} ms "
                 f"({'+' if (facts['added_latency_ms'] or 0) >= 0 else ''}{facts['added_latency_ms']} ms; "
                 f"flagged in {flagged['latency']} of {len(views)} rounds), spread {facts['jitter_ms']} ms against "
                 f"{facts['control_jitter_ms']} ms")
    if chosen is None:
        facts.update(rule="throughput.not_throttled", evidence=[f"{endpoint}: no degradation against the control "
                                                                 "in every round"] + lines)
    else:
        facts.update(rule=f"throughput.{chosen.value}_throttled",
                     evidence=[f"{endpoint}: {chosen.plain}: {chosen.value} degraded against the control in "
                               f"{flagged[chosen.value]} of {len(views)} rounds and clear in none"] + lines)
    return facts


THROTTLED_CONFIDENCE = 0.8


def apply_throttling(result: dict[str, Any], judgments: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A feature's result with its throughput judgments: `throttling` facts always, and the verdict
    `throttled` when a judgment names a kind and the feature worked (ok), or could not be judged
    because its transfers did not finish in time (unknown). Blocked and down stay as they are:
    a feature cut or gone is not slow."""
    if not judgments:
        return result
    result = dict(result)
    result["throttling"] = judgments[0] if len(judgments) == 1 else list(judgments)
    named = [j for j in judgments if j.get("throttled")]
    if not named or result["verdict"] not in (OK, UNKNOWN):
        return result
    judgment = min(named, key=lambda j: THROTTLINGS.index(j["throttled"]))
    result.update(verdict=str(THROTTLED), method=judgment["throttled"], confidence=THROTTLED_CONFIDENCE,
                  rule=f"{judgment['rule']}+{result['rule']}", partial=False,
                  evidence=list(judgment["evidence"]) + list(result["evidence"]))
    return result


# --- circumvention: which ways around still work ------------------------------------------------------

CIRCUMVENTION_RULES_VERSION = "wallwatch-circumvention-verdicts/1"
_PASSED = ("answered", "closed", "delivered")


def _circumvention_network_works(test_keys: dict[str, Any], option: str) -> list[str]:
    """What shows the network works apart from this option: another option, a TCP connect, the resolver."""
    x = test_keys.get("x_wallwatch") or {}
    seen = []
    for other, facts in (x.get("options") or {}).items():
        if other != option and (facts.get("stage_reached") == "response" or facts.get("directory_answer")
                                or (facts.get("openvpn_handshake") or {}).get("packets_received")):
            seen.append(f"{other} got through")
            break
    controls = [q for q in test_keys.get("queries") or () if "control:dns" in (q.get("tags") or ())]
    if any(_resolver_answered(q) for q in controls):
        seen.append("the resolver answered")
    return seen


def judge_option(facts: dict[str, Any], test_keys: dict[str, Any]) -> TargetVerdict:
    """One circumvention option's verdict from its facts (circumvention.py records them)."""
    if facts.get("kind") == "openvpn":
        return judge_openvpn_handshake(facts["openvpn_handshake"], test_keys)
    option, kind = facts.get("option", "?"), facts.get("kind")
    ep = f"{option} via {facts.get('address')}"
    failure, at = facts.get("failure"), facts.get("failed_at")
    if failure is None:
        if kind == "tor" and facts.get("bootstrap", 0) >= 100:
            return TargetVerdict(ep, OK, "tor.bootstrapped", f"{ep}: tor bootstrapped to 100%", None, 1.0)
        if kind == "tor" and facts.get("directory_answer") is not None:
            return TargetVerdict(ep, OK, "tor.directory_answered",
                                 f"{ep}: tor completed the link handshake and a one-hop circuit, and the bridge "
                                 f"answered its directory request (HTTP {facts['directory_answer']}) at bootstrap "
                                 f"{facts.get('bootstrap')}% ({facts.get('bootstrap_tag')}): the lab's lone bridge "
                                 "has no consensus to serve, so this is as far as any client gets there", None, 0.9)
        if facts.get("stage_reached") == "response":
            what = "through the tunnel" if kind == "wireguard" else f"through {facts.get('client')}"
            return TargetVerdict(ep, OK, f"{kind}.answered", f"{ep}: HTTP {facts.get('http_status')} from "
                                 f"{facts.get('target')} {what}", None, 1.0)
        return TargetVerdict(ep, UNKNOWN, f"{kind}.no_result", f"{ep}: no result", None, 0.0)
    if at == "client":
        return TargetVerdict(ep, UNKNOWN, "client.unavailable", f"{ep}: the client could not run here: {failure}",
                             None, 0.0)
    works = _circumvention_network_works(test_keys, option)
    if kind == "wireguard":
        if facts.get("latest_handshake"):
            return TargetVerdict(ep, UNKNOWN, "wireguard.data_failed", f"{ep}: the handshake completed but "
                                 f"{failure} at {at}", None, 0.3)
        if works:
            return TargetVerdict(ep, BLOCKED, "wireguard.no_handshake",
                                 f"{ep}: no answer to WireGuard handshake initiations ({facts.get('bytes_received', 0)} "
                                 f"bytes back) while {' and '.join(works)}: the tunnel's UDP is dropped (a WireGuard "
                                 "server answers every valid initiation, whitepaper §5.4.3)", Method.UDP_BLOCKING, 0.7)
        return TargetVerdict(ep, UNKNOWN, "wireguard.no_network", f"{ep}: {failure}, and nothing shows the network "
                             "works", None, 0.0)
    control = facts.get("control")
    if control is None:
        return TargetVerdict(ep, UNKNOWN, f"{kind}.failure_no_control", f"{ep}: {failure} at {at}, no control ran",
                             None, 0.3)
    outcome = control.get("outcome")
    what = "a plain TLS ClientHello" if option == "tor" else "a same-size printable payload"
    says = f"{ep}: {failure} at {at}; {what} to the same address:port was {outcome}"
    if outcome in _PASSED:
        recognised = "Tor's TLS" if option == "tor" else f"{facts.get('client')}'s traffic"
        return TargetVerdict(ep, BLOCKED, f"{kind}.protocol_dpi", says + f": the path carries other bytes there, "
                             f"so {recognised} was recognised and cut", Method.PROTOCOL_DPI, 0.85, strong=True)
    if outcome == "reset":
        return TargetVerdict(ep, BLOCKED, f"{kind}.address_reset", says, Method.TCP_RESET, 0.7)
    if outcome == "connect_failed" and control.get("failure") == _REFUSED:
        return TargetVerdict(ep, DOWN, f"{kind}.refused", says + ": nothing listens there", None, 0.7)
    if works:
        return TargetVerdict(ep, BLOCKED, f"{kind}.address_unreachable", says + f" while {' and '.join(works)}: "
                             "the server's address:port is unreachable", Method.TCP_IP, 0.6)
    return TargetVerdict(ep, UNKNOWN, f"{kind}.no_network", says + ", and nothing shows the network works", None, 0.0)


def derive_circumvention_features(test_keys: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One feature per option tried (pure): each a single-target feature with the rules/2 aggregation."""
    options = (test_keys.get("x_wallwatch") or {}).get("options") or {}
    features = {}
    for option, facts in options.items():
        verdict = judge_option(facts, test_keys)
        result = aggregate_feature(option, [verdict])
        if verdict.status == OK:
            result["evidence"] = [verdict.evidence]  # one target: its own words say more than "1 of 1"
            result["rule"] = f"{result['rule']}+{verdict.rule}"
        features[option] = result
    return features


def summary(features: dict[str, dict[str, Any]]) -> str:
    """Which options worked and how the others were stopped, in words (the report says the same)."""
    from wallwatch.vocabulary import describe_circumvention

    return describe_circumvention({option: (f["verdict"], f["method"]) for option, f in features.items()})
