"""Helpers for lab tests: skip reasons and client-side checks in the client namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from wallwatch.lab.capabilities import missing_lab_features
from wallwatch.lab.topology import Lab

CLIENT_CHECKS = str(Path(__file__).with_name("client_checks.py"))


def require_lab(*, censor: bool = False) -> None:
    missing = missing_lab_features(censor=censor)
    if missing:
        pytest.skip("lab unavailable: " + "; ".join(missing))


def client_check(lab: Lab, *args: str, timeout: float = 30.0, isp: str | None = None) -> dict[str, Any]:
    """Run one tests/lab/client_checks.py check in the client namespace of ISP `isp` (None: the first)."""
    result = lab.run_in_client([sys.executable, CLIENT_CHECKS, *args], timeout=timeout, isp=isp)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
