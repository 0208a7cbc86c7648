"""YAML loading that remembers the line of every value, for error messages.

``load_with_lines(text)`` returns the plain Python object (dicts, lists, scalars, as
``yaml.safe_load`` would) and a map from field path (a tuple of keys and list indices) to the
1-based line the value starts on.
"""
from __future__ import annotations

from typing import Any

import yaml

Path = tuple[Any, ...]


def load_with_lines(text: str) -> tuple[Any, dict[Path, int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Path, int] = {}

        def build(n: yaml.Node, path: Path) -> Any:
            lines[path] = n.start_mark.line + 1
            if isinstance(n, yaml.MappingNode):
                out: dict[Any, Any] = {}
                for k, v in n.value:
                    key = loader.construct_object(k, deep=True)
                    lines[path + (key,)] = v.start_mark.line + 1
                    out[key] = build(v, path + (key,))
                return out
            if isinstance(n, yaml.SequenceNode):
                return [build(v, path + (i,)) for i, v in enumerate(n.value)]
            return loader.construct_object(n, deep=True)

        data = None if node is None else build(node, ())
        return data, lines
    finally:
        loader.dispose()


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
