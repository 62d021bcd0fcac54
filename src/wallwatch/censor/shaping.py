"""Throttling in the kernel: an htb class per rate-limiting `throttle` rule, on every egress.

A decided flow's connmark carries its rule's class in bits 24-31
(actions.class_mark); iptables mangle POSTROUTING restores it to the packet
mark and CLASSIFY sets the packet's priority to 1:<class> (iptables.py), which
htb uses directly (tc-htb(8): "skb->priority" selects a class of the same
major). This kernel has no `fw` classifier and no netem ([kernel]),
hence CLASSIFY. The qdisc sits on every non-loopback interface of the
censor's namespace, so a flow is slowed both ways: uploads leave toward the
services, downloads toward the client. Unclassified traffic goes through
htb's direct queue (no `default` class), untouched. One class per rule:
every flow the rule catches shares its rate, as a service throttled by a
censor would (WhatsApp's 2017 slow-down, [NYT2017]).

Each class drains a short byte FIFO (bfifo), not the device's 1,000-packet
queue: Russia's Twitter throttler limited traffic "by dropping packets that
exceed this rate" ([Xue2021]), a policer, and a deep queue would instead
hold seconds of a slowed flow's packets after the flow is gone, in front of
the next flow of the same rule. The FIFO holds `QUEUE_SECONDS` of the rate,
and never fewer than `MIN_QUEUE_PACKETS` full packets so TCP keeps the rate
busy through a loss.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field

from wallwatch.censor.policy import Policy

HTB_HANDLE = "1:"
_TIMEOUT = 10.0
# htb's quantum (bytes a class may send per round) defaults to rate / r2q
# (r2q = 10) and warns outside 1,000..200,000 bytes; clamp it so slow rates
# still move whole MTU-sized packets (tc-htb(8), "quantum").
MIN_QUANTUM = 1514
MAX_QUANTUM = 200_000
# The class's FIFO: 50 ms of its rate (a policer's burst), at least four MTU-sized frames.
QUEUE_SECONDS = 0.05
MIN_QUEUE_PACKETS = 4
FRAME_BYTES = 1514


class ShapingError(RuntimeError):
    pass


def egress_interfaces() -> list[str]:
    """Every interface of this namespace except loopback."""
    done = _tc(["ip", "-j", "link", "show"], check=True)
    return [link["ifname"] for link in json.loads(done.stdout or "[]") if link.get("ifname") != "lo"]


def quantum(rate_bps: int) -> int:
    return max(MIN_QUANTUM, min(rate_bps // 8 // 10, MAX_QUANTUM))


def queue_limit(rate_bps: int) -> int:
    """Bytes a class's FIFO holds: QUEUE_SECONDS of its rate, at least MIN_QUEUE_PACKETS frames."""
    return max(MIN_QUEUE_PACKETS * FRAME_BYTES, int(rate_bps * QUEUE_SECONDS / 8))


def htb_commands(device: str, classes: tuple[tuple[int, int, str], ...]) -> list[list[str]]:
    """tc commands that install our htb root, one class per (class, rate, rule) and its short FIFO."""
    commands = [["tc", "qdisc", "replace", "dev", device, "root", "handle", HTB_HANDLE, "htb"]]
    for htb_class, rate_bps, _rule in classes:
        rate = f"{rate_bps}bit"
        commands.append(["tc", "class", "replace", "dev", device, "parent", HTB_HANDLE, "classid",
                         f"1:{htb_class:x}", "htb", "rate", rate, "ceil", rate, "quantum", str(quantum(rate_bps))])
        # The leaf's handle is the class number as a major (tc-htb(8): any free major will do).
        commands.append(["tc", "qdisc", "replace", "dev", device, "parent", f"1:{htb_class:x}", "handle",
                         f"{htb_class + 1:x}:", "bfifo", "limit", str(queue_limit(rate_bps))])
    return commands


@dataclass
class Shaper:
    """Installs, replaces and removes our htb qdiscs; a no-op while no rule throttles by rate."""

    devices: list[str] = field(default_factory=list)

    def apply(self, policy: Policy) -> None:
        classes = policy.throttle_classes
        self.remove()
        if not classes:
            return
        devices = egress_interfaces()
        try:
            for device in devices:
                self.devices.append(device)
                # A censor killed with SIGKILL leaves its htb root behind, and
                # `tc qdisc replace` cannot change it ("Change operation not
                # supported"): delete whatever root is there first.
                _tc(["tc", "qdisc", "del", "dev", device, "root"], check=False)
                for argv in htb_commands(device, classes):
                    _tc(argv, check=True)
        except ShapingError:
            self.remove()
            raise

    def remove(self) -> None:
        """Delete our root qdiscs (replacing a qdisc drops its classes with it)."""
        for device in self.devices:
            _tc(["tc", "qdisc", "del", "dev", device, "root"], check=False)
        self.devices = []


def _tc(argv: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ShapingError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        raise ShapingError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done
