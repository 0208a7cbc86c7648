"""The zero-loss set Z(D) of a model on a dataset, as the witness search and the optimality
certificate need it.

Two descriptions:

* **exact polyhedral** (:class:`Polyhedron`), declared by the model through
  ``ModelBase.zero_set(X, y, mask)``: in the variable ``on`` ("theta": x = θ [B, P]; "predictor":
  x = the model's end-to-end predictor [B, Q]),

      Z(D) = {x : A_eq x = b_eq,  A_ub x ≤ b_ub}                      A_eq [B, m, Q], A_ub [B, k, Q]

  with padded points (mask 0) as all-zero rows (0 = 0 and 0 ≤ 0 hold for every x), and
  ``feasible`` [B] False where no x fits (a ReLU neuron with a negative label). A ReLU neuron
  fits a zero-label point iff ⟨w, x_i⟩ ≤ 0: one inequality row; a positive label gives
  ⟨w, x_i⟩ = y_i / pos, a negative label of a leaky neuron ⟨w, x_i⟩ = y_i / neg.
* **the default**, for a model that declares nothing: Z(D) = {θ : r(θ) = 0} with the residual
  r(θ) = mask ∘ (f_θ(X) − y) [B, n] (``ModelBase.residual``), all equalities, handled locally by
  Gauss–Newton projection θ ← θ − J⁺ r(θ) with J = ∂r/∂θ [B, n, P] (autograd).

Every point the search returns is re-checked with :func:`ibtest.solve.fit.fits`, so a description only
steers the search; it never decides a fit on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ibtest.plugin.specs import ModelBase

Tensor = torch.Tensor


@dataclass
class Polyhedron:
    """Z(D) = {x : A_eq x = b_eq, A_ub x ≤ b_ub} per instance (see the module docstring)."""

    on: Literal["theta", "predictor"]
    A_eq: Tensor  # [B, m, Q]
    b_eq: Tensor  # [B, m]
    A_ub: Tensor  # [B, k, Q] (k may be 0)
    b_ub: Tensor  # [B, k]
    feasible: Tensor  # [B] bool

    @property
    def affine(self) -> bool:
        """No inequality row is real (an affine set)."""
        return self.A_ub.shape[1] == 0 or not bool(self.A_ub.abs().sum() > 0)

    def take(self, idx: Tensor) -> Polyhedron:
        out = Polyhedron(self.on, self.A_eq[idx], self.b_eq[idx], self.A_ub[idx], self.b_ub[idx],
                         self.feasible[idx])
        if getattr(self, "_pinv", None) is not None:
            out._pinv = self._pinv[idx]
        return out

    def violation(self, x: Tensor) -> Tensor:
        """Largest constraint violation per row [B]: max(|A_eq x − b_eq|, (A_ub x − b_ub)₊)."""
        v = (_mv(self.A_eq, x) - self.b_eq).abs().amax(-1) \
            if self.A_eq.shape[1] else x.new_zeros(x.shape[0])
        if self.A_ub.shape[1]:
            v = torch.maximum(v, (_mv(self.A_ub, x) - self.b_ub).clamp_min(0).amax(-1))
        return v

    def project(self, x: Tensor, rounds: int = 3, active_tol: float = 0.0) -> Tensor:
        """A point of Z near x [B, Q]: the Euclidean projection onto the affine set of the
        equalities together with the inequality rows that x violates (or that are within
        ``active_tol`` of binding), repeated ``rounds`` times (rows a projection violates join
        the active set). Exact for an affine Z; for a polyhedron a feasible point near x (not
        always the nearest one); :meth:`violation` says how well it holds."""
        k = self.A_ub.shape[1]
        active = torch.zeros(x.shape[0], k, dtype=torch.bool)
        for _ in range(rounds if k else 1):
            if k:
                s = _mv(self.A_ub, x) - self.b_ub
                active = active | (s > -active_tol * (1 + self.b_ub.abs()))
            x = self._project_active(x, active)
        return x

    def _eq_pinv(self) -> Tensor:
        """A_eq⁺ [B, Q, m], computed once."""
        if getattr(self, "_pinv", None) is None:
            self._pinv = torch.linalg.pinv(self.A_eq)
        return self._pinv

    def _project_active(self, x: Tensor, active: Tensor) -> Tensor:
        A, b = self.A_eq, self.b_eq
        if active.numel() == 0 or not bool(active.any()):
            if A.shape[1] == 0:
                return x
            r = _mv(A, x) - b
            return x - _mv(self._eq_pinv(), r)
        if active.shape[1]:
            a = active.to(x.dtype)[..., None]
            A = torch.cat([A, self.A_ub * a], 1)
            b = torch.cat([b, self.b_ub * active.to(x.dtype)], 1)
        if A.shape[1] == 0:
            return x
        return x - min_norm_solution(A, _mv(A, x) - b)

    def fast_project(self, x: Tensor, rounds: int = 2) -> Tensor:
        """A point of Z near x by alternating projections (the affine set of the equalities with
        its cached pseudo-inverse, then each one-sided row in turn, closed form): no factorization
        per call, so it is the search's inner step. Ends on the affine set; one-sided rows may be
        violated by a little (:meth:`violation`); :meth:`project` finishes the job."""
        k = self.A_ub.shape[1]
        x = self._project_active(x, torch.zeros(x.shape[0], 0, dtype=torch.bool))
        if not k:
            return x
        nrm = (self.A_ub * self.A_ub).sum(-1).clamp_min(1e-300)  # [B, k]
        for _ in range(rounds):
            for j in range(k):  # rows of a dataset (few), not instances
                a = self.A_ub[:, j]
                s = ((a * x).sum(-1) - self.b_ub[:, j]).clamp_min(0)
                x = x - (s / nrm[:, j])[:, None] * a
            x = self._project_active(x, torch.zeros(x.shape[0], 0, dtype=torch.bool))
        return x

    def eq_tangent(self, g: Tensor) -> Tensor:
        """g projected onto null(A_eq) (cached pseudo-inverse)."""
        if self.A_eq.shape[1] == 0:
            return g
        return g - _mv(self._eq_pinv(), _mv(self.A_eq, g))

    def tangent(self, g: Tensor, x: Tensor, tol: float = 1e-12) -> Tensor:
        """g [B, Q] projected onto the directions that keep the equalities and the binding
        inequality rows (a feasible direction of −g is then −tangent(g) when no multiplier of a
        binding row is negative; the search re-projects anyway)."""
        A = self.A_eq
        if self.A_ub.shape[1]:
            s = _mv(self.A_ub, x) - self.b_ub
            bind = (s > -tol * (1 + x.norm(dim=-1, keepdim=True)))
            # a binding row only blocks a step that would cross it: −g pointing outward
            out = _mv(self.A_ub, -g) > 0
            blocked = bind & out
            if bool(blocked.any()):
                A = torch.cat([A, self.A_ub * blocked.to(g.dtype)[..., None]], 1)
                return g - min_norm_solution(A, _mv(A, g))
        if A.shape[1] == 0:
            return g
        return g - _mv(self._eq_pinv(), _mv(A, g))
        return g - _mv(torch.linalg.pinv(A), _mv(A, g))


def _mv(A: Tensor, x: Tensor) -> Tensor:
    """Batched matrix-vector product A [B, m, q] · x [B, q] -> [B, m] (broadcast and sum: on the
    tiny matrices of a zero-loss set ≈ 2× faster than einsum or bmm on CPU)."""
    return (A * x[:, None, :]).sum(-1)


def min_norm_solution(A: Tensor, r: Tensor) -> Tensor:
    """The least-norm z with A z = r, z = Aᵀ (A Aᵀ)⁻¹ r, for A [B, m, Q] whose all-zero rows (padding,
    inactive constraints) are ignored: batched Cholesky on A Aᵀ + diag(zero rows) + ε·tr/m·I, ε = 1e-13
    (a ridge for linearly dependent rows; a plain pseudo-inverse by SVD is ≈ 10× slower here)."""
    G = (A[:, :, None, :] * A[:, None, :, :]).sum(-1)
    zero = (A.abs().sum(-1) == 0).to(A.dtype)
    scale = torch.diagonal(G, dim1=1, dim2=2).sum(-1).clamp_min(1e-300) / max(1, A.shape[1])
    G = G + torch.diag_embed(zero + 1e-13 * scale[:, None])
    rhs = (r * (1 - zero))[..., None]
    # G is symmetric positive definite (the ridge): Cholesky, ≈ 5× cheaper than LU on these sizes;
    # LU where it fails (a ridge drowned by rounding)
    L, info = torch.linalg.cholesky_ex(G)
    if bool((info != 0).any()):
        lam = torch.linalg.solve(G, rhs)[..., 0]
    else:
        lam = torch.cholesky_solve(rhs, L)[..., 0]
    return (A * lam[:, :, None]).sum(1)


def zero_set(model: ModelBase, X: Tensor, y: Tensor, mask: Tensor) -> Polyhedron | None:
    """The model's exact polyhedral Z(D), or None when it declares none (use the default)."""
    fn = getattr(model, "zero_set", None)
    return None if fn is None else fn(X, y, mask)


def neuron_zero_set(pos: float, neg: float, X: Tensor, y: Tensor, mask: Tensor) -> Polyhedron:
    """Z(D) of f_w(x) = σ(⟨w, x⟩) with σ(z) = pos·z (z > 0), neg·z (z < 0), in θ = w.

    y_i > 0: ⟨w, x_i⟩ = y_i/pos. y_i = 0: ⟨w, x_i⟩ ≤ 0 when neg = 0 (ReLU), = 0 otherwise.
    y_i < 0: ⟨w, x_i⟩ = y_i/neg when neg ≠ 0; unfittable when neg = 0. Padded points: zero rows.
    """
    real = mask > 0
    zero = real & (y == 0)
    ub = zero if neg == 0 else torch.zeros_like(zero)
    eq = real & ~ub & ((y > 0) | (y == 0) | (neg != 0))
    rhs = torch.where(y > 0, y / pos, torch.where(y < 0, y / (neg if neg != 0 else 1.0), torch.zeros_like(y)))
    feasible = ~((real & (y < 0)).any(-1)) if neg == 0 else torch.ones(y.shape[0], dtype=torch.bool)
    e, u = eq.to(X.dtype), ub.to(X.dtype)
    return Polyhedron("theta", X * e[..., None], rhs * e, X * u[..., None], torch.zeros_like(y), feasible)


def linear_predictor_zero_set(X: Tensor, y: Tensor, mask: Tensor) -> Polyhedron:
    """Z(D) = {β : ⟨β, x_i⟩ = y_i} in the predictor β of a model with f(x) = ⟨β, x⟩."""
    m = (mask > 0).to(X.dtype)
    B, _, d = X.shape
    return Polyhedron("predictor", X * m[..., None], y * m, X.new_zeros(B, 0, d), X.new_zeros(B, 0),
                      torch.ones(B, dtype=torch.bool))


# ------------------------------------------------------------------------------------------
# the default: Gauss–Newton on the residual
# ------------------------------------------------------------------------------------------
def jacobian(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(r [B, n], J [B, n, P]) of the residual r(θ) = mask ∘ (f_θ(X) − y), by autograd (one
    backward pass per data point, batched over instances)."""
    with torch.enable_grad():
        th = theta.detach().clone().requires_grad_(True)
        r = model.residual(th, X, y, mask)
        rows = []
        for i in range(r.shape[1]):
            (g,) = torch.autograd.grad(r[:, i].sum(), th, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(theta) if g is None else g)
    J = torch.stack(rows, 1) if rows else theta.new_zeros(theta.shape[0], 0, theta.shape[1])
    return r.detach(), J.detach()


def gauss_newton_project(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor,
                         steps: int = 8) -> Tensor:
    """Pull θ [B, P] back onto {r(θ) = 0}: θ ← θ − J⁺ r, ``steps`` times (batched)."""
    for _ in range(steps):
        r, J = jacobian(model, theta, X, y, mask)
        theta = theta - _mv(torch.linalg.pinv(J), r)
    return theta


def gn_tangent(model: ModelBase, g: Tensor, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """g [B, P] projected onto the null space of J(θ): the tangent space of {r = 0} at θ."""
    _, J = jacobian(model, theta, X, y, mask)
    return g - _mv(torch.linalg.pinv(J), _mv(J, g))
