"""Each core dataset's row is one typed class; its Arrow schema and row template are derived from it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wallwatch.analysis.ingest.header import read_header
from wallwatch.analysis.ingest.pipeline import discover, ingest
from wallwatch.analysis.ingest.worker import iter_lines
from wallwatch.analysis.rows import (
    MEASUREMENTS_SCHEMA,
    OBSERVATIONS_SCHEMA,
    VERDICTS_SCHEMA,
    MeasurementRow,
    ObservationRow,
    VerdictRow,
)
from wallwatch.analysis.store import DEFAULT_PARTITIONS, KNOWN_SCHEMAS
from wallwatch.analysis.tables import Float32, Int32, arrow_schema, row_template
from wallwatch.analysis.verdicts.observations import make_observations
from wallwatch.analysis.verdicts.rules import WALLWATCH_INVALID_RULE, judge_measurement


@dataclasses.dataclass(kw_only=True)
class _Every:
    name: str
    when: dt.datetime
    day: dt.date
    count: int
    small: Int32 | None = None
    ratio: float | None = None
    share: Float32 | None = None
    flag: bool = False
    words: list[str] = dataclasses.field(default_factory=list)
    explicit: Annotated[str, pa.large_string()] = ""


def test_hints_map_to_arrow_types_in_field_order() -> None:
    assert arrow_schema(_Every) == pa.schema([
        ("name", pa.string()), ("when", pa.timestamp("us")), ("day", pa.date32()), ("count", pa.int64()),
        ("small", pa.int32()), ("ratio", pa.float64()), ("share", pa.float32()), ("flag", pa.bool_()),
        ("words", pa.list_(pa.string())), ("explicit", pa.large_string()),
    ])
    assert all(field.nullable for field in arrow_schema(_Every))


def test_template_holds_every_column_at_its_default() -> None:
    template = row_template(_Every)
    assert list(template) == [field.name for field in dataclasses.fields(_Every)]
    assert template["name"] is None and template["flag"] is False and template["explicit"] == ""
    assert template["words"] == [] and row_template(_Every)["words"] is not template["words"]  # a fresh list
    assert row_template(ObservationRow)["is_control"] is False


def test_a_column_without_one_arrow_type_is_refused() -> None:
    @dataclasses.dataclass
    class TwoTypes:
        value: int | str

    @dataclasses.dataclass
    class Unmapped:
        value: dict[str, Any]

    with pytest.raises(TypeError, match="TwoTypes.value"):
        arrow_schema(TwoTypes)
    with pytest.raises(TypeError, match="Unmapped.value"):
        arrow_schema(Unmapped)


def test_the_store_knows_the_row_classes_schemas() -> None:
    assert KNOWN_SCHEMAS == {"measurements": arrow_schema(MeasurementRow),
                             "observations": arrow_schema(ObservationRow), "verdicts": arrow_schema(VerdictRow)}


def test_columns_shared_with_the_measurement_have_its_type() -> None:
    # The ingest takes them from the measurements table instead of converting each row's copy.
    for schema in (OBSERVATIONS_SCHEMA, VERDICTS_SCHEMA):
        shared = [name for name in schema.names if name in MEASUREMENTS_SCHEMA.names]
        assert {"measurement_uid", "date", "test_name"} <= set(shared)
        for name in shared:
            assert schema.field(name).type == MEASUREMENTS_SCHEMA.field(name).type, name


def _records(samples_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in discover([samples_dir]):
        for _, line in iter_lines(path):
            value = orjson.loads(line)
            records.extend(value if isinstance(value, list) else [value])
    return records


def _wallwatch_record() -> dict[str, Any]:
    return {
        "measurement_uid": "ww-rows", "measurement_start_time": "2017-09-20 12:00:00", "probe_cc": "CN",
        "probe_asn": "AS4134", "test_name": "whatsapp", "software_name": "wallwatch", "report_id": "r1",
        "test_keys": {"x_wallwatch": {"rules_version": "wallwatch/1", "features": {
            "text": {"verdict": "blocked", "method": "tcp_reset", "confidence": 0.9, "rule": "r",
                     "blocked_share": 0.5},
            "media": {"verdict": "sideways"},  # unreadable: stored as unknown
        }}},
    }


def test_rows_made_by_the_pipeline_have_exactly_their_class_columns(samples_dir: Path) -> None:
    observation_columns, verdict_columns = set(OBSERVATIONS_SCHEMA.names), set(VERDICTS_SCHEMA.names)
    n_observations = n_verdicts = 0
    rules_seen = set()
    for record in [*_records(samples_dir), _wallwatch_record()]:
        header, meta, test_keys = read_header(record)
        assert set(meta) <= set(MEASUREMENTS_SCHEMA.names)
        facts = make_observations(header, test_keys, meta["input"])
        for row in facts.rows:
            assert set(row) == observation_columns
        for row in judge_measurement(header, meta, test_keys, facts):
            assert set(row) == verdict_columns
            rules_seen.add(row["rule_id"])
            n_verdicts += 1
        n_observations += len(facts.rows)
    assert n_observations > 100 and n_verdicts > 20
    assert {"r", WALLWATCH_INVALID_RULE} <= rules_seen


def test_stored_parquet_has_the_derived_schemas(samples_dir: Path, data_dir: Path) -> None:
    ingest([samples_dir], data_dir, workers=1)
    for dataset, schema in KNOWN_SCHEMAS.items():
        files = sorted((data_dir / dataset).rglob("*.parquet"))
        assert files, dataset
        # Partition columns live in the directory names (hive layout), not in the files.
        in_files = pa.schema([field for field in schema if field.name not in DEFAULT_PARTITIONS[dataset]])
        for path in files:
            assert pq.read_schema(path) == in_files, path
