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
        # The class drains a short FIFO (a policer's 50 ms at 2 Mbit/s), not the device's long queue.
        qdiscs = sh("ip", "netns", "exec", name, "tc", "qdisc", "show", "dev", "sa").stdout
        assert "bfifo" in qdiscs and "limit 12500b" in qdiscs, qdiscs
    finally:
        sh("ip", "netns", "del", name, check=False)


def test_queue_limits_are_a_policers_burst() -> None:
    from wallwatch.censor.shaping import FRAME_BYTES, MIN_QUEUE_PACKETS, htb_commands, queue_limit

    assert queue_limit(64_000) == MIN_QUEUE_PACKETS * FRAME_BYTES  # 400 B of 64 kbit/s is less than a frame
    assert queue_limit(20_000_000) == 125_000  # 50 ms at 20 Mbit/s
    leaf = htb_commands("eth0", ((3, 64_000, "slow"),))[-1]
    assert leaf[-5:] == ["handle", "4:", "bfifo", "limit", str(queue_limit(64_000))]
    assert leaf[leaf.index("parent") + 1] == "1:3"
