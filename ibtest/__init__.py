"""ibtest: put a conjecture about the implicit regularization of gradient flow to the test.

Public API for plugin authors: :data:`hookimpl` and the spec objects of :mod:`ibtest.plugin.specs`.
For notebooks: :func:`run_study`, and :func:`fit_study` (propose a regularizer).
"""
from __future__ import annotations

from ibtest._startup import gc_paused

with gc_paused():  # torch's import: ~10^6 long-lived objects, nothing to collect
    from ibtest.judge.zeroset import Polyhedron
    from ibtest.plugin.hookspecs import hookimpl
    from ibtest.plugin.specs import (
        ClaimKind,
        Construction,
        CvxContext,
        DataBatch,
        DataContext,
        Dataset,
        Executor,
        Family,
        Free,
        HessianParts,
        Hypothesis,
        HypothesisContext,
        Init,
        InitContext,
        LossHessian,
        LossHessianParts,
        Model,
        ModelBase,
        NewPairs,
        OptimumCheck,
        Option,
        PairBatch,
        Partners,
        PiecewiseLinearNeuron,
        PiecewiseLinearUnits,
        Solver,
        SolveResult,
        TripleBatch,
        replace,
    )

__version__ = "0.1.0"


def fit_study(study, **kwargs):
    """Fit a family to a study's triples (``ibtest fit``); returns a :class:`~ibtest.propose.study.FitReport`."""
    from ibtest.propose.study import fit_study as _fit

    return _fit(study, **kwargs)


def run_study(study, **kwargs):
    """Run a study (a path to a YAML file, or a dict) and return its :class:`~ibtest.api.StudyResult`."""
    from ibtest.api import run_study as _run

    return _run(study, **kwargs)


__all__ = [
    "hookimpl",
    "ClaimKind",
    "Construction",
    "HypothesisContext",
    "CvxContext",
    "DataBatch",
    "DataContext",
    "Dataset",
    "Executor",
    "Family",
    "Free",
    "Hypothesis",
    "Init",
    "InitContext",
    "Model",
    "ModelBase",
    "NewPairs",
    "OptimumCheck",
    "Option",
    "PairBatch",
    "Partners",
    "PiecewiseLinearNeuron",
    "PiecewiseLinearUnits",
    "LossHessian",
    "LossHessianParts",
    "HessianParts",
    "Polyhedron",
    "SolveResult",
    "Solver",
    "TripleBatch",
    "replace",
    "run_study",
    "fit_study",
    "__version__",
]
