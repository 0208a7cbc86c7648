"""Hook specifications: one documented function per plugin kind.

A plugin module implements any of these with ``@ibtest.hookimpl`` and returns a list of the
matching spec objects of :mod:`ibtest.plugin.specs`. Every hook takes no argument, so a plugin is
declarative: what it returns is registered under each spec's ``name``.
"""
from __future__ import annotations

import pluggy

from ibtest.plugin.specs import ClaimKind, Construction, Dataset, Executor, Family, Hypothesis, Init, Model, Solver

PROJECT = "ibtest"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ibtest_models() -> list[Model]:
    """Return the models (f_θ, the loss and its gradient, θ's layout) this plugin provides."""


@hookspec
def ibtest_datasets() -> list[Dataset]:
    """Return the dataset families (X [n, d], y [n] generators) this plugin provides."""


@hookspec
def ibtest_inits() -> list[Init]:
    """Return the initializations θ0 this plugin provides."""


@hookspec
def ibtest_solvers() -> list[Solver]:
    """Return the gradient-flow solvers this plugin provides."""


@hookspec
def ibtest_constructions() -> list[Construction]:
    """Return the pair constructions (triple → partner dataset, or pair → new pairs)."""


@hookspec
def ibtest_hypotheses() -> list[Hypothesis]:
    """Return the candidate regularizer families R_p(θ; ctx) and invariants C_p(θ; ctx)."""


@hookspec
def ibtest_executors() -> list[Executor]:
    """Return the executors (where a study's blocks run: locally, on a cluster) this plugin provides."""


@hookspec
def ibtest_claim_kinds() -> list[ClaimKind]:
    """Return the claim kinds (how a kind of evidence is scored, judged, certified, replayed, shown
    and drawn) this plugin provides."""


@hookspec
def ibtest_families() -> list[Family]:
    """Return the regularizer families R_λ, linear in their coefficients λ, that ``ibtest fit`` can
    fit to a study's triples (each also registers two hypotheses, see :class:`ibtest.Family`)."""


HOOK_KINDS: dict[str, str] = {
    "ibtest_models": "models",
    "ibtest_datasets": "datasets",
    "ibtest_inits": "inits",
    "ibtest_solvers": "solvers",
    "ibtest_constructions": "constructions",
    "ibtest_hypotheses": "hypotheses",
    "ibtest_executors": "executors",
    "ibtest_claim_kinds": "kinds",
    "ibtest_families": "families",
}
