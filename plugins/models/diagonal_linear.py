"""Diagonal linear network: β = u∘u − v∘v, f(x) = ⟨β, x⟩ (Woodworth et al., COLT 2020).

θ = (u, v) ∈ R^{2d}; blocks ``u`` and ``v``; the predictor is β. From u = v = α·1 gradient flow
that reaches zero loss ends at argmin Q_α(β) s.t. Xβ = y with
Q_α(β) = α² Σ_i q(β_i/α²), q(z) = 2 − √(4 + z²) + z·asinh(z/2) (this scaling holds for this
parameterization: β_i(t) = 2α² sinh(−4 (Xᵀ∫r)_i) matches the KKT condition asinh(β/2α²) ∈ range(Xᵀ)).
"""
from __future__ import annotations

import torch

import ibtest


class DiagonalLinear(ibtest.ModelBase):
    def n_params(self, d: int) -> int:
        return 2 * d

    def blocks(self, d: int) -> dict[str, slice]:
        return {"u": slice(0, d), "v": slice(d, 2 * d)}

    def predictor(self, theta: torch.Tensor) -> torch.Tensor:
        d = theta.shape[-1] // 2
        u, v = theta[:, :d], theta[:, d:]
        return u * u - v * v

    def zero_set(self, X, y, mask):
        """Z(D) = {β : Xβ = y}, affine in the predictor (every β is u∘u − v∘v for some θ); padded
        points are zero rows."""
        m = (mask > 0).to(X.dtype)
        B, _, d = X.shape
        return ibtest.Polyhedron("predictor", X * m[..., None], y * m, X.new_zeros(B, 0, d), X.new_zeros(B, 0),
                                 torch.ones(B, dtype=torch.bool, device=X.device))

    def from_predictor(self, beta: torch.Tensor) -> torch.Tensor:
        """θ = (√β₊, √β₋): its predictor is β."""
        return torch.cat([beta.clamp_min(0).sqrt(), (-beta).clamp_min(0).sqrt()], dim=-1)

    def predict(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnd,bd->bn", X, self.predictor(theta))

    def grad(self, theta, X, y, mask):
        d = theta.shape[-1] // 2
        u, v = theta[:, :d], theta[:, d:]
        r = (torch.einsum("bnd,bd->bn", X, u * u - v * v) - y) * mask
        g = torch.einsum("bn,bnd->bd", r, X)  # ∇_β L
        return torch.cat([2.0 * u * g, -2.0 * v * g], dim=-1)


def diagonal_linear() -> DiagonalLinear:
    return DiagonalLinear()


@ibtest.hookimpl
def ibtest_models():
    return [
        ibtest.Model(
            name="diagonal_linear",
            factory=diagonal_linear,
            doc="diagonal linear net beta = u*u - v*v, f(x) = <beta, x>",
        )
    ]
