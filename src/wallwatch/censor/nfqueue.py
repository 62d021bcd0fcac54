"""The censor service: NFQUEUE I/O around the sans-IO engine.

One process, one queue, one thread (as Geneva and CensorLab do). Packets are
read in bounded batches from the queue's netlink socket so signals (SIGHUP
reload, SIGTERM stop) and housekeeping (flow expiry, status counters) are
served within a second even under full load. Decided flows are handed to the
kernel through the connmark (iptables.py), so only a flow's first packets
cost Python time; the status file's counters show it (`packets` vs
`offloaded` and `queued_after_decision`).

Userspace delay (the throttle action's `delay_ms`; this kernel has no netem):
a held packet's verdict is given later from a heap of release times, served
by the same loop, so holding one flow's packets never blocks other flows.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from wallwatch.censor.actions import VERDICT_ALLOW, VERDICT_DROP, Decision, Injector, offload_mark, wants_repeat
from wallwatch.censor.engine import Censor
from wallwatch.censor.iptables import IptablesError, KernelRules
from wallwatch.censor.policy import Policy, PolicyError, load_policy
from wallwatch.censor.shaping import Shaper, ShapingError

DEFAULT_QUEUE = 100  # OpenGFW's queue number (io/nfqueue.go)
# Queue length and socket buffer: 4096 packets waiting, and an 8 MiB netlink
# receive buffer (OpenGFW's docs advise >= 4 MiB) so bursts are queued, not
# dropped with ENOBUFS. netfilterqueue copies at most 4016 bytes per packet
# (its fixed 4096-byte buffer); the analyzers need only the first bytes, and
# an accepted packet is forwarded whole whatever was copied.
QUEUE_MAXLEN = 4096
SOCKET_RCVBUF = 8 * 1024 * 1024
# Packets handled per batch before the loop looks at signals and timers.
BATCH = 256
HOUSEKEEPING_INTERVAL = 1.0
# Held packets count against QUEUE_MAXLEN in the kernel; beyond this many we
# stop holding and give verdicts at once rather than let the queue overflow.
MAX_HELD = QUEUE_MAXLEN // 2


@dataclass
class Status:
    """The status file (censor contract): rewritten atomically after every (re)load."""

    path: Path | None
    policy_path: str
    policy: Policy | None = None
    generation: int = 0
    loaded_at: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, counters: dict[str, int]) -> None:
        if self.path is None:
            return
        document: dict[str, Any] = {
            "pid": os.getpid(),
            "policy_path": self.policy_path,
            "policy_sha256": self.policy.sha256 if self.policy else None,
            "policy_name": self.policy.name if self.policy else None,
            "rules": len(self.policy.rules) if self.policy else 0,
            "generation": self.generation,
            "loaded_at": self.loaded_at,
            "counters": counters,
            **self.extra,
        }
        if self.error:
            document["error"] = self.error
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


class JsonLog:
    """Decision and service events as JSON lines (stderr or a file)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: dict[str, object]) -> None:
        event = {"ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), **event}
        self.stream.write(json.dumps(event, default=str) + "\n")
        self.stream.flush()


class _BatchDone(Exception):
    """Raised by the callback after `BATCH` packets, each with its verdict given, to end
    `queue.run(block=False)`: under constant load its C recv loop never meets EAGAIN,
    so signals and timers would starve. Raising is safe: a netfilter queue sends one
    packet per netlink message, so no later packet of the same recv is skipped, and
    netfilterqueue propagates a callback's exception out of run() (`except? -1`).
    run() rather than run_socket(): its recv is C, not a Python call per packet."""


def kernel_queue_drops(queue_num: int) -> dict[str, int]:
    """The kernel's drop counters for our queue, from /proc/net/netfilter/nfnetlink_queue
    (this namespace's view): `queue_dropped` (the queue held `QUEUE_MAXLEN` packets)
    and `user_dropped` (the netlink socket buffer was full: ENOBUFS). Empty if unreadable."""
    try:
        lines = Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        fields = line.split()
        # queue_number portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
        if len(fields) >= 7 and fields[0] == str(queue_num):
            return {"queue_dropped": int(fields[5]), "enobufs": int(fields[6])}
    return {}


class CensorService:
    def __init__(self, policy_path: str, *, queue_num: int = DEFAULT_QUEUE, status_path: str | None = None,
                 fail_open: bool = False, log: JsonLog | None = None, offload: bool = True,
                 seed: int | None = None) -> None:
        self.offload = offload
        self.seed = seed
        self.policy_path = policy_path
        self.queue_num = queue_num
        self.log = log or JsonLog(sys.stderr)
        self.status = Status(Path(status_path) if status_path else None, str(Path(policy_path).resolve()),
                             extra={"queue": queue_num, "fail_open": fail_open})
        self.rules = KernelRules(queue_num, fail_open)
        self.shaper = Shaper()
        self._shaped: tuple[tuple[int, int, str], ...] = ()
        self.censor: Censor | None = None
        # (release time, tie-break, packet, decision) of packets whose verdict waits.
        self._held: list[tuple[float, int, Any, Decision]] = []
        self._held_order = itertools.count()
        self.injector: Injector | None = None
        self._reload = False
        self._stop = False
        self._callback_errors = 0
        self._budget = 0  # packets left in this batch (see _BatchDone)

    # --- lifecycle ---------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT. Returns the exit code."""
        from netfilterqueue import NetfilterQueue  # C extension; keep `wallwatch --help` light

        try:
            policy = load_policy(self.policy_path)
        except PolicyError as exc:
            self.status.error = str(exc)
            self.status.write({})
            self.log({"event": "error", "error": str(exc)})
            return 2
        self.censor = Censor(policy, log=self.log, offload=self.offload, seed=self.seed)
        self.injector = Injector()
        queue = NetfilterQueue()
        wake_r, wake_w = socket.socketpair()
        old_handlers = self._install_signals(wake_w)
        try:
            queue.bind(self.queue_num, self._on_packet, max_len=QUEUE_MAXLEN, sock_len=SOCKET_RCVBUF)
            self._apply_rules(policy, self.censor.generation)
            self._loaded(policy)
            self._serve(queue, wake_r)
            return 0
        except (IptablesError, ShapingError, OSError) as exc:
            self.log({"event": "error", "error": str(exc)})
            self.status.error = str(exc)
            self.status.write(self.censor.snapshot())
            return 1
        finally:
            self._release(float("inf"))
            self.rules.remove()
            self.shaper.remove()
            queue.unbind()
            self.injector.close()
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(-1)
            wake_r.close()
            wake_w.close()
            self.log({"event": "stopped", "counters": self.counters()})

    def _install_signals(self, wake_w: socket.socket) -> dict[int, Any]:
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        handlers = {signal.SIGHUP: self._on_hup, signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop}
        return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}

    def _on_hup(self, *_: object) -> None:
        self._reload = True

    def _on_stop(self, *_: object) -> None:
        self._stop = True

    def _serve(self, queue: Any, wake_r: socket.socket) -> None:
        queue_fd = queue.get_fd()  # select() takes the descriptor; netfilterqueue reads it
        next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        while not self._stop:
            wake_at = min(next_housekeeping, self._held[0][0]) if self._held else next_housekeeping
            timeout = max(0.0, wake_at - time.monotonic())
            readable, _, _ = select.select([queue_fd, wake_r], [], [], timeout)
            if wake_r in readable:
                try:
                    wake_r.recv(4096)
                except BlockingIOError:
                    pass
            if queue_fd in readable:
                self._budget = BATCH
                try:
                    queue.run(block=False)
                except _BatchDone:
                    pass
            if self._held:
                self._release(time.monotonic())
            if self._reload:
                self._reload = False
                self.reload()
            now = time.monotonic()
            if now >= next_housekeeping:
                assert self.censor is not None
                self.censor.expire(now)
                self.censor.counters.update(kernel_queue_drops(self.queue_num))
                self.status.write(self.counters())
                next_housekeeping = now + HOUSEKEEPING_INTERVAL

    # --- policy -------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: load the policy file again; on any error keep the old one in force."""
        assert self.censor is not None
        old = self.censor.policy
        try:
            policy = load_policy(self.policy_path)
            self._apply_rules(policy, self.censor.generation + 1)
        except (PolicyError, IptablesError, ShapingError) as exc:
            self.status.error = str(exc)
            self.log({"event": "reload_failed", "error": str(exc), "policy": old.name})
            try:  # the old rules stay in force (iptables-restore is atomic, but be sure)
                self._apply_rules(old, self.censor.generation)
            except (IptablesError, ShapingError):
                pass
            self.status.write(self.counters())
            return False
        self.censor.load(policy)
        self._loaded(policy)
        return True

    def _apply_rules(self, policy: Policy, generation: int) -> None:
        # The kernel trusts only this generation's marks (never 0: with
        # --no-offload no mark is ever set and every packet is queued).
        self.rules.apply(policy, offload_mark(generation, VERDICT_ALLOW), offload_mark(generation, VERDICT_DROP))
        if policy.throttle_classes != self._shaped:  # re-shape only when the classes changed
            self.shaper.apply(policy)
            self._shaped = policy.throttle_classes

    def _loaded(self, policy: Policy) -> None:
        assert self.censor is not None
        self.status.policy = policy
        self.status.generation = self.censor.generation
        self.status.loaded_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.status.error = None
        self.status.write(self.counters())
        self.log({"event": "loaded", "policy": policy.name, "sha256": policy.sha256,
                  "rules": len(policy.rules), "generation": self.censor.generation})

    # --- packets ------------------------------------------------------------

    def _on_packet(self, pkt: Any) -> None:
        """netfilterqueue callback: every packet gets exactly one verdict, whatever happens."""
        assert self.censor is not None and self.injector is not None
        try:
            decision = self.censor.handle(pkt.get_payload())
            if decision.inject:
                self.injector.send(decision.inject)
            if decision.hold_until is not None and len(self._held) < MAX_HELD:
                heapq.heappush(self._held, (decision.hold_until, next(self._held_order), pkt, decision))
            else:
                self._verdict(pkt, decision)
        except Exception as exc:  # noqa: BLE001 - a verdict must still be given
            self._callback_errors += 1
            if self._callback_errors <= 10:
                self.log({"event": "callback_error", "error": f"{exc.__class__.__name__}: {exc}"})
            try:
                pkt.accept()
            except Exception:  # noqa: BLE001 - verdict was already given
                pass
        self._budget -= 1
        if self._budget <= 0:
            raise _BatchDone

    @staticmethod
    def _verdict(pkt: Any, decision: Decision) -> None:
        if decision.mark:
            pkt.set_mark(decision.mark)
            if wants_repeat(decision.mark):
                pkt.repeat()
                return
        if decision.accept:
            pkt.accept()
        else:
            pkt.drop()

    def _release(self, now: float) -> None:
        """Give the verdicts of held packets whose time has come."""
        while self._held and self._held[0][0] <= now:
            _, _, pkt, decision = heapq.heappop(self._held)
            try:
                self._verdict(pkt, decision)
            except Exception:  # noqa: BLE001 - a queue gone at shutdown; nothing to give a verdict to
                self._callback_errors += 1

    def counters(self) -> dict[str, int]:
        assert self.censor is not None
        counters = self.censor.snapshot()
        counters["callback_errors"] = self._callback_errors
        counters["held_now"] = len(self._held)
        if self.injector is not None:
            counters["injected"] = self.injector.sent
            counters["inject_errors"] = self.injector.errors
        return counters
