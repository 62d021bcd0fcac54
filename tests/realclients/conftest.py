"""One lab with its censor for the whole directory; each test sets its policy and gets allow-all back."""

from __future__ import annotations

import importlib.util
from typing import Iterator

import pytest
from realclients_helpers import require_lab

from wallwatch.lab import vpn_servers
from wallwatch.lab.topology import ALLOW_ALL_POLICY, Lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab()
    if importlib.util.find_spec("wallwatch.censor.cli") is None:
        pytest.skip("the censor (wallwatch.censor.cli) is not there")
    with Lab.up(state_path=tmp_path_factory.mktemp("realclients") / "lab.json") as built:
        yield built


@pytest.fixture(scope="session")
def backend(lab: Lab) -> Iterator[vpn_servers.Running]:
    with vpn_servers.start_http_backend(lab) as running:
        yield running


@pytest.fixture
def allow_all(lab: Lab) -> Iterator[Lab]:
    """The lab with the allow-all policy, restored after the test whatever it set."""
    lab.set_policy(ALLOW_ALL_POLICY)
    yield lab
    lab.set_policy(ALLOW_ALL_POLICY)
