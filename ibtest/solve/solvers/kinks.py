r"""Kinks of ReLU-type models for the ``adaptive`` solver: evidence of sliding, and the Filippov
(minimal-norm Clarke) velocity that follows a sliding mode.

Kink entries
------------
A model with ``hidden_preactivations(θ, X) -> [B, n, m]`` (the one-hidden-layer net, z_ij =
⟨w_j, x_i⟩) or a piecewise-linear neuron (``preactivation``, m = 1) has one kink per entry
e = (i, j): the set z_e = 0. Pre-activations are *linear* in θ, so the rate of z_e along a field
value K is z_e(K) and the rounding scale of z_e is z_e(|θ|; |X|) (the sum of the magnitudes of
its terms).

Evidence (:func:`kink_evidence`)
--------------------------------
Entry e shows the field pointing at its kink from both sides when, among the stage points of a
step, one has z_e > τ_z and ż_e < −τ_ż and another z_e < −τ_z and ż_e > τ_ż, with
τ = ``ROUND``·(magnitude of the terms): a value at round-off level is on neither side. Without
the tolerance a zero-label point hovering at its kink on a continuous field (z and ż both at
round-off) and orthogonal inputs (ż = 0 in exact arithmetic on the inactive side) gave false
evidence (issue 12).

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

KKT: for 0 < λ*_e < 1, ⟨c_e, g(λ*)⟩ = −α_e ż_e = 0, so the velocity is tangent to every kink
whose λ* is interior; for one kink it is the unique convex combination of the two one-sided
fields tangent to the kink (Filippov). A kink is *attracting* (sliding) when ż_e < 0 on its upper
side and > 0 on its lower side, i.e. α_e > 0 with λ* interior; λ*_e at a bound means the one-sided
field of that side is tangent or points away: the flow may leave the kink there.

How the solver evaluates it. With every held λ*_e interior, g(λ*) is orthogonal to each c_e and
differs from g₀ by an element of span{c_e}, so −g(λ*) = −Π g for *any* member g of the family
(the classical gradient with the model's σ'(0) is one): Π the orthogonal projector onto the
tangent space {δ: ∇z_e·δ = 0, e ∈ S}, block-diagonal per unit and fixed while S is
(:meth:`KinkField.tangent_projector`, :meth:`KinkField.project_field`). The ``adaptive`` solver
uses that projection at every Runge–Kutta stage and solves the box QP once per step, at the
proposal, for the leaving test (:meth:`KinkField.field_leave`); a step at whose end the flow leaves
a held kink is retried with the box QP at every stage, which releases it.

Since z_e is linear in θ and every stage velocity has ż_e = 0, an explicit Runge–Kutta step keeps
z_e = 0 up to rounding (linear invariants are preserved by every RK method). Balancedness
v_j² − ‖w_j‖² is conserved by the Clarke flow (⟨w_j, ∂_{w_j}L⟩ − v_j ∂_{v_j}L = Σ_i r_i v_j
(σ'(z_ij) z_ij − σ(z_ij)) = 0 also for z_ij = 0), and by the projection onto the kinks used at
the start of an episode (:meth:`KinkField.project` rescales v_j to keep it).

What it means for σ'(0): the convention σ'(0) = 0 or 1 of the classical field is used only off
S; on S the derivative is whatever λ* makes it, which is the only choice that keeps the flow on
an attracting kink. At a kink the flow merely crosses, both conventions give the same curve.

Why a hand-written batched QP and not scipy (``lsq_linear``/``nnls``): it is solved at every
step for every sliding instance; a Python call per instance and step is the overhead the batched
solver exists to avoid. |S| is small (1–3 in practice): a primal active-set
method with dense batched solves converges in ≤ |S| + 2 passes (:func:`box_qp`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Tensor = torch.Tensor
#: pre-activations of a model: (θ [b, P], X [b, n, d]) -> [b, n, m], linear in θ
Preact = Callable[[Tensor, Tensor], Tensor]
EPS = torch.finfo(torch.float64).eps
#: rounding allowance of a pre-activation or its rate, in units of the magnitude of its terms
ROUND = 64 * EPS


def preact_fn(model: Any) -> Preact | None:
    """A function θ, X -> pre-activations [B, n, m] (linear in θ), or None when the model has
    no kinks the solver knows about."""
    hp = getattr(model, "hidden_preactivations", None)
    if callable(hp):
        return hp
    pa = getattr(model, "preactivation", None)
    if callable(pa) and getattr(model, "piecewise", None) is not None:
        pw = model.piecewise
        if pw.pos != pw.neg:  # a real kink
            return lambda th, X: pa(th, X).unsqueeze(-1)
    return None


def kink_evidence(preact: Preact, A: Tensor, bw: Tensor, th: Tensor, K: Tensor, h: Tensor, X: Tensor,
                  mask: Tensor) -> Tensor:
    """Entries [b, n, m] at which the field pointed at the kink from both sides among the stage
    points θ_s = θ + h Σ_k A_sk K_k (field K_s) and the proposal (weights ``bw``, field K_S),
    each side beyond the rounding scale (module docstring). K [S+1, b, P]."""
    S = A.shape[0]
    b, P = th.shape
    Kst = K[: S + 1]
    coef = torch.zeros(S + 1, S + 1, dtype=A.dtype)
    coef[:S, :S] = A
    coef[S, :S] = bw
    pts = th.unsqueeze(0) + h.view(1, b, 1) * (coef @ Kst.reshape(S + 1, -1)).reshape(S + 1, b, P)
    Xs = X.unsqueeze(0).expand(S + 1, *X.shape).reshape((S + 1) * b, *X.shape[1:])
    Xa = Xs.abs()
    flat = pts.reshape((S + 1) * b, P)
    Kf = Kst.reshape((S + 1) * b, P)
    z = preact(flat, Xs)
    tz = ROUND * preact(flat.abs(), Xa)
    zd = preact(Kf, Xs)
    tzd = ROUND * preact(Kf.abs(), Xa)
    shp = (S + 1, b) + z.shape[1:]
    z, tz, zd, tzd = z.view(shp), tz.view(shp), zd.view(shp), tzd.view(shp)
    down_above = ((z > tz) & (zd < -tzd)).any(0)
    up_below = ((z < -tz) & (zd > tzd)).any(0)
    live = (mask > 0).unsqueeze(-1)
    return down_above & up_below & live


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
    eye = torch.eye(k, dtype=M.dtype)
    Mr = M + (4 * EPS * tr).view(b, 1, 1) * eye
    lam = torch.zeros(b, k, dtype=M.dtype)
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
        rel[torch.arange(b), j] = viol.any(-1)
        free = free | rel
        at_one = at_one & ~rel
    return torch.where(valid, lam.clamp(0.0, 1.0), torch.zeros_like(lam))


class KinkField:
    """The classical and the Filippov field of a model with kinks (see the module docstring).

    Supported: the one-hidden-layer ReLU net (``split``, ``hidden_preactivations``,
    ``train_output``) and piecewise-linear neurons (``piecewise``). :func:`kink_field` returns
    None for other models (they get ``sliding: stop`` behaviour).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        pw = getattr(model, "piecewise", None)
        if callable(getattr(model, "hidden_preactivations", None)):
            self.kind = "net"
            self.lo, self.hi = 0.0, 1.0
            self.train_output = bool(getattr(model, "train_output", True))
        else:
            self.kind = "neuron"
            assert pw is not None
            self.lo, self.hi = float(pw.neg), float(pw.pos)
        self.preact = preact_fn(model)

    def _parts(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(W [b, m, d], v [b, m]); a neuron is one unit with v = 1."""
        if self.kind == "net":
            return self.model.split(theta)
        return theta.unsqueeze(1), torch.ones(theta.shape[0], 1, dtype=theta.dtype)

    def _join(self, gW: Tensor, gv: Tensor) -> Tensor:
        if self.kind == "net":
            return torch.cat([gW.flatten(1), gv if self.train_output else torch.zeros_like(gv)], -1)
        return gW[:, 0]

    def field(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, S: Tensor,
              ent: Tensor, ent_ok: Tensor) -> tuple[Tensor, Tensor]:
        """The Filippov velocity −g(λ*) [b, P] and λ* [b, k] (:meth:`field_leave` without the
        leaving test)."""
        vel, lam, _ = self.field_leave(theta, X, y, mask, S, ent, ent_ok)
        return vel, lam

    def field_leave(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, S: Tensor,
                    ent: Tensor, ent_ok: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The Filippov velocity −g(λ*) [b, P], λ* [b, k] and ``leave`` [b, k] with the entries
        of S held at their kinks. ``ent`` [b, k] lists the flat indices i·m + j of the entries
        of S (padded, with ``ent_ok`` False), ``S`` [b, n, m] the same set as a mask.

        ``leave``: the flow may leave entry e's kink: λ*_e is at a bound (0: the one-sided field
        below is tangent to the kink or points away from it; 1: the field above does), or e is
        padding or has α_e = 0 (nothing holds it). The test is exact, with no rounding
        tolerance: a λ* at a bound by rounding only (the one-sided field ends tangent, λ*_e → 0
        along the mode, W2 seed 0 instance 904) releases the entry, and :meth:`Sliding.release`
        leaves it on the side the flow leaves to (z_e = ∓ε by the bound), so the classical field
        read there is that side's and the row does not re-enter at once. A tolerance on
        ⟨c_e, g(λ*)⟩ (tried: ``ROUND`` times its terms) made the test flicker in stiff tails where
        λ*_e sits at 0 with ⟨c_e, g⟩ at round-off: W2 seed 1 instances 382, 317 and 109 took
        thousands of steps with it; without it, 244, 423 and 418."""
        W, v = self._parts(theta)
        b, m, d = W.shape
        z = torch.matmul(X, W.transpose(1, 2))  # [b, n, m]
        act = torch.where(S, torch.zeros_like(z), z.clamp_min(0.0))
        if self.kind == "neuron":
            act = torch.where(z > 0, self.hi * z, self.lo * z).masked_fill(S, 0.0)
        r = (torch.matmul(act, v.unsqueeze(-1)).squeeze(-1) - y) * mask  # [b, n]
        at0 = float(getattr(self.model, "at_zero", 1.0)) if self.kind == "net" else \
            float(self.model.piecewise.at_zero)
        if self.kind == "net":
            s = torch.where(z > 0, 1.0, torch.where(z < 0, 0.0, at0))
        else:
            s = torch.where(z > 0, self.hi, torch.where(z < 0, self.lo, at0))
        s = torch.where(S, torch.full_like(s, self.lo), s).to(z.dtype)
        c = r.unsqueeze(-1) * s * v.unsqueeze(1)  # [b, n, m]
        g0W = torch.matmul(c.transpose(1, 2), X)  # [b, m, d]
        gv = torch.matmul(r.unsqueeze(1), act).squeeze(1)  # [b, m]
        # the kink entries: α_e = r_i (σ'₊ − σ'₋) v_j, normal x_i in block j
        k = ent.shape[1]
        ii, jj = ent // m, ent % m
        alpha = (r.gather(1, ii) * v.gather(1, jj) * (self.hi - self.lo)) * ent_ok
        Xe = X.gather(1, ii.unsqueeze(-1).expand(b, k, d))  # [b, k, d]
        same = (jj.unsqueeze(-1) == jj.unsqueeze(-2)).to(z.dtype)
        M = alpha.unsqueeze(-1) * alpha.unsqueeze(-2) * (Xe @ Xe.transpose(1, 2)) * same
        jx = jj.unsqueeze(-1).expand(b, k, d)
        g0e = g0W.gather(1, jx)  # [b, k, d]
        q = alpha * (Xe * g0e).sum(-1)
        valid = ent_ok & (alpha != 0)
        lam = box_qp(M, q, valid)
        add = torch.zeros_like(g0W)
        add.scatter_add_(1, jx, (lam * alpha).unsqueeze(-1) * Xe)
        gW = g0W + add
        leave = ~valid | (lam <= 0.0) | (lam >= 1.0)
        return -self._join(gW, gv), lam, leave

    def tangent_projector(self, X: Tensor, S: Tensor) -> Tensor:
        """Per-unit projectors Π [b, m, d, d] onto the tangent space of the held kinks: Π_j =
        I − A_j⁺A_j, A_j [n, d] the inputs x_i with (i, j) ∈ S (other rows 0). The normals
        ∇_θ z_ij are x_i in block w_j, so the projector onto {δ: z_e(δ) = 0, e ∈ S} is
        block-diagonal with these blocks on W and the identity on v; it depends on X and S
        only (z is linear in θ). The pseudo-inverse keeps it exact for collinear inputs."""
        d = X.shape[-1]
        Xs = X.unsqueeze(1) * S.transpose(1, 2).unsqueeze(-1).to(X.dtype)  # [b, m, n, d]
        return torch.eye(d, dtype=X.dtype) - torch.linalg.pinv(Xs) @ Xs

    def project_field(self, Pi: Tensor, g: Tensor) -> Tensor:
        """Π g [b, P] for g [b, P] and per-unit projectors Π [b, m, d, d]
        (:meth:`tangent_projector`).

        With every held λ*_e interior this *is* the Filippov velocity: by the KKT conditions
        g(λ*) ⟂ c_e ∝ ∇z_e for each held e, and g(λ) − g₀ ∈ span{c_e}, so −g(λ*) = −Π g for
        any element g of the affine family {g(λ)} (the classical gradient with either σ'(0) on
        the held entries is one, up to the O(|z_e|) rounding of z_e ≈ 0)."""
        if self.kind == "neuron":
            return _mv(Pi[:, 0], g)
        m, d = Pi.shape[1], Pi.shape[2]
        gW = _mv(Pi, g[:, : m * d].reshape(-1, m, d)).flatten(1)
        return torch.cat([gW, g[:, m * d:]], -1)

    def scale(self, theta: Tensor, X: Tensor) -> Tensor:
        """‖x_i‖·‖w_j‖ [b, n, m]: the size a pre-activation z_ij is measured against."""
        W, _ = self._parts(theta)
        return X.norm(dim=-1).unsqueeze(-1) * W.norm(dim=-1).unsqueeze(1)

    def project(self, theta: Tensor, X: Tensor, S: Tensor, target: Tensor | None = None) -> Tensor:
        """θ moved onto {z_e = target_e, e ∈ S} (``target`` [b, n, m], default 0) by the least
        change of each w_j (a correction in span{x_i : (i, j) ∈ S}); for the net with trained
        output weights v_j is rescaled in magnitude so that v_j² − ‖w_j‖² is unchanged (frozen v
        stays)."""
        W, v = self._parts(theta)
        Xs = X.unsqueeze(1) * S.transpose(1, 2).unsqueeze(-1).to(X.dtype)  # [b, m, n, d]
        zw = _mv(Xs, W).unsqueeze(-1)  # [b, m, n, 1]
        if target is not None:
            zw = zw - (target * S).transpose(1, 2).unsqueeze(-1)
        dW = _mv(torch.linalg.pinv(Xs), zw.squeeze(-1))  # [b, m, d]
        W2 = W - dW
        if self.kind == "neuron":
            return W2[:, 0]
        if not self.train_output:  # v is frozen: it stays
            return torch.cat([W2.flatten(1), v], -1)
        bal = v * v - (W * W).sum(-1)
        v2 = torch.sign(v) * (bal + (W2 * W2).sum(-1)).clamp_min(0.0).sqrt()
        return torch.cat([W2.flatten(1), v2], -1)


def kink_field(model: Any) -> KinkField | None:
    """The :class:`KinkField` of a model, or None when its kinks are unknown to the solver."""
    if preact_fn(model) is None:
        return None
    if callable(getattr(model, "hidden_preactivations", None)):
        return KinkField(model) if callable(getattr(model, "split", None)) else None
    return KinkField(model)
