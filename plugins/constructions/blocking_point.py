"""The paper's construction: add a zero-label point that θ1 fits but that the path crosses.

For a triple (D1, θ0, θ1) of a model with one hidden unit (``first_layer`` gives w [1, d]): let
w1 be the unit's final weights and w_e its weights a short way along the flow (θ0 − τ∇L(θ0)).
With ŵ = w1/‖w1‖ and e the part of w_e orthogonal to ŵ, the new point is

    x = γ · u · (ê − δ ŵ + f),   y = 0,

where f is a unit vector orthogonal to the data, w_e and w1 (when d leaves room; this is the
paper's third coordinate) and u the data's own length unit (:func:`data_unit`, so the same
data at any scale gets the same construction). Then ⟨x, w1⟩ = −γδ‖w1‖ ≤ 0, so θ1 still fits D2 = D1 ∪ {(x, 0)},
while ⟨x, w_e⟩ > 0: the point is active early on and bends the path. For σ without a dead zone
(leaky ReLU, linear) δ = 0 so that σ(⟨x, w1⟩) = 0 exactly. Paper, Theorem 3: x3 = (0, γ, γ).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

import ibtest
from ibtest import Option


def data_unit(X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The length unit of each dataset: the power of two nearest to max_i ‖x_i‖ over its real points
    ([k]; 1 for an all-zero dataset). A power of two, so rescaling the data by 2^j rescales what a
    construction adds by exactly 2^j."""
    xn = (X * mask.unsqueeze(-1)).norm(dim=-1).amax(-1)
    ok = torch.isfinite(xn) & (xn > 0)
    safe = torch.where(ok, xn, torch.ones_like(xn))
    return torch.where(ok, torch.exp2(torch.round(torch.log2(safe))), torch.ones_like(xn))


def _free_direction(X: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
    """A unit vector orthogonal to the rows of X [k, n, d] and to ``extra`` ([k, d] each); 0 if none."""
    k, n, d = X.shape
    A = torch.cat([X] + [e[:, None, :] for e in extra], dim=1)  # [k, n+len(extra), d]
    # unit rows: the span does not change, and rows on different scales (data ~1e-60 next to
    # weights ~1) no longer fool the rank test below
    A = A / A.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    # the right-singular vector of the smallest singular value spans the orthogonal complement
    _, S, Vh = torch.linalg.svd(A, full_matrices=True)
    f = Vh[:, -1, :]
    rank_deficient = torch.ones(k, dtype=torch.bool)
    if A.shape[1] >= d:
        smin = S[:, d - 1] if S.shape[1] >= d else torch.zeros(k, dtype=X.dtype)
        rank_deficient = smin <= 1e-10 * S[:, 0].clamp_min(1e-300)
    return torch.where(rank_deficient[:, None], f, torch.zeros_like(f))


def blocking_point(model: ibtest.ModelBase, triples: ibtest.TripleBatch, rng: torch.Generator,
                   scales: Sequence[float] = (1.0, 2.0, 5.0), delta: float = 0.1,
                   free_direction: bool = True, early: float = 1e-3) -> ibtest.Partners | None:
    W1 = model.first_layer(triples.theta)
    if W1 is None or W1.shape[1] != 1:
        return None  # needs exactly one hidden unit
    th0 = triples.theta0
    g0 = model.grad(th0, triples.X, triples.y, triples.mask)
    unit = data_unit(triples.X, triples.mask)
    size = torch.maximum(triples.theta.norm(dim=-1), th0.norm(dim=-1))
    tau = early * size / g0.norm(dim=-1).clamp_min(1e-300)
    W_early = model.first_layer(th0 - tau[:, None] * g0)
    assert W_early is not None  # the model has a first layer (checked on θ above)
    We = W_early[:, 0]
    w1 = W1[:, 0]
    what = w1 / w1.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    along = (We * what).sum(-1)
    e = We - along[:, None] * what
    enorm = e.norm(dim=-1)
    ok = (enorm > 1e-8 * We.norm(dim=-1).clamp_min(1e-300)) & (w1.norm(dim=-1) > 0)
    ehat = e / enorm.clamp_min(1e-300)[:, None]
    pw = getattr(model, "piecewise", None)
    dead_zone = pw is None or pw.neg == 0.0
    dl = torch.full_like(enorm, float(delta) if dead_zone else 0.0)
    # keep <x, w_e> > 0: delta * along < |e|
    dl = torch.minimum(dl, 0.5 * enorm / along.abs().clamp_min(1e-300))
    x = ehat - dl[:, None] * what
    if free_direction:
        x = x + _free_direction(triples.X, [w1, We])
    idx = ok.nonzero().flatten()
    if idx.numel() == 0:
        return None
    Xs, ys, ms, src, labels = [], [], [], [], []
    for g in scales:
        Xn = torch.cat([triples.X[idx], (g * unit[idx, None] * x[idx])[:, None, :]], dim=1)
        yn = torch.cat([triples.y[idx], torch.zeros(idx.numel(), 1, dtype=triples.y.dtype)], dim=1)
        mn = torch.cat([triples.mask[idx], torch.ones(idx.numel(), 1, dtype=triples.mask.dtype)], dim=1)
        Xs.append(Xn)
        ys.append(yn)
        ms.append(mn)
        src.append(idx)
        labels += [f"{triples.labels[i]} + blocking point (scale {g:g})" for i in idx.tolist()]
    return ibtest.Partners(torch.cat(Xs), torch.cat(ys), torch.cat(ms), torch.cat(src), labels)


def size(sources: int, n: int, scales: Sequence[float] = (1.0, 2.0, 5.0), **_: object) -> tuple[int, int]:
    """One dataset of n + 1 points per triple and scale."""
    return len(scales) * sources, n + 1


@ibtest.hookimpl
def ibtest_constructions():
    return [
        ibtest.Construction(
            name="blocking_point",
            build=blocking_point,
            size=size,
            doc="add a zero-label point inactive at theta1 but active early on the path (the paper's x3)",
            options={
                "scales": Option([1.0, 2.0, 5.0], list[float], "scales gamma of the new point, in units of the data's "
                                 "largest |x_i| (rounded to a power of two)"),
                "delta": Option(0.1, float, "how far the point is inside the inactive side at theta1"),
                "free_direction": Option(True, bool, "add a direction orthogonal to the data (the paper's 3rd coordinate)"),
                "early": Option(1e-3, float,
                                "step along the initial flow that defines 'early', relative to max(|theta1|, |theta0|)"),
            },
        )
    ]
