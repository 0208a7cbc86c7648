r"""Kinks of piecewise-linear units for the ``adaptive`` solver: the field with the activation
pattern held, the Filippov (minimal-norm Clarke) velocity of held kinks, and the per-unit
factorizations it needs.

Kink entries
------------
A model with the capability :class:`ibtest.PiecewiseLinearUnits` (f_θ(x) = Σ_j v_j σ(⟨w_j, x⟩),
σ'(z) = σ'₋ below the kink, σ'₊ above) has one kink per entry e = (i, j): the set z_e = 0,
z_e = ⟨w_j, x_i⟩. Pre-activations are *linear* in θ, so the rate of z_e along a field value K is
z_e(K), and the rounding scale of z_e is z_e(|θ|; |X|) (the sum of the magnitudes of its terms).

The pattern. The solver carries, per entry, the side of its kink it is on (the slope s_e ∈
{σ'₋, σ'₊} of that side) and integrates the field −∇L(θ; s) with the pattern *held*
(``grad_on_pattern``): a polynomial in θ, smooth across a kink, so a Runge–Kutta step's error
estimate is honest. Where the pattern disagrees with the sign of z_e the flow has crossed the
kink inside the step: an event, located on the step's dense output
(:mod:`ibtest.solve.solvers.events`).

The Filippov / Clarke velocity (:class:`KinkField`)
---------------------------------------------------
On a set S of entries held at their kinks, the gradient depends on the derivative σ'(z_e) ∈
[σ'₋, σ'₊] chosen for e ∈ S, and affinely: with λ_e ∈ [0, 1] and σ'_e = σ'₋ + λ_e(σ'₊ − σ'₋),

    g(λ) = g₀ + Σ_{e∈S} λ_e c_e,     c_e = α_e ∇_θ z_e,   α_e = r_i (σ'₊ − σ'₋) v_j

(g₀: the gradient with σ'₋ on S, σ(z_e) = 0 there; r_i the residual of point i; v_j the output
weight of unit j, 1 for a neuron). The convex hull of the limiting gradients is {g(λ): λ ∈
[0, 1]^S}, and gradient flow is the curve whose velocity is its minimal-norm element (the
subgradient curve of the Clarke subdifferential; for ReLU nets the standard definition):

    θ' = −g(λ*),   λ* = argmin_{λ ∈ [0,1]^S} ½‖g₀ + Cλ‖²          (a box QP, |S| variables)

The units decouple: c_e lives in the block of w_j, so the QP is one small problem per unit (at
most n variables), :meth:`KinkField.unit_qp`.

Attracting, leaving, repelling. Near a held kink the loss is smooth plus α_e·max(0, z_e)
(to first order): a *convex* kink when α_e > 0, which attracts gradient descent from both sides
as long as λ*_e is interior (the one-sided normal velocities ż_e are < 0 above and > 0 below);
λ*_e reaching 0 or 1 means the one-sided field of that side has become tangent and the flow
leaves on that side. With all held kinks convex the subgradient flow is unique (a convex
non-smooth part: Brezis). α_e < 0 is a *concave* kink: both one-sided fields point away (for one
kink λ*_e = a₋/(a₋ − a₊) stays in (0, 1), which is why a rule on λ* alone holds it), and the
flow is not unique: it may stay, or leave on either side at any time. It is released at once,
on the side gradient descent is more likely on (above when λ*_e ≥ ½: descent chattering on the
kink spends the fraction λ*_e of its steps above), and the instance counts a *repelling
release*.

How the solver evaluates it. With every held λ*_e interior, g(λ*) is orthogonal to each c_e and
differs from g₀ by an element of span{c_e}, so −g(λ*) = −Π g₀, Π the orthogonal projector onto the
tangent space {δ: ∇z_e·δ = 0, e ∈ S}: per unit Π_j = I − A_j⁺A_j, A_j [n, d] the inputs x_i held
on unit j (other rows 0). The pseudo-inverses A_j⁺ [d, n] are cached per unit and recomputed
only for the units whose held set changes (:meth:`KinkField.unit_pinv`): a stage costs one
product with them, and the multipliers μ_j = −A_j⁺ᵀ g₀_j (with μ_e = λ*_e α_e for the held
entries) give the leaving test of every held entry at the cost of one more product
(:meth:`KinkField.hold_margin`: held while min(α_e, μ_e, α_e − μ_e) > 0).

Since z_e is linear in θ and every stage velocity has ż_e = 0, an explicit Runge–Kutta step keeps
z_e = 0 up to rounding (linear invariants are preserved by every RK method). Balancedness
v_j² − ‖w_j‖² is conserved by the Clarke flow (⟨w_j, ∂_{w_j}L⟩ − v_j ∂_{v_j}L = Σ_i r_i v_j
(σ'(z_ij) z_ij − σ(z_ij)) = 0 also for z_ij = 0), and by the projection onto the kinks
(:meth:`KinkField.project` rescales v_j to keep it).

What it means for σ'(0): the model's σ'(0) decides only the side a pre-activation that starts
exactly at 0 starts on; on S the derivative is whatever λ* makes it, which is the only choice
that keeps the flow on an attracting kink. At a kink the flow merely crosses, both conventions
give the same curve.

Why a hand-written batched QP and not scipy (``lsq_linear``/``nnls``): it is solved at every
event for every instance that has one; a Python call per instance is the overhead the batched
solver exists to avoid. A unit holds few kinks (at most d independent ones): a primal
active-set method with dense batched solves converges in ≤ |S| + 2 passes (:func:`box_qp`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ibtest.plugin.specs import HessianParts, PiecewiseLinearUnits

Tensor = torch.Tensor
EPS = torch.finfo(torch.float64).eps
#: rounding allowance of a pre-activation or its rate, in units of the magnitude of its terms
ROUND = 64 * EPS


def has_kinks(model: Any) -> bool:
    """The model declares :class:`ibtest.PiecewiseLinearUnits` with a real kink (σ'₋ ≠ σ'₊)."""
    if not isinstance(model, PiecewiseLinearUnits):
        return False
    lo, hi = model.slopes
    return float(lo) != float(hi)


def _mv(A: Tensor, x: Tensor) -> Tensor:
    """A x [..., r] for A [..., r, c], x [..., c], as a product and a sum over the last axis: a
    batched matrix–vector product (``A @ x[..., None]``) rounds differently for one matrix and
    for a batch, and an instance's bits must not depend on its batch."""
    return (A * x.unsqueeze(-2)).sum(-1)


def box_qp(M: Tensor, q: Tensor, valid: Tensor, iters: int | None = None) -> Tensor:
    """argmin_{λ ∈ [0,1]^k} ½λᵀMλ + qᵀλ for a batch of PSD M [b, k, k], q [b, k]; entries with
    ``valid`` False are fixed at 0. Primal active set: solve on the free set, clip the most
    violating variable to its bound, release bound variables whose gradient sign allows it.
    A ridge of 4·eps·trace keeps the free systems solvable (collinear kink normals)."""
    b, k = q.shape
    if k == 0:
        return q.new_zeros(b, 0)
    tr = torch.diagonal(M, dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    if k == 1:
        # one entry (the common case): the minimizer of ½Mλ² + qλ on [0, 1] is clip(−q/M_r), M_r
        # with the ridge below. Written as a product with 1/M_r, which is how LAPACK's solve
        # rounds it: a row gets the same bits here as on the k × k path of a padded batch
        # (tests/test_kinks_qp.py checks this).
        lam1 = (-q[:, 0] * (1.0 / (M[:, 0, 0] + 4 * EPS * tr))).clamp(0.0, 1.0)
        return torch.where(valid, lam1.unsqueeze(-1), torch.zeros_like(q))
    eye = torch.eye(k, dtype=M.dtype, device=M.device)
    Mr = M + (4 * EPS * tr).view(b, 1, 1) * eye
    lam = torch.zeros(b, k, dtype=M.dtype, device=M.device)
    free = valid.clone()
    at_one = torch.zeros_like(valid)
    iters = iters if iters is not None else 2 * k + 4
    for _ in range(iters):
        fixed = ~free
        lam = torch.where(at_one, torch.ones_like(lam), torch.zeros_like(lam))
        rhs = -(q + _mv(M, lam))
        Ms = torch.where(free.unsqueeze(-1) & free.unsqueeze(-2), Mr, torch.zeros_like(Mr))
        Ms = Ms + torch.diag_embed(fixed.to(M.dtype))
        sol = torch.linalg.solve(Ms, torch.where(free, rhs, torch.zeros_like(rhs)))
        lam = torch.where(free, sol, lam)
        # infeasible free variables: clip them to the bound they overshoot, and go again
        over = free & ((lam > 1.0) | (lam < 0.0))
        if bool(over.any()):
            at_one = at_one | (over & (lam > 1.0))
            free = free & ~over
            continue
        # optimality of the bound variables: gradient ≥ 0 at 0, ≤ 0 at 1
        grad = q + _mv(M, lam)
        scale = 1e-12 * (q.abs() + _mv(M.abs(), lam.abs())).amax(-1, keepdim=True)
        viol = valid & ~free & ((~at_one & (grad < -scale)) | (at_one & (grad > scale)))
        if not bool(viol.any()):
            break
        # release the most violating bound variable per instance
        vv = torch.where(viol, grad.abs(), torch.full_like(grad, -1.0))
        j = vv.argmax(-1)
        rel = torch.zeros_like(viol)
        rel[torch.arange(b, device=M.device), j] = viol.any(-1)
        free = free | rel
        at_one = at_one & ~rel
    return torch.where(valid, lam.clamp(0.0, 1.0), torch.zeros_like(lam))


def unit_factors(A: Tensor) -> Tensor:
    """[u, d, d + n] = [Π | A⁺] for per-unit input matrices A [u, n, d] (rows of points not held
    are 0): Π = I − VVᵀ the projector onto the orthogonal complement of A's row space and A⁺
    [d, n] the pseudo-inverse, from one SVD A = U diag(σ) Vᵀ (singular values at or below
    max(n, d)·eps·σ_max are null, as in ``torch.linalg.pinv``)."""
    u, n, d = A.shape
    U, sv, Vh = torch.linalg.svd(A, full_matrices=False)  # [u, n, k], [u, k], [u, k, d]
    keep = sv > max(n, d) * EPS * sv[:, :1]
    V = Vh.transpose(1, 2) * keep.unsqueeze(1).to(A.dtype)  # [u, d, k]
    Pi = torch.eye(d, dtype=A.dtype, device=A.device) - V @ V.transpose(1, 2)
    inv = torch.where(keep, 1.0 / sv.clamp_min(1e-300), torch.zeros_like(sv))
    Ap = (V * inv.unsqueeze(1)) @ U.transpose(1, 2)  # [u, d, n]
    return torch.cat([Pi, Ap], -1)


def unit_identity(b: int, m: int, d: int, n: int, like: Tensor) -> Tensor:
    """The factors [b, m, d, d + n] of units that hold nothing: Π = I, A⁺ = 0."""
    F = torch.zeros(b, m, d, d + n, dtype=like.dtype, device=like.device)
    F[..., :d] = torch.eye(d, dtype=like.dtype, device=like.device)
    return F


def _pack(C: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-unit lists of the entries of masks C [r, n, m]: (row [u], unit [u], point index
    [u, k], ok [u, k]) for the u (row, unit) pairs with some entry; k the most entries of a
    unit (padding: ok False)."""
    Ct = C.transpose(1, 2)  # [r, m, n]
    has = Ct.any(-1)
    ru, ju = has.nonzero(as_tuple=True)
    Cu = Ct[ru, ju]  # [u, n]
    k = int(Cu.sum(-1).max()) if Cu.numel() else 0
    ii = torch.argsort((~Cu).to(torch.int8), dim=-1, stable=True)[:, :k]
    return ru, ju, ii, Cu.gather(1, ii)


class UnitFactors(NamedTuple):
    """The factors of :func:`unit_factors` of only the units that hold entries, compact: the
    (row [u], unit [u]) pairs and their F [u, d, d + n]. The units not listed hold nothing
    (Π = I, A⁺ = 0). :meth:`KinkField.multipliers`, :meth:`KinkField.project_field` and
    :meth:`KinkField.projected_norms` take these or the dense [b, m, d, d + n] factors and give
    the same values; at an event, where only the units of the arriving and leaving entries are
    factored, the compact form costs O(those units) instead of O(b·m)."""

    row: Tensor
    unit: Tensor
    F: Tensor

    def take(self, keep: Tensor) -> UnitFactors:
        """The factors of the rows ``keep`` [b] (bool) only, rows renumbered in order."""
        new = torch.cumsum(keep.long(), 0) - 1
        sel = keep[self.row]
        return UnitFactors(new[self.row[sel]], self.unit[sel], self.F[sel])

    def rows_to(self, pos: Tensor) -> UnitFactors:
        """The same factors with row k renamed pos[k] (``pos`` [b] long)."""
        return UnitFactors(pos[self.row], self.unit, self.F)

    @staticmethod
    def of(X: Tensor, S: Tensor) -> UnitFactors:
        """The factors of the units with an entry in the masks S [b, n, m] (X [b, n, d])."""
        St = S.transpose(1, 2)  # [b, m, n]
        ru, ju = St.any(-1).nonzero(as_tuple=True)
        b, n, d = X.shape
        if ru.numel() == 0:
            return UnitFactors(ru, ju, X.new_zeros(0, d, d + n))
        return UnitFactors(ru, ju, unit_factors(X[ru] * St[ru, ju].unsqueeze(-1).to(X.dtype)))


class KinkField:
    """The field with the pattern held, the Filippov field of held kinks and the per-unit
    factorizations, for a model with :class:`ibtest.PiecewiseLinearUnits` (module docstring).
    Only the protocol's members are used."""

    def __init__(self, model: PiecewiseLinearUnits) -> None:
        self.model = model
        lo, hi = model.slopes
        self.lo, self.hi = float(lo), float(hi)
        self.jump = self.hi - self.lo
        self.at_zero = float(model.at_zero)
        self.train_output = bool(model.train_output)
        #: a pre-activation exactly 0 at the start is on the side whose slope σ'(0) is
        self.start_above = self.at_zero >= 0.5 * (self.lo + self.hi)

    def preact(self, theta: Tensor, X: Tensor) -> Tensor:
        """z [b, n, m] = ⟨w_j, x_i⟩ (linear in θ)."""
        return self.model.hidden_preactivations(theta, X)

    # ---- the pattern --------------------------------------------------------------------
    def slope_of(self, above: Tensor) -> Tensor:
        """The slope [b, n, m] of the side each entry is on (``above`` bool)."""
        # float64 values: torch.where of two Python floats is float32 (0.1 -> 0.10000000149), and
        # a slope off by 1.5e-9 moved the limit of the pattern's flow off the model's zero-loss
        # set (a leaky neuron stuck at loss 1e-16)
        hi = torch.tensor(self.hi, dtype=torch.float64, device=above.device)
        return torch.where(above, hi, torch.tensor(self.lo, dtype=torch.float64, device=above.device))

    def start_side(self, z: Tensor) -> Tensor:
        """The side [b, n, m] (True: above) of pre-activations z at the start of a solve."""
        return (z > 0) | ((z == 0) & self.start_above)

    def grad(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, slope: Tensor) -> Tensor:
        """∇L(θ; s) [b, P] with the pattern s [b, n, m] held."""
        return self.model.grad_on_pattern(theta, X, y, mask, slope)

    def residual(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, slope: Tensor) -> Tensor:
        """r_i = mask_i (Σ_j v_j s_ij z_ij − y_i) [b, n] on the pattern s."""
        W, v = self.model.units(theta)
        z = torch.matmul(X, W.transpose(1, 2))
        return (((slope * z) * v.unsqueeze(1)).sum(-1) - y) * mask  # a product and a sum, not a
        # batched matrix–vector product: its rounding depends on the batch from m = 64 on

    def alpha(self, theta: Tensor, r: Tensor) -> Tensor:
        """α_e = r_i v_j (σ'₊ − σ'₋) [b, n, m] (r [b, n] the residuals at θ)."""
        _, v = self.model.units(theta)
        return r.unsqueeze(-1) * v.unsqueeze(1) * self.jump

    def _wblock(self, g: Tensor, m: int, d: int) -> Tensor:
        return g[:, : m * d].reshape(-1, m, d)

    # ---- held kinks: per-unit factorizations ----------------------------------------------
    def unit_pinv(self, X: Tensor, S: Tensor) -> Tensor:
        """The per-unit factors [b, m, d, d + n] of the held kinks S (:func:`unit_factors`),
        computed for the units that hold an entry only."""
        b, n, d = X.shape
        F = unit_identity(b, S.shape[-1], d, n, X)
        U = UnitFactors.of(X, S)
        if U.row.numel():
            F[U.row, U.unit] = U.F
        return F

    def multipliers(self, Ap: Tensor | UnitFactors, g: Tensor) -> Tensor:
        """μ [b, n, m]: μ_j = −A_j⁺ᵀ g₀_j, so that g₀_j + Σ_i μ_ij x_i = Π_j g₀_j (g [b, P] the
        gradient g₀, Ap the factors of :meth:`unit_pinv`; held entries only, 0 elsewhere)."""
        if isinstance(Ap, UnitFactors):
            W, _ = self.model.units(g)
            b, m, d = W.shape
            n = Ap.F.shape[-1] - d
            mu = g.new_zeros(b, m, n)
            if Ap.row.numel():
                mu[Ap.row, Ap.unit] = -(Ap.F[..., d:] * W[Ap.row, Ap.unit].unsqueeze(-1)).sum(-2)
            return mu.transpose(1, 2)
        b, m, d, _ = Ap.shape
        gW = self._wblock(g, m, d)
        return -(Ap[..., d:] * gW.unsqueeze(-1)).sum(-2).transpose(1, 2)

    def project_field(self, Ap: Tensor | UnitFactors, X: Tensor, g: Tensor) -> Tensor:
        """Π g [b, P]: the W blocks projected onto the tangent space of the held kinks, Π_j g_j
        with Π_j = I − V_jV_jᵀ (V_j an orthonormal basis of span{x_i : (i, j) held}, from the
        factors of :meth:`unit_pinv`); with every held λ* interior this is the Filippov
        (minimal-norm) velocity's negative (module docstring). The normal components left are
        ~1e-16 of the field's terms even for nearly collinear held inputs (g_j + A_jᵀμ_j left
        4e-12, I − A_j⁺A_j 1e-13)."""
        if isinstance(Ap, UnitFactors):
            if Ap.row.numel() == 0:
                return g
            W, v = self.model.units(g)
            d = W.shape[-1]
            W = W.clone()
            W[Ap.row, Ap.unit] = _mv(Ap.F[..., :d], W[Ap.row, Ap.unit])
            return self.model.from_units(W, v)
        b, m, d, _ = Ap.shape
        gW = _mv(Ap[..., :d], self._wblock(g, m, d))
        return torch.cat([gW.flatten(1), g[:, m * d:]], -1)

    def projected_norms(self, Ap: Tensor | UnitFactors, X: Tensor, m: int) -> Tensor:
        """‖Π_j x_i‖² [b, n, m] (Ap the factors of :meth:`unit_pinv`, dense, or
        :class:`UnitFactors`): how much of the jump of the field at kink (i, j) is left normal
        to it once the held kinks of unit j take their share."""
        d = X.shape[-1]
        if isinstance(Ap, UnitFactors):
            # Π = I off the listed units: ‖x_i‖²; on them Π_j x_i as products and sums (no
            # batched matrix product, whose rounding may depend on how many units are listed)
            out = (X * X).sum(-1).unsqueeze(-1).repeat(1, 1, m)  # [b, n, m]
            if Ap.row.numel():
                PX = (Ap.F[:, None, :, :d] * X[Ap.row].unsqueeze(-2)).sum(-1)  # [u, n, d]: Π_j x_i
                out[Ap.row, :, Ap.unit] = (PX * PX).sum(-1)
            return out
        Pi = Ap[..., :d]  # [b, m, d, d]
        PX = torch.matmul(X.unsqueeze(1), Pi.transpose(-1, -2))  # [b, m, n, d]: rows Π_j x_i
        return (PX * PX).sum(-1).transpose(1, 2)

    def hold_margin(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, slope: Tensor,
                    Ap: Tensor | UnitFactors, S: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(φ [b, n, m], α, μ): φ_e = min(α_e, μ_e, α_e − μ_e) on the held entries S (+inf
        elsewhere). A held entry stays held while φ_e > 0: convex (α_e > 0) with λ*_e = μ_e/α_e
        in (0, 1). The slope s must be σ'₋ on S."""
        g = self.grad(theta, X, y, mask, slope)
        r = self.residual(theta, X, y, mask, slope)
        al = self.alpha(theta, r)
        mu = self.multipliers(Ap, g)
        phi = torch.minimum(torch.minimum(al, mu), al - mu)
        return torch.where(S, phi, torch.full_like(phi, float("inf"))), al, mu

    def hold_tolerance(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, slope: Tensor) -> Tensor:
        """The rounding allowance [b, n, m] of :meth:`hold_margin`'s φ_e: ``ROUND`` times the
        magnitude of the terms of μ_e (the normal rate ⟨x_i, g₀_j⟩/‖x_i‖², terms
        |v_j| Σ_k |r_k| s_kj |⟨x_i, x_k⟩| / ‖x_i‖²) and of α_e (|v_j| (|y_i| + Σ_l |v_l s_il z_il|)
        |σ'₊ − σ'₋|). A kink that arrives is held only when it attracts beyond it: on orthogonal
        inputs the field below a kink is tangent to it (ż = 0 in exact arithmetic), and at
        rounding level it read as attracting."""
        W, v = self.model.units(theta)
        z = torch.matmul(X, W.transpose(1, 2))
        r = self.residual(theta, X, y, mask, slope).abs()
        G = torch.matmul(X, X.transpose(1, 2)).abs()  # [b, n, n]
        nx = torch.diagonal(G, dim1=-2, dim2=-1).clamp_min(1e-300).unsqueeze(-1)  # ‖x_i‖² [b, n, 1]
        va = v.abs().unsqueeze(1)
        T_mu = va * torch.matmul(G, r.unsqueeze(-1) * slope.abs()) / nx
        out_mag = (slope * z * v.unsqueeze(1)).abs().sum(-1, keepdim=True) + y.abs().unsqueeze(-1)
        T_al = va * out_mag * abs(self.jump)
        return 16 * ROUND * (T_mu + T_al)

    # ---- the box QP of a set of candidate kinks --------------------------------------------
    def unit_qp(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, slope: Tensor,
                C: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The minimal-norm Clarke velocity with the entries C [r, n, m] held, per unit.

        ``slope`` must be σ'₋ on C. Returns (λ* [r, n, m] (0 off C), α [r, n, m], the one-sided
        normal velocities a₋, a₊ [r, n, m] of every C entry under the field with the others at
        their λ* (a₋ with λ_e = 0, a₊ = a₋ − α_e‖x_i‖²): ż_e on each side of the kink)."""
        g0 = self.grad(theta, X, y, mask, slope)
        r = self.residual(theta, X, y, mask, slope)
        al = self.alpha(theta, r)
        W, _ = self.model.units(theta)
        b, m, d = W.shape
        g0W = self._wblock(g0, m, d)
        lam = torch.zeros_like(al)
        a_lo = torch.zeros_like(al)
        a_hi = torch.zeros_like(al)
        ru, ju, ii, ok = _pack(C)
        if ru.numel() == 0:
            return lam, al, a_lo, a_hi
        k = ii.shape[1]
        Xe = X[ru].gather(1, ii.unsqueeze(-1).expand(-1, k, d))  # [u, k, d]
        ae = al[ru, :, ju].gather(1, ii) * ok  # [u, k]
        G = Xe @ Xe.transpose(1, 2)  # [u, k, k]
        gj = g0W[ru, ju]  # [u, d]
        M = ae.unsqueeze(-1) * ae.unsqueeze(-2) * G
        q = ae * _mv(Xe, gj)
        valid = ok & (ae != 0)
        lu = box_qp(M, q, valid)  # [u, k]
        # g_j(λ*) and the normal velocities ż_e = −⟨x_e, g_j⟩ with λ_e set to 0 (below)
        gl = gj + _mv(Xe.transpose(1, 2), lu * ae)  # [u, d]
        a_l = -(_mv(Xe, gl)) + lu * ae * torch.diagonal(G, dim1=-2, dim2=-1)
        a_h = a_l - ae * torch.diagonal(G, dim1=-2, dim2=-1)
        for tgt, val in ((lam, lu), (a_lo, a_l), (a_hi, a_h)):
            tu = tgt[ru, :, ju]  # [u, n] (a copy)
            tu.scatter_(1, ii, torch.where(ok, val, tu.gather(1, ii)))
            tgt[ru, :, ju] = tu
        return lam, al, a_lo, a_hi

    def field_leave(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, S: Tensor,
                    ent: Tensor, ent_ok: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The Filippov velocity −g(λ*) [b, P], λ* [b, k] and ``leave`` [b, k] with the entries
        of S [b, n, m] held at their kinks (``ent`` [b, k]: their flat indices i·m + j, padded
        with ``ent_ok`` False). The slope off S is the model's own σ'(z) (σ'(0) at z = 0).
        ``leave``: λ*_e at a bound (the one-sided field of that side is tangent or points
        away), α_e = 0, or padding. A reference form of the velocity the solver integrates as
        −Π g₀ (:meth:`project_field`)."""
        z = self.preact(theta, X)
        slope = torch.where(z > 0, self.hi, torch.where(z < 0, self.lo, torch.full_like(z, self.at_zero)))
        slope = torch.where(S, torch.full_like(slope, self.lo), slope)
        lam, al, _, _ = self.unit_qp(theta, X, y, mask, slope, S)
        g0 = self.grad(theta, X, y, mask, slope)
        W, _ = self.model.units(theta)
        b, m, d = W.shape
        gW = self._wblock(g0, m, d) + torch.matmul((lam * al).transpose(1, 2), X)
        vel = -torch.cat([gW.flatten(1), g0[:, m * d:]], -1)
        lam_e = lam.flatten(1).gather(1, ent) * ent_ok
        al_e = al.flatten(1).gather(1, ent)
        leave = ~ent_ok | (al_e == 0) | (lam_e <= 0.0) | (lam_e >= 1.0)
        return vel, lam_e, leave

    def tangent_projector(self, X: Tensor, S: Tensor) -> Tensor:
        """Per-unit projectors Π_j [b, m, d, d] onto the tangent space of the held kinks
        (block-diagonal in θ, the identity on v)."""
        return self.unit_pinv(X, S)[..., : X.shape[-1]]

    def project_hessian(self, X: Tensor, S: Tensor, H: Tensor) -> Tensor:
        """Π H Π [b, P, P] for H [b, P, P], Π the projector onto the tangent space of the held
        kinks S [b, n, m]: block-diagonal, Π_j [d, d] on the block of w_j (θ[j·d : (j+1)·d]) and
        the identity elsewhere (the Jacobian of the Filippov field, for the Rosenbrock step and
        the saddle test). Applied block by block: O(P·m·d²) per side instead of the O(P³) of two
        dense products with the full [P, P] projector (at width 64, P = 704: 1.4 GFLOP per row
        and step, 35 s of a 124 s width-64 solve)."""
        Pi = self.tangent_projector(X, S)  # [b, m, d, d]
        b, m, d, _ = Pi.shape
        md, P = m * d, H.shape[-1]
        G = torch.cat([torch.matmul(Pi, H[:, :md].reshape(b, m, d, P)).reshape(b, md, P), H[:, md:]], 1)  # Π H
        cols = torch.matmul(G[:, :, :md].reshape(b, P, m, d).transpose(1, 2), Pi)  # [b, m, P, d]: (ΠH)_j Π_j
        return torch.cat([cols.transpose(1, 2).reshape(b, P, md), G[:, :, md:]], -1)

    def project_parts(self, X: Tensor, S: Tensor, parts: HessianParts) -> HessianParts | None:
        """:meth:`project_hessian` on the Hessian in parts: ΠHΠ = (JΠ)ᵀ(JΠ) + Σ_j E_jᵀ(Π̂_jR_jΠ̂_j)E_j
        with Π̂_j = diag(Π_j, I) on block j. Only for parts whose block j starts with the d
        positions of w_j in order (``two_layer_relu``'s (w_j, v_j)); None otherwise (the caller
        assembles H and projects it densely)."""
        J, R, idx = parts
        Pi = self.tangent_projector(X, S)  # [b, m, d, d]
        b, m, d, _ = Pi.shape
        u, k = idx.shape
        lay = (torch.arange(m, device=idx.device) * d).unsqueeze(-1) + torch.arange(d, device=idx.device)
        if u != m or k < d or not torch.equal(idx[:, :d], lay):
            return None
        n, md = J.shape[1], m * d
        Jw = torch.matmul(J[..., :md].reshape(b, n, m, d).transpose(1, 2), Pi)  # [b, m, n, d]: J_j Π_j
        J2 = torch.cat([Jw.transpose(1, 2).reshape(b, n, md), J[..., md:]], -1)
        E = torch.eye(k, dtype=R.dtype, device=R.device).repeat(b, m, 1, 1)
        E[..., :d, :d] = Pi
        return HessianParts(J2, torch.matmul(torch.matmul(E, R), E), idx)

    def scale(self, theta: Tensor, X: Tensor) -> Tensor:
        """‖x_i‖·‖w_j‖ [b, n, m]: the size a pre-activation z_ij is measured against."""
        W, _ = self.model.units(theta)
        return X.norm(dim=-1).unsqueeze(-1) * W.norm(dim=-1).unsqueeze(1)

    def rounding(self, theta: Tensor, X: Tensor) -> Tensor:
        """The rounding allowance of z [b, n, m]: ``ROUND`` times the magnitude of its terms."""
        return ROUND * self.preact(theta.abs(), X.abs())

    def project(self, theta: Tensor, X: Tensor, S: Tensor, target: Tensor | None = None) -> Tensor:
        """θ moved onto {z_e = target_e, e ∈ S} (``target`` [b, n, m], default 0) by the least
        change of each w_j (a correction in span{x_i : (i, j) ∈ S}); with trained output weights
        v_j is rescaled in magnitude so that v_j² − ‖w_j‖² is unchanged (frozen v stays). Units
        without an entry in S are left as they are (bit for bit)."""
        W, v = self.model.units(theta)
        St = S.transpose(1, 2)  # [b, m, n]
        ru, ju = St.any(-1).nonzero(as_tuple=True)
        if ru.numel() == 0:
            return theta
        Xs = X[ru] * St[ru, ju].unsqueeze(-1).to(X.dtype)  # [u, n, d]
        Wu = W[ru, ju]  # [u, d]
        zw = _mv(Xs, Wu)  # [u, n]
        if target is not None:
            zw = zw - (target * S).transpose(1, 2)[ru, ju]
        W2u = Wu - _mv(torch.linalg.pinv(Xs), zw)
        W2 = W.clone()
        W2[ru, ju] = W2u
        if not self.train_output:  # v is frozen (or a neuron's v ≡ 1): it stays
            return self.model.from_units(W2, v)
        vu = v[ru, ju]
        bal = vu * vu - (Wu * Wu).sum(-1)
        v2 = v.clone()
        v2[ru, ju] = torch.sign(vu) * (bal + (W2u * W2u).sum(-1)).clamp_min(0.0).sqrt()
        return self.model.from_units(W2, v2)


def kink_field(model: Any) -> KinkField | None:
    """The :class:`KinkField` of a model with :class:`ibtest.PiecewiseLinearUnits` and a real
    kink, or None (no kinks the solver knows about: smooth models, the linear model)."""
    return KinkField(model) if has_kinks(model) else None
