"""What a plugin declares, checked when it registers (:class:`ibtest.plugin.manager.Registry`).

A spec object is plain data a plugin builds; a wrong field would otherwise surface as a traceback
deep inside a run (a hypothesis ``kind`` the judge does not know, ``params`` given as a list, a
tolerance of NaN that makes every margin NaN). :func:`spec_problems` lists what is wrong with one
spec, phrased ``field: what is wrong (what was expected)``; the registry refuses the plugin with
all of them (exit 2, naming the plugin and its file):

* the callables (``fn``, ``factory``, ``generate``, ``sample``, ``solve``, ``build``, ...) are callable;
* the choices (a hypothesis's ``depends_on``, ``on``; a construction's ``stage``) are among the
  known ones; a hypothesis's ``kind`` is a string (that a registered claim kind judges it is
  checked once every plugin is loaded: :meth:`ibtest.plugin.manager.Registry`); its ``optimum``
  is None or a string;
* a hypothesis's ``params`` is a mapping of names to defaults (no NaN); its ``atol`` and ``rtol``
  are finite numbers ≥ 0, its ``bound`` finite or None;
* ``options`` maps names to :class:`~ibtest.plugin.specs.Option` objects whose type pydantic can
  validate and whose default is no NaN, not ±inf unless ``allow_inf``, and, for a tolerance
  (``*tol``), ≥ 0.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from ibtest.plugin.specs import Option

#: per kind: the fields that must be callable, and those that may be None or callable
CALLABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "models": (("factory",), ()),
    "datasets": (("generate",), ("size",)),
    "inits": (("sample",), ()),
    "solvers": (("solve", "applies", "tighten"), ()),
    "constructions": (("build",), ("size",)),
    "hypotheses": (("fn",), ("cvx",)),
    "executors": (("factory",), ()),
    "kinds": (("certificate", "replay", "describe"), ("score", "finish", "plot", "shrink")),
    "families": (("features",), ("cone", "strict", "magnitude", "convex", "cvx", "labels", "describe", "parameters")),
}
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "hypotheses": {"depends_on": ("params", "init", "data"), "on": ("theta", "predictor")},
    "families": {"depends_on": ("params", "init", "data"), "on": ("theta", "predictor")},
    "constructions": {"stage": ("triple", "pair")},
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v: Any, n: int = 40) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


@functools.lru_cache(maxsize=512)
def _type_problem(tp: Any) -> str | None:
    from pydantic import TypeAdapter

    try:
        TypeAdapter(tp)
    except Exception as exc:  # noqa: BLE001 - pydantic cannot build a validator for it
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    return None


def option_problems(options: Any) -> list[str]:
    """Problems of a spec's ``options`` mapping (see the module doc)."""
    if not isinstance(options, Mapping):
        return [f"options: expected a mapping of option names to ibtest.Option, got {type(options).__name__}"]
    out = []
    for key, opt in options.items():
        where = f"options[{key!r}]"
        if not isinstance(key, str) or not key.isidentifier():
            out.append(f"options: option name {_short(key)} is not an identifier")
            continue
        if not isinstance(opt, Option):
            out.append(f"{where}: expected ibtest.Option, got {type(opt).__name__}")
            continue
        try:
            why = _type_problem(opt.type)
        except TypeError:  # an unhashable type object: check without the cache
            why = _type_problem.__wrapped__(opt.type)
        if why:
            out.append(f"{where}: type {_short(opt.type)} cannot be validated ({why})")
        for v in _numbers(opt.default):
            if math.isnan(v):
                out.append(f"{where}: default {_short(opt.default)} holds NaN")
            elif math.isinf(v) and not opt.allow_inf:
                out.append(f"{where}: default {_short(opt.default)} is infinite (declare allow_inf=True if meant)")
            elif key.endswith("tol") and v < 0:
                out.append(f"{where}: default {v!r} of a tolerance is negative")
    return out


def _numbers(value: Any):
    if _is_number(value):
        yield float(value) if not isinstance(value, int) else value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)


def _defaults_problems(field: str, values: Any) -> list[str]:
    """Problems of a mapping of names to default values (a hypothesis's params, a family's options)."""
    if not isinstance(values, Mapping):
        noun = "parameter" if field == "params" else "option"
        return [f"{field}: expected a mapping of {noun} names to defaults (e.g. {{'p': 2.0}}), "
                f"got {type(values).__name__} {_short(values)}"]
    out = []
    for k, v in values.items():
        if not isinstance(k, str) or not k.isidentifier():
            out.append(f"{field}: name {_short(k)} is not an identifier")
        elif any(isinstance(x, float) and math.isnan(x) for x in _numbers(v)):
            out.append(f"{field}[{k!r}]: default {_short(v)} holds NaN")
    return out


def _hypothesis_problems(spec: Any) -> list[str]:
    out = _defaults_problems("params", getattr(spec, "params", None))
    for name in ("atol", "rtol"):
        tol: Any = getattr(spec, name, None)
        if not _is_number(tol) or not math.isfinite(tol) or tol < 0:
            out.append(f"{name}: expected a finite number >= 0, got {_short(tol)}")
    bound = getattr(spec, "bound", None)
    if bound is not None and (not _is_number(bound) or not math.isfinite(bound)):
        out.append(f"bound: expected a finite number or None, got {_short(bound)}")
    if not isinstance(getattr(spec, "kind", None), str):
        out.append(f"kind: expected a string (regularizer, invariant, bound or a plugin's), got {_short(spec.kind)}")
    optimum = getattr(spec, "optimum", None)
    if optimum is not None and not isinstance(optimum, str):
        out.append(f"optimum: expected None or a string naming the model's certified optimum, got {_short(optimum)}")
    if not isinstance(getattr(spec, "convex", False), bool):
        out.append(f"convex: expected True or False, got {_short(spec.convex)}")
    return out


def spec_problems(kind: str, spec: Any) -> list[str]:
    """Everything wrong with one registered spec of ``kind`` (empty: it is usable)."""
    out = []
    name = getattr(spec, "name", None)
    if not isinstance(name, str) or not name.strip():
        out.append(f"name: expected a non-empty string, got {_short(name)}")
    need, optional = CALLABLES.get(kind, ((), ()))
    for f in need:
        if not callable(getattr(spec, f, None)):
            out.append(f"{f}: expected a function, got {type(getattr(spec, f, None)).__name__}")
    for f in optional:
        v = getattr(spec, f, None)
        if v is not None and not callable(v):
            out.append(f"{f}: expected a function or None, got {type(v).__name__}")
    for field, allowed in CHOICES.get(kind, {}).items():
        v = getattr(spec, field, None)
        if not isinstance(v, str) or v not in allowed:
            out.append(f"{field}: {_short(v)} is not one of {', '.join(allowed)}")
    if not isinstance(getattr(spec, "doc", ""), str):
        out.append(f"doc: expected a string, got {type(spec.doc).__name__}")
    if kind == "families":  # a family's options are plain defaults (a study's fit: block overrides them)
        out += _defaults_problems("options", getattr(spec, "options", None))
    elif hasattr(spec, "options"):
        out += option_problems(spec.options)
    if kind == "hypotheses":
        out += _hypothesis_problems(spec)
    if kind == "kinds" and not isinstance(getattr(spec, "judges", None), str):
        out.append(f"judges: expected a hypothesis kind or '*', got {_short(getattr(spec, 'judges', None))}")
    return out
