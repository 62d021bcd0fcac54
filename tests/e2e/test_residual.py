"""Residual blocking (the censor's penalty box) is named `residual`, through the real censor.

After a rule with `residual` fires, the censor drops new flows to the same
(client, server, port) for a while ([Rambert2021]; censor/policy.py). The
probe sees the triggering connection reset on its first bytes, then its own
control (or a second attempt) to the same address:port fail to connect.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from wallwatch.lab.scenario import probe_in_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(300)]

FEATURES = ("text", "media", "calls", "web", "registration")
PENALTY_SECONDS = 5  # longer than a probe run takes to reach its controls, short enough to wait out


def with_penalty(name: str, match: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "rules": [{"name": name, "match": match, "action": "reset",
                                     "residual": {"seconds": PENALTY_SECONDS, "scope": "triple"}}]}


@pytest.mark.parametrize(("policy", "feature"), [
    (with_penalty("chat-penalty", {"whatsapp.header": True}), "text"),
    (with_penalty("media-penalty", {"tls.sni": {"suffix": "mmg.whatsapp.net"}}), "media"),
])
def test_a_penalty_box_is_residual_and_nothing_else_is_blocked(lab: Any, policy: dict[str, Any], feature: str,
                                                              tmp_path: Path) -> None:
    lab.set_policy(policy)
    started = time.monotonic()
    try:
        measurement = probe_in_lab(lab, tmp_path / "m.jsonl", timeout=3.0)
    finally:
        lab.set_policy({"name": "none", "rules": []})
        # Penalties outlive a policy swap: let them expire before the next test dials the same servers.
        time.sleep(max(0.0, started + PENALTY_SECONDS + 0.5 - time.monotonic()))
    features = measurement["test_keys"]["x_wallwatch"]["features"]
    seen = {name: f"{f['verdict']}/{f['method']}" if f["method"] else f["verdict"] for name, f in features.items()}
    assert seen == {name: ("blocked/residual" if name == feature else "ok") for name in FEATURES}, \
        {name: features[name]["evidence"][:3] for name in FEATURES}
    assert "black-holed" in " ".join(features[feature]["evidence"]) or "after another connection" in \
        " ".join(features[feature]["evidence"])
