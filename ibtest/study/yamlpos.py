"""YAML loading that remembers the line of every value, for error messages.

``load_with_lines(text)`` returns the plain Python object (dicts, lists, scalars, as
``yaml.safe_load`` would) and a map from field path (a tuple of keys and list indices) to the
1-based line the value starts on.

Hostile documents are refused with :class:`YAMLInputError` (line, field path, reason) instead
of being expanded or crashing the loader:

* aliases are expanded, but the expanded document may hold at most ``max_nodes`` values, so a
  "billion laughs" alias bomb stops after ``max_nodes`` steps (its nodes are shared, so the
  composed graph itself is small);
* nesting deeper than ``max_depth`` (also a recursive alias such as ``&a [*a]``) is refused;
* a key given twice in one mapping is refused (``yaml.safe_load`` silently keeps the last);
* a mapping key must be a plain value (not a list or a mapping);
* merge keys (``<<: *base``) work as in YAML 1.1: explicit keys win, earlier merges win.
"""
from __future__ import annotations

from typing import Any

import yaml

Path = tuple[Any, ...]

#: values (scalars, lists, mappings) a document may expand to, aliases counted each time used
MAX_NODES = 100_000
#: nesting depth of lists and mappings
MAX_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLInputError(ValueError):
    """A YAML document the loader refuses: ``line`` (1-based or None), field ``path``, reason."""

    def __init__(self, line: int | None, path: Path, reason: str):
        self.line, self.path, self.reason = line, tuple(path), reason
        super().__init__(f"line {line}: {format_path(path)}: {reason}" if line else reason)


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than ``max_depth`` (it is recursive)."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise YAMLInputError(mark.line + 1, (), f"nested more than {self.max_depth} levels deep")
            if self._nodes > self.max_nodes:  # a million values written out: refused as it is read, not after
                mark = self.peek_event().start_mark
                raise YAMLInputError(mark.line + 1, (), f"the document holds more than {self.max_nodes} values")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_with_lines(
    text: str, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH
) -> tuple[Any, dict[Path, int]]:
    """Parse one YAML document; return (data, line map). Raises ``yaml.YAMLError`` for syntax
    errors and :class:`YAMLInputError` for documents refused as described in the module doc."""
    loader = _DepthLimitedLoader(text)
    loader.max_depth = max_depth
    loader.max_nodes = max_nodes
    count = 0
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # only reachable with a tiny interpreter recursion limit
            raise YAMLInputError(None, (), "nested too deeply") from None
        lines: dict[Path, int] = {}

        def line(n: yaml.Node) -> int:
            return n.start_mark.line + 1

        def scalar(n: yaml.Node, path: Path) -> Any:
            try:
                return loader.construct_object(n, deep=True)
            except ValueError as exc:  # e.g. an integer of more than 4300 digits
                raise YAMLInputError(line(n), path, f"cannot read this value: {exc}") from None

        def build(n: yaml.Node, path: Path, depth: int) -> Any:
            nonlocal count
            count += 1
            if count > max_nodes:
                raise YAMLInputError(
                    line(n), path, f"the document expands to more than {max_nodes} values "
                    "(aliases (*name) repeat what they point to: an alias bomb?)")
            if depth > max_depth:
                raise YAMLInputError(line(n), path, f"nested more than {max_depth} levels deep "
                                     "(a recursive alias?)")
            lines[path] = line(n)
            if isinstance(n, yaml.MappingNode):
                return mapping(n, path, depth)
            if isinstance(n, yaml.SequenceNode):
                return [build(v, path + (i,), depth + 1) for i, v in enumerate(n.value)]
            return scalar(n, path)

        def mapping(n: yaml.MappingNode, path: Path, depth: int) -> dict[Any, Any]:
            out: dict[Any, Any] = {}
            merges: list[yaml.Node] = []
            explicit: dict[Any, int] = {}
            for k, v in n.value:
                if k.tag == _MERGE_TAG:
                    merges.append(v)
                    continue
                if not isinstance(k, yaml.ScalarNode):
                    raise YAMLInputError(line(k), path, "a mapping key must be a plain value, "
                                         "not a list or a mapping")
                key = scalar(k, path)
                if key in explicit:
                    raise YAMLInputError(line(k), path + (key,), f"duplicate key {key!r} "
                                         f"(first given on line {explicit[key]}): give each key once")
                explicit[key] = line(k)
            # merged mappings first (the earliest merge wins), explicit keys override them
            own_line = lines[path]
            for m in merges:
                sources = m.value if isinstance(m, yaml.SequenceNode) else [m]
                for src in reversed(sources):
                    if not isinstance(src, yaml.MappingNode):
                        raise YAMLInputError(line(src), path, "a merge key (<<) takes a mapping "
                                             "or a list of mappings")
                    out.update(build(src, path, depth + 1))
            lines[path] = own_line
            for k, v in n.value:
                if k.tag == _MERGE_TAG:
                    continue
                key = scalar(k, path)
                lines[path + (key,)] = line(v)
                out[key] = build(v, path + (key,), depth + 1)
            return out

        data = None if node is None else build(node, (), 1)
        return data, lines
    finally:
        loader.dispose()


def decode_text(data: bytes, src: str) -> str:
    """UTF-8 text of a file's bytes; raises :class:`YAMLInputError` naming the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YAMLInputError(
            line, (), f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "save the file as UTF-8") from None


def format_path(path: Path) -> str:
    """``('hypotheses', 1, 'params', 'p')`` -> ``hypotheses[1].params.p``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path`` or of its nearest ancestor that has one."""
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return lines.get(())
