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
from ibtest.solve.fit import residual_jacobian

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

    def row_scale(self, A: Tensor, b: Tensor, x: Tensor) -> Tensor:
        """The size of the terms of A x − b per row [B, rows]: |b| + ‖A_row‖₁·max|x| (tiny rows 1e-300),
        so that a tolerance on A x − b is relative to the problem's scale."""
        return (b.abs() + A.abs().sum(-1) * x.abs().amax(-1, keepdim=True)).clamp_min(1e-300)

    def relative_violation(self, x: Tensor) -> Tensor:
        """Largest constraint violation per row [B], each row's relative to its own :meth:`row_scale`."""
        v = x.new_zeros(x.shape[0])
        if self.A_eq.shape[1]:
            v = ((_mv(self.A_eq, x) - self.b_eq).abs() / self.row_scale(self.A_eq, self.b_eq, x)).amax(-1)
        if self.A_ub.shape[1]:
            u = (_mv(self.A_ub, x) - self.b_ub).clamp_min(0) / self.row_scale(self.A_ub, self.b_ub, x)
            v = torch.maximum(v, u.amax(-1))
        return v

    def binding(self, x: Tensor, tol: float) -> Tensor:
        """bool [B, k]: the one-sided rows within ``tol`` (relative to :meth:`row_scale`) of binding at x."""
        s = _mv(self.A_ub, x) - self.b_ub
        return s > -tol * self.row_scale(self.A_ub, self.b_ub, x)

    def project(self, x: Tensor, rounds: int = 3, active_tol: float = 0.0) -> Tensor:
        """A point of Z near x [B, Q]: the Euclidean projection onto the affine set of the
        equalities together with the inequality rows that x violates (or that are within
        ``active_tol`` of binding, relative to the row's scale), repeated ``rounds`` times (rows a projection violates join
        the active set). Exact for an affine Z; for a polyhedron a feasible point near x (not
        always the nearest one); :meth:`violation` says how well it holds."""
        k = self.A_ub.shape[1]
        active = torch.zeros(x.shape[0], k, dtype=torch.bool)
        for _ in range(rounds if k else 1):
            if k:
                active = active | self.binding(x, active_tol)
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
            bind = self.binding(x, tol)
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
def gauss_newton_project(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor,
                         steps: int = 8) -> Tensor:
    """Pull θ [B, P] back onto {r(θ) = 0}: θ ← θ − J⁺ r, ``steps`` times (batched)."""
    for _ in range(steps):
        r, J = residual_jacobian(model, theta, X, y, mask)
        theta = theta - _mv(torch.linalg.pinv(J), r)
    return theta


def gn_tangent(model: ModelBase, g: Tensor, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """g [B, P] projected onto the null space of J(θ): the tangent space of {r = 0} at θ."""
    _, J = residual_jacobian(model, theta, X, y, mask)
    return g - _mv(torch.linalg.pinv(J), _mv(J, g))


# ------------------------------------------------------------------------------------------
# is Z(D) more than a point in the variable R reads?
# ------------------------------------------------------------------------------------------
def single_point(model: ModelBase, zs: Polyhedron | None, on: str, theta: Tensor, X: Tensor, y: Tensor,
                 mask: Tensor) -> Tensor:
    """bool [B]: near θ [B, P] (a point of Z(D)), Z(D) is a single point in the variable R reads
    (θ, or the model's predictor for ``on="predictor"``), so every R is minimized there and a
    survival on that triple has no power.

    ``zs``: the model's polyhedral Z(D) when it lives in that variable. Then Z is a point iff the
    cone of feasible directions {δ : A_eq δ = 0, A_b δ ≤ 0} (A_b the one-sided rows binding at x)
    is {0}: by rank when rank[A_eq; A_b] < Q (a line: not a point) or rank A_eq = Q (a point), and
    otherwise by an LP (HiGHS): is there δ with A_eq δ = 0, A_b δ ≤ 0, Σ −A_b δ ≥ 1?
    Without such a Z: the tangent space null(J) of {r(θ) = 0} at θ (J = ∂r/∂θ), mapped into the
    predictor by its Jacobian for ``on="predictor"``; Z is a point there iff that map has rank 0.
    Ranks use the standard float64 tolerance max(m, n)·eps·σ_max.
    """
    if zs is not None:
        x = model.predictor(theta) if zs.on == "predictor" else theta
        return _polyhedron_point(zs, x.detach())
    _, J = residual_jacobian(model, theta, X, y, mask)
    B, n, P = J.shape
    if n == 0:
        return torch.zeros(B, dtype=torch.bool)
    _, S, Vh = torch.linalg.svd(J, full_matrices=True)
    tol = S.amax(-1, keepdim=True) * max(n, P) * torch.finfo(J.dtype).eps
    rank = (S > tol).sum(-1)
    if on != "predictor":
        return rank >= P
    D = _predictor_jacobian(model, theta)  # [B, Q, P]
    out = torch.zeros(B, dtype=torch.bool)
    for r in torch.unique(rank).tolist():  # rows grouped by rank (few distinct values)
        rows = (rank == r).nonzero().flatten()
        if r >= P:
            out[rows] = True
            continue
        N = Vh[rows, r:, :].transpose(1, 2)  # [k, P, P − r] null-space basis
        M = D[rows] @ N
        s = torch.linalg.svdvals(M)
        scale = torch.linalg.svdvals(D[rows]).amax(-1)
        out[rows] = (s <= scale[:, None] * max(M.shape[1:]) * torch.finfo(M.dtype).eps).all(-1)
    return out


def _predictor_jacobian(model: ModelBase, theta: Tensor) -> Tensor:
    """∂ predictor / ∂θ [B, Q, P] by autograd (one backward pass per predictor coordinate)."""
    with torch.enable_grad():
        th = theta.detach().clone().requires_grad_(True)
        q = model.predictor(th)
        rows = []
        for j in range(q.shape[1]):
            (g,) = torch.autograd.grad(q[:, j].sum(), th, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(theta) if g is None else g)
    return torch.stack(rows, 1).detach()


def _polyhedron_point(zs: Polyhedron, x: Tensor) -> Tensor:
    B, Q = x.shape
    A = zs.A_eq
    rank_eq = torch.linalg.matrix_rank(A) if A.shape[1] else torch.zeros(B, dtype=torch.int64)
    out = rank_eq >= Q
    if not zs.A_ub.shape[1] or bool(out.all()):
        return out
    binding = zs.binding(x, 1e-9) & (zs.A_ub.abs().sum(-1) > 0)
    Ab = zs.A_ub * binding.to(x.dtype)[..., None]
    full = torch.linalg.matrix_rank(torch.cat([A, Ab], 1)) >= Q
    for i in (full & ~out).nonzero().flatten().tolist():  # rare: a pointed cone, decided by an LP
        out[i] = not _cone_has_direction(A[i], Ab[i][binding[i]])
    return out


def _cone_has_direction(A_eq: Tensor, A_b: Tensor) -> bool:
    """Is there δ ≠ 0 with A_eq δ = 0, A_b δ ≤ 0? (Called when [A_eq; A_b] has full column rank,
    so such a δ has A_b δ ≠ 0 and can be scaled to Σ −A_b δ = 1.)"""
    import numpy as np
    from scipy.optimize import linprog

    Q = A_b.shape[1]
    Ae = A_eq[A_eq.abs().sum(-1) > 0].numpy()
    Ab = A_b.numpy()
    A_ub = np.vstack([Ab, Ab.sum(0, keepdims=True)])  # A_b δ ≤ 0 and Σ A_b δ ≤ −1
    b_ub = np.concatenate([np.zeros(len(Ab)), [-1.0]])
    res = linprog(np.zeros(Q), A_ub=A_ub, b_ub=b_ub, A_eq=Ae if len(Ae) else None, b_eq=np.zeros(len(Ae)) if len(Ae) else None,
                  bounds=[(None, None)] * Q, method="highs")
    return bool(res.status == 0)
