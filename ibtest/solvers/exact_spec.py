"""The ``exact`` solver as a plugin spec: applies to models that declare a PiecewiseLinearNeuron."""
from __future__ import annotations

from ..specs import ModelBase, Option, Solver, SolveResult


def _applies(model: ModelBase) -> str | None:
    if getattr(model, "piecewise", None) is None:
        return ("its flow is not linear between activation switches (exact needs a single "
                "piecewise-linear neuron: relu_neuron, leaky_relu_neuron, linear); use 'adaptive'")
    return None


def _solve(model: ModelBase, X, y, mask, theta0, **options) -> SolveResult:
    from .exact import solve_exact

    return solve_exact(X, y, mask, theta0, model.piecewise, **options)


def _tighten(options: dict) -> dict:
    from .exact import tighten

    return tighten(options)


SPEC = Solver(
    name="exact",
    solve=_solve,
    doc="GF in closed form on each linear piece, switches by root finding, exact t -> inf limit",
    options={
        "fit_tol": Option(1e-20, float, "loss at or below which a limit has converged"),
        "root_tol": Option(1e-14, float, "relative tolerance of the switch times"),
        "max_pieces": Option(64, int, "budget of linear pieces"),
        "grid": Option(192, int, "points of the log-spaced bracketing grid per piece"),
        "workers": Option(1, int, "threads sharing a large batch (0: one per CPU, at most 4, and "
                                  "1 for batches under 2048 per thread)"),
    },
    applies=_applies,
    tighten=_tighten,
)
