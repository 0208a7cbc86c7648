"""One step of the ``adaptive`` solver for the whole working set: the initial step size, the
embedded Runge–Kutta stages and error norm, the Rosenbrock step of the stiff rows, and the
step-size controller with the stiffness test (the rules are in
:mod:`ibtest.solve.solvers.adaptive`).

Per-step cost matters (a batched step is ~13 model gradients plus bookkeeping, each a string of
tiny tensor operations): one vector–matrix product and one ``addcmul`` per stage on the flat
[S+1, b·P] view of the stages (vector @ matrix, not a [1, s] mm: its rounding does not depend on
the batch size, so an instance gets the same answer alone and in a batch).
"""
from __future__ import annotations

import math

import torch

from ibtest.plugin.specs import ModelBase
from ibtest.solve.solvers import stiff as _stiff
from ibtest.solve.solvers.adaptive_sliding import AT_KINK, Field, Sliding
from ibtest.solve.solvers.adaptive_state import WorkingSet
from ibtest.solve.solvers.rosenbrock import TABLEAUS
from ibtest.solve.solvers.tableau import tableau

Tensor = torch.Tensor
#: step-size controller: safety factor and the range of the step-size factor
SAFETY, FAC_MIN, FAC_MAX = 0.9, 0.2, 10.0
#: the most iterations a row stays explicit after its Rosenbrock step changed the activation
#: pattern (:func:`stiff_exit` blocks the switch for the explicit steps that cover twice the
#: rejected step, at most 40 with ``APPROACH``; the stiffness test then needs 15 limited steps
#: again). A fixed block of 50 made a row whose Rosenbrock steps met a kink they only approach
#: (W2 seed 0, instance 502) run 50 explicit steps per rejection; blocking for ``stiff_after``
#: steps made an instance whose tail crosses kinks run the explicit method for most of it (W2
#: seed 1, instance 925: 20,000 steps, budget).
RESWITCH_AFTER = 50
#: a Rosenbrock step rejected at a kink is shortened (and retried) while the shorter step stays
#: above this many explicit step sizes h_ex; below, the row returns to the explicit method
#: (:func:`stiff_exit`)
APPROACH = 2.0


def rpow(x: Tensor, e: Tensor | float) -> Tensor:
    """x**e for x > 0, elementwise, as exp(e·log x). Not ``torch.pow``: its CPU kernel takes a
    vectorized path for most elements and a scalar one for the remainder of a row, which round
    differently (1 ulp on ~1.5% of elements), so a step size depended on an instance's position
    in the batch (W2 seed 1, instance 39: 467 steps alone, 12,883 in a batch of 100); exp and
    log give the same bits on either path."""
    return torch.exp(torch.log(x) * e)


class RKMethod:
    """An embedded explicit Runge–Kutta pair: DOP853 (``order=8``) or Dormand–Prince 5(4)."""

    def __init__(self, order: int, stiff_method: str = "rodas5p") -> None:
        if stiff_method not in TABLEAUS:
            raise ValueError(f"stiff_method must be one of {sorted(TABLEAUS)}, got {stiff_method!r}")
        #: the Rosenbrock method of the stiff rows and its step-size exponent
        self.stiff_tab = TABLEAUS[stiff_method]
        self.stiff_expo = -1.0 / (self.stiff_tab.err_order + 1.0)
        tab = tableau(int(order))
        self.S: int = tab["S"]
        self.A: Tensor = tab["A"]  # [S, S]
        self.bw: Tensor = tab["b"]  # [S]
        self.E: Tensor = tab["E"]  # [S+1]
        self.E3: Tensor | None = tab["E3"]  # [S+1] (DOP853) or None
        self.order: int = tab["order"]
        #: per-stage coefficient vectors A[s, :s]
        self.A_rows = [self.A[s, :s].contiguous() for s in range(self.S)]
        self.expo = -1.0 / (tab["err_order"] + 1.0)
        #: 0.7 of the real stability interval (Hairer's stiffness test)
        self.stab = 0.7 * (6.0 if self.E3 is not None else 3.3)

    def to(self, device: torch.device) -> None:
        """Move the tableau's tensors to ``device``."""
        self.A, self.bw, self.E = self.A.to(device), self.bw.to(device), self.E.to(device)
        self.E3 = self.E3.to(device) if self.E3 is not None else None
        self.A_rows = [a.to(device) for a in self.A_rows]

    def stages(self, F: Field, th: Tensor, f: Tensor, h_rk: Tensor, Xa: Tensor, ya: Tensor,
               ma: Tensor, rows: Tensor | None = None, F_rows: Field | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The stages K [S+1, b, P] (K[0] = f, K[S] the field at the proposal) of a step h_rk [b]
        from θ [b, P], the proposal θ_new [b, P] and the last stage point Y_{S−1} [b, P].

        ``rows`` [r] (with ``F_rows``, the field of those rows alone): compute the stages of these
        rows only; every other row gets K = f at every stage and θ_new = Y_{S−1} = θ (what a step
        of h = 0 gives: the stiff rows, which take a Rosenbrock step instead)."""
        if rows is None:
            return self._stages(F, th, f, h_rk, Xa, ya, ma)
        assert F_rows is not None
        K = f.unsqueeze(0).repeat(self.S + 1, 1, 1)
        th_new, y_s = th.clone(), th.clone()
        if rows.numel():
            Kr, thr, ysr = self._stages(F_rows, th[rows], f[rows], h_rk[rows], Xa[rows], ya[rows], ma[rows])
            K[:, rows] = Kr
            th_new[rows] = thr
            y_s[rows] = ysr
        return K, th_new, y_s

    def _stages(self, F: Field, th: Tensor, f: Tensor, h_rk: Tensor, Xa: Tensor, ya: Tensor,
                ma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        S = self.S
        b, P = th.shape
        K = torch.empty(S + 1, b, P, dtype=th.dtype, device=th.device)
        Kf = K.view(S + 1, b * P)
        K[0] = f
        hc = h_rk.unsqueeze(-1)
        A_rows = self.A_rows
        y_s = th
        for s in range(1, S):
            dy = (A_rows[s] @ Kf[:s]).view(b, P)
            y_s = torch.addcmul(th, hc, dy)
            K[s] = F(y_s, Xa, ya, ma)
        th_new = torch.addcmul(th, hc, (self.bw @ Kf[:S]).view(b, P))
        K[S] = F(th_new, Xa, ya, ma)
        return K, th_new, y_s

    def error(self, K: Tensor, th: Tensor, th_new: Tensor, h: Tensor, rtol: float, atol: float) -> Tensor:
        """The scaled error norm [b] of the step (≤ 1: accept; non-finite: inf)."""
        S1, b, P = K.shape
        Kf = K.view(S1, b * P)
        sc = torch.maximum(th.abs(), th_new.abs()).mul_(rtol).add_(atol)
        e5 = (self.E @ Kf).view(b, P).div_(sc).square_().sum(-1)
        if self.E3 is None:
            err = h * (e5 / P).sqrt()
        else:
            e3 = (self.E3 @ Kf).view(b, P).div_(sc).square_().sum(-1)
            den = (e5 + 0.01 * e3).clamp_min(1e-300)
            err = torch.where((e5 == 0) & (e3 == 0), torch.zeros_like(e5), h * e5 / (den * P).sqrt())
        return torch.nan_to_num_(err, nan=math.inf, posinf=math.inf)


def initial_step(F: Field, th: Tensor, f: Tensor, Xa: Tensor, ya: Tensor, ma: Tensor, rtol: float,
                 atol: float, order: int, t_max: float) -> Tensor:
    """The first step size [b] (Hairer, Nørsett & Wanner II.4) from θ [b, P] with field f [b, P]."""
    scale = atol + rtol * th.abs()
    d0 = (th / scale).pow(2).mean(-1).sqrt()
    d1 = (f / scale).pow(2).mean(-1).sqrt()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    f1 = F(th + h0.unsqueeze(-1) * f, Xa, ya, ma)
    d2 = ((f1 - f) / scale).pow(2).mean(-1).sqrt() / h0
    dm = torch.maximum(d1, d2)
    h1 = torch.where(dm <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     rpow(0.01 / dm.clamp_min(1e-300), 1.0 / (order + 1)))
    return torch.minimum(100 * h0, h1).clamp(max=t_max)


def stiff_rows(model: ModelBase, sl: Sliding, rk: RKMethod, w: WorkingSet, K: Tensor, th_new: Tensor,
               err: Tensor, rtol: float, atol: float) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """Replace the explicit step of the stiff rows by a Rosenbrock step (their explicit step had
    h = 0): θ_new [b, P] (returned), K[S] and err [b] (in place). Returns (θ_new, kinked [b]: the
    Rosenbrock step crossed a kink against the pattern or left a held one, frac [b]: where the
    kinked step first crossed, as a fraction of h (nan: not estimated; :func:`stiff_exit`),
    grazed: (working-set rows [r], entries [r, n, m]) that were past their kink at a stage point
    but graze it (:mod:`ibtest.solve.solvers.stiff`), or None; :meth:`Sliding.after_step` puts
    them back on their side where the step is accepted). Counts the step in ``w.st_steps``."""
    rs = w.stiff.nonzero().squeeze(-1)
    F = sl.stage_field(w, rs)
    Xs, ys, ms = w.Xa[rs], w.ya[rs], w.ma[rs]
    kf = sl.kf
    Ap = None
    if kf is not None:
        pr, Ap_r = sl._held_positions(w, rs)  # ascending in rs, as tail_step's held rows
        if pr is not None:
            Ap = Ap_r
    ts = _stiff.tail_step(model, lambda u: F(u, Xs, ys, ms), w.th[rs], w.f[rs], w.h[rs], Xs, ys, ms, rtol, atol,
                          kf=kf, slope=w.slope[rs] if kf is not None else None,
                          held=w.S_hold[rs] if kf is not None else None, Ap=Ap, tab=rk.stiff_tab, at_kink=AT_KINK)
    th_new = th_new.index_copy(0, rs, ts.theta)
    K[-1].index_copy_(0, rs, ts.f)
    err.index_copy_(0, rs, ts.err)
    kinked = torch.zeros(err.shape[0], dtype=torch.bool, device=err.device).index_copy_(0, rs, ts.kinked)
    frac = torch.full_like(err, math.nan).index_copy_(0, rs, ts.frac)
    w.st_steps += w.stiff
    grazed = None
    if ts.grazed is not None:
        g = ts.grazed.flatten(1).any(-1)
        if bool(g.any()):
            grazed = (rs[g], ts.grazed[g])
    return th_new, kinked, frac, grazed


def stiff_exit(w: WorkingSet, kinked: Tensor, frac: Tensor, h: Tensor, h_next: Tensor, n_iter: int) -> Tensor:
    """The step after a rejected Rosenbrock step that crossed a kink or left a held one (kinked
    [b]; frac [b] from :func:`stiff_rows`, h [b] the step, h_next [b] the controller's proposal):
    returns the new h_next.

    While the shortened step ``h·clamp(0.8·frac, 0.1, 0.5)`` (frac nan: 0.3) stays above
    ``APPROACH``·h_ex, the row stays on the Rosenbrock step with it: the steps up to the kink
    have the pattern's smooth field, and the kink is approached in a few Rosenbrock steps instead
    of explicit steps at the stability limit (W2 seed 0, instance 318: a crossing 19 time units
    into a rejected Rosenbrock step took 65 explicit steps of 0.45 to reach). Else the row
    returns to the explicit method with its last explicit step size h_ex, which locates the
    event on its dense output, and no new switch for ``RESWITCH_AFTER`` steps."""
    q = torch.where(torch.isnan(frac), torch.full_like(frac, 0.3), (0.8 * frac).clamp(0.1, 0.5))
    h_try = h * q
    stay = kinked & (h_try > APPROACH * w.h_ex)
    back = kinked & ~stay
    w.stiff &= ~back
    blk = (2.0 * h / w.h_ex.clamp_min(1e-300)).ceil().clamp(max=RESWITCH_AFTER).long()
    w.st_block = torch.where(back, n_iter + blk, w.st_block)
    return torch.where(back, w.h_ex, torch.where(stay, h_try, h_next))


def advance(model: ModelBase, rk: RKMethod, w: WorkingSet, K: Tensor, th_new: Tensor, err: Tensor,
            accept: Tensor, any_stiff: bool, sliding_rows: Tensor | None) -> tuple[Tensor, Tensor]:
    """Take the accepted steps (accept [b]) and propose the next step size.

    Updates θ, f, t, L, the sliding time and the growth limit of ``w``; returns
    (θ_old [b, P], h_next [b]): the step-size factor (err = 0 gives FAC_MAX through the clamp;
    after a rejection the step may not grow) times h, capped by h_cap (stability); the caller caps
    it so that t lands exactly on t_max, once the step's events have set t."""
    S = rk.S
    h = w.h
    b, P = th_new.shape
    ex: Tensor | float = torch.where(w.stiff, rk.stiff_expo, rk.expo) if any_stiff else rk.expo
    fac = torch.minimum(rpow(err.clamp_min(1e-300), ex).mul_(SAFETY).clamp_(FAC_MIN, FAC_MAX),
                        w.growth_lim)
    w.growth_lim = torch.where(accept, FAC_MAX, 1.0)
    acc_c = accept.unsqueeze(-1)
    h_acc = h * accept
    th_old = w.th
    w.th = torch.where(acc_c, th_new, th_old)
    w.f = torch.where(acc_c, K[S], w.f)
    w.t = w.t + h_acc
    if sliding_rows is not None:
        w.t_slide[sliding_rows] += h_acc[sliding_rows]
    w.loss = torch.where(accept, model.loss(th_new, w.Xa, w.ya, w.ma), w.loss)
    cap = torch.where(w.stiff, math.inf, w.h_cap) if any_stiff else w.h_cap
    h_next = torch.minimum(h * fac, cap)
    return th_old, h_next


def stiffness_switch(rk: RKMethod, w: WorkingSet, K: Tensor, th_new: Tensor, y_s: Tensor, h: Tensor,
                     h_next: Tensor, accept: Tensor, n_iter: int, stiff_after: int) -> None:
    """Hairer's stiffness test on the last two stages (ρ ≈ ‖ΔK‖/‖Δθ‖ ≤ λ_max, K [S+1, b, P],
    θ_new and Y_{S−1} [b, P], step h [b]), or the stability cap h_cap binding: count the
    stability-limited explicit steps; after 15 (6 unlimited steps reset the count) and at least
    ``stiff_after`` iterations, switch the row to the Rosenbrock step, remembering h_next [b] as
    its explicit step. Held kinks are followed in the Rosenbrock phase (``stiff.tail_step``) and a
    kink about to be crossed does not block the switch: a Rosenbrock step that reaches it changes
    the pattern and sends the row back (blocking made a row whose pre-activation only tends to 0, never
    reaching the kink, run its whole stiff tail explicitly: W2 seed 0, instance 233, 17,744 steps
    against 173)."""
    S = rk.S
    num = (K[S] - K[S - 1]).norm(dim=-1)
    den = (th_new - y_s).norm(dim=-1)
    lim = (h * num > rk.stab * den) | (h >= 0.99 * w.h_cap)
    lim &= accept & ~w.stiff
    nl = accept & ~w.stiff & ~lim
    st_cnt = torch.where(lim, w.st_cnt + 1, w.st_cnt)
    st_non = torch.where(lim, torch.zeros_like(w.st_non), w.st_non + nl.long())
    reset = st_non >= 6
    st_cnt = torch.where(reset, torch.zeros_like(st_cnt), st_cnt)
    w.st_non = torch.where(reset, torch.zeros_like(st_non), st_non)
    go = (st_cnt >= 15) & (n_iter >= w.st_block) & (n_iter >= stiff_after)
    if bool(go.any()):
        w.stiff |= go
        w.h_ex = torch.where(go, h_next, w.h_ex)
        st_cnt = torch.where(go, torch.zeros_like(st_cnt), st_cnt)
    w.st_cnt = st_cnt
