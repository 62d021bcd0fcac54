"""The censor's decision core, sans-IO: raw packet bytes in, a `Decision` out.

parse (protocols.inet) -> flow table -> analyzers -> rules -> action, as in
OpenGFW's engine. Nothing here touches a socket or iptables, so flow
decisions are unit-tested on synthetic packet sequences and the NFQUEUE
loop (`nfqueue.py`) stays a thin shell.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import Counter, OrderedDict
from typing import Callable

from wallwatch.censor.actions import (
    ACCEPT, DROP, VERDICT_ALLOW, VERDICT_DROP, Decision, Injection, blockpage_injections, class_mark, dns_injection,
    offload_mark, reset_injections,
)
from wallwatch.censor.analyzers import ALL_ANALYZERS, Analyzer, Direction
from wallwatch.censor.analyzers.base import flow_properties
from wallwatch.censor.flows import MAX_FLOWS, Flow, FlowTable
from wallwatch.censor.policy import Decided, Policy, Rule, Throttle, Undecided
from wallwatch.protocols import inet
from wallwatch.protocols.errors import ProtocolError

# A flow still undecided after this many packets has its analyzers stopped:
# every protocol we fingerprint shows itself in the client's first flight
# (OpenGFW's fet looks at the first packet only), and the cap bounds the
# Python cost of a flow whose client never speaks first.
MAX_UNDECIDED_PACKETS = 24

# Garbage (unparseable) packets are accepted: a parser gap must not blackhole
# real traffic, and the kernel's own checks drop truly malformed packets.
GARBAGE_DECISION = ACCEPT
# A packet on which the engine itself fails (a bug, not the packet's fault) is
# accepted for the same reason, counted (`engine_errors`) and the first few logged;
# the censor goes on with the next packet, live and in replay.
ENGINE_ERROR_DECISION = ACCEPT
MAX_LOGGED_ENGINE_ERRORS = 10

_DROP_ACTIONS = frozenset({"drop", "reset", "blackhole-ip", "blockpage"})

# Penalty-box entries kept at most (oldest evicted first): bounds memory
# when a scan triggers a rule toward many servers.
MAX_PENALTIES = 65536

PenaltyKey = tuple[object, ...]


def raw_key(raw: bytes) -> bytes | None:
    """The header bytes that name a plain IPv4 TCP/UDP packet's flow and direction
    (protocol, addresses, ports), without parsing it; None for anything else
    (options, fragments, IPv6), which takes the full path."""
    if len(raw) < 24 or raw[0] != 0x45 or raw[6] & 0x3F or raw[7] or raw[9] not in (6, 17):
        return None
    return raw[9:10] + raw[12:24]


def _is_bare_syn(raw: bytes) -> bool:
    """A SYN without ACK in a packet `raw_key` accepted (20-byte IPv4 header, so the TCP
    flags are byte 33): possibly a new connection on a decided 5-tuple, which only the
    flow table can tell from a retransmitted SYN (`flows.opens_new_connection`)."""
    return raw[9] == 6 and len(raw) > 33 and raw[33] & (inet.SYN | inet.ACK) == inet.SYN


def _reverse_key(key: bytes) -> bytes:
    return key[0:1] + key[5:9] + key[1:5] + key[11:13] + key[9:11]

LogFn = Callable[[dict[str, object]], None]

# Counters always present in the status file (zero until something happens).
STANDARD_COUNTERS = (
    "packets", "garbage", "not_tcp_udp", "undecided", "queued_after_decision", "offloaded",
    "analyzer_errors", "engine_errors", "rst_injected", "dns_injected", "blockpages_injected", "residual_drops",
    "probability_skips", "held",
    *(f"decisions.{action}" for action in ("allow", "drop", "reset", "dns-inject", "blackhole-ip", "throttle",
                                           "blockpage")),
)


class Censor:
    """Holds the policy and the flow table; `handle` gives each queued packet its verdict."""

    def __init__(self, policy: Policy, *, max_flows: int = MAX_FLOWS, log: LogFn | None = None,
                 offload: bool = True, seed: int | None = None) -> None:
        # offload=False keeps every packet of a decided flow in Python: only for
        # benchmarks, to show what the connmark offload saves.
        self.offload = offload
        # `probability` coins and delay jitter are hashes of (seed, flow, ...):
        # the same seed and packets give the same decisions (tests, replay).
        self.seed = secrets.randbits(64) if seed is None else seed
        # The penalty box: key -> (expiry, rule name); see `_penalise`.
        self.penalties: OrderedDict[PenaltyKey, tuple[float, str]] = OrderedDict()
        # Decided flows by raw header key (both directions), with the decision
        # each later packet gets: a packet the kernel could not offload (queued
        # before the connmark was set, or --no-offload) costs a dict lookup,
        # not a parse (the parse was 57 % of this path, py-spy).
        self._decided: dict[bytes, tuple[Flow, Decision]] = {}
        self.flows = FlowTable(max_flows)
        self.flows.on_remove = self._forget_decided
        self.counters: Counter[str] = Counter(dict.fromkeys(STANDARD_COUNTERS, 0))
        self.log = log
        self.generation = 0
        self.policy = policy
        self._used_keys: frozenset[str] = frozenset()
        self._analyzers: tuple[type[Analyzer], ...] = ()
        self.load(policy)

    # --- policy -----------------------------------------------------------

    def load(self, policy: Policy) -> None:
        """Install a policy; verdicts made under the previous one are re-examined lazily."""
        self.policy = policy
        self.generation += 1
        self._used_keys = frozenset(k for rule in policy.rules for k in rule.keys)
        # Only run analyzers some rule needs: with no rule on tls.* no ClientHello is parsed.
        self._analyzers = tuple(a for a in ALL_ANALYZERS if a.provides.keys() & self._used_keys)

    def mark(self, verdict: int) -> int:
        return offload_mark(self.generation, verdict) if self.offload else 0

    # --- packets ----------------------------------------------------------

    def handle(self, raw: bytes, now: float | None = None) -> Decision:
        """Decide one packet. Never raises: whatever goes wrong, the packet gets a verdict."""
        now = time.monotonic() if now is None else now
        self.counters["packets"] += 1
        try:
            return self._handle(raw, now)
        except Exception as exc:  # noqa: BLE001 - no packet may stop the censor
            self.counters["engine_errors"] += 1
            if self.log is not None and self.counters["engine_errors"] <= MAX_LOGGED_ENGINE_ERRORS:
                self.log({"event": "engine_error", "error": f"{exc.__class__.__name__}: {exc}",
                          "packet": raw[:64].hex()})
            return ENGINE_ERROR_DECISION

    def _handle(self, raw: bytes, now: float) -> Decision:
        if self._decided:
            key = raw_key(raw)
            entry = self._decided.get(key) if key is not None else None
            if (entry is not None and entry[0].generation == self.generation and entry[0].verdict is not None
                    and not _is_bare_syn(raw)):
                return self._repeat_fast(entry[0], entry[1], raw, now)
        try:
            packet = inet.parse_packet(raw)
        except ProtocolError:
            self.counters["garbage"] += 1
            return GARBAGE_DECISION
        if packet.proto not in (inet.PROTO_TCP, inet.PROTO_UDP) or (packet.fragment and not packet.sport):
            self.counters["not_tcp_udp"] += 1
            return ACCEPT
        flow, from_client = self.flows.lookup(packet, now)
        if flow.verdict is not None:
            if flow.generation == self.generation:
                self.counters["queued_after_decision"] += 1
                return self._repeat(flow)
            if flow.proto == "udp":
                # Decided under an older policy. Datagrams stand alone, and the old properties
                # describe old datagrams (a DNS query for another name on a reused source port):
                # judge this one afresh, as a new flow, under the policy now in force.
                flow = self.flows.renew(flow, now)
            else:
                # A TCP stream cannot be read again from its start: decide again on what is known.
                flow.verdict = None
                flow.extra.pop("throttle", None)
                self._forget_decided(flow)
        new_flow = flow.packets == 1
        if new_flow:
            if self.penalties and self._in_penalty_box(flow, now):
                return DROP
            self._start(flow)
            flow.extra["raw_key"] = raw_key(raw)
        data = self._track(flow, packet, from_client)
        changed = self._feed(flow, Direction.TO_SERVER if from_client else Direction.TO_CLIENT, data)
        if flow.packets >= MAX_UNDECIDED_PACKETS and flow.analyzers:
            flow.analyzers.clear()
            flow.pending_keys.clear()
            changed = True
        if not (changed or new_flow or flow.generation != self.generation):
            self.counters["undecided"] += 1
            return ACCEPT
        flow.generation = self.generation
        return self._decide(flow, packet, from_client, now)

    def _start(self, flow: Flow) -> None:
        flow.props.update(flow_properties(flow.proto, flow.client, flow.server))
        flow.extra["serial"] = self.flows.created
        flow.analyzers = [cls(flow.proto) for cls in self._analyzers if cls.applies(flow.proto, flow.server[1])]
        flow.pending_keys = set().union(*(a.provides for a in flow.analyzers)) if flow.analyzers else set()

    @staticmethod
    def _track(flow: Flow, packet: inet.Packet, from_client: bool) -> bytes:
        if packet.proto == inet.PROTO_UDP:
            return packet.payload
        data = flow.track_tcp(packet, from_client)
        if packet.truncated:  # the capture lost bytes: the stream can no longer be followed
            flow.stream.delivered = flow.stream.limit
        if flow.stream.full and flow.analyzers:
            flow.extra["stream_full"] = True
        return data

    def _feed(self, flow: Flow, direction: Direction, data: bytes) -> bool:
        """Feed the live analyzers; True when properties or the set of live analyzers changed."""
        changed = False
        if data and flow.analyzers:
            for analyzer in list(flow.analyzers):
                try:
                    update, done = analyzer.feed(direction, data)
                except Exception:  # noqa: BLE001 - a buggy analyzer must not take the censor down
                    self.counters["analyzer_errors"] += 1
                    update, done = None, True
                if update:
                    flow.props.update(update)
                    changed = True
                if done:
                    flow.analyzers.remove(analyzer)
                    changed = True
        if flow.extra.pop("stream_full", False):
            flow.analyzers.clear()
            changed = True
        if changed:
            flow.pending_keys = set().union(*(a.provides for a in flow.analyzers)) if flow.analyzers else set()
        return changed

    # --- rules and actions --------------------------------------------------

    def _decide(self, flow: Flow, packet: inet.Packet, from_client: bool, now: float) -> Decision:
        result = self.policy.decide(flow.props, flow.pending_keys.__contains__, lambda rule: self._fires(rule, flow))
        if isinstance(result, Decided):
            return self._apply(result.rule, flow, packet, from_client, now)
        if result is Undecided.NO_MATCH and not any(a.revises for a in flow.analyzers):
            return self._settle(flow, "allow", None, now)
        # A rule waits for a property, or a live analyzer may still revise one
        # (the next query on a UDP DNS flow): keep watching.
        self.counters["undecided"] += 1
        return ACCEPT

    def _apply(self, rule: Rule, flow: Flow, packet: inet.Packet, from_client: bool, now: float) -> Decision:
        action = rule.action
        if action == "dns-inject":
            if flow.proto == "udp":
                return self._inject_dns(rule, flow, packet, now)
            action = "reset"  # no racing UDP answer on TCP: the GFW resets TCP DNS instead
        if action == "allow":
            return self._settle(flow, "allow", rule, now)
        if action == "throttle":
            return self._throttle(rule, flow, now)
        inject: tuple[Injection, ...] = ()
        if action == "reset" and flow.proto == "tcp":
            inject = reset_injections(flow, packet, from_client, rule.count)
            self.counters["rst_injected"] += len(inject)
        elif action == "blockpage" and flow.proto == "tcp" and from_client:
            # Decided on the client's request (an http.* match): the page answers it.
            inject = blockpage_injections(flow, packet, rule)
            self.counters["blockpages_injected"] += 1
        if rule.residual is not None:
            self._penalise(flow, rule, now)
        return self._settle(flow, rule.action, rule, now, inject=inject)

    # --- probability, penalty box, throttle ---------------------------------

    def _coin(self, flow: Flow, label: str) -> float:
        """A uniform number in [0, 1) fixed by (seed, flow, label)."""
        text = f"{self.seed}|{label}|{flow.key}|{flow.extra.get('serial', 0)}"
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def _fires(self, rule: Rule, flow: Flow) -> bool:
        """Whether a rule with `probability` applies to this flow: one draw per flow and rule
        ("on and off" blocking: Rambert et al. 2021 saw ~75 % of keyword requests reset;
        Wu et al. 2023 ~26 % of FET connections blocked)."""
        fires = self._coin(flow, rule.name) < rule.probability
        if not fires:
            self.counters["probability_skips"] += 1
        return fires

    @staticmethod
    def _penalty_key(scope: str, proto: str, client_ip: str, server_ip: str, server_port: int) -> PenaltyKey:
        return (client_ip, server_ip) if scope == "pair" else (proto, client_ip, server_ip, server_port)

    def _penalise(self, flow: Flow, rule: Rule, now: float) -> None:
        """Open the penalty box after `rule` fired: the GFW's residual censorship of the
        (client IP, server IP, server port) triple, 90 s after a keyword (Rambert et al.
        2021), up to 180 s after FET (Wu et al. 2023); `scope: pair` drops the port."""
        assert rule.residual is not None
        key = self._penalty_key(rule.residual.scope, flow.proto, flow.client[0], *flow.server)
        self.penalties.pop(key, None)
        self.penalties[key] = (now + rule.residual.seconds, rule.name)
        while len(self.penalties) > MAX_PENALTIES:
            self.penalties.popitem(last=False)

    def _in_penalty_box(self, flow: Flow, now: float) -> bool:
        """A new flow toward a penalised triple or pair is dropped, packet by packet and
        not offloaded, so it passes as soon as the time is up (a retransmitted SYN too)."""
        for scope in ("triple", "pair"):
            key = self._penalty_key(scope, flow.proto, flow.client[0], *flow.server)
            entry = self.penalties.get(key)
            if entry is None:
                continue
            expiry, rule_name = entry
            if now >= expiry:
                del self.penalties[key]
                continue
            self.flows.forget(flow)
            self.counters["residual_drops"] += 1
            if self.log is not None:
                self.log({"event": "decision", "rule": rule_name, "action": "drop", "residual": True,
                          "policy": self.policy.name, "generation": self.generation, "proto": flow.proto,
                          "client": f"{flow.client[0]}:{flow.client[1]}",
                          "server": f"{flow.server[0]}:{flow.server[1]}", "until": round(expiry - now, 3)})
            return True
        return False

    def _throttle(self, rule: Rule, flow: Flow, now: float) -> Decision:
        """Slow the flow: its connmark selects the rule's htb class (shaping.py) and,
        with `delay_ms`, each of its packets is held that long in userspace."""
        throttle = rule.throttle
        assert throttle is not None
        flow.extra["throttle"] = throttle
        if not throttle.delay_ms:
            return self._settle(flow, "throttle", rule, now)
        decision = self._settle(flow, "throttle", rule, now)
        return self._held(flow, throttle, decision, now)

    def _held(self, flow: Flow, throttle: Throttle, decision: Decision, now: float) -> Decision:
        """The verdict, released after delay +- jitter; never before the flow's previous
        packet, so jitter does not reorder the flow (netem reorders; TCP would suffer)."""
        jitter = (2 * self._coin(flow, f"jitter{flow.packets}") - 1) * throttle.jitter_ms if throttle.jitter_ms else 0.0
        release = max(now + (throttle.delay_ms + jitter) / 1000, flow.extra.get("released", 0.0))
        flow.extra["released"] = release
        self.counters["held"] += 1
        return Decision(decision.accept, decision.mark, decision.inject, decision.rule, decision.action, release)

    def _inject_dns(self, rule: Rule, flow: Flow, packet: inet.Packet, now: float) -> Decision:
        injection = dns_injection(packet, rule)
        if injection is None:
            return ACCEPT
        self.counters["dns_injected"] += 1
        self.counters["decisions.dns-inject"] += 1
        self._log(flow, rule, "dns-inject", now)
        # The query itself goes on: the real answer arrives after the forgery, as with the GFW.
        return Decision(True, 0, (injection,), rule.name, "dns-inject")

    def _settle(self, flow: Flow, action: str, rule: Rule | None, now: float,
                inject: tuple[Injection, ...] = ()) -> Decision:
        """Give the flow its final verdict and hand the rest of it to the kernel."""
        self._remember_decided(flow)
        flow.verdict = action
        flow.rule = rule.name if rule else None
        flow.analyzers = []
        flow.pending_keys = set()
        self.counters[f"decisions.{action}"] += 1
        self.counters["offloaded"] += 1
        self._log(flow, rule, action, now)
        name = rule.name if rule else None
        if action in _DROP_ACTIONS:
            return Decision(False, self.mark(VERDICT_DROP), inject, name, action)
        return Decision(True, self._allow_mark(flow), inject, name, action)

    def _allow_mark(self, flow: Flow) -> int:
        throttle: Throttle | None = flow.extra.get("throttle")
        if throttle is None:
            return self.mark(VERDICT_ALLOW)
        htb = class_mark(throttle.htb_class) if throttle.rate_bps else 0
        if throttle.delay_ms:
            return htb  # not offloaded: every packet must come back to be held
        return self.mark(VERDICT_ALLOW) | htb

    # --- decided flows' fast path ---------------------------------------------

    def _remember_decided(self, flow: Flow) -> None:
        key = flow.extra.get("raw_key")
        if key is not None:
            flow.extra["repeat"] = None  # built on the first repeat, once the verdict is set
            self._decided[key] = self._decided[_reverse_key(key)] = (flow, None)  # type: ignore[assignment]

    def _forget_decided(self, flow: Flow) -> None:
        key = flow.extra.get("raw_key")
        if key is not None:
            self._decided.pop(key, None)
            self._decided.pop(_reverse_key(key), None)

    def _repeat_fast(self, flow: Flow, decision: Decision | None, raw: bytes, now: float) -> Decision:
        self.counters["queued_after_decision"] += 1
        self.flows.touch(flow, now)
        if raw[9] == 6 and raw[33:34] and raw[33] & (inet.FIN | inet.RST):
            flow.closed = True  # byte 33 = TCP flags of a 20-byte IPv4 header
        if decision is None:
            decision = self._repeat(flow)
            if decision.hold_until is not None:
                return decision  # held packets get a fresh release time each
            key = flow.extra["raw_key"]
            self._decided[key] = self._decided[_reverse_key(key)] = (flow, decision)
        return decision

    def _repeat(self, flow: Flow) -> Decision:
        if flow.verdict in _DROP_ACTIONS:
            return Decision(False, self.mark(VERDICT_DROP), (), flow.rule, flow.verdict)
        decision = Decision(True, self._allow_mark(flow), (), flow.rule, flow.verdict)
        throttle: Throttle | None = flow.extra.get("throttle")
        if throttle is not None and throttle.delay_ms:
            return self._held(flow, throttle, decision, flow.last_seen)
        return decision

    def _log(self, flow: Flow, rule: Rule | None, action: str, now: float) -> None:
        if self.log is None:
            return
        props = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flow.props.items()}
        self.log({
            "event": "decision", "rule": rule.name if rule else None, "action": action,
            "policy": self.policy.name, "generation": self.generation,
            "client": f"{flow.client[0]}:{flow.client[1]}", "server": f"{flow.server[0]}:{flow.server[1]}",
            "proto": flow.proto, "packets": flow.packets, "props": props,
        })

    # --- housekeeping ---------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        for key in [k for k, (expiry, _) in self.penalties.items() if expiry <= now]:
            del self.penalties[key]
        return self.flows.expire(now)

    def snapshot(self) -> dict[str, int]:
        counters = dict(self.counters)
        counters.update({
            "flows_active": len(self.flows), "flows_created": self.flows.created,
            "flows_evicted": self.flows.evicted, "flows_expired": self.flows.expired,
            "flows_reopened": self.flows.reopened,
            "penalties_active": len(self.penalties),
        })
        return dict(sorted(counters.items()))
