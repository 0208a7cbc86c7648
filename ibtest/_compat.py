"""Deprecated module paths from before the layers, still importable.

``import ibtest.engine`` or ``from ibtest.specs import Hypothesis`` keep working: a meta-path
finder maps each old module name to its home in a layer and emits a :class:`DeprecationWarning`
naming the new path. A module that was split (``ibtest.engine``) maps to a read-only view that
looks each name up in the modules it was split into. Nothing in ibtest imports these names.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

#: old top-level module -> its new module(s), first match wins for a split module
MOVED: dict[str, tuple[str, ...]] = {
    "errors": ("ibtest.base.errors",), "textsafe": ("ibtest.base.textsafe",),
    "status": ("ibtest.base.status",), "progress": ("ibtest.base.progress",),
    "specs": ("ibtest.plugin.specs",), "hookspecs": ("ibtest.plugin.hookspecs",),
    "manager": ("ibtest.plugin.manager",),
    "yamlpos": ("ibtest.study.yamlpos",), "budget": ("ibtest.study.budget",),
    "checks": ("ibtest.study.checks",),
    "fit": ("ibtest.solve.fit",), "batch": ("ibtest.solve.batch",),
    "engine": ("ibtest.solve.engine", "ibtest.pairs.admissible", "ibtest.pairs.constructions"),
    "solvers": ("ibtest.solve.solvers",),
    "evaluation": ("ibtest.judge.evaluation",), "verdicts": ("ibtest.judge.verdicts",),
    "zeroset": ("ibtest.judge.zeroset",), "optimality": ("ibtest.judge.optimality",),
    "witness": ("ibtest.judge.witness",),
    "certificate": ("ibtest.cert.certificate",), "certschema": ("ibtest.cert.schema",),
    "witness_cert": ("ibtest.cert.witness_cert", "ibtest.out.witness_plot"),
    "replay": ("ibtest.cert.replay",), "shrink": ("ibtest.cert.shrink",),
    "streaming": ("ibtest.run.streaming",), "executors": ("ibtest.run.executors",),
    "ray_executor": ("ibtest.run.ray_executor",), "store": ("ibtest.run.store",),
    "report": ("ibtest.out.report",), "plots": ("ibtest.out.plots",), "show": ("ibtest.out.show",),
}


def new_names(old: str) -> tuple[str, ...] | None:
    """``ibtest.solvers.exact`` -> ``("ibtest.solve.solvers.exact",)``; None if not a moved name."""
    parts = old.split(".")
    if len(parts) < 2 or parts[0] != "ibtest" or parts[1] not in MOVED:
        return None
    tail = ".".join(parts[2:])
    targets = MOVED[parts[1]]
    return tuple(f"{t}.{tail}" for t in targets[:1]) if tail else targets


class _Split(types.ModuleType):
    """A split module: names are looked up in each new module in turn."""

    def __init__(self, name: str, targets: Sequence[types.ModuleType]):
        super().__init__(name, f"deprecated alias of {', '.join(m.__name__ for m in targets)}")
        self._targets = list(targets)

    def __getattr__(self, attr: str):
        for m in self._targets:
            if hasattr(m, attr):
                return getattr(m, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


class _Loader(importlib.abc.Loader):
    def __init__(self, targets: tuple[str, ...]):
        self.targets = targets

    def create_module(self, spec):
        mods = [importlib.import_module(t) for t in self.targets]
        warnings.warn(f"{spec.name} is deprecated: import {' / '.join(self.targets)} instead",
                      DeprecationWarning, stacklevel=2)
        return mods[0] if len(mods) == 1 else _Split(spec.name, mods)

    def exec_module(self, module) -> None:  # the new module is already executed
        return None


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        targets = new_names(fullname)
        if targets is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(targets),
                                              is_package=fullname.count(".") == 1 and fullname.endswith("solvers"))


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once. First, so that ``ibtest.solvers.exact``
    resolves to the one ``ibtest.solve.solvers.exact`` module rather than to a second copy found
    through the aliased package's ``__path__``; it answers only for the old names, which no file
    holds any more."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
