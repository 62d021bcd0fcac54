"""The lab state file, read: what the probe needs to run in lab mode.

`wallwatch lab exec` sets `WALLWATCH_LAB=<state file>`; `lab_state_from_env()`
returns None outside the lab, so a probe does

    lab = lab_state_from_env()
    resolver = lab.resolver if lab else system_resolver
    target = lab.map_address(relay_ip) if lab else relay_ip

and trusts `lab.ca_cert` only when `lab` is set. Standard library only, so
importing it costs nothing outside the lab.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from wallwatch.lab import addresses

LAB_ENV = "WALLWATCH_LAB"


class LabStateError(ValueError):
    """The state file named by WALLWATCH_LAB is missing or malformed."""


@dataclass(frozen=True, slots=True)
class LabState:
    run_id: str
    namespaces: Mapping[str, str]
    resolver: str
    ca_cert: Path
    address_map: Mapping[str, str]
    workdir: Path

    def map_address(self, ip: str) -> str:
        """The lab address for a real-world one (KeyError if the lab has none: do not dial it)."""
        return addresses.map_address(ip, self.address_map)


def read_lab_state(path: str | Path) -> LabState:
    try:
        raw = json.loads(Path(path).read_text())
        return LabState(
            run_id=raw["run_id"],
            namespaces=MappingProxyType(dict(raw["namespaces"])),
            resolver=raw["resolver"],
            ca_cert=Path(raw["ca_cert"]),
            address_map=MappingProxyType(dict(raw["address_map"])),
            workdir=Path(raw["workdir"]),
        )
    except FileNotFoundError:
        raise LabStateError(f"{LAB_ENV} names {path}, which does not exist (is the lab up?)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LabStateError(f"lab state {path} is malformed: {exc.__class__.__name__}: {exc}") from None


def lab_state_from_env() -> LabState | None:
    """The lab this process runs in, or None when WALLWATCH_LAB is not set."""
    path = os.environ.get(LAB_ENV)
    return read_lab_state(path) if path else None
