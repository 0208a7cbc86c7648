"""Theorem 8 of Vardi & Shamir: an approximate characterization for non-decreasing σ.

If GF on a single neuron reaches zero loss, ‖w(∞) − w(0)‖ ≤ 2‖w* − w(0)‖ with w* the zero-loss
point closest to w(0). ``theorem8_ratio`` is the ratio ‖w∞ − w0‖ / min over Z(D) of ‖w − w0‖,
a ``bound`` hypothesis (claimed ≤ 2 on every converged triple).

For a piecewise-linear neuron (σ(z) = pos·z, z > 0; neg·z, z < 0) Z(D) is a polyhedron:
y_i ≠ 0 (or neg > 0) gives the equality ⟨w, x_i⟩ = σ⁻¹(y_i); for a ReLU (neg = 0) a zero label
gives the half-space ⟨w, x_i⟩ ≤ 0 and a negative label makes Z(D) empty. The distance from w0 to
it is solved exactly by enumerating active sets: for every subset S of the half-spaces, project
w0 onto the affine set {equalities, ⟨w, x_i⟩ = 0 for i ∈ S}; among the candidates that are
consistent and feasible the nearest one is the projection (the projection lies on the affine hull
of its own active face). 2^n candidates per instance, all batched.
"""
from __future__ import annotations

import itertools

import torch

import ibtest


def distance_to_zero_loss_set(w0: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                              pos: float = 1.0, neg: float = 0.0, tol: float = 1e-10) -> torch.Tensor:
    """min over Z(D) of ‖w − w0‖ for a piecewise-linear neuron; [B] (inf where Z(D) is empty)."""
    B, n, d = X.shape
    real = mask > 0
    if neg == 0.0:
        eq = real & (y > 0)
        ineq = real & (y == 0)
        empty = (real & (y < 0)).any(-1)
        target = torch.where(eq, y / pos, torch.zeros_like(y))
    else:
        eq, ineq = real, torch.zeros_like(real)
        empty = torch.zeros(B, dtype=torch.bool)
        target = torch.where(y > 0, y / pos, y / neg)
    subsets = torch.tensor(list(itertools.product([False, True], repeat=n)), dtype=torch.bool)  # [S, n]
    active = eq[None] | (subsets[:, None, :] & ineq[None])  # [S, B, n]
    useless = (subsets[:, None, :] & ~ineq[None]).any(-1)  # subset names a non-inequality row
    A = X[None] * active[..., None]  # [S, B, n, d]
    b = target[None] * active
    r = torch.einsum("sbnd,bd->sbn", A, w0) - b
    w = w0[None] - torch.einsum("sbdn,sbn->sbd", torch.linalg.pinv(A), r)
    scale = 1.0 + X.norm(dim=-1)[None] * (w0.norm(dim=-1)[None, :, None] + 1.0) + y.abs()[None]
    consistent = ((torch.einsum("sbnd,sbd->sbn", A, w) - b).abs() <= tol * scale).all(-1)
    feasible = ((torch.einsum("bnd,sbd->sbn", X, w) * ineq[None]) <= tol * scale).all(-1)
    dist = (w - w0[None]).norm(dim=-1)
    dist = torch.where(consistent & feasible & ~useless, dist, torch.full_like(dist, float("inf")))
    best = dist.min(0).values
    return torch.where(empty, torch.full_like(best, float("inf")), best)


def theorem8_ratio(theta: torch.Tensor, ctx: ibtest.DataContext) -> torch.Tensor:
    pw = getattr(ctx.model, "piecewise", None)
    if pw is None:
        raise TypeError("theorem8_ratio needs a single piecewise-linear neuron (relu_neuron, leaky_relu_neuron, linear)")
    dist = distance_to_zero_loss_set(ctx.init, ctx.X, ctx.y, ctx.mask, pw.pos, pw.neg)
    moved = (theta - ctx.init).norm(dim=-1)
    tiny = 1e-12 * (1.0 + ctx.init.norm(dim=-1))
    return torch.where(dist > tiny, moved / dist.clamp_min(1e-300), torch.where(moved > tiny, torch.inf, 1.0) + 0 * moved)


@ibtest.hookimpl
def ibtest_hypotheses():
    return [
        ibtest.Hypothesis(
            name="theorem8_ratio", fn=theorem8_ratio, kind="bound", depends_on="data", params={"bound": 2.0},
            doc="|w_inf - w0| / min over Z(D) of |w - w0| <= bound (Theorem 8: 2) on every converged triple",
        )
    ]
