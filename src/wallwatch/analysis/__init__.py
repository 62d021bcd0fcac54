"""The pipeline: ingest -> verdicts -> series -> events -> report (docs/architecture.md).

Its hot path may be compiled (analysis/compiled.py): before any of it is imported, choose the
extensions or, when they are stale or $WALLWATCH_PURE_PYTHON asks, the pure-Python source.
"""

from wallwatch.analysis.compiled import choose as _choose

_choose()
