"""The censor's iptables rules: connmark offload, static blackholes, NFQUEUE.

nft's `queue` statement is missing from the project's kernel
(CONFIG_NFT_QUEUE unset, censor-lab.md §6), so the rules are iptables ones
(either backend). All live in our own chains, entered by one jump from
FORWARD, and are replaced atomically with `iptables-restore --noflush`
(declaring a chain there flushes just that chain):

    FORWARD -> WALLWATCH:
      mark != 0            -> CONNMARK --save-mark    (the verdict Python set before repeat())
      connmark == ALLOW    -> ACCEPT                  (offloaded: never queued again)
      connmark == DROP     -> DROP
      -> WALLWATCH_STATIC                             (blackhole-ip rules: DROP)
      -> NFQUEUE --queue-num N [--queue-bypass]

netfilterqueue has no connmark verdict, hence the mark + NF_REPEAT trick
(OpenGFW sets the connmark directly through go-nfqueue, io/nfqueue.go).
Static blackhole-ip rules match packet headers (`ip.dst` -> `-d`), which for
the client's packets is the flow's server; they drop before the queue, so
they win over any rule evaluated in Python whatever their place in the policy.
Only IPv4 is queued and blackholed: the lab is IPv4-only.
ALLOW/DROP carry the policy generation, so a reload retires every earlier
verdict: those flows come back to the queue and are judged by the new policy.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from wallwatch.censor.actions import MARK_MASK
from wallwatch.censor.policy import Policy, StaticDrop, static_drops

CHAIN = "WALLWATCH"
STATIC_CHAIN = "WALLWATCH_STATIC"
_TIMEOUT = 10.0


class IptablesError(RuntimeError):
    pass


def _iptables_binary() -> str:
    return os.environ.get("WALLWATCH_IPTABLES", "iptables")


def static_rule_args(spec: StaticDrop) -> list[str]:
    args = ["-A", STATIC_CHAIN]
    if spec.proto:
        args += ["-p", spec.proto]
    if spec.src:
        args += ["-s", spec.src]
    if spec.dst:
        args += ["-d", spec.dst]
    if spec.sport:
        args += ["--sport", f"{spec.sport[0]}:{spec.sport[1]}"]
    if spec.dport:
        args += ["--dport", f"{spec.dport[0]}:{spec.dport[1]}"]
    comment = spec.rule.replace('"', "'")[:200]
    return args + ["-m", "comment", "--comment", f'"wallwatch {comment}"', "-j", "DROP"]


@dataclass
class KernelRules:
    queue_num: int
    fail_open: bool = False
    installed: bool = False

    def render(self, policy: Policy, allow_mark: int, drop_mark: int) -> str:
        """The iptables-restore text for our two chains."""
        mask = f"0x{MARK_MASK:x}"
        queue = f"-A {CHAIN} -j NFQUEUE --queue-num {self.queue_num}"
        if self.fail_open:
            queue += " --queue-bypass"
        lines = [
            "*filter",
            f":{CHAIN} - [0:0]",
            f":{STATIC_CHAIN} - [0:0]",
            f"-A {CHAIN} -m mark ! --mark 0/{mask} -j CONNMARK --save-mark --nfmask {mask} --ctmask {mask}",
            f"-A {CHAIN} -m connmark --mark 0x{allow_mark:x}/{mask} -j ACCEPT",
            f"-A {CHAIN} -m connmark --mark 0x{drop_mark:x}/{mask} -j DROP",
            f"-A {CHAIN} -j {STATIC_CHAIN}",
            queue,
        ]
        for rule in policy.static_rules:
            lines += [" ".join(static_rule_args(spec)) for spec in static_drops(rule)]
        return "\n".join(lines + ["COMMIT", ""])

    def apply(self, policy: Policy, allow_mark: int, drop_mark: int) -> None:
        """Install or atomically replace our chains; add the FORWARD jump once."""
        _run([_iptables_binary() + "-restore", "--noflush"], stdin=self.render(policy, allow_mark, drop_mark))
        if not self.installed:
            _run([_iptables_binary(), "-I", "FORWARD", "1", "-j", CHAIN])
            self.installed = True

    def remove(self) -> None:
        """Remove the jump and our chains; safe to call twice or after a half install."""
        binary = _iptables_binary()
        for _ in range(8):  # every copy of the jump, should a crash have left one behind
            if _run([binary, "-D", "FORWARD", "-j", CHAIN], check=False) != 0:
                break
        for chain in (CHAIN, STATIC_CHAIN):
            _run([binary, "-F", chain], check=False)
        for chain in (CHAIN, STATIC_CHAIN):
            _run([binary, "-X", chain], check=False)
        self.installed = False


def _run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> int:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IptablesError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        raise IptablesError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.returncode
