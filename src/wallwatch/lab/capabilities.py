"""What this machine lacks for the lab, found by trying it in a throwaway namespace.

Reading kernel configs or version numbers guesses; creating a namespace, a
veth pair and an NFQUEUE rule answers. Tests call `missing_lab_features()`
and skip with its reasons. The answer is cached per process.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess

from wallwatch.lab.netns import run as _run


def _why(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stderr or result.stdout).strip().splitlines()[-1:][0] if (result.stderr or result.stdout).strip() else f"exit {result.returncode}"


@functools.cache
def _missing(censor: bool) -> tuple[str, ...]:
    if os.geteuid() != 0:
        return ("not root: the lab creates network namespaces and iptables rules",)
    if shutil.which("ip") is None:
        return ("iproute2 `ip` is not installed",)
    missing: list[str] = []
    namespace = f"wwcap{secrets.token_hex(3)}-check"
    created = _run(["ip", "netns", "add", namespace])
    if created.returncode != 0:
        return (f"cannot create network namespaces: {_why(created)}",)
    try:
        veth = _run(["ip", "-n", namespace, "link", "add", "name", "check0", "type", "veth", "peer", "name", "check1"])
        if veth.returncode != 0:
            missing.append(f"veth links unavailable: {_why(veth)}")
        if censor:
            missing += _missing_censor_features(namespace)
    finally:
        _run(["ip", "netns", "del", namespace])
    return tuple(missing)


def _missing_censor_features(namespace: str) -> list[str]:
    if shutil.which("iptables") is None:
        return ["iptables is not installed"]
    rule = ["FORWARD", "-p", "udp", "--dport", "9", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]
    added = _run(["ip", "netns", "exec", namespace, "iptables", "-A", *rule])
    if added.returncode != 0:
        return [f"iptables NFQUEUE target unusable: {_why(added)}"]
    # The censor's chain accepts conntrack-INVALID packets before the queue (censor/iptables.py).
    invalid = _run(["ip", "netns", "exec", namespace, "iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate",
                    "INVALID", "-j", "ACCEPT"])
    if invalid.returncode != 0:
        return [f"iptables conntrack match unusable: {_why(invalid)}"]
    try:
        import netfilterqueue  # noqa: F401  (the censor's binding; a C extension)
    except ImportError as exc:
        return [f"netfilterqueue is not importable: {exc}"]
    return []


def missing_lab_features(*, censor: bool = True) -> list[str]:
    """Reasons the lab cannot run here (empty when it can). `censor=False` skips the NFQUEUE checks."""
    return list(_missing(censor))
