"""The whole OONI fingerprint database: shipped unmodified, every pattern type and location, fast
matching equal to the plain row-by-row scan, false positives, and `wallwatch fingerprints`."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from wallwatch.analysis.verdicts.fingerprints import (
    _chain_search,
    FILES,
    FingerprintError,
    load_fingerprints,
    load_from,
    read_manifest,
    build_db,
    literal_chain,
    parse_rows,
    required_literal,
    sha256_text,
    shipped_directory,
    update,
)
from wallwatch.cli import app



def test_the_whole_database_ships_unmodified_with_its_provenance() -> None:
    db = load_fingerprints()
    assert (len(db.dns), len(db.http)) == (226, 1729)
    assert sum(row.false_positive for row in db.http) == 475
    assert {row.pattern_type for row in db.http} == {"full", "prefix", "contains", "regexp"}
    assert {row.location_found for row in db.http} >= {"body", "header.location", "header.server", "header.via"}
    manifest = read_manifest()
    assert "171641e60b54231cad18753a72145da87b0d3e07" in manifest["source"]
    directory = shipped_directory()
    for name in FILES.values():
        text = (directory / name).read_bytes().decode()
        assert sha256_text(text) == manifest["files"][name]["sha256"]
    assert "ooni/blocking-fingerprints" in (directory / "PROVENANCE.md").read_text()


def test_required_literal_of_a_regexp() -> None:
    assert required_literal(r"URL .* Sp.*er Gate") == "URL "
    assert required_literal(r"U\.S\..*Command") == "U.S."
    assert required_literal(r"abc?d") == "ab"
    assert required_literal(r"ab+c") == "ab"
    assert required_literal(r"a|b") == ""
    assert required_literal(r"\d+x") == ""


def test_literal_chain_of_a_regexp() -> None:
    assert literal_chain(r"URL .* Sp.*er Gate") == ("URL ", " Sp", "er Gate")
    assert literal_chain(r'{"msg":.*"id":') == ('{"msg":', '"id":')  # a `{` that is no repeat count
    assert literal_chain(r"U\.S\..*Command") == ("U.S.", "Command")
    assert literal_chain(r".*a.*") == ("a",)
    for not_a_chain in (r"You don.t", r"a.*?b", r"a.+b", r"ab*c", r"a{2}b", r"a|b", r"\d.*x", r"[ab].*c", r"a.*+b"):
        assert literal_chain(not_a_chain) is None, not_a_chain


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["URL ", " Sp", "er Gate", "ider", "\n", "x", "U.S.", "Command", "U", "Gat"]),
                max_size=8))
def test_a_chain_finds_what_re_finds(parts: list[str]) -> None:
    """The chain of `find`s says "matches" exactly when `re` (DOTALL, as the rows are compiled) does."""
    text = "".join(parts)
    for pattern in (r"URL .* Sp.*er Gate", r"U\.S\..*Command", r"Sp.*Sp", r".*Gat.*"):
        chain = literal_chain(pattern)
        assert chain is not None
        assert _chain_search(chain, text) == (re.search(pattern, text, re.DOTALL) is not None), (pattern, text)


def test_rows_of_every_kind_outside_the_shipped_data() -> None:
    """A regexp with no literal (searched every time), one that is not a chain, a prefix and a full
    row on one header, and a body that holds a lone surrogate (JSON may carry one)."""
    header = "name,scope,other_names,location_found,pattern_type,pattern,confidence_no_fp,expected_countries,source,exp_url,notes\n"
    http = parse_rows(header + "\n".join([
        r"t.digits,nat,,body,regexp,\d{3}-blocked,1,,,,",
        r"t.dot,nat,,body,regexp,You don.t have,1,,,,",
        "t.prefix,isp,,header.location,prefix,http://block.example/,1,,,,",
        "t.full,isp,,header.location,full,http://block.example/,1,,,,",
        "t.fp,fp,,body,contains,Access,1,,,,",
    ]) + "\n", "http", "test")
    db = build_db("t", [], http)
    assert [m.fingerprint.name for m in db.match_http_all("page 451-blocked", None)] == ["t.digits"]
    assert db.match_http("You don\u2019t have Access", None).name == "t.dot"  # `.` is one character
    assert db.match_http("You don\u2019\u2019t have", None) is None
    assert [m.fingerprint.name for m in db.match_http_all(None, {"Location": "http://block.example/"})] == [
        "t.prefix", "t.full"]
    assert [m.fingerprint.name for m in db.match_http_all(None, {"Location": "http://block.example/x"})] == [
        "t.prefix"]
    assert db.match_http("x\ud800 Access \udfff", None).name == "t.fp"
    for body in ("x\ud800 Access", "y" * 5000 + "\ud800 Access"):  # short (cached) and long
        assert db.match_http(body, None).name == "t.fp"


def _plain_scan(db, body: str | None, headers: dict[str, str]) -> set[tuple[str, str]]:
    lowered = {k.lower(): v for k, v in headers.items()}
    found = set()
    for row in db.http:
        if row.location_found == "body":
            if body and row.matches(body):
                found.add((row.name, "body"))
        elif isinstance(value := lowered.get(row.location_found.removeprefix("header.")), str) and row.matches(value):
            found.add((row.name, row.location_found))
    return found


def test_one_scan_finds_exactly_what_the_row_by_row_scan_finds() -> None:
    """All 1,729 HTTP rows, every pattern type: the Hyperscan literal scan (regexps run only where
    their literal occurs, prefixes only at 0, full only whole) matches the plain scan row for row."""
    db = load_fingerprints()
    rng = random.Random(7)
    body_rows = [row for row in db.http if row.location_found == "body"]
    header_rows = [row for row in db.http if row.location_found != "body"]
    regexp_examples = {"URL .* Sp.*er Gate": "URL x Spider Gate", "U\\.S\\..*Command": "U.S. Cyber\nCommand",
                       "<title>D.*Marie Hooks-Hutto</title>": "<title>Dr Marie Hooks-Hutto</title>"}
    filler = "<html><head><title>x</title></head><body>" + "lorem ipsum " * 200
    cases: list[tuple[str | None, dict[str, str]]] = [(filler, {"Server": "nginx"}), (None, {}), ("", {})]
    cases += [(f"{filler}{text}", {}) for text in regexp_examples.values()]
    for _ in range(400):
        parts = [filler[: rng.randint(0, len(filler))]]
        for row in rng.sample(body_rows, rng.randint(0, 3)):
            text = regexp_examples.get(row.pattern, row.pattern) if row.pattern_type == "regexp" else row.pattern
            parts.append(text[: rng.randint(0, len(text))] if rng.random() < 0.3 else text)
        body = "".join(parts) if rng.random() < 0.9 else rng.choice(body_rows).pattern  # a `full` body now and then
        headers = {}
        for row in rng.sample(header_rows, rng.randint(0, 2)):
            name = row.location_found.removeprefix("header.")
            if name in {key.lower() for key in headers}:
                continue  # one value per header name, as in a measurement's `headers` map
            prefix = "x" if rng.random() < 0.2 else ""  # a prefix/full row must then not match
            headers[rng.choice([name, name.upper(), name.title()])] = prefix + row.pattern + rng.choice(["", "/x"])
        cases.append((body, headers))
    matched = 0
    for body, headers in cases:
        got = {(m.fingerprint.name, m.location) for m in db.match_http_all(body, headers)}
        assert got == _plain_scan(db, body, headers)
        matched += bool(got)
    assert matched > 200


def test_dns_answers_match_ipv4_ipv6_and_cnames() -> None:
    db = load_fingerprints()
    by_kind = {}
    for row in db.dns:
        kind = "ipv6" if ":" in row.pattern else "ipv4" if row.pattern.replace(".", "").isdigit() else "cname"
        by_kind.setdefault(kind, row)
    assert set(by_kind) == {"ipv4", "ipv6", "cname"}
    for row in by_kind.values():
        assert db.match_dns(row.pattern) == row
        assert db.dns_matcher(row.pattern) == row
    assert db.match_dns("93.184.216.34") is None


def test_expected_countries_decide_confirmation() -> None:
    db = load_fingerprints()
    gfw = db.match_dns("8.7.198.45")
    assert gfw is not None and gfw.expected_in("CN") and not gfw.expected_in("IT")
    anywhere = next(row for row in db.dns if row.expected_countries == ("ZZ",))
    assert anywhere.expected_in("IT")  # OONI's "ZZ": a product used anywhere


def _copy_data(tmp_path: Path) -> Path:
    directory = tmp_path / "fp"
    directory.mkdir()
    for name in (*FILES.values(), "fingerprints.json", "PROVENANCE.md"):
        shutil.copy(shipped_directory() / name, directory / name)
    return directory


def test_update_validates_then_replaces_and_keeps_the_provenance(tmp_path: Path) -> None:
    directory = _copy_data(tmp_path)
    http = (directory / FILES["http"]).read_text()
    bad = tmp_path / "bad" / FILES["http"]
    bad.parent.mkdir()
    bad.write_text(http + "x.bad,nat,,body,regexp,(unclosed,5,,,,\n")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(FingerprintError, match="bad regexp"):
        update(directory, None, bad, version="v2", source="test", note="")
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before  # nothing written
    good = tmp_path / "good" / FILES["http"]
    good.parent.mkdir()
    good.write_text(http + "x.new,nat,,body,contains,Blocked by the test,5,XX,,,\n")
    manifest = update(directory, None, good, version="v2", source="ooni/blocking-fingerprints @ abc", note="a test")
    assert manifest["version"] == "v2" and manifest["previous"][-1]["version"] == read_manifest()["version"]
    db = load_from(directory)
    assert db.version == "v2" and len(db.http) == 1730
    assert db.match_http("<p>Blocked by the test</p>", None).name == "x.new"
    provenance = (directory / "PROVENANCE.md").read_text()
    assert provenance.startswith((shipped_directory() / "PROVENANCE.md").read_text().rstrip("\n"))
    assert "Update to version v2" in provenance and "1730 rows" in provenance
    (directory / FILES["dns"]).write_text((directory / FILES["dns"]).read_text() + "x,nat,,dns,full,1.1.1.1,5,,,,\n")
    with pytest.raises(FingerprintError, match="differs from its manifest"):
        load_from(directory)  # an edit by hand is refused


def test_fingerprints_command(tmp_path: Path, samples_dir: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["fingerprints", "list", "--country", "CN", "--location", "dns"])
    assert listed.exit_code == 0 and "ooni.cn_0\tnat\tdns\tfull\t8.7.198.45\tCN" in listed.output
    checked = runner.invoke(app, ["fingerprints", "check", str(samples_dir / "backend/web_connectivity_b64_hdr.json")])
    assert checked.exit_code == 0
    assert "cl.prod_checkpoint_urlfilter_forward [prod] header.location" in checked.output
    assert "confirmed blocking" in checked.output
    directory = _copy_data(tmp_path)
    new = tmp_path / FILES["dns"]
    new.write_text((directory / FILES["dns"]).read_text())
    updated = runner.invoke(app, ["fingerprints", "update", str(new), "--version", "v9", "--source", "s",
                                  "--dir", str(directory)])
    assert updated.exit_code == 0, updated.output
    assert "version v9" in updated.output and read_manifest(directory)["version"] == "v9"
    wrong = tmp_path / "dns.csv"
    wrong.write_text("x")
    refused = runner.invoke(app, ["fingerprints", "update", str(wrong), "--version", "v", "--source", "s",
                                  "--dir", str(directory)])
    assert refused.exit_code != 0
