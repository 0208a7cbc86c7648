"""The ``exact`` solver as a plugin spec: applies to models that declare a PiecewiseLinearNeuron."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ibtest.plugin.specs import ModelBase, Option, Solver, SolveResult


def _applies(model: ModelBase) -> str | None:
    if getattr(model, "piecewise", None) is None:
        return ("its flow is not linear between activation switches (exact needs a single "
                "piecewise-linear neuron: relu_neuron, leaky_relu_neuron, linear); use 'adaptive'")
    return None


def _solve(model: ModelBase, X, y, mask, theta0, **options) -> SolveResult:
    from ibtest.solve.solvers.exact import solve_exact

    neuron = model.piecewise
    if neuron is None:
        raise ValueError(f"solver 'exact' cannot solve this model: {_applies(model)}")
    return solve_exact(X, y, mask, theta0, neuron, **options)


def _tighten(options: dict) -> dict:
    from ibtest.solve.solvers.exact import tighten

    return tighten(options)




#: the options of ``exact``, declared once (:func:`ibtest.solve.solvers.exact.solve_exact`'s
#: signature and its ``tighten`` read them)
OPTIONS: dict[str, Option] = {
    "root_tol": Option(1e-14, Annotated[float, Field(gt=0, lt=1)], "relative tolerance of the switch times"),
    "max_pieces": Option(64, Annotated[int, Field(ge=1)], "budget of linear pieces"),
    "grid": Option(192, Annotated[int, Field(ge=2)], "points of the log-spaced bracketing grid per piece"),
    "workers": Option(1, int, "threads sharing a large batch (0: one per CPU, at most 4, and "
                              "1 for batches under 2048 per thread)"),
}
DEFAULTS = {k: o.default for k, o in OPTIONS.items()}


SPEC = Solver(
    name="exact",
    solve=_solve,
    doc="GF in closed form on each linear piece, switches by root finding, exact t -> inf limit",
    options=OPTIONS,
    applies=_applies,
    tighten=_tighten,
)
