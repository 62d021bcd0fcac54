"""Compile the ingest's hot path with mypyc (analysis/compiled.py names the modules), in place.

    .venv/bin/python scripts/compile.py            # build (skipped when the stamp matches the source)
    .venv/bin/python scripts/compile.py --clean    # remove the extensions: pure Python again

scripts/install.sh runs it after building the virtualenv. A failed build (no compiler, a module
mypyc cannot compile) removes whatever it half made, says why in one line and exits 0: wallwatch
then runs its pure-Python source, only slower. The extensions are written next to the sources
(`src/wallwatch/.../<module>.cpython-*.so`, gitignored) with a stamp of the sources they were
built from (`analysis/compiled.json`), which the import checks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))
os.environ["WALLWATCH_PURE_PYTHON"] = "1"  # this process imports the sources, never a stale build

from wallwatch.analysis import compiled  # noqa: E402

# mypy's view for the build: the third-party libraries without type information are Any.
MYPY_CONFIG = """\
[mypy]
ignore_missing_imports = True
follow_imports = silent
"""

SETUP = """\
from setuptools import setup
from mypyc.build import mypycify

setup(name="wallwatch-compiled", package_dir={{"": {src!r}}},
      ext_modules=mypycify({paths!r} + ["--config-file", {config!r}], opt_level="3",
                           group_name={group!r}, verbose=False))
"""


def clean() -> None:
    for module in compiled.MODULES:
        for path in compiled.extensions(module):
            path.unlink()
    group = compiled.source_path(compiled.GROUP + "__mypyc").parent
    for path in group.glob("compiled__mypyc*.so"):
        path.unlink()
    compiled.STAMP.unlink(missing_ok=True)


def up_to_date() -> bool:
    return (compiled.STAMP.exists() and all(compiled.extensions(m) for m in compiled.MODULES)
            and not compiled.stale())


def build() -> str | None:
    """Build in a scratch folder, then copy the extensions beside the sources; None, or why not."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return "no C compiler (gcc)"
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (pip install mypy)"
    with tempfile.TemporaryDirectory(prefix="wallwatch-mypyc-") as tmp:
        work = Path(tmp)
        (work / "mypy.ini").write_text(MYPY_CONFIG)
        paths = [str(compiled.source_path(m).relative_to(SRC)) for m in compiled.MODULES]
        (work / "setup.py").write_text(SETUP.format(src=".", paths=paths, config=str(work / "mypy.ini"),
                                                    group=compiled.GROUP))
        # mypyc reads the sources by relative path from the working directory: build from src/.
        done = subprocess.run([sys.executable, str(work / "setup.py"), "build_ext", "--build-lib", str(work / "lib"),
                               "--build-temp", str(work / "tmp")], cwd=SRC, capture_output=True, text=True,
                              env={**os.environ, "MYPY_CACHE_DIR": str(work / "mypy-cache")})
        shutil.rmtree(SRC / "build", ignore_errors=True)  # mypyc writes its C sources there
        if done.returncode != 0:
            errors = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()]
            return "; ".join(errors[:3]) or (done.stdout + done.stderr).strip().splitlines()[-1]
        built = sorted((work / "lib").rglob("*.so"))
        if len(built) < len(compiled.MODULES) + 1:
            return f"the build made {len(built)} extensions, expected {len(compiled.MODULES) + 1}"
        for path in built:
            target = SRC / path.relative_to(work / "lib")
            shutil.copyfile(path, target.with_name(target.name + ".partial"))
            os.replace(target.with_name(target.name + ".partial"), target)
    stamp = {"sources": compiled.source_digests(), "python": sys.version.split()[0]}
    compiled.STAMP.write_text(json.dumps(stamp, indent=2) + "\n")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", action="store_true", help="remove the extensions and the stamp")
    parser.add_argument("--force", action="store_true", help="build even when the stamp matches the source")
    args = parser.parse_args()
    if args.clean:
        clean()
        print("wallwatch: compiled hot path removed; pure Python is used")
        return 0
    if up_to_date() and not args.force:
        return 0
    clean()
    print(f"wallwatch: compiling the hot path with mypyc ({len(compiled.MODULES)} modules)")
    why = build()
    if why is not None:
        clean()
        print(f"wallwatch: compiling the hot path failed ({why}); wallwatch runs its pure-Python source, "
              "only slower", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
