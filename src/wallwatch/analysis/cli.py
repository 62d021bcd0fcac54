"""`wallwatch ingest` and `wallwatch export {verdicts,observations}` (heavy imports stay inside commands)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="Data directory (default: $WALLWATCH_DATA or ./wallwatch-data)."),
]


class ExportFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"


class ExportDataset(str, Enum):
    verdicts = "verdicts"
    observations = "observations"


def _data_dir(data: Path | None) -> Path:
    return data if data is not None else Path(os.environ.get("WALLWATCH_DATA") or "wallwatch-data")


def ingest_command(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of OONI .json/.jsonl/.jsonl.gz measurements.")],
    data: DataOption = None,
    no_raw: Annotated[bool, typer.Option(
        "--no-raw", help="Do not keep a copy of the input files under <data>/raw/ (the raw JSON of each measurement)."
    )] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Processes reading files in parallel (default: one per CPU, at most one per file)."
    )] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="python (default) or columnar: DuckDB SQL derives IM-test records, the rest take the "
                         "Python path; both store the same rows (docs/storage.md)."
    )] = "python",
) -> None:
    """Read measurements, derive observations and per-feature verdicts, store them as Parquet."""
    from rich.console import Console
    from rich.table import Table

    from wallwatch.analysis.ingest import ingest

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise typer.BadParameter(f"no such file or folder: {', '.join(missing)}")
    if engine not in ("python", "columnar"):
        raise typer.BadParameter(f"--engine must be python or columnar, got {engine!r}")
    summary = ingest(paths, _data_dir(data), keep_raw=not no_raw, workers=workers, engine=engine)
    table = Table(title=f"ingest into {_data_dir(data)}")
    table.add_column("count")
    table.add_column("value", justify="right")
    for key in ("files_seen", "files_skipped", "read", "stored", "duplicated", "quarantined", "observations",
                "verdicts"):
        table.add_row(key, str(getattr(summary, key)))
    for reason, count in sorted(summary.quarantine_reasons.items()):
        table.add_row(f"quarantined: {reason}", str(count))
    Console().print(table)


def export_command(
    dataset: Annotated[ExportDataset, typer.Argument(help="Which dataset to export.")],
    out: Annotated[Path, typer.Option("--out", help="Output file.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="csv or parquet.")] = ExportFormat.csv,
    data: DataOption = None,
) -> None:
    """Export a dataset as one CSV or Parquet file."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from wallwatch.analysis.store import Store

    table = Store(_data_dir(data)).read(dataset.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format is ExportFormat.parquet:
        pq.write_table(table, out, compression="zstd")
    else:
        # CSV cannot hold lists: join DNS answers with spaces.
        import pyarrow as pa
        import pyarrow.compute as pc

        for index, column in enumerate(table.schema):
            if pa.types.is_list(column.type):
                table = table.set_column(index, column.name, pc.binary_join(table.column(index), " "))
        pacsv.write_csv(table, out)
    typer.echo(f"wrote {table.num_rows} {dataset.value} rows to {out}")


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest_command)
    app.command("export")(export_command)
