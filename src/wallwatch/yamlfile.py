"""The YAML files people write (censor policies, scenarios, the demo's phases): one strict loader.

PyYAML's `safe_load` lets a later duplicate key silently replace an earlier one
(`action: drop` then `action: allow` means allow), although YAML 1.2 §3.2.1.1
requires mapping keys to be unique [YAML1.2], and it forgets where each value
was. `StrictLoader` is a `yaml.SafeLoader` (no arbitrary objects) that refuses
duplicate keys and impossible dates with the line, and `load_yaml` keeps the
node tree next to the data so a validator can name `file:line` for any key
path: `document.line("rules", 2, "match", "tls.sni")`.

This module imports nothing of wallwatch: the censor and the lab both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

import yaml

KeyPath = tuple[str | int, ...]


class YamlError(ValueError):
    """A file that is not valid YAML, or breaks a rule of the strict loader; the message says file:line."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate mapping keys and impossible dates (2017-09-31),
    each a `ConstructorError` at the offending line (never a bare ValueError)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: overriding merged keys is what a merge is for
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first_line.get(key)
            except TypeError:
                continue  # an unhashable key: the base class names it
            if seen is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first at line {seen})", key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_timestamp(self, node: yaml.Node) -> Any:  # type: ignore[override]
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid date {node.value!r}: {exc}", node.start_mark) from None


StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", StrictLoader.construct_yaml_timestamp)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A loaded file: its data (None for an empty file), and where each part of it was."""

    data: Any
    source: str
    root: yaml.Node | None

    @property
    def empty(self) -> bool:
        """No document at all: an empty file, or one of comments only."""
        return self.root is None

    def line(self, *path: str | int) -> int:
        """The 1-based line of the deepest part of `path` the file has (a missing key: its parent's;
        an empty file: line 1)."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else 1
        for key in path:
            child = None
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(key):
                        child, line = value_node, key_node.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
                child = node.value[key]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line

    def at(self, *path: str | int) -> str:
        """'file:line' of `path`."""
        return f"{self.source}:{self.line(*path)}"


def load_yaml(text: str | bytes, source: str = "<yaml>") -> YamlDocument:
    """Parse one YAML document strictly; YamlError('file:line: why') on any problem."""
    loader: StrictLoader | None = None
    try:
        loader = StrictLoader(text)  # decodes the start of the text already: a ReaderError can come here
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        where = f"{source}:{line}" if line is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        if context and not context.startswith("while "):  # "expected a single document", not "while parsing"
            problem = f"{context}, {problem}"
        raise YamlError(f"{where}: not valid YAML: {problem}", line=line) from None
    finally:
        if loader is not None:
            loader.dispose()
    return YamlDocument(data, source, root)


def read_yaml(path: str | Path) -> YamlDocument:
    """`load_yaml` of a file; YamlError if it cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise YamlError(f"{path}: cannot read: {exc.strerror}") from None
    return load_yaml(raw, str(path))
