"""Plugin options and problem messages of study validation (:mod:`ibtest.study.schema`).

An option value from YAML is coerced to the type the plugin declares (:class:`~ibtest.plugin.specs.Option`):
numbers read laxly (YAML reads ``1e-9`` as a string) but never from a bool, each value checked
against the option's bounds (a conventional lower bound of 0 for tolerances), a list only where
the option sweeps. Problems are phrased ``FILE:LINE: FIELD.PATH: what is wrong (what was expected)``.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args, get_origin

import pydantic
from pydantic import TypeAdapter

from ibtest.plugin.specs import Option
from ibtest.study.yamlpos import format_path, line_of


# ----------------------------------------------------------------------------------------
def describe_type(tp: Any) -> str:
    """``int``, ``float``, ``list[float]``; an ``Annotated[int, Field(ge=1)]`` reads ``int >= 1``."""
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        bounds = []
        for m in meta:
            for c in getattr(m, "metadata", [m]):
                for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    if getattr(c, attr, None) is not None:
                        bounds.append(f"{sym} {getattr(c, attr)}")
        return " ".join([describe_type(base)] + bounds)
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_args(tp):
        return f"{describe_type(get_origin(tp))}[{', '.join(describe_type(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _admits_bool(tp: Any) -> bool:
    """Whether a value of type ``tp`` may be a bool (``Any``, ``bool`` or a type that holds one)."""
    if tp is Any or tp is bool:
        return True
    if get_origin(tp) is Literal:
        return any(isinstance(a, bool) for a in get_args(tp))
    return any(_admits_bool(a) for a in get_args(tp) if not isinstance(a, (int, float, str)))


def _find_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            b = _find_bool(v)
            if b is not None:
                return b
    if isinstance(value, dict):
        return _find_bool(list(value.values()))
    return None


def _numbers(value: Any):
    """Every int or float (not bool) inside ``value`` (lists, tuples, dict values)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, dict):
        yield from _numbers(list(value.values()))


def _convention_lower(name: str, tp: Any) -> float | None:
    """Lower bound an undeclared option gets: a plain ``int`` is ≥ 0 (counts, sizes, budgets),
    a plain ``float`` named ``*tol`` (a tolerance) is ≥ 0. ``Annotated`` types bring their own."""
    if tp is int:
        return 0
    if tp is float and name.endswith("tol"):
        return 0
    return None


def coerce(value: Any, opt: Option, name: str = "") -> Any:
    """Validate one option value against its declared type (a list when the option sweeps).

    On top of pydantic's check of ``opt.type``: a bool never passes for a number, no number is
    NaN, none is ±inf unless ``opt.allow_inf``, the conventions of :func:`_convention_lower`
    hold, and a sweep list is not empty.
    """
    if opt.sweep and isinstance(value, list):
        if not value:
            raise ValueError("an empty list gives no value to run (give at least one)")
        return [_coerce_one(v, opt, name) for v in value]
    return _coerce_one(value, opt, name)


def _coerce_one(value: Any, opt: Option, name: str = "") -> Any:
    tp = opt.type
    if not _admits_bool(tp):
        b = _find_bool(value)
        if b is not None:
            raise ValueError(f"{b!r} is not a number")
    for x in _numbers(value):  # before the type's own bounds: "NaN is not a value" says more
        if isinstance(x, float) and math.isnan(x):
            raise ValueError("NaN is not a value")
    out = value if tp is Any else TypeAdapter(tp).validate_python(value)
    lower = _convention_lower(name, tp)
    for x in _numbers(out):
        if isinstance(x, float) and math.isnan(x):
            raise ValueError("NaN is not a value")
        if isinstance(x, float) and math.isinf(x) and not getattr(opt, "allow_inf", False):
            raise ValueError("must be finite")
        if lower is not None and x < lower:
            raise ValueError(f"must be >= {lower:g}")
    return out


def _data_loc(loc: tuple, data: Any) -> tuple:
    """The part of a pydantic error location that indexes ``data`` (drops union member tags
    such as ``PluginRef`` or ``constrained-int``); a last key missing from a mapping is kept."""
    out, cur = [], data
    for i, part in enumerate(loc):
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif i == len(loc) - 1 and isinstance(cur, dict) and isinstance(part, str):
            out.append(part)
    return tuple(out)


def pydantic_problems(exc: pydantic.ValidationError, src: str, lines: dict, data: Any = None) -> list[str]:
    by_loc: dict[tuple, list[str]] = {}
    for e in exc.errors():
        loc = _data_loc(tuple(e["loc"]), data) if data is not None else tuple(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        if e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = f"{msg} (got {short(e.get('input'))}{text_hint(e.get('input'))})"
        if msg not in by_loc.setdefault(loc, []):
            by_loc[loc].append(msg)
    return [f"{src}:{line_of(lines, loc)}: {format_path(loc)}: {'; or '.join(msgs)}" for loc, msgs in by_loc.items()]


def text_hint(value: Any) -> str:
    """YAML 1.1 reads ``1e9`` (no dot, no exponent sign) as text: say so where a number was due."""
    if isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            return ""
        if math.isfinite(x) and x == int(x) and abs(x) < 1e18:
            return f"; YAML reads {value!r} as text, not a number: write {int(x)}"
        return f"; YAML reads {value!r} as text, not a number: write it with a dot and a signed exponent (1.0e+9)"
    return ""


def short(value: Any, limit: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."

