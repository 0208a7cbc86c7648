"""What "fits" means: the fit tolerance, relative to the problem's own scale.

A study's ``fit_tol`` is *relative*. An instance (D, θ0) with D = (X, y, mask) has the loss scale

    s(D, θ0) = max(½ Σ_i mask_i y_i²,  L(θ0; D))                                  [B]

(the square loss of predicting 0, or of the initial model when that is larger), and a point θ
fits D when

    L(θ; D) ≤ fit_tol · s(D, θ0).

Scaling y by α (and θ with it, for a 1-homogeneous model) scales both sides by α², so the same
study at α = 1e-12 or 1e12 gets the same statuses. s = 0 only when y = 0 and f_θ0 = 0 on D: then
θ0 itself has zero loss, and only an exact zero loss counts as a fit.

Every place that decides a fit (the solvers' ``converged`` status, the engine's cross-fit of a
pair, the re-check of a witness, ``verify``) calls :func:`fit_threshold` or :func:`fits`.
"""
from __future__ import annotations

import torch

from ibtest.plugin.specs import ModelBase

Tensor = torch.Tensor

#: the tool's default relative fit tolerance (a certificate may only be stricter)
DEFAULT_FIT_TOL = 1e-20


def loss_scale(model: ModelBase, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor) -> Tensor:
    """s(D, θ0) = max(½ Σ mask·y², L(θ0; D)) per instance, [B] float64."""
    with torch.no_grad():
        zero = 0.5 * (mask * y * y).sum(-1).to(torch.float64)
        init = model.loss(theta0, X, y, mask).to(torch.float64)
    return torch.maximum(zero, torch.nan_to_num(init, nan=0.0, posinf=0.0))


def fit_threshold(model: ModelBase, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor,
                  fit_tol: float) -> Tensor:
    """The absolute loss at or below which θ fits (X, y, mask): fit_tol · s(D, θ0), [B]."""
    return float(fit_tol) * loss_scale(model, X, y, mask, theta0)


def fits(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor,
         fit_tol: float) -> Tensor:
    """Whether each θ [B, P] fits its dataset, judged on the scale of (D, θ0): bool [B].

    A non-finite loss never fits.
    """
    with torch.no_grad():
        loss = model.loss(theta, X, y, mask).to(torch.float64)
    return torch.isfinite(loss) & (loss <= fit_threshold(model, X, y, mask, theta0, fit_tol))


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
