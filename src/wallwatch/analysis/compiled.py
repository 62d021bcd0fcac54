"""The ingest's hot path compiled with mypyc [mypyc], and the way back to its pure-Python source.

`scripts/compile.py` (run by `scripts/install.sh`) compiles MODULES into C extensions that sit
beside their `.py` files (`<module>.cpython-*.so`, plus the group's shared library
`compiled__mypyc*.so` in this folder); Python's import system prefers an extension to the source
of the same module, so nothing else changes. The pure-Python source stays the reference: the
tests ingest the same measurements with both and compare every row (tests/analysis/test_compiled.py).

The extensions are used only while they are the build of today's source: the build writes the
sha256 of each compiled module's source into STAMP, and importing `wallwatch.analysis` checks it;
a module edited since (or a stamp from another build) makes every module load from source, with
one line on stderr saying to run `scripts/compile.py` again. `WALLWATCH_PURE_PYTHON=1` asks for
the source on purpose (the reference in tests and benches).
"""

from __future__ import annotations

import copyreg
import dataclasses
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# The per-measurement code (bench/bench_ingest.py's profile): the extractor, the rule cascade, the
# failure taxonomy, the fingerprint matcher's Python side, the header.
MODULES = (
    "wallwatch.analysis.verdicts.observations",
    "wallwatch.analysis.verdicts.rules",
    "wallwatch.analysis.verdicts.failures",
    "wallwatch.analysis.verdicts.fingerprints",
    "wallwatch.analysis.ingest.header",
)
# mypyc's group: one shared library for all of them (calls between them stay native).
GROUP = "wallwatch.analysis.compiled"
PURE_ENV = "WALLWATCH_PURE_PYTHON"
SRC = Path(__file__).resolve().parents[2]
STAMP = Path(__file__).with_name("compiled.json")


def source_path(module: str) -> Path:
    return SRC.joinpath(*module.split(".")).with_suffix(".py")


def source_digests(modules: Sequence[str] = MODULES) -> dict[str, str]:
    return {module: hashlib.sha256(source_path(module).read_bytes()).hexdigest() for module in modules}


def extensions(module: str) -> list[Path]:
    """The built extensions of `module` beside its source (none when it was never compiled)."""
    source = source_path(module)
    return [source.with_name(source.stem + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if source.with_name(source.stem + suffix).exists()]


def stale(stamp: dict[str, Any] | None = None) -> list[str]:
    """The compiled modules whose source changed since the build (or all, when the stamp is unreadable)."""
    if stamp is None:
        try:
            stamp = json.loads(STAMP.read_text())
        except (OSError, ValueError):
            return [m for m in MODULES if extensions(m)]
    built = stamp.get("sources", {}) if isinstance(stamp, dict) else {}
    return [module for module, digest in source_digests().items()
            if extensions(module) and built.get(module) != digest]


def is_compiled(module: ModuleType) -> bool:
    """Whether a loaded module came from an extension (mypyc) rather than its source."""
    return isinstance(getattr(module, "__spec__", None) and module.__spec__.loader,
                      importlib.machinery.ExtensionFileLoader)


_registered = False


def _rebuild(cls: type, fields: dict[str, Any]) -> Any:
    # A process that unpickles these may pickle them again (a Dask worker passes scattered data on
    # to the others): from the first one on, it pickles them the same way.
    register_pickling()
    return cls(**fields)


def _reduce_dataclass(obj: Any) -> tuple[Any, tuple[type, dict[str, Any]]]:
    return _rebuild, (type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init})


def register_pickling() -> None:
    """Pickle the dataclasses of MODULES by their constructor. A frozen dataclass compiled by mypyc
    cannot be unpickled the default way (its state is set attribute by attribute, which a frozen
    native class refuses); the Dask cluster ships rule sets and fingerprint rows to its workers."""
    global _registered
    if _registered:
        return
    _registered = True
    for name in MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == name and dataclasses.is_dataclass(value):
                copyreg.pickle(value, _reduce_dataclass)


class _SourceFirst:
    """A meta path finder that loads MODULES from their `.py` source even when an extension exists."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(name, source_path(name))


def use_source(reason: str | None = None) -> None:
    """From now on MODULES load from source (call before they are imported: `wallwatch.analysis`
    does, first thing)."""
    if not any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())
    if reason:
        print(f"wallwatch: {reason}; using the pure-Python source", file=sys.stderr)


def choose() -> None:
    """The source when asked for ($WALLWATCH_PURE_PYTHON) or when the extensions are stale."""
    if os.environ.get(PURE_ENV):
        use_source()
        return
    changed = stale()
    if changed:
        use_source(f"the compiled {', '.join(m.rsplit('.', 1)[-1] for m in changed)} predate(s) the source "
                   "(run `.venv/bin/python scripts/compile.py` again)")
