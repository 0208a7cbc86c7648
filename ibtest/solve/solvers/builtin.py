"""Registers the core's solvers (``exact``, ``adaptive``, ``gd``) as a built-in plugin."""
from __future__ import annotations

from ibtest.plugin.hookspecs import hookimpl


@hookimpl
def ibtest_solvers():
    from ibtest.solve.solvers import adaptive, exact_spec, gd

    return [exact_spec.SPEC, adaptive.SPEC, gd.SPEC]
