"""Stopping rules of the ``adaptive`` solver, checked after every step (the statuses are
documented in :mod:`ibtest.solve.solvers.adaptive`).

Rare events are found by one cheap test each; their bookkeeping runs only when the test fires:

* `drift_check`: loss below ``next_check`` — the drift estimate, the stability cap h_cap,
  and CONVERGED with the Gauss–Newton end point θ − J⁺r;
* :func:`zero_gradient`: ∇L = 0 exactly with the loss above the fit threshold — STALLED;
* :func:`checkpoints`: t passed a doubling checkpoint — STALLED by rate, DIVERGED by power-law
  escape;
* :func:`status_codes`: the status of the rows that finish.
"""
from __future__ import annotations

import torch

from ibtest.base import status as st
from ibtest.plugin.specs import ModelBase
from ibtest.solve.solvers.adaptive_saddle import leaves_saddle
from ibtest.solve.solvers.adaptive_sliding import Sliding
from ibtest.solve.solvers.adaptive_state import WorkingSet
from ibtest.solve.solvers.drift import drift_estimate

Tensor = torch.Tensor


def drift_check(model: ModelBase, w: WorkingSet, accept: Tensor, diverged: Tensor,
            drift_tol: float) -> Tensor | None:
    """The drift check (CONVERGED) of the rows [b] with loss ≤ next_check after an accepted step
    and not diverged: measure the drift estimate (``w.drift`` = 1.5·estimate), cap later steps at
    h·λ_max ≤ 2 (``w.h_cap``), and put the rows whose estimate is ≤ drift_tol/1.5 and whose
    Gauss–Newton end point θ − J⁺r fits on that end point. Returns those rows (bool [b]), or
    None when no row was checked; ``w.next_check`` is lowered for the others."""
    cand = (w.loss <= w.next_check) & accept
    if not bool(cand.any()):
        return None
    cand &= ~diverged
    ci = cand.nonzero().squeeze(-1)
    th, loss = w.th, w.loss
    dr, delta, lam_max = drift_estimate(model, th[ci], w.Xa[ci], w.ya[ci], w.ma[ci], return_step=True)
    # keep later steps well inside the stability region (h·λ_max ≤ 2): at its edge an
    # explicit method keeps tolerance-level noise in the residual instead of damping it
    w.h_cap[ci] = torch.minimum(w.h_cap[ci], 2.0 / lam_max.clamp_min(1e-300))
    # Gauss–Newton end point θ − J⁺r: the limit of the linearized flow. It removes the
    # tolerance-level residual noise an explicit method keeps on a stiff tail.
    th_gn = th[ci] - delta
    loss_gn = model.loss(th_gn, w.Xa[ci], w.ya[ci], w.ma[ci])
    ok = (dr <= drift_tol / 1.5) & (loss_gn <= w.fit[ci]) & torch.isfinite(loss_gn)
    w.drift[ci] = 1.5 * dr  # ‖θ_gn − θ(∞)‖ ≤ ‖θ − θ(∞)‖ + ‖J⁺r‖ ≤ 1.5 · bound
    th[ci[ok]] = th_gn[ok]
    loss[ci[ok]] = loss_gn[ok]
    converged = torch.zeros(th.shape[0], dtype=torch.bool, device=th.device)
    converged[ci[ok]] = True
    # next check once the loss has fallen so that √L scaling would meet drift_tol
    ratio = (drift_tol / dr.clamp_min(1e-300)) ** 2
    nxt = loss[ci] * torch.clamp(0.5 * ratio, max=0.25)
    # never below the fit threshold: a loss at its round-off floor (already fitted) does not
    # fall by 4× again, and the drift check must still run until the drift estimate passes
    w.next_check[ci] = torch.where(ok, w.next_check[ci],
                                   torch.maximum(torch.minimum(nxt, 0.25 * loss[ci]), w.fit[ci]))
    return converged


def zero_gradient(w: WorkingSet, accept: Tensor, not_conv: Tensor) -> Tensor | None:
    """Rows [b] stalled by an exactly zero field (e.g. every unit dead) with the loss above the
    fit threshold, after an accepted step; None when no row has a zero field."""
    zero_g = (w.f == 0).all(-1)
    if not bool(zero_g.any()):
        return None
    return accept & not_conv & (w.loss > w.fit) & zero_g


def checkpoints(w: WorkingSet, accept: Tensor, not_conv: Tensor, thn: Tensor, stalled: Tensor | None,
                growth_t_min: float, growth_min_rate: float,
                sl: Sliding | None = None) -> tuple[Tensor | None, Tensor | None]:
    """The doubling checkpoints of t for the rows [b] that passed theirs (‖θ‖ = thn [b]).

    Appends (log t, log‖θ‖, log L, log‖g‖) to the ring ``w.ck_hist`` [b, W+1, 4] and sets:
    STALLED by rate (‖∇L‖ decays at μ > 0 with ‖∇L‖²/(2μ) < 1e-6·L and L > 1e6·fit; with ``sl``
    given, not where the row is near a saddle it will leave: :mod:`~ibtest.solve.solvers.adaptive_saddle`) and DIVERGED
    by power-law escape of ‖θ‖ over the window (``w.rate`` = fitted exponent). Returns (escaped,
    stalled), each bool [b] or None (no checkpoint passed; the input ``stalled`` is returned
    unchanged then, else extended)."""
    ck = (w.t >= w.ck_next) & accept
    if not bool(ck.any()):
        return None, stalled
    b = ck.shape[0]
    W = w.ck_hist.shape[1] - 1
    loss, fit, t = w.loss, w.fit, w.t
    ck &= not_conv
    escaped = torch.zeros(b, dtype=torch.bool, device=ck.device)
    if stalled is None:
        stalled = torch.zeros(b, dtype=torch.bool, device=ck.device)
    gnorm = w.f.norm(dim=-1)
    ci = ck.nonzero().squeeze(-1)
    rec = torch.stack([t[ci].log(), thn[ci].clamp_min(1e-300).log(),
                       loss[ci].clamp_min(1e-300).log(), gnorm[ci].clamp_min(1e-300).log()], -1)
    hist = torch.cat([w.ck_hist[ci, 1:], rec.unsqueeze(1)], 1)
    w.ck_hist[ci] = hist
    w.ck_n[ci] += 1
    w.ck_next[ci] = 2.0 * t[ci]
    have2 = w.ck_n[ci] >= 2
    prev = hist[:, -2]
    dtt = (rec[:, 0].exp() - prev[:, 0].exp())
    mu = (prev[:, 3] - rec[:, 3]) / dtt
    g_ = rec[:, 3].exp()
    st_rate = have2 & (mu > 0) & (g_ * g_ / (2 * mu) < 1e-6 * loss[ci]) & (loss[ci] > 1e6 * fit[ci])
    if bool(st_rate.any()) and sl is not None:
        # near a saddle the flow will leave (negative curvature, an unstable component above
        # rounding): a plateau, not the end of the flow
        si = ci[st_rate]
        held = w.S_hold[si] if sl.kf is not None else None
        go_on = leaves_saddle(sl.model, sl.kf, w.th[si], w.f[si], w.Xa[si], w.ya[si], w.ma[si], held)
        st_rate = st_rate.clone()
        st_rate[st_rate.nonzero().squeeze(-1)[go_on]] = False
    stalled[ci[st_rate]] = True
    # power-law escape of ‖θ‖ with the loss falling
    full = (w.ck_n[ci] >= W + 1) & (hist[:, 0, 0].exp() >= growth_t_min)
    dlt = hist[:, 1:, 0] - hist[:, :-1, 0]
    dth = hist[:, 1:, 1] - hist[:, :-1, 1]
    dls = hist[:, 1:, 2] - hist[:, :-1, 2]
    p = (hist[:, -1, 1] - hist[:, 0, 1]) / (hist[:, -1, 0] - hist[:, 0, 0])
    hw = W // 2
    p1 = dth[:, :hw].sum(-1) / dlt[:, :hw].sum(-1)
    p2 = dth[:, hw:].sum(-1) / dlt[:, hw:].sum(-1)
    esc = full & (dth > 0).all(-1) & (dls < 0).all(-1) & (p >= growth_min_rate) & (p2 >= 0.5 * p1)
    esc = esc & (loss[ci] > 0)
    w.rate[ci] = torch.where(full, p, w.rate[ci])
    escaped[ci[esc]] = True
    return escaped, stalled


def status_codes(b: int, diverged: Tensor, converged: Tensor | None, stalled: Tensor | None,
                 escaped: Tensor | None, sliding: Tensor | None) -> Tensor:
    """Status codes [b] int64 by precedence: DIVERGED > CONVERGED > escape (DIVERGED) > STALLED >
    SLIDING > BUDGET (each flag bool [b] or None)."""
    code = torch.full((b,), st.BUDGET, dtype=torch.int64, device=diverged.device)
    if sliding is not None:
        code[sliding] = st.SLIDING
    if stalled is not None:
        code[stalled] = st.STALLED
    if escaped is not None:
        code[escaped] = st.DIVERGED
    if converged is not None:
        code[converged] = st.CONVERGED
    code[diverged] = st.DIVERGED
    return code
