"""Shared test configuration, and a data folder of the 2017 replay for the report and dashboard tests."""

from __future__ import annotations

# Registers the hypothesis profiles and loads the one $WALLWATCH_HYPOTHESIS_PROFILE names,
# before any test module is imported (tests/fuzzing.py).
import tests.fuzzing  # noqa: F401

import os
import shutil
from pathlib import Path

import pytest

# No test may reach OONI's real bucket: code that forgot to take the endpoint of the test's local S3
# server gets this one instead (loopback, the discard port: nothing answers) and fails here.
os.environ["WALLWATCH_S3_ENDPOINT_URL"] = "http://127.0.0.1:9"

# The cn-2017-09 timeline replayed at reduced length in the lab (tests/data/replay-cn-2017-09/README.md).
REPLAY_MEASUREMENTS = Path(__file__).resolve().parent / "data" / "replay-cn-2017-09" / "measurements.jsonl.gz"


@pytest.fixture(scope="session")
def replay_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding the replay's measurements, verdicts, series and logged events, as the
    batch commands `ingest`, `series` and `events` leave it. Copy it before changing it (`replay_copy`)."""
    from wallwatch.analysis.events.grouping import add_rule_evidence, detect_events
    from wallwatch.analysis.events.lifecycle import record_events
    from wallwatch.analysis.ingest.pipeline import ingest
    from wallwatch.analysis.series.build import build_and_store
    from wallwatch.analysis.store import Store

    root = tmp_path_factory.mktemp("replay-cn-2017") / "data"
    summary = ingest([REPLAY_MEASUREMENTS], root, workers=1)
    assert summary.stored == 78 and summary.quarantined == 0
    store = Store(root)
    hourly, _, _ = build_and_store(store)
    connection = store.connect()
    try:
        events = add_rule_evidence(connection, detect_events(hourly))
    finally:
        connection.close()
    record_events(store, events)
    return root


@pytest.fixture
def replay_copy(replay_data: Path, tmp_path: Path) -> Path:
    """A copy of `replay_data` this test may change."""
    target = tmp_path / "data"
    shutil.copytree(replay_data, target)
    return target
