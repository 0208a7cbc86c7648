"""Plain gradient descent θ_{k+1} = θ_k − η ∇L(θ_k): the naive reference, not gradient flow.

Batched over instances; an instance stops when its loss is ≤ fit_tol (converged), its gradient
norm is ≤ grad_tol with loss above fit_tol (stalled), θ becomes non-finite or ‖θ‖ > div_norm
(diverged), or after ``steps`` steps (budget). With step η the limit differs from the GF limit
by O(η) (and by much more when a switch happens within one step): use it to study GD, never
as a reference for GF.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from ibtest.base import status as st
from ibtest.plugin.specs import DEFAULT_FIT_TOL, ModelBase, Option, Solver, SolveResult
from ibtest.solve.fit import fit_threshold

#: the options of ``gd``, declared once (the signature and :func:`tighten_gd` read them)
OPTIONS: dict[str, Option] = {
    "lr": Option(1e-2, Annotated[float, Field(gt=0)], "step size eta"),
    "steps": Option(100_000, Annotated[int, Field(ge=1)], "step budget"),
    "grad_tol": Option(1e-14, float, "gradient norm below which a positive-loss instance has stalled"),
    "div_norm": Option(1e8, float, "parameter norm above which an instance has diverged"),
}
DEFAULTS = {k: o.default for k, o in OPTIONS.items()}


def solve_gd(
    model: ModelBase,
    X: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    theta0: torch.Tensor,
    *,
    lr: float = DEFAULTS["lr"],
    steps: int = DEFAULTS["steps"],
    fit_tol: float = DEFAULT_FIT_TOL,
    grad_tol: float = DEFAULTS["grad_tol"],
    div_norm: float = DEFAULTS["div_norm"],
    check_every: int = 50,
) -> SolveResult:
    """Run GD on all B instances at once; finished instances leave the working set."""
    B = theta0.shape[0]
    theta = theta0.clone()
    dev = theta0.device
    status = torch.full((B,), st.BUDGET, dtype=torch.int64, device=dev)
    done_steps = torch.zeros(B, dtype=torch.int64, device=dev)
    active = torch.arange(B, device=dev)
    fit_abs = fit_threshold(model, X, y, mask, theta0, fit_tol)  # fit_tol is relative (ibtest.solve.fit)
    k = 0
    while k < steps and active.numel():
        n = min(check_every, steps - k)
        th, Xa, ya, ma = theta[active], X[active], y[active], mask[active]
        for _ in range(n):
            th = th - lr * model.grad(th, Xa, ya, ma)
        k += n
        theta[active] = th
        done_steps[active] = k
        loss = model.loss(th, Xa, ya, ma)
        g = model.grad(th, Xa, ya, ma).norm(dim=-1)
        finite = torch.isfinite(th).all(-1) & torch.isfinite(loss)
        diverged = ~finite | (th.norm(dim=-1) > div_norm)
        conv = finite & (loss <= fit_abs[active])
        stalled = finite & ~conv & (g <= grad_tol)
        status[active[diverged]] = st.DIVERGED
        status[active[conv & ~diverged]] = st.CONVERGED
        status[active[stalled & ~diverged]] = st.STALLED
        active = active[~(diverged | conv | stalled)]
    loss = model.loss(theta, X, y, mask)
    return SolveResult(theta, status, loss, {"steps": done_steps, "t": done_steps * lr})


def tighten_gd(options: dict) -> dict:
    """A tenth of the step size, ten times the steps (options not given start from their defaults)."""
    out = dict(options)
    out["lr"] = float(options.get("lr", DEFAULTS["lr"])) / 10
    out["steps"] = int(options.get("steps", DEFAULTS["steps"])) * 10
    return out


SPEC = Solver(
    name="gd",
    solve=solve_gd,
    doc="plain gradient descent with a step size and a step budget (a baseline, not GF)",
    options=OPTIONS,
    tighten=tighten_gd,
)
