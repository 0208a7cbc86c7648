"""``ibtest list`` and ``ibtest list NAME``: what is registered, and everything a study may set.

The overview is one row per plugin (name, the doc's first line, where it comes from), fitted to
100 columns. ``list NAME`` shows every plugin of that name (``gaussian`` is a dataset and an
init): its whole doc, the file it comes from, and each option with its type and bounds (the
declared ones, and the conventions every option follows: a plain ``int`` is ≥ 0, a ``*tol``
float is ≥ 0), its default and its doc; a hypothesis its kind, ``depends_on``, variable and
parameters. Every string of a plugin is its own text, shown inert (:func:`clean`).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean
from ibtest.out.cells import DEFAULT_WIDTH
from ibtest.out.report import table
from ibtest.study.coerce import describe_type

KINDS = ("models", "datasets", "inits", "solvers", "constructions", "hypotheses", "executors", "families")
SINGULAR = {"models": "model", "datasets": "dataset", "inits": "init", "solvers": "solver",
            "constructions": "construction", "hypotheses": "hypothesis", "executors": "executor",
            "families": "family"}


def _first_line(doc: str | None) -> str:
    text = (doc or "").strip()
    return text.splitlines()[0] if text else ""


def _short_source(item: Any) -> str:
    """``models.neurons (neurons.py)``, or ``file:my_reg.py`` for a plugin file (the whole path:
    ``ibtest list NAME``)."""
    plugin = str(item.plugin)
    if plugin.startswith("file:"):
        return f"file:{Path(plugin[5:]).name}"
    return f"{plugin} ({Path(str(item.source)).name})"


def overview(reg: Any, studies: list[str]) -> str:
    """Every registered plugin by kind (name, doc, source: its plugin and file name), then the
    built-in studies, at most :data:`DEFAULT_WIDTH` columns wide."""
    out = []
    for kind in KINDS:
        rows = []
        for name in reg.names(kind):
            item = reg.items[kind][name]
            extra = ""
            if kind == "hypotheses":
                extra = f"[{item.spec.kind}, depends on {item.spec.depends_on}, on {item.spec.on}] "
            rows.append({"name": clean(name), "doc": clean(extra + _first_line(item.spec.doc)),
                         "source": clean(_short_source(item))})
        out += [f"{kind}:", table(rows), ""]
    if studies:
        out += textwrap.wrap("built-in studies: " + ", ".join(studies), DEFAULT_WIDTH, break_on_hyphens=False)
    out += ["", "ibtest list NAME: a plugin's options (type, default, bounds, doc)"]
    return "\n".join(out)


def option_type(name: str, opt: Any) -> str:
    """The type of an option as a study must give it, with its bounds (declared, or the
    conventions: a plain int is >= 0, a plain float named ``*tol`` is >= 0)."""
    text = describe_type(opt.type) if opt.type is not Any else "any"
    if opt.type is int:
        text += " >= 0"
    elif opt.type is float and name.endswith("tol"):
        text += " >= 0"
    if getattr(opt, "sweep", False):
        text += " | list"
    return text


def _default(opt: Any) -> str:
    if getattr(opt, "required", False):
        return "(required)"
    if isinstance(opt.default, float):
        return f"{opt.default:g}"
    return repr(opt.default) if isinstance(opt.default, str) else str(opt.default)


def option_rows(spec: Any) -> list[dict[str, str]]:
    """One row per option of a plugin (models, datasets, inits, solvers, constructions, executors,
    families) or parameter of a hypothesis (its type read from the default)."""
    options = getattr(spec, "options", None)
    if isinstance(options, dict) and options:
        return [{"option": clean(k), "type": clean(option_type(k, o)), "default": clean(_default(o)),
                 "doc": clean(o.doc or "")} for k, o in options.items()]
    params = getattr(spec, "params", None)
    if isinstance(params, dict) and params:
        return [{"parameter": clean(k), "type": type(v).__name__, "default": clean(str(v)),
                 "doc": "a list gives one member per value"} for k, v in params.items()]
    return []


def describe_plugin(reg: Any, name: str) -> str:
    """Everything about the plugins registered as ``name`` (UserError, exit 2, when there is none)."""
    found = [(kind, reg.items[kind][name]) for kind in KINDS if name in reg.items.get(kind, {})]
    if not found:
        raise UserError(f"ibtest list {clean(name)}: no plugin of that name (ibtest list shows them all)")
    out = []
    for kind, item in found:
        spec = item.spec
        out.append(f"{SINGULAR[kind]} {clean(name)}  from {clean(item.plugin)} ({clean(str(item.source))})")
        if kind == "hypotheses":
            out.append(f"  kind {clean(spec.kind)}, depends on {clean(spec.depends_on)}, on {clean(spec.on)}")
        for para in clean((spec.doc or "").strip(), keep_newlines=True).split("\n"):
            out += textwrap.wrap(para, DEFAULT_WIDTH, initial_indent="  ", subsequent_indent="  ") or [""]
        rows = option_rows(spec)
        out += ["", table(rows) if rows else "  (no options)"]
        if any(r["type"].endswith("| list") for r in rows):
            out.append("(| list: a list of such values makes one member per value)")
        out.append("")
    return "\n".join(out).rstrip()
