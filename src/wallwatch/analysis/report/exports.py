"""Exports: one table as one CSV or Parquet file (`wallwatch export`, the report's exports).

pyarrow is imported when a file is written, not with the module: the CLI takes
`ExportFormat` for its options and `wallwatch --help` must stay fast.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


class ExportFormat(str, enum.Enum):
    csv = "csv"
    parquet = "parquet"


def write_export(table: pa.Table, path: Path, format: ExportFormat) -> None:
    """`table` as one file at `path`: Parquet (zstd), or CSV with list cells (DNS answers) joined
    by spaces, as CSV has no lists."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    if ExportFormat(format) is ExportFormat.parquet:
        pq.write_table(table, path, compression="zstd")
        return
    for index, column in enumerate(table.schema):
        if pa.types.is_list(column.type):
            table = table.set_column(index, column.name, pc.binary_join(table.column(index), " "))
    pacsv.write_csv(table, path)
