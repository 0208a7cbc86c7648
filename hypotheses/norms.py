"""Norm-type regularizers on raw θ: ℓ2, the ℓp family (p ∈ [1, ∞]) and the distance to θ0.

All take θ [B, P] and return [B]. ``dist_to_init`` depends on θ0 (``depends_on="init"``): only
pairs that share θ0 may refute it; by Theorem 1 of the paper it is exact for strictly
monotone σ (linear, leaky ReLU) and refuted for ReLU (Theorem 3).
"""
from __future__ import annotations

import torch

import ibtest


def l2_norm(theta: torch.Tensor, ctx: ibtest.HypothesisContext) -> torch.Tensor:
    return torch.linalg.vector_norm(theta, ord=2, dim=-1)


def lp_norm(theta: torch.Tensor, ctx: ibtest.HypothesisContext, p: float) -> torch.Tensor:
    """‖θ‖_p computed as m·‖θ/m‖_p with m = max|θ_i| (a constant for autograd): |θ_i|^p would
    under- or overflow float64 long before ‖θ‖_p does (p = 3 at |θ| ~ 1e±150)."""
    if not p >= 1:
        raise ValueError(f"lp_norm needs p >= 1, got {p}")
    m = theta.detach().abs().amax(-1, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    return m.squeeze(-1) * torch.linalg.vector_norm(theta / m, ord=float(p), dim=-1)


def dist_to_init(theta: torch.Tensor, ctx: ibtest.InitContext) -> torch.Tensor:
    return torch.linalg.vector_norm(theta - ctx.init, ord=2, dim=-1)


def _cp_norm(x, p: float):
    import cvxpy as cp

    p = float(p)
    if p == 1:
        return cp.norm1(x)
    if p == float("inf"):
        return cp.norm_inf(x)
    return cp.pnorm(x, p)  # type: ignore[arg-type]  # cvxpy's stub says int | str; a float p is documented


def l2_norm_cvx(x, ctx: ibtest.CvxContext):
    return _cp_norm(x, 2)


def lp_norm_cvx(x, ctx: ibtest.CvxContext, p: float):
    return _cp_norm(x, p)


def dist_to_init_cvx(x, ctx: ibtest.CvxContext):
    return _cp_norm(x - ctx.init, 2)


@ibtest.hookimpl
def ibtest_hypotheses():
    return [
        ibtest.Hypothesis(name="l2_norm", fn=l2_norm, depends_on="params", convex=True, cvx=l2_norm_cvx,
                          optimum="half_sq_norm", doc="Euclidean norm |theta|_2"),
        ibtest.Hypothesis(name="lp_norm", fn=lp_norm, depends_on="params", params={"p": 2.0},
                          convex=True, cvx=lp_norm_cvx,
                          doc="l_p norm |theta|_p, a family over p in [1, inf]"),
        ibtest.Hypothesis(name="dist_to_init", fn=dist_to_init, depends_on="init",
                          convex=True, cvx=dist_to_init_cvx,
                          doc="distance to the initialization |theta - theta0|_2"),
    ]
