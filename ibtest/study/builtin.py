"""The study files shipped with ibtest: one YAML file per study, the single source of each.

They are package data of ``ibtest_hypotheses`` (``hypotheses/*.yaml`` in the source tree, see
``[tool.setuptools.package-data]``) and are read with :mod:`importlib.resources`, so they work
from an installed wheel as from a checkout. ``ibtest run`` with no argument, the
``ibtest.testing`` studies and the ``ibtest new`` templates all derive from these files rather
than keeping copies.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ibtest.base.errors import UserError

#: The package that ships the YAML studies.
PACKAGE = "ibtest_hypotheses"
#: Vardi & Shamir (COLT 2021), Theorem 3: single ReLU neuron from w(0) = 0; the default study.
THEOREM3 = "vardi_shamir_theorem3"


def study_text(name: str) -> str:
    """The text of the shipped study ``name`` (file stem, e.g. ``"vardi_shamir_theorem3"``).

    Read from the installed ``ibtest_hypotheses`` package; in a source tree where that package
    is not importable, from ``hypotheses/`` next to ``ibtest/``.
    """
    fname = f"{name}.yaml"
    try:
        return resources.files(PACKAGE).joinpath(fname).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        return (Path(__file__).resolve().parents[2] / "hypotheses" / fname).read_text(encoding="utf-8")


def study_data(name: str) -> dict[str, Any]:
    """The shipped study ``name`` parsed as YAML (a fresh dict on every call)."""
    data = yaml.safe_load(study_text(name))
    if not isinstance(data, dict):
        raise ValueError(f"built-in study {name}: not a YAML mapping")
    return data


def study_section(name: str, first: str, stop: str) -> str:
    """The lines of study ``name`` from the top-level key ``first`` up to (not including) the
    top-level key ``stop``, verbatim (comments and layout kept): for templates that reuse part
    of a study as text."""
    lines = study_text(name).splitlines(keepends=True)
    start = next(i for i, s in enumerate(lines) if s.startswith(f"{first}:"))
    end = next(i for i, s in enumerate(lines) if i > start and s.startswith(f"{stop}:"))
    return "".join(lines[start:end])


def builtin_studies() -> dict[str, Path]:
    """The YAML studies shipped in the ``ibtest_hypotheses`` package, by stem."""
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        return {}
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_study(arg: str | Path | None) -> Path:
    """A study argument as ``ibtest run`` and :func:`ibtest.run_study` take it: an existing file, or
    a built-in study's name (``None``: the default study); UserError naming both otherwise."""
    if arg is None:
        arg = THEOREM3
    p = Path(arg)
    if p.exists():
        return p
    known = builtin_studies()
    if str(arg) in known:
        return known[str(arg)]
    raise UserError(f"study {arg}: no such file, and not a built-in study (built-in: {', '.join(sorted(known))})")
