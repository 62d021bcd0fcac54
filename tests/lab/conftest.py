"""Fixtures for lab tests: real namespaces, skipped with the reason when the machine cannot."""

from __future__ import annotations

from typing import Iterator

import pytest
from lab_helpers import require_lab

from wallwatch.lab.topology import Lab


@pytest.fixture(scope="module")
def plain_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab per module, the censor namespace a plain router."""
    require_lab(censor=False)
    with Lab.up(censor=False, state_path=tmp_path_factory.mktemp("lab") / "lab.json") as lab:
        yield lab
