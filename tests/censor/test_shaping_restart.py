"""A censor killed with SIGKILL leaves its htb root behind; the next one must still start."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from tests.censor.conftest import lab_skip_reason, sh

pytestmark = pytest.mark.lab

_APPLY = """
from wallwatch.censor.policy import parse_policy
from wallwatch.censor.shaping import Shaper
policy = parse_policy({"name": "slow", "rules": [
    {"name": "slow-web", "match": {"port.dst": 443}, "action": "throttle", "rate": "2mbit"}]})
Shaper().apply(policy)
"""


def test_shaper_replaces_a_leftover_htb_root() -> None:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"wwt{secrets.token_hex(3)}-shape"
    try:
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "add", "sa", "type", "veth", "peer", "name", "sb")
        sh("ip", "-n", name, "link", "set", "sa", "up")
        # What a SIGKILLed censor leaves: our htb root with a class of another rate.
        sh("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "sa", "root", "handle", "1:", "htb", "default", "9")
        sh("ip", "netns", "exec", name, "tc", "class", "add", "dev", "sa", "parent", "1:", "classid", "1:9",
           "htb", "rate", "1mbit")
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", _APPLY],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        classes = sh("ip", "netns", "exec", name, "tc", "class", "show", "dev", "sa").stdout
        assert "rate 2Mbit" in classes and "1:9 " not in classes
    finally:
        sh("ip", "netns", "del", name, check=False)
