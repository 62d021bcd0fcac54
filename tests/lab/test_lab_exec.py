"""`wallwatch lab exec` runs the README's example: the inner `wallwatch` is found in the namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wallwatch import __version__
from wallwatch.lab import topology

from lab_helpers import require_lab

pytestmark = pytest.mark.lab


def test_exec_finds_this_environments_wallwatch_without_it_on_path(tmp_path: Path) -> None:
    """`.venv/bin/wallwatch lab exec -- wallwatch probe run whatsapp` used to fail: `wallwatch` is
    not on the namespace's PATH when the user typed the venv's path. Run with a PATH that lacks
    the environment's bin folder, the inner command must still be this environment's wallwatch."""
    require_lab(censor=False)
    state = tmp_path / "lab.json"
    bare_path = "/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"
    env = {**os.environ, topology.STATE_ENV: str(state), "PATH": bare_path}
    wallwatch = [sys.executable, "-m", "wallwatch.cli", "lab"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*wallwatch, *args], env=env, capture_output=True, text=True, timeout=60)

    assert subprocess.run(["sh", "-c", "command -v wallwatch"], env=env, capture_output=True).returncode != 0
    up = cli("up", "--no-censor")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        inner = cli("exec", "--", "wallwatch", "--version")
        assert inner.returncode == 0, inner.stdout + inner.stderr
        assert inner.stdout.strip() == f"wallwatch {__version__}"
        where = cli("exec", "--", "sh", "-c", "command -v wallwatch")
        assert Path(where.stdout.strip()).parent == Path(sys.executable).parent
    finally:
        down = cli("down")
    assert down.returncode == 0 and not state.exists()
