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
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from wallwatch.vocabulary import METHODS, NETTEST_FEATURES, VERDICTS, Feature, Method, Verdict, is_method, is_verdict

RULES_VERSION = "wallwatch-whatsapp-verdicts/2"

OK, BLOCKED, DOWN, UNKNOWN = Verdict.OK, Verdict.BLOCKED, Verdict.DOWN, Verdict.UNKNOWN

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
        if (self.status == BLOCKED) != (self.method is not None) or not (self.method is None or is_method(self.method)):
            raise ValueError(f"{self.rule}: method {self.method!r} with verdict {self.status!r}: a blocked verdict "
                             f"names one of {', '.join(METHODS)}, any other names none")


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


# --- grouping ---------------------------------------------------------------------


def _tag_value(tags: Iterable[str], prefix: str) -> str | None:
    return next((tag[len(prefix):] for tag in tags if tag.startswith(prefix)), None)


def _is_control(entry: dict[str, Any]) -> bool:
    return any(tag.startswith("control:") for tag in entry.get("tags") or ())


def _group(test_keys: dict[str, Any]) -> dict[int, _Attempt]:
    attempts: dict[int, _Attempt] = {}
    x = test_keys.get("x_wallwatch") or {}
    sources = (("queries", "queries"), ("tcp_connect", "connects"), ("tls_handshakes", "handshakes"),
               ("requests", "requests"))
    for key, attr in sources:
        for entry in test_keys.get(key) or ():
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
    )


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
                             "new connections black-holed (residual blocking)", Method.PROTOCOL_DPI, 0.75, strong=True)
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
            return connect
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
    ok = [v for v in verdicts if v.status == OK]
    blocked = [v for v in verdicts if v.status == BLOCKED]
    strong = [v for v in blocked if v.strong]
    down = [v for v in verdicts if v.status == DOWN]
    if total == 0:
        return _feature(UNKNOWN, "feature.not_measured", None, 0.0, ["no target was measured"], 0, 0)
    if len(ok) == total:
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
    """The rules that judged a nettest's features: whatsapp's rules/2, one shared set for the rest."""
    return RULES_VERSION if nettest == "whatsapp" else f"wallwatch-{nettest}-verdicts/{SERVICE_RULES_REVISION}"


SERVICE_RULES_REVISION = 1


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
    return {feature: aggregate_feature(feature, verdicts, all_of) for feature, verdicts in by_feature.items()}


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

OPENVPN_RULES_VERSION = "wallwatch-openvpn-verdicts/1"


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
                             "reset, then new connections black-holed (residual blocking)", Method.PROTOCOL_DPI,
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
