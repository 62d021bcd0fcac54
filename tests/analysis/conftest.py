"""Shared fixtures for the analysis tests: the real OONI samples, and a data directory per test."""

from __future__ import annotations

from pathlib import Path

import pytest

# Real OONI measurements with their provenance (tests/data/ooni-samples/MANIFEST.tsv).
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ooni-samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"OONI samples not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
