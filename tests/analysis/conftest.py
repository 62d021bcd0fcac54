"""Shared fixtures for the analysis tests: the real OONI samples, and a data directory per test."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback for the whole session (tests/analysis/ooni_bucket.py)."""
    from tests.analysis.ooni_bucket import moto_server

    with moto_server() as endpoint:
        yield endpoint
