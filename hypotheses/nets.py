"""Hypotheses for networks: balancedness (an invariant), path norm, Frobenius norm, nuclear norm,
norms of the end-to-end predictor, and Woodworth et al.'s potential Q_α for diagonal nets.

Predictor hypotheses (``on="predictor"``) see the model's end-to-end predictor: β = u∘u − v∘v
for a diagonal net, u = v·w for one hidden neuron, the product matrix (flattened) for a deep
factorization.
"""
from __future__ import annotations

import math

import torch

import ibtest


def _need(model, method: str):
    fn = getattr(model, method, None)
    if fn is None:
        raise TypeError(f"model {type(model).__name__} does not define {method}()")
    return fn


def balancedness(theta: torch.Tensor, ctx: ibtest.HypothesisContext) -> torch.Tensor:
    """C_j = v_j² − ‖w_j‖² per hidden unit [B, m] (Du, Hu & Lee 2018: conserved by GF)."""
    return _need(ctx.model, "balancedness")(theta)


def path_norm(theta: torch.Tensor, ctx: ibtest.HypothesisContext) -> torch.Tensor:
    """Σ_j |v_j| ‖w_j‖ for f(x) = Σ_j v_j σ(⟨w_j, x⟩)."""
    W, v = _need(ctx.model, "split")(theta)
    return (v.abs() * W.norm(dim=-1)).sum(-1)


def variation_norm(u: torch.Tensor, ctx: ibtest.HypothesisContext) -> torch.Tensor:
    """Σ_j ‖u_j‖ of the predictor u = (v_1·w_1, …, v_m·w_m) [B, m·d] of a one-hidden-layer ReLU net:
    its variation (path) norm Σ_j |v_j|‖w_j‖, unchanged when a neuron is rescaled
    (w_j, v_j) → (c·w_j, v_j/c)."""
    m = getattr(ctx.model, "m", None)
    if not isinstance(m, int) or u.shape[-1] % m:
        raise TypeError(f"variation_norm needs a one-hidden-layer net (a model with width m), "
                        f"got {type(ctx.model).__name__}")
    return u.reshape(u.shape[0], m, -1).norm(dim=-1).sum(-1)


def frobenius(theta: torch.Tensor, ctx: ibtest.HypothesisContext) -> torch.Tensor:
    """Σ over layers of ‖W_l‖_F², i.e. ‖θ‖² (weight decay)."""
    return (theta * theta).sum(-1)


def predictor_norm(beta: torch.Tensor, ctx: ibtest.HypothesisContext, p: float) -> torch.Tensor:
    """‖β‖_p of the end-to-end predictor (ℓ2 of u = v·w, ℓ1 of a diagonal net's β, ...)."""
    return torch.linalg.vector_norm(beta, ord=float(p), dim=-1)


def l1_norm(beta: torch.Tensor, ctx: ibtest.HypothesisContext) -> torch.Tensor:
    """‖β‖₁ of the end-to-end predictor (the α → 0 limit of Q_α)."""
    return beta.abs().sum(-1)


def nuclear_norm(W: torch.Tensor, ctx: ibtest.HypothesisContext) -> torch.Tensor:
    """Sum of singular values of the end-to-end k×k matrix (predictor flattened, k² entries)."""
    k = math.isqrt(W.shape[-1])
    if k * k != W.shape[-1]:
        raise TypeError(f"nuclear_norm needs a square end-to-end matrix, got {W.shape[-1]} entries")
    return torch.linalg.matrix_norm(W.reshape(-1, k, k), ord="nuc")


def q(z: torch.Tensor) -> torch.Tensor:
    """q(z) = 2 − √(4 + z²) + z·arcsinh(z/2) (Woodworth et al., COLT 2020), evaluated without
    cancellation: 2 − √(4 + z²) = −z²/(2 + √(4 + z²)). (The textbook form loses about 8 digits at
    z ≈ 1e-4, i.e. at a large init scale α, which the judge then reads as noise.)"""
    zz = z * z
    return z * torch.asinh(z / 2) - zz / (2 + torch.sqrt(4 + zz))


def q_alpha(beta: torch.Tensor, ctx: ibtest.InitContext, alpha: float) -> torch.Tensor:
    """Q_α(β) = α² Σ_i q(β_i / α²) for β = u∘u − v∘v from u = v = α·1.

    ``alpha: 0`` (the default) reads α from the init: α = RMS of θ0's entries (= α for u = v = α·1).
    """
    if alpha > 0:
        a = torch.full(beta.shape[:1], float(alpha), dtype=beta.dtype)
    else:
        a = ctx.init.pow(2).mean(-1).sqrt()
    a2 = (a * a)[:, None]
    return (a2 * q(beta / a2)).sum(-1)


def _predictor_norm_cvx(x, ctx, p: float):
    from .norms import _cp_norm

    return _cp_norm(x, p)


def _l1_cvx(x, ctx):
    import cvxpy as cp

    return cp.norm1(x)


def _frobenius_cvx(x, ctx):
    import cvxpy as cp

    return cp.sum_squares(x)


@ibtest.hookimpl
def ibtest_hypotheses():
    return [
        ibtest.Hypothesis(name="balancedness", fn=balancedness, kind="invariant", atol=1e-9, rtol=1e-7,
                          doc="v_j^2 - |w_j|^2 per hidden unit is conserved (Du, Hu & Lee 2018)"),
        ibtest.Hypothesis(name="path_norm", fn=path_norm, optimum="path_norm",
                          doc="path norm sum_j |v_j| |w_j| of a one-hidden-layer net"),
        ibtest.Hypothesis(name="variation_norm", fn=variation_norm, on="predictor", optimum="path_norm",
                          doc="variation norm sum_j |v_j w_j| of a one-hidden-layer net's predictor (rescaling-"
                              "invariant; its minimum over Z(D) is certified by the convex program)"),
        ibtest.Hypothesis(name="frobenius", fn=frobenius, convex=True, cvx=_frobenius_cvx,
                          doc="sum of squared Frobenius norms of all layers (= |theta|^2)"),
        ibtest.Hypothesis(name="predictor_norm", fn=predictor_norm, on="predictor", params={"p": 2.0},
                          convex=True, cvx=_predictor_norm_cvx,
                          doc="l_p norm of the end-to-end predictor (u = v w, beta, the product matrix)"),
        ibtest.Hypothesis(name="l1_norm", fn=l1_norm, on="predictor", convex=True, cvx=_l1_cvx,
                          doc="l_1 norm of the end-to-end predictor beta"),
        ibtest.Hypothesis(name="nuclear_norm", fn=nuclear_norm, on="predictor", convex=True,
                          doc="nuclear norm of the end-to-end matrix of a matrix factorization"),
        ibtest.Hypothesis(name="q_alpha", fn=q_alpha, on="predictor", depends_on="init", params={"alpha": 0.0},
                          convex=True,
                          doc="Woodworth et al.'s Q_alpha(beta) for diagonal nets (alpha 0: read from the init)"),
    ]
