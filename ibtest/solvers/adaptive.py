"""Batched embedded Runge–Kutta solver for gradient flow dθ/dt = −∇L(θ), for every model.

Method
------
Dormand–Prince 8(5,3) (``DOP853``, the default, ``order=8``) or Dormand–Prince 5(4)
(``order=5``), in float64 torch, with a step size, an error estimate and a status per instance.
All instances advance together; an instance that finishes leaves the working set at once (its
tensors are indexed out), so it costs nothing afterwards. Why DOP853 by default: at the
tolerances verdicts need (rtol ≈ 1e-10) an 8th-order step is ~6× longer than a 5th-order one for
twice the gradient evaluations, and the cost of a batched step is dominated by per-operation
overhead, not by arithmetic, so fewer steps win; on the stiff, stability-limited tail both
methods need about the same number of gradient evaluations per unit of time (real stability
interval ≈ 6.0 for 12 stages against ≈ 3.3 for 6). ``order=5`` is kept for cross-checks.

Per-step cost. A batched step is ~13 model gradients plus bookkeeping, each a string of tiny
tensor operations, so the loop keeps the operation count low: one vector–matrix product and one
``addcmul`` per stage on the flat [s, B·P] view of the stages (vector @ matrix, whose rounding does
not depend on the batch size: an instance gets bit-identical answers alone and in a batch), one
step counter for the whole batch (every active instance takes one step per iteration), and the
rare-event rules (drift check, exact zero gradient, doubling checkpoints, chatter) each behind one
cheap test, their bookkeeping run only when it fires.

Kinks (an activation switching) are handled by step rejection: the error estimate of a step that
straddles a switch is large, the step shrinks until the switch is resolved to the tolerance.

Stopping rules and statuses (per instance, checked after every accepted step)
----------------------------------------------------------------------------
``DIVERGED``  θ or the loss is non-finite, or ‖θ‖ > ``div_norm``; or *power-law escape*: at
              the last ``growth_window`` doublings of t (t ≥ ``growth_t_min``) ‖θ‖ grew at every
              doubling, the loss fell at every doubling, the fitted exponent
              p = Δlog‖θ‖/Δlog t over the window is ≥ ``growth_min_rate`` and the exponent over
              the second half of the window is at least half the one over the first half (growth
              that does not level off, unlike the approach to a finite limit, where the
              increments of log‖θ‖ shrink geometrically per doubling). This is the situation of the
              2×2 matrix completion of Razin & Cohen: the loss → 0 only as ‖θ‖ → ∞, too slowly to
              ever pass ``div_norm``. ``info["growth"]`` = ‖θ‖ at stop / ‖θ0‖ (‖θ‖ itself when
              θ0 = 0) and ``info["growth_rate"]`` = the fitted exponent p (0 when not measured).
``CONVERGED`` loss ≤ ``fit_tol`` and the drift bound below is ≤ ``drift_tol``.
``STALLED``   loss > ``fit_tol`` and ∇L = 0 exactly (e.g. every unit dead), or loss > 1e6·fit_tol
              and, measured between two doublings of t, ‖∇L‖ decays at a rate μ > 0 with the
              loss decrease still possible at that rate, ‖∇L‖²/(2μ), below 1e-6·loss (the loss
              cannot reach fit_tol; θ itself may still creep, which does not matter as stalled
              triples are never judged).
``SLIDING``   Filippov sliding on a ReLU kink (see below).
``BUDGET``    t ≥ ``t_max`` or ``max_steps`` accepted+rejected steps, or the step size
              underflowed, before any of the above.

Drift bound (CONVERGED)
-----------------------
For gradient flow ‖θ(t) − θ(∞)‖ ≤ ∫_t^∞ ‖∇L(θ(s))‖ ds. Near a zero-loss point write the residual
r = f_θ(X) − y and J = ∂f/∂θ (n×P); then ∇L = Jᵀr, dr/dt = −JJᵀr, and the remaining motion of the
linearized flow is θ(∞) − θ(t) = −∫_t^∞ Jᵀe^{−JJᵀs}r ds = −J⁺r (the minimum-norm Gauss–Newton
correction), whose norm is ≤ ‖r‖/σ⁺_min(J), σ⁺_min the smallest non-zero singular value of J
(equivalently: the PL inequality ‖∇L‖² ≥ 2σ⁺²_min·L gives ∫‖∇L‖ ≤ √(2L)/σ⁺_min). We report

    drift = 2 · ‖b‖ / σ⁺_min(Ĝ)

where Ĝ has the unit rows ĝ_i = g_i/‖g_i‖ of the per-point gradients g_i = r_i ∇f_i (computed with
``model.grad`` on the one-point mask e_i, so only the model's batched ``grad``/``loss`` are used)
and b_i = 2ℓ_i/‖g_i‖ = |r_i|/‖∇f_i‖ (ℓ_i the per-point loss): the system Ĝδ = b is the system
Jδ = r with rows rescaled, so ‖J⁺r‖ ≤ ‖b‖/σ⁺_min(Ĝ). Rows with g_i = 0 (a point whose prediction
cannot move, e.g. an inactive zero-label point, or a fitted one) are dropped; singular values
below 1e-10·σ_max count as zero. Why conservative: (i) ‖b‖/σ⁺_min bounds the exact linearized
drift ‖J⁺r‖ for every direction of r, not only the current one; (ii) the factor 2 covers the
non-linear terms, which are O(‖r‖) relative at loss ≤ fit_tol; (iii) if an active point switches
off later (a zero-label point on its kink) the rows that remain form a submatrix whose smallest
non-zero singular value is not smaller (interlacing). It is recomputed whenever the loss has
fallen enough since the last check; it cannot be fooled by a mode that decays slowly but is
barely excited today (a bound from the currently measured decay rate of ‖∇L‖ can: log‖∇L‖ is
convex along a linear flow, so today's rate over-estimates the future one).

Sliding (SLIDING)
-----------------
For models with ``hidden_preactivations(theta, X) -> [B, n, m]`` (or a single neuron's
``preactivation -> [B, n]``) the solver records the sign pattern of the pre-activations at every
accepted step. A *chatter event* of entry (i, j) is an accepted step in which z_ij changed sign
while at least one step was rejected since the previous accepted step (a switch the error control
had to resolve). When the field is discontinuous across z_ij = 0 and points towards the kink from
both sides, every step straddles it: the entry flips back and forth with rejections in between.
An entry with ``sliding_count`` chatter events (counts reset after 200 accepted steps without an
event) gives the instance the status SLIDING; its θ is the last iterate. A one-off switch gives
one event; hovering of a zero-label point at its kink (the field is continuous there) makes the
sign flip without rejections and counts nothing.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .. import status as st
from ..specs import ModelBase, Option, Solver, SolveResult

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# Butcher tableaux
# --------------------------------------------------------------------------------------------
def _dopri5():
    A = torch.zeros(7, 7, dtype=torch.float64)
    A[1, :1] = torch.tensor([1 / 5])
    A[2, :2] = torch.tensor([3 / 40, 9 / 40])
    A[3, :3] = torch.tensor([44 / 45, -56 / 15, 32 / 9])
    A[4, :4] = torch.tensor([19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729])
    A[5, :5] = torch.tensor([9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656])
    b = torch.tensor([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84], dtype=torch.float64)
    E = torch.tensor([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40],
                     dtype=torch.float64)
    return {"S": 6, "A": A[:6, :6], "b": b, "E": E, "E3": None, "err_order": 4, "order": 5}


def _dop853():
    from scipy.integrate._ivp import dop853_coefficients as c  # the published coefficients

    S = 12
    A = torch.tensor(c.A[:S, :S], dtype=torch.float64)
    b = torch.tensor(c.A[S, :S], dtype=torch.float64)
    return {"S": S, "A": A, "b": b, "E": torch.tensor(c.E5, dtype=torch.float64),
            "E3": torch.tensor(c.E3, dtype=torch.float64), "err_order": 7, "order": 8}


_TABLEAUX: dict[int, dict] = {}


def _tableau(order: int) -> dict:
    if order not in (5, 8):
        raise ValueError(f"order must be 5 (Dormand–Prince 5(4)) or 8 (DOP853), got {order}")
    if order not in _TABLEAUX:
        _TABLEAUX[order] = _dopri5() if order == 5 else _dop853()
    return _TABLEAUX[order]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _preact_fn(model: ModelBase):
    """A function θ, X -> pre-activations [B, n, m], or None when the model exposes none."""
    hp = getattr(model, "hidden_preactivations", None)
    if callable(hp):
        return hp
    pa = getattr(model, "preactivation", None)
    if callable(pa) and getattr(model, "piecewise", None) is not None:
        pw = model.piecewise
        if pw.pos != pw.neg:  # a real kink
            return lambda th, X: pa(th, X).unsqueeze(-1)
    return None


def _kink_evidence(preact, A: Tensor, S: int, th: Tensor, K: Tensor, h: Tensor, X: Tensor,
                   mask: Tensor) -> Tensor:
    """Which pre-activations [b, n, m] had the field point at their kink from both sides among
    the points of one step: the stage points θ_s = θ + h Σ_k A_sk K_k (field K_s) and the
    proposal θ_new (field K_S).

    The rate of z_e along a field value K is ż_e = z_e(θ + K) − z_e(θ) (pre-activations are
    affine in θ). Evidence for entry e: some point with z_e > 0 and ż_e < 0 and some point with
    z_e < 0 and ż_e > 0. A transversal switch (ż of one sign on both sides) and a continuous
    field (a zero-label point hovering at its kink) give none.
    """
    b, P = th.shape
    Kst = K[: S + 1]  # [S+1, b, P]
    coef = torch.cat([A, A.new_zeros(S, 1)], 1)
    coef = torch.cat([coef, coef.new_zeros(1, S + 1)], 0)
    coef[S, :S] = _B_ROW[S]
    pts = th.unsqueeze(0) + h.view(1, b, 1) * (coef @ Kst.reshape(S + 1, -1)).reshape(S + 1, b, P)
    Xs = X.unsqueeze(0).expand(S + 1, *X.shape).reshape((S + 1) * b, *X.shape[1:])
    z0 = preact(th, X)
    z = preact(pts.reshape((S + 1) * b, P), Xs).reshape(S + 1, *z0.shape)
    zd = preact((th.unsqueeze(0) + Kst).reshape((S + 1) * b, P), Xs).reshape(S + 1, *z0.shape) \
        - z0.unsqueeze(0)
    down_above = ((z > 0) & (zd < 0)).any(0)
    up_below = ((z < 0) & (zd > 0)).any(0)
    live = (mask > 0).unsqueeze(-1)
    return down_above & up_below & live


_B_ROW: dict[int, Tensor] = {}


def drift_bound(model: ModelBase, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor,
                rcond: float = 1e-10, safety: float = 2.0, return_step: bool = False):
    """2·‖b‖/σ⁺_min(Ĝ): a bound on the remaining motion ‖θ(t) − θ(∞)‖ near a zero-loss point.

    See the module docstring. Uses only ``model.grad`` and ``model.loss`` on one-point masks.
    Returns [B] (0 where every residual is exactly 0); with ``return_step`` also the
    linearized remaining motion J⁺r [B, P] (θ(∞) ≈ θ − J⁺r).
    """
    B, n, d = X.shape
    P = theta.shape[1]
    eye = torch.eye(n, dtype=theta.dtype)
    th = theta.unsqueeze(1).expand(B, n, P).reshape(B * n, P)
    Xr = X.unsqueeze(1).expand(B, n, n, d).reshape(B * n, n, d)
    yr = y.unsqueeze(1).expand(B, n, n).reshape(B * n, n)
    mr = (mask.unsqueeze(1) * eye).reshape(B * n, n)
    g = model.grad(th, Xr, yr, mr).reshape(B, n, P)  # g_i = r_i ∇f_i
    ell = model.loss(th, Xr, yr, mr).reshape(B, n)  # ½ r_i²
    gn = g.norm(dim=-1)
    live = gn > 0
    safe = torch.where(live, gn, torch.ones_like(gn))
    G = torch.where(live.unsqueeze(-1), g / safe.unsqueeze(-1), torch.zeros_like(g))
    b = torch.where(live, 2.0 * ell / safe, torch.zeros_like(ell))
    U, sv, Vh = torch.linalg.svd(G, full_matrices=False)  # G = U diag(sv) Vh
    smax = sv[:, :1]
    nz = sv > rcond * smax.clamp_min(1e-300)
    smin = torch.where(nz, sv, torch.full_like(sv, math.inf)).min(dim=-1).values
    bn = b.norm(dim=-1)
    out = torch.where(bn > 0, safety * bn / smin, torch.zeros_like(bn))
    out = torch.where(torch.isfinite(out), out, torch.full_like(out, math.inf))
    if not return_step:
        return out
    inv = torch.where(nz, 1.0 / sv.clamp_min(1e-300), torch.zeros_like(sv))
    delta = torch.einsum("bkp,bk->bp", Vh, inv * torch.einsum("bnk,bn->bk", U, b))  # J⁺r
    # Σ‖∇f_i‖² = trace(JJᵀ) ≥ λ_max of the Gauss–Newton Hessian (‖∇f_i‖ = ‖g_i‖/|r_i|)
    rj = torch.where(live, gn * gn / (2.0 * ell).clamp_min(1e-300), torch.zeros_like(gn))
    return out, delta, rj.sum(-1)


# --------------------------------------------------------------------------------------------
# the solver
# --------------------------------------------------------------------------------------------
def solve_adaptive(
    model: ModelBase,
    X: Tensor,
    y: Tensor,
    mask: Tensor,
    theta0: Tensor,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    fit_tol: float = 1e-20,
    drift_tol: float = 1e-9,
    t_max: float = 1e7,
    max_steps: int = 200_000,
    div_norm: float = 1e8,
    order: int = 8,
    sliding_count: int = 8,
    growth_window: int = 8,
    growth_t_min: float = 100.0,
    growth_min_rate: float = 0.02,
    threads: int = 1,
) -> SolveResult:
    """Integrate gradient flow for B instances at once; see the module docstring for the rules.

    X [B, n, d], y [B, n], mask [B, n], theta0 [B, P] (float64). Returns a :class:`SolveResult`
    with ``info``: ``t``, ``steps`` (accepted + rejected), ``drift`` (the drift bound at stop;
    inf where it was not established), ``grad_norm``, ``growth`` (‖θ‖/‖θ0‖), ``growth_rate``
    (fitted exponent of ‖θ‖ ~ t^p over the last doublings of t, 0 if not measured).

    ``threads``: torch intra-op threads during the solve (restored afterwards; 0 leaves the
    setting alone). The tensors are tiny, so thread hand-offs cost more than they save: 1 is
    ~10× faster than 2 on batched 3×4 matmuls.
    """
    prev_threads = torch.get_num_threads()
    if threads and threads != prev_threads:
        torch.set_num_threads(int(threads))
    try:
        with torch.no_grad():
            return _solve(model, X, y, mask, theta0, rtol=rtol, atol=atol, fit_tol=fit_tol,
                          drift_tol=drift_tol, t_max=t_max, max_steps=max_steps, div_norm=div_norm,
                          order=order, sliding_count=sliding_count, growth_window=growth_window,
                          growth_t_min=growth_t_min, growth_min_rate=growth_min_rate)
    finally:
        if threads and threads != prev_threads:
            torch.set_num_threads(prev_threads)


def _solve(model, X, y, mask, theta0, *, rtol, atol, fit_tol, drift_tol, t_max, max_steps, div_norm,
           order, sliding_count, growth_window, growth_t_min, growth_min_rate) -> SolveResult:
    tab = _tableau(int(order))
    S, A, bw, E, E3 = tab["S"], tab["A"], tab["b"], tab["E"], tab["E3"]
    _B_ROW[S] = bw
    # per-stage coefficient vectors: one vector-matrix product per stage on the flat [s, b·P]
    # view of the stages (vector @ matrix, not a [1, s] mm: its rounding does not depend on the
    # batch size, so an instance gets the same answer alone and in a batch)
    A_rows = [A[s, :s].contiguous() for s in range(S)]
    expo = -1.0 / (tab["err_order"] + 1.0)
    safety_fac, fac_min, fac_max = 0.9, 0.2, 10.0

    dt = torch.float64
    X, y, mask = X.to(dt), y.to(dt), mask.to(dt)
    theta0 = theta0.to(dt)
    B, P = theta0.shape
    preact = _preact_fn(model)

    # ---- outputs --------------------------------------------------------------------------
    out_theta = theta0.clone()
    out_status = torch.full((B,), st.BUDGET, dtype=torch.int64)
    out_t = torch.zeros(B, dtype=dt)
    out_steps = torch.zeros(B, dtype=torch.int64)
    out_drift = torch.full((B,), math.inf, dtype=dt)
    out_gnorm = torch.zeros(B, dtype=dt)
    out_rate = torch.zeros(B, dtype=dt)

    # ---- working set ----------------------------------------------------------------------
    idx = torch.arange(B)
    th = theta0.clone()
    Xa, ya, ma = X, y, mask

    def F(theta, Xs, ys, ms):
        return -model.grad(theta, Xs, ys, ms)

    f = F(th, Xa, ya, ma)
    loss = model.loss(th, Xa, ya, ma)
    t = torch.zeros(B, dtype=dt)
    n_iter = 0  # every active instance takes one (accepted or rejected) step per iteration

    # initial step (Hairer, Nørsett & Wanner II.4)
    scale = atol + rtol * th.abs()
    d0 = (th / scale).pow(2).mean(-1).sqrt()
    d1 = (f / scale).pow(2).mean(-1).sqrt()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    f1 = F(th + h0.unsqueeze(-1) * f, Xa, ya, ma)
    d2 = ((f1 - f) / scale).pow(2).mean(-1).sqrt() / h0
    dm = torch.maximum(d1, d2)
    h1 = torch.where(dm <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / dm.clamp_min(1e-300)) ** (1.0 / (tab["order"] + 1)))
    h = torch.minimum(100 * h0, h1).clamp(max=t_max)

    growth_lim = torch.full((B,), fac_max, dtype=dt)  # 1 after a rejected step: no growth
    next_check = torch.full((B,), 1e6 * fit_tol, dtype=dt)  # run the drift check when loss ≤ this
    h_cap = torch.full((B,), math.inf, dtype=dt)
    drift = torch.full((B,), math.inf, dtype=dt)
    # doubling checkpoints of t: ring of (log t, log‖θ‖, log L, log‖g‖)
    W = int(growth_window)
    ck_next = torch.full((B,), 1e-3, dtype=dt)
    diss = torch.zeros(B, dtype=dt)  # ∫ ‖∇L‖² dt since the last checkpoint
    ck_loss = loss.clone()
    ck_hist = torch.full((B, W + 1, 4), math.nan, dtype=dt)
    ck_n = torch.zeros(B, dtype=torch.int64)
    rate = torch.zeros(B, dtype=dt)
    if preact is not None:
        z_old = preact(th, Xa)
        pos_old = z_old > 0
        chat = torch.zeros(z_old.shape, dtype=torch.int64)
        quiet = torch.zeros(B, dtype=torch.int64)  # accepted steps since the last chatter event
    th0n = theta0.norm(dim=-1)

    def retire(sel: Tensor, code) -> None:
        """Write the outputs of the working-set rows ``sel`` (bool) with status ``code``."""
        gi = idx[sel]
        out_theta[gi] = th[sel]
        out_status[gi] = code if isinstance(code, int) else code[sel]
        out_t[gi] = t[sel]
        out_steps[gi] = n_iter
        out_drift[gi] = drift[sel]
        out_gnorm[gi] = f[sel].norm(dim=-1)
        out_rate[gi] = rate[sel]

    while idx.numel() > 0:
        b = idx.numel()
        # ---- one embedded RK step for every active instance --------------------------------
        K = torch.empty(S + 1, b, P, dtype=dt)
        Kf = K.view(S + 1, b * P)
        K[0] = f
        hc = h.unsqueeze(-1)
        for s in range(1, S):
            dy = (A_rows[s] @ Kf[:s]).view(b, P)
            K[s] = F(torch.addcmul(th, hc, dy), Xa, ya, ma)
        th_new = torch.addcmul(th, hc, (bw @ Kf[:S]).view(b, P))
        K[S] = F(th_new, Xa, ya, ma)
        sc = torch.maximum(th.abs(), th_new.abs()).mul_(rtol).add_(atol)
        e5 = (E @ Kf).view(b, P).div_(sc).square_().sum(-1)
        if E3 is None:
            err = h * (e5 / P).sqrt()
        else:
            e3 = (E3 @ Kf).view(b, P).div_(sc).square_().sum(-1)
            den = (e5 + 0.01 * e3).clamp_min(1e-300)
            err = torch.where((e5 == 0) & (e3 == 0), torch.zeros_like(e5), h * e5 / (den * P).sqrt())
        err = torch.nan_to_num_(err, nan=math.inf, posinf=math.inf)
        accept = err <= 1.0
        n_iter += 1

        # ---- step size update --------------------------------------------------------------
        # err = 0 gives fac_max through the clamp; after a rejection the step may not grow
        # (growth_lim = 1 then; a rejected step has fac < 1 anyway)
        fac = torch.minimum(err.clamp_min(1e-300).pow_(expo).mul_(safety_fac).clamp_(fac_min, fac_max),
                            growth_lim)
        growth_lim = torch.where(accept, fac_max, 1.0)
        acc_c = accept.unsqueeze(-1)
        h_acc = h * accept
        # ∫‖∇L‖²dt over the step by the method's own quadrature (weights b at the stages)
        diss.addcmul_(h_acc, bw @ Kf[:S].square().view(S, b, P).sum(-1))
        th_old = th
        th = torch.where(acc_c, th_new, th)
        f = torch.where(acc_c, K[S], f)
        t = t + h_acc
        loss = torch.where(accept, model.loss(th_new, Xa, ya, ma), loss)
        # the step budget: h_cap (stability), and landing exactly on t_max
        h_next = torch.minimum(h * fac, torch.minimum(h_cap, (t_max - t).clamp_min_(0.0)))

        # ---- sliding detection -------------------------------------------------------------
        # examine the steps that were rejected or whose proposal flipped a pre-activation. Chatter
        # counts only change at events, so the 200-quiet-steps reset is applied lazily there.
        sliding = None
        if preact is not None:
            z_new = preact(th_new, Xa)
            pos_new = z_new > 0
            look = (pos_new != pos_old).flatten(1).any(-1).logical_or_(~accept)
            quiet += accept
            if bool(look.any()):
                ri = look.nonzero().squeeze(-1)
                ev = _kink_evidence(preact, A, S, th_old[ri], K[:, ri], h[ri], Xa[ri], ma[ri])
                hit = ev.flatten(1).any(-1)
                if bool(hit.any()):
                    rj = ri[hit]
                    stale = (quiet[rj] > 200).view(-1, *([1] * (chat.dim() - 1)))
                    cj = torch.where(stale, torch.zeros_like(chat[rj]), chat[rj]) + ev[hit].long()
                    chat[rj] = cj
                    quiet[rj] = 0
                    slid = cj.flatten(1).max(-1).values >= sliding_count
                    if bool(slid.any()):
                        sliding = torch.zeros(b, dtype=torch.bool)
                        sliding[rj[slid]] = True
            z_old = torch.where(accept.view(-1, *([1] * (z_old.dim() - 1))), z_new, z_old)
            pos_old = z_old > 0

        # ---- status checks -----------------------------------------------------------------
        # (rare events are found by one cheap test each; the full bookkeeping runs only then)
        thn = th.norm(dim=-1)
        diverged = ~(thn <= div_norm) | ~torch.isfinite(loss)  # non-finite θ or loss, or ‖θ‖ large
        converged = None
        cand = (loss <= next_check) & accept
        if bool(cand.any()):
            cand &= ~diverged
            ci = cand.nonzero().squeeze(-1)
            dr, delta, lam_max = drift_bound(model, th[ci], Xa[ci], ya[ci], ma[ci], return_step=True)
            # keep later steps well inside the stability region (h·λ_max ≤ 2): at its edge an
            # explicit method keeps tolerance-level noise in the residual instead of damping it
            h_cap[ci] = torch.minimum(h_cap[ci], 2.0 / lam_max.clamp_min(1e-300))
            # Gauss–Newton end point θ − J⁺r: the limit of the linearized flow. It removes the
            # tolerance-level residual noise an explicit method keeps on a stiff tail.
            th_gn = th[ci] - delta
            loss_gn = model.loss(th_gn, Xa[ci], ya[ci], ma[ci])
            ok = (dr <= drift_tol / 1.5) & (loss_gn <= fit_tol) & torch.isfinite(loss_gn)
            drift[ci] = 1.5 * dr  # ‖θ_gn − θ(∞)‖ ≤ ‖θ − θ(∞)‖ + ‖J⁺r‖ ≤ 1.5 · bound
            th[ci[ok]] = th_gn[ok]
            loss[ci[ok]] = loss_gn[ok]
            converged = torch.zeros(b, dtype=torch.bool)
            converged[ci[ok]] = True
            # next check once the loss has fallen so that √L scaling would meet drift_tol
            ratio = (drift_tol / dr.clamp_min(1e-300)) ** 2
            nxt = loss[ci] * torch.clamp(0.5 * ratio, max=0.25)
            next_check[ci] = torch.where(ok, next_check[ci], torch.minimum(nxt, 0.25 * loss[ci]))
        not_conv = ~diverged if converged is None else ~diverged & ~converged
        stalled = None
        zero_g = (f == 0).all(-1)
        if bool(zero_g.any()):
            stalled = accept & not_conv & (loss > fit_tol) & zero_g

        # doubling checkpoints (stalled by rate, power-law escape)
        escaped = None
        ck = (t >= ck_next) & accept
        if bool(ck.any()):
            ck &= not_conv
            escaped = torch.zeros(b, dtype=torch.bool)
            if stalled is None:
                stalled = torch.zeros(b, dtype=torch.bool)
            if sliding is None:
                sliding = torch.zeros(b, dtype=torch.bool)
            gnorm = f.norm(dim=-1)
            ci = ck.nonzero().squeeze(-1)
            rec = torch.stack([t[ci].log(), thn[ci].clamp_min(1e-300).log(),
                               loss[ci].clamp_min(1e-300).log(), gnorm[ci].clamp_min(1e-300).log()], -1)
            hist = torch.cat([ck_hist[ci, 1:], rec.unsqueeze(1)], 1)
            ck_hist[ci] = hist
            ck_n[ci] += 1
            ck_next[ci] = 2.0 * t[ci]
            have2 = ck_n[ci] >= 2
            prev = hist[:, -2]
            dtt = (rec[:, 0].exp() - prev[:, 0].exp())
            mu = (prev[:, 3] - rec[:, 3]) / dtt
            g_ = rec[:, 3].exp()
            st_rate = have2 & (mu > 0) & (g_ * g_ / (2 * mu) < 1e-6 * loss[ci]) & (loss[ci] > 1e6 * fit_tol)
            stalled[ci[st_rate]] = True
            # power-law escape of ‖θ‖ with the loss falling
            full = (ck_n[ci] >= W + 1) & (hist[:, 0, 0].exp() >= growth_t_min)
            dlt = hist[:, 1:, 0] - hist[:, :-1, 0]
            dth = hist[:, 1:, 1] - hist[:, :-1, 1]
            dls = hist[:, 1:, 2] - hist[:, :-1, 2]
            p = (hist[:, -1, 1] - hist[:, 0, 1]) / (hist[:, -1, 0] - hist[:, 0, 0])
            hw = W // 2
            p1 = dth[:, :hw].sum(-1) / dlt[:, :hw].sum(-1)
            p2 = dth[:, hw:].sum(-1) / dlt[:, hw:].sum(-1)
            esc = full & (dth > 0).all(-1) & (dls < 0).all(-1) & (p >= growth_min_rate) & (p2 >= 0.5 * p1)
            esc = esc & (loss[ci] > 0)
            rate[ci] = torch.where(full, p, rate[ci])
            escaped[ci[esc]] = True
            # energy identity: along a classical solution L(t0) − L(t1) = ∫‖∇L‖²dt. A large deficit
            # means the iterates are pinned on a kink (Filippov sliding), not following GF.
            e_exp = diss[ci]  # accumulated since the last checkpoint (no cancellation)
            dL = ck_loss[ci] - loss[ci]
            pinned = (e_exp > 1e-3 * ck_loss[ci]) & (dL < 0.1 * e_exp) & (loss[ci] > fit_tol)
            if preact is not None:
                # only when some pre-activation sits at a kink (0 < |z| ≤ 1e-6·max|z|): the
                # quadrature of ∫‖∇L‖² is not exact on stiff steps, a kink must be in play
                zc = z_old[ci].abs().flatten(1)
                at_kink = ((zc > 0) & (zc <= 1e-6 * zc.max(-1, keepdim=True).values)).any(-1)
                sliding[ci[pinned & at_kink]] = True
            diss[ci] = 0.0
            ck_loss[ci] = loss[ci]

        # the drift bound is kept only while the loss stays fitted (converged rows have loss_gn ≤ fit_tol)
        drift.masked_fill_(loss > fit_tol, math.inf)

        budget_all = n_iter >= max_steps
        budget = h_next <= 1e-15 * t.clamp_min(1.0)  # the step underflowed (or t reached t_max)
        done = diverged | budget
        for flag in (converged, stalled, escaped, sliding):
            if flag is not None:
                done |= flag
        if budget_all or bool(done.any()):
            if budget_all:
                done = torch.ones(b, dtype=torch.bool)
            code = torch.full((b,), st.BUDGET, dtype=torch.int64)
            if sliding is not None:
                code[sliding] = st.SLIDING
            if stalled is not None:
                code[stalled] = st.STALLED
            if escaped is not None:
                code[escaped] = st.DIVERGED
            if converged is not None:
                code[converged] = st.CONVERGED
            code[diverged] = st.DIVERGED
            retire(done, code)
            keep = ~done
            idx, th, f, t, h_next, loss = idx[keep], th[keep], f[keep], t[keep], h_next[keep], loss[keep]
            Xa, ya, ma = Xa[keep], ya[keep], ma[keep]
            growth_lim, next_check, drift = growth_lim[keep], next_check[keep], drift[keep]
            h_cap = h_cap[keep]
            ck_next, ck_hist, ck_n, rate = ck_next[keep], ck_hist[keep], ck_n[keep], rate[keep]
            diss, ck_loss = diss[keep], ck_loss[keep]
            if preact is not None:
                chat, quiet, z_old, pos_old = chat[keep], quiet[keep], z_old[keep], pos_old[keep]
        h = h_next

    loss_out = model.loss(out_theta, X, y, mask)
    tn = out_theta.norm(dim=-1)
    growth = torch.where(th0n > 0, tn / th0n.clamp_min(1e-300), tn)
    info = {"t": out_t, "steps": out_steps, "drift": out_drift, "grad_norm": out_gnorm,
            "growth": growth, "growth_rate": out_rate}
    return SolveResult(out_theta, out_status, loss_out, info)


def tighten(options: dict[str, Any]) -> dict[str, Any]:
    """Settings of a re-solve with a smaller error: rtol, atol and drift_tol divided by 100.

    Floors: rtol ≥ 1e-13 and atol ≥ 1e-15 (below them float64 round-off dominates the error
    estimate and steps shrink for nothing), drift_tol ≥ 1e-12 (the drift bound is ~‖r‖/σ and
    float64 residuals are not resolved much below 1e-13·|y|). The step budget is doubled.
    """
    o = dict(options)
    o["rtol"] = max(float(o.get("rtol", 1e-10)) / 100.0, 1e-13)
    o["atol"] = max(float(o.get("atol", 1e-12)) / 100.0, 1e-15)
    o["drift_tol"] = max(float(o.get("drift_tol", 1e-9)) / 100.0, 1e-12)
    o["max_steps"] = 2 * int(o.get("max_steps", 200_000))
    return o


SPEC = Solver(
    name="adaptive",
    solve=solve_adaptive,
    doc="batched embedded Runge-Kutta (DOP853 or Dormand-Prince 5(4)) with per-instance step "
        "size, drift-bounded convergence and divergence/stall/sliding detection; every model",
    options={
        "rtol": Option(1e-10, float, "relative local error tolerance"),
        "atol": Option(1e-12, float, "absolute local error tolerance"),
        "fit_tol": Option(1e-20, float, "loss at or below which a limit may be declared converged"),
        "drift_tol": Option(1e-9, float, "bound on the remaining motion |theta(t) - theta(inf)|"),
        "t_max": Option(1e7, float, "flow-time budget"),
        "max_steps": Option(200_000, int, "step budget (accepted + rejected) per instance"),
        "div_norm": Option(1e8, float, "|theta| beyond which an instance is diverged"),
        "order": Option(8, int, "8: DOP853, 5: Dormand-Prince 5(4)"),
        "sliding_count": Option(8, int, "chatter events on one pre-activation that mean sliding"),
        "growth_window": Option(8, int, "doublings of t over which power-law escape is fitted"),
        "growth_t_min": Option(100.0, float, "flow time before power-law escape may be declared"),
        "growth_min_rate": Option(0.02, float, "smallest exponent p of |theta| ~ t^p called escape"),
        "threads": Option(1, int, "torch intra-op threads during the solve (0: leave as is)"),
    },
    tighten=tighten,
)
