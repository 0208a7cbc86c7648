r"""The stiff tail of the ``adaptive`` solver: a batched Rosenbrock step (Rodas5P by default, or
Rodas5, Rodas3) with the exact Hessian of the loss, for instances whose explicit step is
stability-limited (issue 12).

Why. On a slow last piece the flow θ' = −∇L(θ) has Jacobian −∇²L with eigenvalues from −λ_max
(curvature, ~70 on W2) to −σ_min(J)² (~1e-4): the explicit DOP853 step is held at h ≤ 6/λ_max by
stability while the tail lasts t ~ 1/σ_min², i.e. millions of steps. A linearly implicit
(Rosenbrock) method is L-stable: its step is limited by accuracy only and grows with t.

Method. :mod:`ibtest.solve.solvers.rosenbrock` (the W-transformed form, one factorization of
I/(hγ) + H per step), with J = −H and H the Hessian of the loss on the current activation
pattern (the region where the flow is smooth). Why Rodas5 (order 5, 8 stages) and not Rodas3
(order 3, 4 stages): at the tolerances verdicts need (rtol 1e-10) an order-3 step is accuracy-
limited to ~(1e-10)^(1/3) of the solution's time scale, often *below* the explicit method's
stability limit, so the switch bought nothing (W2 instance 994 of seed 0: 5,148 Rodas3 steps
against 579 Rodas5 steps to the same limit, within 1e-9). Why Rodas5P and not Rodas5: the same
8 stages, and no order reduction where the fast modes track a slow motion (a singularly
perturbed flow, W2's tails past a saddle): instance 527 of seed 0 took 944 Rodas5 steps at
h ≈ 0.3 (:mod:`ibtest.solve.solvers.rosenbrock`).

H is the model's analytic ``loss_hessian`` where it defines one (``two_layer_relu``, the
single neurons: a few batched tensor operations), otherwise it is computed by forward-mode
automatic differentiation of ``model.grad`` (one ``jvp`` on the b·P rows θ ⊗ unit vectors, so no
model code changes and no per-instance Python; :func:`hessian_ad`), the linear
systems by one batched LU (``torch.linalg.lu_factor``/``lu_solve``, a LAPACK call per matrix:
an instance's answer does not depend on its batch). A model that also gives its Hessian in parts
(:class:`ibtest.LossHessianParts`: the Gauss–Newton factor and a block-diagonal residual term)
has its systems solved in O(P) from ``PARTS_MIN_P`` parameters on (:func:`step_hessian`,
:mod:`ibtest.solve.solvers.stiff_linear`): a width-256 network (P = 2,816) no longer factors a
[P, P] matrix at every step.

Kinks. The field is the one with the activation pattern held, and the Hessian that of the
pattern. A step whose stage points cross a kink against the pattern, or at whose end a held kink
stops being held, is rejected; it is retried shorter while it is well above the explicit step,
else the instance returns to the explicit method, which locates the event on its dense output
(``adaptive``, :func:`~ibtest.solve.solvers.adaptive_step.stiff_exit`).

Grazing entries (the rule of the explicit path, :meth:`Sliding._grazing
<ibtest.solve.solvers.adaptive_sliding.Sliding._grazing>`, applied to the stage points). A free
entry seen past its kink at some stage point (or at θ_new) does not reject the step when it
*grazes*: at every point where it is past, both one-sided normal velocities of the entry point
back to its side beyond rounding (:func:`grazes_back`: the field of the pattern there and the
field with the entry's slope switched, ``hold_tolerance`` as the allowance), its unit holds no
kink, and at θ_new it is on its side or within ``AT_KINK`` of its kink. Then the flow cannot
cross there: at those positions it is pushed back to the entry's side from both sides, so the
half-space of its side is not left, and the dip of a stage point below the kink is the
integration error of z (a Rosenbrock stage point is a low-order approximation of the solution,
off it by far more than the rounding of z). Such an entry sits within that error of its kink
with a normal velocity of the order of the residuals; counting it sent W2 seed 0 instance 318
back to the explicit method at two of every three Rosenbrock steps (1,072 steps, only 41 of
them Rosenbrock). The grazed entries are returned, and the solver puts those closer to their
kink than ``RELEASE_OFFSET`` (or past it) at θ_new back at that offset on their side, as the
explicit path does. A real crossing still rejects the step: at the point where it is past, the
flow there moves on across (the velocity on its own side points at the kink or the other side's
away from it), or θ_new is past by more than ``AT_KINK``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ibtest.plugin.specs import HessianParts, LossHessian, LossHessianParts
from ibtest.solve.solvers.kinks import KinkField, UnitFactors
from ibtest.solve.solvers.rosenbrock import RODAS5, RosenbrockTableau, rosenbrock_step
from ibtest.solve.solvers.stiff_linear import PARTS_MIN_P

Tensor = torch.Tensor


def hessian(model: Any, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """∇²L [b, P, P] on the activation pattern of θ [b, P] (X [b, n, d], y and mask [b, n]):
    the model's analytic ``loss_hessian`` when it has the capability (:class:`ibtest.LossHessian`),
    else :func:`hessian_ad`."""
    if isinstance(model, LossHessian):
        H = model.loss_hessian(theta, X, y, mask)
        if H is not None:
            return H
    return hessian_ad(model, theta, X, y, mask)


def step_hessian(model: Any, kf: KinkField | None, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor,
                 held: Tensor | None, has: Tensor | None) -> Tensor | HessianParts:
    """The Jacobian's negative for a Rosenbrock step of the rows θ [b, P]: ∇²L, projected
    (ΠHΠ) on the rows ``has`` [b] that hold kinks (``held`` [b, n, m]). In parts
    (:class:`ibtest.HessianParts`) where the model gives them (:class:`ibtest.LossHessianParts`)
    and P ≥ ``PARTS_MIN_P`` (then the step's systems are solved in O(P),
    :mod:`~ibtest.solve.solvers.stiff_linear`), else dense [b, P, P]."""
    if isinstance(model, LossHessianParts) and theta.shape[1] >= PARTS_MIN_P:
        parts = model.loss_hessian_parts(theta, X, y, mask)
        if kf is None or has is None or held is None or not bool(has.any()):
            return parts
        hp = HessianParts(parts.J[has], parts.R[has], parts.idx)
        proj = kf.project_parts(X[has], held[has], hp)
        if proj is not None:
            J, R = parts.J.clone(), parts.R.clone()
            J[has], R[has] = proj.J, proj.R
            return HessianParts(J, R, parts.idx)
    H = hessian(model, theta, X, y, mask)
    if kf is not None and has is not None and held is not None and bool(has.any()):
        H = H.clone()
        H[has] = kf.project_hessian(X[has], held[has], H[has])
    return H


def hessian_ad(model: Any, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """∇²L [b, P, P] on the activation pattern of θ by forward-mode AD: the derivative of
    ``model.grad`` along the P unit vectors, evaluated as one batched ``jvp`` on b·P rows, then
    symmetrized. H[b, l, k] = ∂g_k/∂θ_l before symmetrizing.

    Frozen parameters (a grad component that is identically 0, e.g. v of ``two_layer_relu`` with
    ``train_output=False``): their column ∂g_k/∂θ is 0 but their row ∂g/∂θ_k is not, and the
    plain symmetrization would put half of that row into the Jacobian −H of the flow, which then
    moves the frozen parameters in a Rosenbrock step. Every k whose column is exactly 0 has its row
    and column zeroed (for a true gradient the row of a zero column is 0 anyway): H is the Hessian
    of L in the trained parameters, 0 on the frozen ones, as a model's ``loss_hessian`` gives it.

    At a kink (a pre-activation exactly 0) the result follows whatever derivative autograd's
    forward mode takes there (``clamp_min``: 1, ``where(z > 0, ...)``: the z < 0 branch), not
    necessarily the model's declared σ'(0); ``loss_hessian`` follows the declared one."""
    b, P = theta.shape
    rep = lambda a: a.repeat_interleave(P, 0)  # noqa: E731
    E = torch.eye(P, dtype=theta.dtype, device=theta.device).repeat(b, 1)
    Xr, yr, mr = rep(X), rep(y), rep(mask)
    Hc = torch.func.jvp(lambda t: model.grad(t, Xr, yr, mr), (rep(theta),), (E,))[1]
    H = Hc.view(b, P, P)
    live = (H != 0).any(1).to(H.dtype)  # [b, P]: 0 where g_k does not depend on θ
    return 0.5 * (H + H.transpose(1, 2)) * live.unsqueeze(1) * live.unsqueeze(2)


def grazes_back(kf: KinkField, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, slope: Tensor, sgn: Tensor,
                zd: Tensor) -> Tensor:
    """[b, n, m]: both one-sided normal velocities of each entry point back to its side beyond
    rounding at θ [b, P]: sgn·a > tol for a = ż on the entry's own side (``zd`` [b, n, m], the
    pre-activations of the field of the pattern ``slope``) and for the other side's, a₋ = a₊ +
    α‖x_i‖² (from above), a₊ = a₋ − α‖x_i‖² (from below), tol = ``hold_tolerance``·‖x_i‖². ``sgn``
    [b, n, m]: ±1, the side of each entry. Valid for entries on units that hold no kink (the
    field of such a unit is not projected). The grazing test of the explicit path
    (:meth:`~ibtest.solve.solvers.adaptive_sliding.Sliding._grazing`) and of the Rosenbrock step."""
    nx = (X * X).sum(-1).unsqueeze(-1)
    al = kf.alpha(theta, kf.residual(theta, X, y, mask, slope))
    tol_v = kf.hold_tolerance(theta, X, y, mask, slope) * nx
    zo = zd + sgn * al * nx
    return (sgn * zd > tol_v) & (sgn * zo > tol_v)


class TailStep(NamedTuple):
    """The result of :func:`tail_step` for b rows."""

    theta: Tensor  #: θ_new [b, P]
    f: Tensor  #: F(θ_new) [b, P]
    err: Tensor  #: scaled error norm [b] (inf where kinked)
    kinked: Tensor  #: bool [b]: a real crossing or a held kink left (the step is rejected)
    grazed: Tensor | None  #: bool [b, n, m]: entries past their kink that graze it (not kinked rows)
    frac: Tensor  #: [b] where the step first crosses, as a fraction of h (nan: not estimated)


def tail_step(model: Any, F: Callable[[Tensor], Tensor], theta: Tensor, f0: Tensor, h: Tensor, X: Tensor,
              y: Tensor, mask: Tensor, rtol: float, atol: float, kf: KinkField | None = None,
              slope: Tensor | None = None, held: Tensor | None = None, Ap: Tensor | UnitFactors | None = None,
              tab: RosenbrockTableau = RODAS5,
              at_kink: float | None = None) -> TailStep:
    """One Rosenbrock step (``tab``: Rodas5 by default) of the stiff rows of the ``adaptive`` solver.

    ``F(θ)`` is the rows' field (the activation pattern held, projected onto held kinks), f0 =
    F(θ). Returns a :class:`TailStep`: θ_new, F(θ_new), the scaled error norm [b] (the explicit
    method's norm: RMS of the error over atol + rtol·max(|θ|, |θ_new|)), kinked [b]: a stage
    point has crossed a kink against the pattern ``slope`` [b, n, m] beyond rounding, or a held
    kink stops being held at θ_new (then the error is inf: the step is rejected; the solver
    shortens it or returns the row to the explicit method, which locates the event), grazed
    [b, n, m] or None: the entries past their kink at some point of a step that is not kinked
    because they graze (module docstring; only with ``at_kink`` given, the end-of-step allowance
    ``AT_KINK``: None counts every entry past its kink as a crossing), and frac [b]: on kinked
    rows with an entry past its kink at θ_new, the smallest fraction s·z(θ)/(s·z(θ) − s·z(θ_new))
    of the step at which such an entry's pre-activation, interpolated linearly, reaches its kink
    (nan elsewhere; an estimate of where to end a shorter step).

    ``held`` [b, n, m]: kink entries held by ``sliding: follow``. With every held λ*_e interior
    the Filippov velocity is −Π∇L, Π the projector onto the kinks' (constant) tangent space, so
    its Jacobian is −Π∇²LΠ (independent of σ'(0) on the held entries, whose normal parts Π
    removes); every stage then keeps z_e fixed. ``Ap``: the held rows' per-unit pseudo-inverses
    (:meth:`KinkField.unit_pinv`) for the leaving test."""
    has = held.flatten(1).any(-1) if kf is not None and held is not None else None
    H = step_hessian(model, kf, theta, X, y, mask, held, has)
    th_new, f_new, e, points, fields = rosenbrock_step(tab, F, theta, f0, h, H)
    sc = torch.maximum(theta.abs(), th_new.abs()).mul_(rtol).add_(atol)
    err = (e / sc).square().mean(-1).sqrt()
    err = torch.nan_to_num(err, nan=float("inf"), posinf=float("inf"))
    kinked = torch.zeros(theta.shape[0], dtype=torch.bool, device=theta.device)
    frac = torch.full_like(err, float("nan"))
    grazed = None
    if kf is not None and slope is not None and held is not None:
        sgn = torch.where(slope == kf.hi, 1.0, -1.0).to(theta.dtype)
        free = ~held & (mask > 0).unsqueeze(-1)
        # an entry within rounding of its kink (ROUND times the magnitude of its terms) has
        # not crossed it: a fitted point on a kink, where the field is continuous (counting it
        # sent W2 seed 1 instance 39 back to the explicit method at every step: 7,773 steps)
        n_pt = len(points)
        pts = torch.cat(points)  # [k·b, P]: the pre-activations of every point at once
        Xk = X.repeat(n_pt, 1, 1)
        zs = kf.preact(pts, Xk)
        tl = kf.rounding(pts, Xk)
        past_k = ((sgn.repeat(n_pt, 1, 1) * zs < -tl) & free.repeat(n_pt, 1, 1)).view(n_pt, *sgn.shape)
        pasts = list(past_k.unbind(0))
        past = past_k.any(0)
        crossed = past.flatten(1).any(-1)
        if at_kink is not None and bool(crossed.any()):
            # grazing entries (module docstring): checked on the rows with a past entry only
            ri = crossed.nonzero().squeeze(-1)
            Xr, yr, mr, sr, sg = X[ri], y[ri], mask[ri], slope[ri], sgn[ri]
            ok = past[ri] & ~held[ri].any(1, keepdim=True)  # on a unit that holds no kink
            th_e = th_new[ri]
            ok &= sg * kf.preact(th_e, Xr) >= -at_kink * kf.scale(th_e, Xr)
            for p, fp, q in zip(points, fields, pasts):
                q = q[ri]
                at = q.flatten(1).any(-1) & ok.flatten(1).any(-1)
                if not bool(at.any()):
                    continue
                ai = at.nonzero().squeeze(-1)
                back = grazes_back(kf, p[ri[ai]], Xr[ai], yr[ai], mr[ai], sr[ai], sg[ai], kf.preact(fp[ri[ai]], Xr[ai]))
                ok[ai] &= ~q[ai] | back
            real = past[ri] & ~ok
            crossed = crossed.clone()
            crossed[ri] = real.flatten(1).any(-1)
            grazed = torch.zeros_like(past)
            grazed[ri] = ok & ~real.flatten(1).any(-1).view(-1, 1, 1)
        kinked |= crossed
        if has is not None and Ap is not None and bool(has.any()):
            phi, _, _ = kf.hold_margin(th_new[has], X[has], y[has], mask[has], slope[has], Ap, held[has])
            kinked[has] |= (phi <= 0).flatten(1).any(-1)
        err = torch.where(kinked, torch.full_like(err, float("inf")), err)
        if grazed is not None:
            grazed &= ~kinked.view(-1, 1, 1)
        if bool(kinked.any()):
            ki = kinked.nonzero().squeeze(-1)
            z0 = (sgn[ki] * kf.preact(theta[ki], X[ki])).clamp_min(0.0)
            z1 = sgn[ki] * kf.preact(th_new[ki], X[ki])
            end = pasts[-1][ki]  # past at θ_new
            x = torch.where(end, z0 / (z0 - z1).clamp_min(1e-300), torch.full_like(z0, float("inf")))
            xm = x.flatten(1).amin(-1)
            frac[ki] = torch.where(torch.isfinite(xm), xm, torch.full_like(xm, float("nan")))
    return TailStep(th_new, f_new, err, kinked, grazed, frac)
