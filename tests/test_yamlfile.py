"""wallwatch.yamlfile: the one strict YAML loader of policies, scenarios and the demo's phases."""

from __future__ import annotations

import datetime as dt

import pytest

from wallwatch.yamlfile import YamlError, load_yaml


def test_a_duplicate_key_is_an_error_at_its_line_naming_the_first() -> None:
    text = "rules:\n  - name: r\n    action: drop\n    match: {proto: tcp}\n    action: allow\n"
    with pytest.raises(YamlError, match=r"^f\.yaml:5: not valid YAML: found duplicate key 'action' \(first at line 3\)"):
        load_yaml(text, "f.yaml")


@pytest.mark.parametrize("text, line", [
    ("match: {tls.sni: a, tls.sni: b}\n", 1),  # flow style
    ("a: 1\nb: 2\na: 3\n", 3),
    ("x:\n  1: one\n  1: uno\n", 3),  # equal keys after construction, not only equal text
    ("x:\n  true: a\n  yes: b\n", 3),  # YAML 1.1: both are the boolean true
])
def test_every_kind_of_duplicate_is_refused(text: str, line: int) -> None:
    with pytest.raises(YamlError, match=f"^f:{line}: .*duplicate key") as info:
        load_yaml(text, "f")
    assert info.value.line == line


def test_merge_keys_may_override_what_they_merge() -> None:
    document = load_yaml("base: &b {a: 1, b: 2}\nmore:\n  <<: *b\n  b: 3\n", "f")
    assert document.data["more"] == {"a": 1, "b": 3}


def test_lines_of_key_paths_and_of_an_empty_file() -> None:
    document = load_yaml("name: x\nrules:\n  - name: r\n    match:\n      tls.sni: {regex: 5}\n", "p.yaml")
    assert document.line("rules", 0, "match", "tls.sni") == 5
    assert document.at("rules", 0) == "p.yaml:3"
    assert document.line("rules", 7, "match") == 2  # no such rule: the nearest part that exists
    assert document.data["rules"][0]["match"]["tls.sni"] == {"regex": 5}
    empty = load_yaml("# only a comment\n", "e.yaml")
    assert empty.empty and empty.data is None and empty.at() == "e.yaml:1"


def test_impossible_dates_two_documents_and_bad_bytes_are_errors_with_lines() -> None:
    with pytest.raises(YamlError, match=r"^f:2: not valid YAML: invalid date '2017-09-31'"):
        load_yaml("start: 2017-09-01\nend: 2017-09-31\n", "f")
    with pytest.raises(YamlError, match=r"^f:2: not valid YAML: .*single document"):
        load_yaml("a: 1\n---\nb: 2\n", "f")
    with pytest.raises(YamlError, match=r"^f(:\d+)?: not valid YAML"):
        load_yaml(b"a: \xff\xfe\n", "f")
    assert load_yaml("d: 2017-09-20\n", "f").data == {"d": dt.date(2017, 9, 20)}


def test_only_safe_types_are_built() -> None:
    with pytest.raises(YamlError, match="could not determine a constructor"):
        load_yaml("x: !!python/object/apply:os.system [echo]\n", "f")
