"""ibtest: put a conjecture about the implicit regularization of gradient flow to the test.

Public API for plugin authors: :data:`hookimpl` and the spec objects of :mod:`ibtest.plugin.specs`.
For notebooks: :func:`run_study`.
"""
from __future__ import annotations

from ibtest import _compat
from ibtest._startup import gc_paused

_compat.install()  # the module paths from before the layers (deprecated aliases)

with gc_paused():  # torch's import: ~10^6 long-lived objects, nothing to collect
    from ibtest.judge.zeroset import Polyhedron
    from ibtest.plugin.hookspecs import hookimpl
    from ibtest.plugin.specs import (
        Construction,
        Context,
        CvxContext,
        DataBatch,
        Dataset,
        Executor,
        Hypothesis,
        HypothesisContext,
        Init,
        LossHessian,
        Model,
        ModelBase,
        NewPairs,
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


def run_study(study, **kwargs):
    """Run a study (a path to a YAML file, or a dict) and return its :class:`~ibtest.api.StudyResult`."""
    from ibtest.api import run_study as _run

    return _run(study, **kwargs)


__all__ = [
    "hookimpl",
    "Construction",
    "Context",
    "HypothesisContext",
    "CvxContext",
    "DataBatch",
    "Dataset",
    "Executor",
    "Hypothesis",
    "Init",
    "Model",
    "ModelBase",
    "NewPairs",
    "Option",
    "PairBatch",
    "Partners",
    "PiecewiseLinearNeuron",
    "PiecewiseLinearUnits",
    "LossHessian",
    "Polyhedron",
    "SolveResult",
    "Solver",
    "TripleBatch",
    "replace",
    "run_study",
    "__version__",
]
