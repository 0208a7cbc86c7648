"""The drift estimate of the ``adaptive`` solver: how far θ(t) still moves, near a zero-loss point.

For gradient flow ‖θ(t) − θ(∞)‖ ≤ ∫_t^∞ ‖∇L(θ(s))‖ ds. Near a zero-loss point write the residual
r = f_θ(X) − y and J = ∂f/∂θ (n×P); then ∇L = Jᵀr, dr/dt = −JJᵀr, and the remaining motion of the
*linearized* flow is −J⁺r (the minimum-norm Gauss–Newton correction), whose norm is
≤ ‖r‖/σ⁺_min(J). We report

    drift = safety · ‖b‖ / σ⁺_min(Ĝ)

where Ĝ has the unit rows ĝ_i = g_i/‖g_i‖ of the per-point gradients g_i = r_i ∇f_i and
b_i = |r_i|/‖∇f_i‖ (Ĝδ = b is Jδ = r with rows rescaled, so ‖J⁺r‖ ≤ ‖b‖/σ⁺_min(Ĝ)).

This is an **estimate**, not a bound: it bounds the motion of the linearized flow, and the
factor ``safety`` covers the non-linear terms only heuristically (O(‖r‖) relative at a fitted
point). Independent tight solves exceeded it on a few percent of instances (issue 12). Verdicts
therefore re-measure the solver error by a tighter re-solve; ``info["drift_estimate"]`` is read
only when that re-check is off.
"""
from __future__ import annotations

import math

import torch

from ibtest.plugin.specs import ModelBase

Tensor = torch.Tensor


def drift_estimate(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor,
                rcond: float = 1e-10, safety: float = 2.0, return_step: bool = False):
    """2·‖b‖/σ⁺_min(Ĝ): an estimate of the remaining motion ‖θ(t) − θ(∞)‖ near a zero-loss point.

    See the module docstring. Uses only ``model.grad`` and ``model.loss`` on one-point masks.
    Returns [B] (0 where every residual is exactly 0); with ``return_step`` also the
    linearized remaining motion J⁺r [B, P] (θ(∞) ≈ θ − J⁺r).
    """
    B, n, d = X.shape
    P = theta.shape[1]
    eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
    th = theta.unsqueeze(1).expand(B, n, P).reshape(B * n, P)
    Xr = X.unsqueeze(1).expand(B, n, n, d).reshape(B * n, n, d)
    yr = y.unsqueeze(1).expand(B, n, n).reshape(B * n, n)
    mr = (mask.unsqueeze(1) * eye).reshape(B * n, n)
    g = model.grad(th, Xr, yr, mr).reshape(B, n, P)  # g_i = r_i ∇f_i
    ell = model.loss(th, Xr, yr, mr).reshape(B, n)  # ½ r_i²
    gn = g.norm(dim=-1)
    live = gn > 0
    safe = torch.where(live, gn, torch.ones_like(gn))
    G = torch.where(live.unsqueeze(-1), g / safe.unsqueeze(-1), torch.zeros_like(g))
    b = torch.where(live, 2.0 * ell / safe, torch.zeros_like(ell))
    U, sv, Vh = torch.linalg.svd(G, full_matrices=False)  # G = U diag(sv) Vh
    smax = sv[:, :1]
    nz = sv > rcond * smax.clamp_min(1e-300)
    smin = torch.where(nz, sv, torch.full_like(sv, math.inf)).min(dim=-1).values
    bn = b.norm(dim=-1)
    out = torch.where(bn > 0, safety * bn / smin, torch.zeros_like(bn))
    out = torch.where(torch.isfinite(out), out, torch.full_like(out, math.inf))
    if not return_step:
        return out
    inv = torch.where(nz, 1.0 / sv.clamp_min(1e-300), torch.zeros_like(sv))
    delta = torch.einsum("bkp,bk->bp", Vh, inv * torch.einsum("bnk,bn->bk", U, b))  # J⁺r
    # Σ‖∇f_i‖² = trace(JJᵀ) ≥ λ_max of the Gauss–Newton Hessian (‖∇f_i‖ = ‖g_i‖/|r_i|)
    rj = torch.where(live, gn * gn / (2.0 * ell).clamp_min(1e-300), torch.zeros_like(gn))
    return out, delta, rj.sum(-1)

