"""The compiled hot path (mypyc, analysis/compiled.py) stores what the pure-Python source stores,
row for row, on the real samples and on variants of them whose fields have every odd type a
measurement may bring (mypyc checks declared types at run time, where Python would not)."""

from __future__ import annotations

import copy
import gzip
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.analysis.ooni_bucket import samples, stored_rows
from wallwatch.analysis import compiled
from wallwatch.analysis.store import Store

ODD_VALUES: list[Any] = [None, 0, -1, 1.5, True, False, "", "x", "0.0.0.0:0", [], [None], {}, {"a": 1},
                         {"format": "base64", "data": "!!"}, "\ud800".encode("utf-8", "surrogatepass").decode(
                             "utf-8", "replace")]


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _leaves(item, (*path, key))] + ([path] if path else [])
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in _leaves(item, (*path, index))] + ([path] if path else [])
    return [path]


def _set(record: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = record
    for step in path[:-1]:
        target = target[step]
    last = path[-1]
    if (isinstance(target, dict) and isinstance(last, str)) or (isinstance(target, list) and isinstance(last, int)
                                                                and last < len(target)):
        target[last] = value  # else an earlier change made this path something else


def variants(samples_dir: Path, per_sample: int = 12, seed: int = 13) -> list[dict[str, Any]]:
    """Each sample, and `per_sample` copies with a few fields of test_keys (values, lists, whole
    objects) replaced by odd values, chosen with a fixed seed."""
    chooser = random.Random(seed)
    out = []
    for index, record in enumerate(samples(samples_dir)):
        out.append(record)
        paths = [("test_keys", *p) for p in _leaves(record.get("test_keys") or {})]
        for copy_index in range(per_sample):
            variant = copy.deepcopy(record)
            variant["report_id"] = f"odd-{index}-{copy_index}"
            variant.pop("measurement_uid", None)
            for path in chooser.sample(paths, min(3, len(paths))):
                try:
                    _set(variant, path, chooser.choice(ODD_VALUES))
                except (KeyError, IndexError, TypeError):
                    pass  # an earlier change removed the path
            out.append(variant)
    return out


_INGEST = """
import json, sys
from pathlib import Path
from wallwatch.analysis import compiled
from wallwatch.analysis.ingest.pipeline import ingest
import wallwatch.analysis.verdicts.observations as observations
summary = ingest([Path(sys.argv[1])], Path(sys.argv[2]), workers=1)
print(json.dumps({"compiled": compiled.is_compiled(observations), **summary.as_dict()}))
"""


def _ingest(source: Path, data: Path, pure: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    done = subprocess.run([sys.executable, "-c", _INGEST, str(source), str(data)], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_pure_source_can_always_be_chosen(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"test_name": "x", "test_keys": {}}\n')
    assert _ingest(source, tmp_path / "data", pure=True)["compiled"] is False


@pytest.mark.skipif(not compiled.STAMP.exists(), reason="the hot path is not compiled here: scripts/compile.py "
                    "(run by scripts/install.sh) said why")
def test_compiled_and_pure_python_store_the_same_rows(samples_dir: Path, tmp_path: Path) -> None:
    records = variants(samples_dir)
    source = tmp_path / "variants.jsonl.gz"
    source.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records)))
    fast = _ingest(source, tmp_path / "compiled", pure=False)
    reference = _ingest(source, tmp_path / "pure", pure=True)
    assert fast["compiled"] is True and reference["compiled"] is False
    assert fast["stored"] > len(records) * 0.9  # the odd values are facts to tolerate, not to quarantine
    for key in ("read", "stored", "duplicated", "quarantined", "observations", "verdicts", "quarantine_reasons"):
        assert fast[key] == reference[key], key
    assert stored_rows(tmp_path / "compiled") == stored_rows(tmp_path / "pure")
    log = f"quarantine/{Path(reference['quarantine_file']).name}"
    assert Store(tmp_path / "compiled").read_log(log) == Store(tmp_path / "pure").read_log(log)


def test_a_stale_build_is_not_used(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path) -> None:
    monkeypatch.setattr(compiled, "extensions", lambda module: [Path(f"{module}.so")])  # as if built
    sources = compiled.source_digests()
    assert compiled.stale({"sources": sources}) == []
    assert compiled.stale({"sources": {**sources, compiled.MODULES[0]: "0" * 64}}) == [compiled.MODULES[0]]
    monkeypatch.setattr(compiled, "STAMP", tmp_path / "missing.json")
    assert compiled.stale() == list(compiled.MODULES)  # no stamp: no build of this source is known
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    compiled.choose()
    assert isinstance(sys.meta_path[0], compiled._SourceFirst)
    assert "predate(s) the source" in capsys.readouterr().err
    spec = sys.meta_path[0].find_spec(compiled.MODULES[0])
    assert spec is not None and spec.origin == str(compiled.source_path(compiled.MODULES[0]))


_PICKLE_AGAIN = """
import pickle, sys
data = pickle.loads(sys.stdin.buffer.read())  # as a Dask worker receives scattered data
sys.stdout.buffer.write(pickle.dumps(data))  # and passes it on to another worker
"""


@pytest.mark.skipif(not compiled.STAMP.exists(), reason="the hot path is not compiled here")
def test_compiled_rule_sets_travel_between_processes() -> None:
    from wallwatch.analysis.verdicts.rules import default_rule_sets

    rule_sets = default_rule_sets()
    compiled.register_pickling()
    data = pickle.dumps(rule_sets)
    for _ in range(2):  # a worker that never called register_pickling itself passes it on
        data = subprocess.run([sys.executable, "-c", _PICKLE_AGAIN], input=data, capture_output=True,
                              check=True, timeout=120).stdout
    assert pickle.loads(data) == rule_sets
