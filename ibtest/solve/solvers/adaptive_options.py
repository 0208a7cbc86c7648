"""The options of the ``adaptive`` solver, declared once: default, type and bounds of each
(:data:`OPTIONS`). The study validates a solver block against them, :func:`solve_adaptive`'s
signature takes its defaults from them (:data:`DEFAULTS`), and :func:`tighten` reads its
starting values from them."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ibtest.plugin.specs import Option

#: a positive number
POSITIVE = Annotated[float, Field(gt=0)]

OPTIONS: dict[str, Option] = {
    "rtol": Option(1e-10, Annotated[float, Field(gt=0, lt=1)], "relative local error tolerance"),
    "atol": Option(1e-12, Annotated[float, Field(ge=0)], "absolute local error tolerance"),
    "drift_tol": Option(1e-9, POSITIVE, "bound on the remaining motion |theta(t) - theta(inf)|"),
    "t_max": Option(1e7, POSITIVE, "flow-time budget"),
    "max_steps": Option(200_000, Annotated[int, Field(ge=1)], "step budget (accepted + rejected) per instance"),
    "div_norm": Option(1e8, POSITIVE, "|theta| beyond which an instance is diverged"),
    "order": Option(8, Literal[5, 8], "8: DOP853, 5: Dormand-Prince 5(4)"),
    "growth_window": Option(8, Annotated[int, Field(ge=2)], "doublings of t over which power-law escape is fitted"),
    "growth_t_min": Option(100.0, Annotated[float, Field(ge=0)], "flow time before power-law escape may be declared"),
    "growth_min_rate": Option(0.02, POSITIVE, "smallest exponent p of |theta| ~ t^p called escape"),
    "sliding": Option("follow", Literal["follow", "stop"],
                      "on a Filippov sliding mode: follow it (minimal-norm Clarke velocity) "
                      "or stop with status sliding"),
    "stiff_after": Option(100, Annotated[int, Field(ge=0)], "steps before a stability-limited instance may "
                          "switch to the Rosenbrock tail integrator (0: never)"),
    "stiff_method": Option("rodas5p", Literal["rodas5p", "rodas5", "rodas3"],
                           "Rosenbrock method of the stiff tail: rodas5p (order 5, no order reduction on "
                           "singularly perturbed tails), rodas5 (order 5) or rodas3 (order 3)"),
    "threads": Option(1, Annotated[int, Field(ge=0)], "torch intra-op threads during the solve (0: leave as is)"),
    "branches": Option(3, Annotated[int, Field(ge=0)], "repelling releases per instance followed both ways "
                       "(the other side in a branch of the solve); a limit that depends on the branch, or a "
                       "release left unchecked, makes the instance ambiguous"),
}

#: the default of every option, as the solve function's signature takes them
DEFAULTS: dict[str, Any] = {k: o.default for k, o in OPTIONS.items()}


def tighten(options: dict[str, Any]) -> dict[str, Any]:
    """Settings of a re-solve with a smaller error: rtol, atol and drift_tol divided by 100.

    Floors: rtol ≥ 1e-13 and atol ≥ 1e-15 (below them float64 round-off dominates the error
    estimate and steps shrink for nothing), drift_tol ≥ 1e-12 (the drift bound is ~‖r‖/σ and
    float64 residuals are not resolved much below 1e-13·|y|). The step budget is doubled.
    Options not given start from their declared defaults.
    """
    o = dict(options)

    def get(name: str) -> Any:
        return o.get(name, DEFAULTS[name])
    o["rtol"] = max(float(get("rtol")) / 100.0, 1e-13)
    o["atol"] = max(float(get("atol")) / 100.0, 1e-15)
    o["drift_tol"] = max(float(get("drift_tol")) / 100.0, 1e-12)
    o["max_steps"] = 2 * int(get("max_steps"))
    return o
