"""Progress bars for the long commands (ingest, series, events, report, lab replay): one look for all.

A command opens `progress(description, total)` and gets a `step` function to
call as work is done; the library functions it calls take plain callbacks
(`on_file`, `progress`, `on_day`) and know nothing of rich. The bar goes to
stderr, so a command's output (a table, JSON lines) stays clean on stdout; on
a terminal it animates, elsewhere (a pipe, a log, a test) it prints its final
state once. rich is imported on use, so `wallwatch --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Step = Callable[..., None]


@contextmanager
def progress(description: str, total: float | None = None, *, console: Any = None) -> Iterator[Step]:
    """A bar for `total` units of work (None: unknown); yields `step(advance=1, description=None, total=None)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console or Console(stderr=True), transient=False)
    with bar:
        task = bar.add_task(description, total=total)

        def step(advance: float = 1, description: str | None = None, total: float | None = None) -> None:
            changes: dict[str, Any] = {"advance": advance}
            if description is not None:
                changes["description"] = description
            if total is not None:
                changes["total"] = total
            bar.update(task, **changes)

        yield step
        # Done: the bar ends full even when some units were skipped (files already ingested).
        done = bar.tasks[0]
        if done.total is not None:
            bar.update(task, completed=done.total)
