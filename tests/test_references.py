"""Citations a reader can follow: every source key cited in the repository is listed in docs/references.md,
and nothing cites notes that are not part of the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A citation key with a year ([Rambert2021], [Apple-VPN2017]) or an RFC ([RFC1035]).
CITED = re.compile(r"(?<![\w\]\[`'\"])\[((?:[A-Za-z][\w-]*?(?:19|20)\d\d)|RFC\d+)\](?![(\w])")
OUTSIDE_NOTES = re.compile(r"censor-lab\.md|research/[a-z-]+\.md|\.\./shared/|/work/shared")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".html", ".sh", ".toml"}


def _files() -> list[Path]:
    roots = [REPO / name for name in ("src", "docs", "scenarios", "policies", "tests", "bench", "scripts")]
    files = [REPO / "README.md", REPO / "pyproject.toml"]
    for root in roots:
        files += [p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                  and "data" not in p.relative_to(REPO).parts[:2] and p.name != Path(__file__).name]
    return files


def test_every_cited_key_is_listed() -> None:
    listed = set(re.findall(r"\*\*\[([\w-]+)\]\*\*", (REPO / "docs" / "references.md").read_text()))
    missing = {(key, str(path.relative_to(REPO))) for path in _files() if path.name != "references.md"
               for key in CITED.findall(path.read_text(errors="replace")) if key not in listed}
    assert not missing, sorted(missing)


def test_nothing_cites_notes_outside_the_repository() -> None:
    cited = [str(path.relative_to(REPO)) for path in _files() if OUTSIDE_NOTES.search(path.read_text(errors="replace"))]
    assert not cited, cited
