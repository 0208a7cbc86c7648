"""What "fits" means: the fit tolerance, relative to the problem's own scale.

A study's ``fit_tol`` is *relative*. An instance (D, θ0) with D = (X, y, mask) has the loss scale

    s(D, θ0) = max(½ Σ_i mask_i y_i²,  L(θ0; D))                                  [B]

(the square loss of predicting 0, or of the initial model when that is larger), and a point θ
fits D when

    L(θ; D) ≤ fit_tol · s(D, θ0).

Scaling y by α (and θ with it, for a 1-homogeneous model) scales both sides by α², so the same
study at α = 1e-12 or 1e12 gets the same statuses. s = 0 only when y = 0 and f_θ0 = 0 on D: then
θ0 itself has zero loss, and only an exact zero loss counts as a fit.

A loss threshold cannot see an ill-conditioned direction (X = [[1, 0], [1, 1e-10]]: a point
at distance 1 from Z(D) has loss 5e-21), so a fit also needs θ near Z(D):

    dist(θ, Z(D)) ≤ dist_tol · max(‖x‖, ‖x0‖)

with x = θ, or the model's predictor where its zero set lives there, and the distance estimated
by one Gauss–Newton step ‖J⁺ r(x)‖ (exact on the affine hull of a model's polyhedral Z(D); J the
Jacobian of the residual, by autograd, for any other model). :func:`distance_to_zero_set` gives
it; the judge adds it to each side's measured error, so a point near but not on Z(D) widens its
margin by exactly what the distance could change in R.

Every place that decides a fit (the solvers' ``converged`` status, the engine's re-check of every
converged triple and its cross-fit of a pair, the re-check of a witness, ``verify``, ``shrink``)
calls :func:`fit_threshold`, :func:`check` or :func:`fits`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ibtest.plugin.specs import ModelBase

Tensor = torch.Tensor

#: the largest distance to Z(D), relative to max(‖x‖, ‖x0‖), at which a point still fits D
DEFAULT_DIST_TOL = 1e-6
#: relative cut-off of the singular values of an autograd Jacobian in the Gauss–Newton distance
GN_RTOL = float(torch.finfo(torch.float64).eps) ** 0.5


def scale_of(y: Tensor, mask: Tensor, init_loss: Tensor) -> Tensor:
    """s = max(½ Σ mask·y², L(θ0; D)) [B] float64 from the labels y [B, n], mask [B, n] and the
    initial loss [B] (a non-finite initial loss counts as 0). The one definition of the loss scale:
    :func:`loss_scale` and the solvers that compute L(θ0) themselves (``exact``) call it."""
    zero = 0.5 * (mask * y * y).sum(-1).to(torch.float64)
    return torch.maximum(zero, torch.nan_to_num(init_loss.to(torch.float64), nan=0.0, posinf=0.0))


def loss_scale(model: ModelBase, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor) -> Tensor:
    """s(D, θ0) = max(½ Σ mask·y², L(θ0; D)) per instance, [B] float64."""
    with torch.no_grad():
        init = model.loss(theta0.clone(), X.clone(), y.clone(), mask.clone())
        return scale_of(y, mask, init)


def fit_threshold(model: ModelBase, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor,
                  fit_tol: float) -> Tensor:
    """The absolute loss at or below which θ fits (X, y, mask): fit_tol · s(D, θ0), [B]."""
    return float(fit_tol) * loss_scale(model, X, y, mask, theta0)


def fits(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor,
         fit_tol: float, dist_tol: float = DEFAULT_DIST_TOL) -> Tensor:
    """Whether each θ [B, P] fits its dataset (loss and distance to Z(D), see the module
    docstring): bool [B]. A non-finite loss never fits."""
    return check(model, theta, X, y, mask, theta0, fit_tol, dist_tol).ok


@dataclass(frozen=True)
class FitCheck:
    """The fit rule at B points: loss [B], the loss threshold [B], the distance to Z(D) [B]
    (NaN where the loss test failed and the distance was not computed), the distance threshold
    [B] and the verdict ``ok`` [B]."""

    loss: Tensor
    threshold: Tensor
    dist: Tensor
    dist_threshold: Tensor
    ok: Tensor


def check(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor,
          fit_tol: float, dist_tol: float = DEFAULT_DIST_TOL) -> FitCheck:
    """The fit rule with its numbers (see the module docstring). The distance is computed only
    where the loss test passes."""
    with torch.no_grad():  # the model gets copies: it cannot change the caller's tensors
        loss = model.loss(theta.clone(), X.clone(), y.clone(), mask.clone()).to(torch.float64)
    thr = fit_threshold(model, X, y, mask, theta0, fit_tol)
    ok = torch.isfinite(loss) & (loss <= thr)
    dist = torch.full_like(loss, float("nan"))
    dthr = torch.zeros_like(loss)
    rows = ok.nonzero().flatten()
    if rows.numel():
        d, scale = distance_to_zero_set(model, theta[rows], X[rows], y[rows], mask[rows], theta0[rows])
        dist[rows] = d
        dthr[rows] = float(dist_tol) * scale
        ok[rows] = torch.isfinite(d) & (d <= dthr[rows])
    return FitCheck(loss, thr, dist, dthr, ok)


def distance_to_zero_set(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor,
                         theta0: Tensor) -> tuple[Tensor, Tensor]:
    """(‖J⁺ r(x)‖, max(‖x‖, ‖x0‖)) per row [B]: the first-order distance of x to Z(D) and the scale
    it is measured against, in the variable the model's Z(D) lives in (θ, or the predictor of a
    model whose ``zero_set`` is in the predictor). Exact on the affine hull of a polyhedral Z(D)
    (its equality rows; a one-sided row's violation is in the loss); Gauss–Newton on the residual
    r(θ) = mask ∘ (f_θ(X) − y) otherwise."""
    zs = getattr(model, "zero_set", None)
    poly = zs(X, y, mask) if zs is not None else None
    with torch.no_grad():
        if poly is not None:
            on_pred = poly.on == "predictor"
            x = model.predictor(theta) if on_pred else theta
            x0 = model.predictor(theta0) if on_pred else theta0
            A, b = poly.A_eq.to(x.dtype), poly.b_eq.to(x.dtype)
            if A.shape[1] == 0:
                return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device), _scale(x, x0)
            r = (A * x[:, None, :]).sum(-1) - b
            step = (torch.linalg.pinv(A) * r[:, None, :]).sum(-1)
            return step.norm(dim=-1).to(torch.float64), _scale(x, x0)
    r, J = residual_jacobian(model, theta, X, y, mask)
    with torch.no_grad():
        # singular values below √eps·σ_max are not resolved by an autograd Jacobian at a point that
        # is itself only accurate to the solver's tolerance: treated as 0 (no false "far away")
        step = (torch.linalg.pinv(J, rtol=GN_RTOL) * r[:, None, :]).sum(-1)
    return step.norm(dim=-1).to(torch.float64), _scale(theta, theta0)


def _scale(x: Tensor, x0: Tensor) -> Tensor:
    return torch.maximum(x.norm(dim=-1), x0.norm(dim=-1)).to(torch.float64)


def residual_jacobian(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(r [B, n], J = ∂r/∂θ [B, n, P]) by autograd, one backward pass per data point (batched)."""
    with torch.enable_grad():
        th = theta.detach().clone().requires_grad_(True)
        r = model.residual(th, X, y, mask)
        rows = []
        for i in range(r.shape[1]):
            if not r.requires_grad:
                rows.append(torch.zeros_like(theta))
                continue
            (g,) = torch.autograd.grad(r[:, i].sum(), th, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(theta) if g is None else g)
    J = torch.stack(rows, 1) if rows else theta.new_zeros(theta.shape[0], 0, theta.shape[1])
    return r.detach(), J.detach()


#: float64 keeps ~1e±308: the loss squares |y| and the squared gradient norm squares |X|·|y|, so
#: non-zero magnitudes of X, y, θ0 and of the product max|X|·max|y| must lie in [SAFE_LO, SAFE_HI]
SAFE_LO, SAFE_HI = 1e-150, 1e150


def range_warning(X: Tensor, y: Tensor, theta0: Tensor) -> str | None:
    """A sentence when the study's data or inits are at a scale float64 cannot square (non-zero
    magnitudes of X, y, θ0, or max|X|·max|y|, outside [1e-150, 1e150]); None when it is safe."""
    parts, top = [], {}
    for name, v in (("X", X), ("y", y), ("theta0", theta0)):
        a = v.detach().abs()
        a = a[torch.isfinite(a) & (a > 0)]
        if a.numel() == 0:
            continue
        lo, hi = float(a.min()), float(a.max())
        top[name] = hi
        if lo < SAFE_LO or hi > SAFE_HI:
            parts.append(f"{name} holds values from {lo:.3g} to {hi:.3g}")
    if "X" in top and "y" in top and not SAFE_LO <= top["X"] * top["y"] <= SAFE_HI:
        parts.append(f"max|X|·max|y| = {top['X'] * top['y']:.3g}")
    if not parts:
        return None
    return ("scale: " + "; ".join(parts) + f" (outside [{SAFE_LO:g}, {SAFE_HI:g}]): the loss squares y and the "
            "squared gradient norm squares |X|·|y|, which float64 cannot hold at this scale; rescale the "
            "data: the verdicts of this study are not meaningful in float64")
