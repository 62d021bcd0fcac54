"""The API against its own OpenAPI document, with schemathesis: generated requests, valid and not.

Every operation of `/openapi.json` gets schemathesis' positive and negative cases (bodies that
break the measurement schema: wrong types, missing fields, ...) and its default checks: no 5xx,
only documented status codes and content types, responses that match their schemas, and
schema-violating input rejected with a 4xx. On top of those, each case checks the collector's
own promise: a request that was not answered 200 stored nothing (the write-ahead log is
unchanged), and the server is still up afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.web.observatory import Observatory, wal_lines

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    # The bulk body is JSON lines; schemathesis draws it as a string (the schema says so).
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(str(value), "utf-8")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observatory]:
    with Observatory(tmp_path_factory.mktemp("spec") / "data", live=False,
                     args=["--max-measurement-bytes", str(256 * 1024)]) as observatory:
        yield observatory


# schemathesis' own pytest plugin (`from_fixture`/`parametrize`) does not load under pytest 9, so its
# case strategies are driven with hypothesis directly: the same cases, the same checks.
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
SUBMISSIONS = {"POST /report", "POST /report/{report_id}", "POST /api/v1/measurements"}


def _operations(server: Observatory) -> list[Any]:
    config = SchemathesisConfig.from_dict({"seed": 20170920})
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    return [result.ok() for result in api.get_all_operations()]


def test_spec_covers_the_collector_and_the_feeds(server: Observatory) -> None:
    labels = {operation.label for operation in _operations(server)}
    assert {"POST /report", "POST /report/{report_id}", "POST /report/{report_id}/close", "POST /api/v1/measurements",
            "GET /api/v1/events", "GET /feed.atom", "GET /api/v1/status", "GET /api/v1/annotations"} <= labels


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_every_operation_keeps_its_contract(server: Observatory, mode: GenerationMode) -> None:
    no_negative_cases = []
    for operation in _operations(server):

        # More cases where input is taken in, fewer for the read-only endpoints (the suite stays fast).
        @settings(max_examples=20 if operation.label in SUBMISSIONS else 6, deadline=None, database=None,
                  derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            before = len(wal_lines(server.data))
            # The bulk body is JSON lines: its schema can only say "a string", so a string that is not
            # measurements is schema-valid yet refused, rightly; that one check does not apply there.
            excluded = [positive_data_acceptance] if operation.label == "POST /api/v1/measurements" else []
            response = case.call_and_validate(excluded_checks=excluded)
            if response.status_code != 200:
                assert len(wal_lines(server.data)) == before, (case.method, case.path, response.status_code)
            assert httpx.get(f"{server.url}/api/v1/status", timeout=5).status_code == 200

        try:
            check()
        except Unsatisfiable:
            # An operation without parameters or body (GET /api/v1/status) has no invalid input to draw.
            if mode is not GenerationMode.NEGATIVE:
                raise
            no_negative_cases.append(operation.label)
    assert not set(no_negative_cases) & SUBMISSIONS, no_negative_cases
