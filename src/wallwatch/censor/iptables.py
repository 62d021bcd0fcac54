"""The censor's iptables rules: connmark offload, static blackholes, NFQUEUE.

nft's `queue` statement is missing from the project's kernel
(CONFIG_NFT_QUEUE unset, [kernel]), so the rules are iptables ones
(either backend). All live in our own chains, entered by one jump from
FORWARD, and are replaced atomically with `iptables-restore --noflush`
(declaring a chain there flushes just that chain):

    FORWARD -> WALLWATCH:
      mark != 0            -> CONNMARK --save-mark    (the verdict Python set before repeat())
      mark == ALLOW        -> ACCEPT                  (judged: this packet's own verdict, whether
      mark == DROP         -> DROP                     or not conntrack could keep it)
      connmark == ALLOW    -> ACCEPT                  (offloaded: never queued again)
      connmark == DROP     -> DROP
      -> WALLWATCH_STATIC                             (blackhole-ip rules: DROP)
      ctstate INVALID      -> ACCEPT                  (no conntrack entry to hold a verdict)
      -> NFQUEUE --queue-num N [--queue-bypass]

    mangle POSTROUTING -> WALLWATCH_TC (only while a rule throttles by rate):
      packet has no class  -> CONNMARK --restore-mark (bits 24-31: the flow's htb class)
      mark class == N      -> CLASSIFY --set-class 1:N  (shaping.py's htb class)

netfilterqueue has no connmark verdict, hence the mark + NF_REPEAT trick
(OpenGFW sets the connmark directly through go-nfqueue, io/nfqueue.go).
Static blackhole-ip rules match packet headers (`ip.dst` -> `-d`), which for
the client's packets is the flow's server; they drop before the queue, so
they win over any rule evaluated in Python whatever their place in the policy.
Only IPv4 is queued and blackholed: the lab is IPv4-only.
ALLOW/DROP carry the policy generation, so a reload retires every earlier
verdict: those flows come back to the queue and are judged by the new policy.

No packet is queued twice for one verdict. A packet conntrack has no entry for
cannot have its verdict saved in a connmark: conntrack holds INVALID a RST or a
FIN|ACK with no connection (a stray one, or a late one after conntrack forgot
the flow), a SYN|FIN, a segment with no flags, a bad TCP or UDP checksum, an
out-of-window segment (nf_conntrack_proto_tcp.c, tcp_error() and the state
table's sIV; [linux-conntrack]), and UNTRACKED is what a `-j CT --notrack` rule
makes. Such a packet used to come back from repeat() with its mark, find no
connmark, and be queued again, forever. Now its own mark decides it on the way
back (the two `mark ==` rules), and INVALID packets are not queued at all: the
kernel accepts them, as a router with no censor would forward them, so stray
RSTs and FINs reach their end and a burst of them costs Python nothing. Most
are dropped by the receiving stack anyway (a bad checksum, a RST with no
socket). Unlike the GFW, which reads insertion packets its TCB accepts and the
server discards (bad checksums: [Wang2017]), the analyzers never see them: this
censor judges what conntrack can hold. Blackhole-ip rules still drop them first.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from wallwatch.censor.actions import CLASS_MASK, MARK_MASK, SAVE_MASK, class_mark
from wallwatch.censor.policy import Policy, StaticDrop, static_drops

CHAIN = "WALLWATCH"
STATIC_CHAIN = "WALLWATCH_STATIC"
TC_CHAIN = "WALLWATCH_TC"
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
    tc_installed: bool = False

    def render(self, policy: Policy, allow_mark: int, drop_mark: int) -> str:
        """The iptables-restore text for our chains (filter, and mangle for throttling)."""
        mask = f"0x{MARK_MASK:x}"
        save = f"0x{SAVE_MASK:x}"
        queue = f"-A {CHAIN} -j NFQUEUE --queue-num {self.queue_num}"
        if self.fail_open:
            queue += " --queue-bypass"
        lines = [
            "*filter",
            f":{CHAIN} - [0:0]",
            f":{STATIC_CHAIN} - [0:0]",
            # Verdict and htb class both go to the connmark (actions.SAVE_MASK).
            f"-A {CHAIN} -m mark ! --mark 0/{save} -j CONNMARK --save-mark --nfmask {save} --ctmask {save}",
            # The packet Python just judged, back from repeat(): its own mark decides, so it is
            # never queued again even when conntrack has no entry to save the mark in.
            f"-A {CHAIN} -m mark --mark 0x{allow_mark:x}/{mask} -j ACCEPT",
            f"-A {CHAIN} -m mark --mark 0x{drop_mark:x}/{mask} -j DROP",
            f"-A {CHAIN} -m connmark --mark 0x{allow_mark:x}/{mask} -j ACCEPT",
            f"-A {CHAIN} -m connmark --mark 0x{drop_mark:x}/{mask} -j DROP",
            f"-A {CHAIN} -j {STATIC_CHAIN}",
            # No conntrack entry, so no verdict could ever be offloaded: the kernel forwards it.
            f"-A {CHAIN} -m conntrack --ctstate INVALID -j ACCEPT",
            queue,
        ]
        for rule in policy.static_rules:
            lines += [" ".join(static_rule_args(spec)) for spec in static_drops(rule)]
        lines += ["COMMIT"]
        if policy.throttle_classes:
            lines += self.render_mangle(policy)
        return "\n".join(lines + [""])

    @staticmethod
    def render_mangle(policy: Policy) -> list[str]:
        classes = f"0x{CLASS_MASK:x}"
        lines = [
            "*mangle",
            f":{TC_CHAIN} - [0:0]",
            # A delayed flow's packets carry their class from Python (not offloaded, no
            # connmark yet); every other throttled packet gets it from the connmark.
            f"-A {TC_CHAIN} -m mark --mark 0/{classes} -j CONNMARK --restore-mark --nfmask {classes} --ctmask {classes}",
        ]
        for htb_class, _rate, rule in policy.throttle_classes:
            comment = rule.replace('"', "'")[:200]
            lines.append(f"-A {TC_CHAIN} -m mark --mark 0x{class_mark(htb_class):x}/{classes} -m comment "
                         f'--comment "wallwatch {comment}" -j CLASSIFY --set-class 1:{htb_class:x}')
        return lines + ["COMMIT"]

    def apply(self, policy: Policy, allow_mark: int, drop_mark: int) -> None:
        """Install or atomically replace our chains; add the jumps once (mangle only when throttling)."""
        _run([_iptables_binary() + "-restore", "--noflush"], stdin=self.render(policy, allow_mark, drop_mark))
        if not self.installed:
            _run([_iptables_binary(), "-I", "FORWARD", "1", "-j", CHAIN])
            self.installed = True
        if policy.throttle_classes and not self.tc_installed:
            _run([_iptables_binary(), "-t", "mangle", "-I", "POSTROUTING", "1", "-j", TC_CHAIN])
            self.tc_installed = True
        elif not policy.throttle_classes and self.tc_installed:
            self._remove_mangle()

    def _remove_mangle(self) -> None:
        binary = _iptables_binary()
        for _ in range(8):
            if _run([binary, "-t", "mangle", "-D", "POSTROUTING", "-j", TC_CHAIN], check=False) != 0:
                break
        _run([binary, "-t", "mangle", "-F", TC_CHAIN], check=False)
        _run([binary, "-t", "mangle", "-X", TC_CHAIN], check=False)
        self.tc_installed = False

    def remove(self) -> None:
        """Remove the jumps and our chains; safe to call twice or after a half install."""
        binary = _iptables_binary()
        for _ in range(8):  # every copy of the jump, should a crash have left one behind
            if _run([binary, "-D", "FORWARD", "-j", CHAIN], check=False) != 0:
                break
        for chain in (CHAIN, STATIC_CHAIN):
            _run([binary, "-F", chain], check=False)
        for chain in (CHAIN, STATIC_CHAIN):
            _run([binary, "-X", chain], check=False)
        self._remove_mangle()
        self.installed = False


def _run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> int:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IptablesError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        raise IptablesError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.returncode
