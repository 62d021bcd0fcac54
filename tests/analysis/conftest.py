"""Shared fixtures for the analysis tests: the real OONI samples, and a data directory per test."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "ooni-samples"
if not SAMPLES.is_dir():  # the tree may live elsewhere; the samples are a shared checkout
    SAMPLES = Path("/work/shared/ooni-samples")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"OONI samples not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
