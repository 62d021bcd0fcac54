"""End-to-end tests: the real probe, through the real censor, in a real lab."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from wallwatch.lab.capabilities import missing_lab_features

    missing = missing_lab_features()
    if missing:
        pytest.skip("lab unavailable: " + "; ".join(missing))
    from wallwatch.lab.topology import Lab

    state = tmp_path_factory.mktemp("lab") / "lab.json"  # never the user's own lab state
    with Lab.up(policy={"name": "none", "rules": []}, state_path=state) as running:
        yield running
