"""The house's layers hold: the import-linter contracts in pyproject.toml, checked on every run.

protocols and the vocabulary import no other part; the probe never imports the
lab or the censor; analysis never imports the censor, the lab or the probe;
the censor never imports the probe; no part imports the CLI or another part's
commands; and no two siblings import each other, at any depth.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    # In a child process: import-linter builds its graph from the installed package and
    # prints a report that is the failure message when a contract breaks.
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                             "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout
