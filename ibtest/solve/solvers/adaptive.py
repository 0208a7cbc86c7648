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

Stiff tails (issue 12). Some instances end on a slow last piece against a large curvature
(W2: σ_min(J) ≈ 0.01–0.03 against λ_max(∇²L) ≈ 70): the explicit step is held at the edge of its
stability region while the tail lasts t ~ 1/σ_min², far beyond any step budget. Each accepted
explicit step applies Hairer's stiffness test (h·‖K_S − K_{S−1}‖/‖θ_new − Y_{S−1}‖ above 0.7 of the
real stability interval, or the stability cap h_cap of the drift check binding); after 15 such
steps (6 unlimited steps reset the count), at least ``stiff_after`` steps, and with no kink
pending (held kinks are followed: the Filippov field there is −Π∇L, see
:func:`ibtest.solvers.stiff.tail_step`), the instance switches to a batched Rosenbrock step (Rodas3, L-stable, exact Hessian
on the current activation pattern: :mod:`ibtest.solvers.stiff`), whose step is limited by
accuracy only. A Rosenbrock step whose stage points change the activation pattern is rejected
and the instance returns to the explicit method (its last explicit step size; no new switch for
``stiff_after`` steps), so kinks crossed in the tail are resolved and checked for sliding as
before. Every stopping rule below applies unchanged to both kinds of step (the energy-identity
test for pinned iterates skips Rosenbrock rows, which keep their pattern). ``info["stiff_steps"]``
counts the Rosenbrock steps of an instance. ``stiff_after=0`` disables the switch.

Kinks (an activation switching) are handled by step rejection: the error estimate of a step that
straddles a switch is large, the step shrinks until the switch is resolved to the tolerance.

Stopping rules and statuses (per instance, checked after every accepted step)
----------------------------------------------------------------------------
``fit_tol`` is *relative* (:mod:`ibtest.solve.fit`): below, "fit_tol" stands for the per-instance
threshold fit_tol·max(½‖y‖², L(θ0)).

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
``CONVERGED`` loss ≤ ``fit_tol`` and the drift estimate below is ≤ ``drift_tol``.
``STALLED``   loss > ``fit_tol`` and ∇L = 0 exactly (e.g. every unit dead), or loss > 1e6·fit_tol
              and, measured between two doublings of t, ‖∇L‖ decays at a rate μ > 0 with the
              loss decrease still possible at that rate, ‖∇L‖²/(2μ), below 1e-6·loss (the loss
              cannot reach fit_tol; θ itself may still creep, which does not matter as stalled
              triples are never judged).
``SLIDING``   Filippov sliding on a ReLU kink, only with ``sliding="stop"`` (see below).
``BUDGET``    t ≥ ``t_max`` or ``max_steps`` accepted+rejected steps, or the step size
              underflowed, before any of the above.

Drift estimate (CONVERGED)
--------------------------
Near a zero-loss point the remaining motion of the linearized flow is ‖J⁺r‖ ≤ ‖r‖/σ⁺_min(J);
:func:`ibtest.solve.solvers.drift.drift_estimate` computes 2·‖b‖/σ⁺_min(Ĝ) from per-point gradients
(see that module). It is an **estimate**, not a bound (independent tight solves exceeded it on a
few percent of instances, issue 12): ``info["drift_estimate"]`` and, under its old name,
``info["drift"]`` (same values). Verdicts re-measure the error by a tighter re-solve and read
``drift`` only when that re-check is off. CONVERGED needs loss ≤ fit_tol and the estimate
≤ ``drift_tol``; the Gauss–Newton end point θ − J⁺r is then returned.

Sliding (``sliding: follow`` — the default — or ``stop``)
---------------------------------------------------------
For models with ``hidden_preactivations(theta, X) -> [B, n, m]`` (or a single neuron's
``preactivation -> [B, n]``) the solver looks, in every step that was rejected or flipped a
pre-activation, for *evidence* that the field points at a kink z_e = 0 from both sides (beyond
the rounding scale of z_e and ż_e: :func:`ibtest.solve.solvers.kinks.kink_evidence`).

``stop``: an entry with ``sliding_count`` such chatter events (counts reset after 200 accepted
steps without an event) gives the instance the status SLIDING; its θ is the last iterate.

``follow``: an entry with evidence is *pending*: the steps are capped at 0.8 of the time to its
kink along the field, so θ reaches the kink geometrically without straddling it; once |z_e| ≤
1e-10·‖x_i‖‖w_j‖, θ is projected onto the kink (v_j rescaled to keep v_j² − ‖w_j‖²) and the
entry is *held* if it attracts (the minimal-norm λ*_e of the Clarke subdifferential is interior,
0 < λ*_e < 1 exactly: the box QP puts λ* exactly on a bound otherwise; a margin of 1e-9 made a
kink whose lower field is nearly tangent, λ* ≈ 9e-10, chatter at 1e-7 steps to the budget).
While a set S of entries is held the field is the Filippov / minimal-norm Clarke velocity
−g(λ*) of :class:`ibtest.solve.solvers.kinks.KinkField` (a batched box QP per stage for the sliding
rows), tangent to every held kink, so each RK step keeps z_e = 0 to rounding. An entry whose
λ*_e reaches 0 or 1 is released: the one-sided field of that side is tangent or points away.
Such triples end CONVERGED or STALLED like any other; ``info["slid"]`` = 1,
``info["t_sliding"]`` (flow time with some entry held) and ``info["sliding_episodes"]``.
Models without a :class:`KinkField` (no known kinks) behave as under ``stop``.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch

from ibtest.base import status as st
from ibtest.plugin.specs import ModelBase, Option, Solver, SolveResult
from ibtest.solve.fit import fit_threshold
from ibtest.solve.solvers import stiff as _stiff
from ibtest.solve.solvers.drift import drift_bound, drift_estimate  # noqa: F401  (drift_bound: the former name)
from ibtest.solve.solvers.kinks import kink_evidence, kink_field, preact_fn
from ibtest.solve.solvers.tableau import tableau as _tableau

Tensor = torch.Tensor


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
    sliding: str = "follow",
    stiff_after: int = 1000,
    threads: int = 1,
) -> SolveResult:
    """Integrate gradient flow for B instances at once; see the module docstring for the rules.

    X [B, n, d], y [B, n], mask [B, n], theta0 [B, P] (float64). Returns a :class:`SolveResult`
    with ``info``: ``t``, ``steps`` (accepted + rejected), ``drift_estimate`` (the drift
    estimate at stop; inf where it was not established) and ``drift`` (the same values, the
    former name), ``grad_norm``, ``growth`` (‖θ‖/‖θ0‖), ``growth_rate`` (fitted exponent of
    ‖θ‖ ~ t^p over the last doublings of t, 0 if not measured), and per triple [B]: ``slid``
    (1 if a sliding mode was followed), ``t_sliding``, ``sliding_episodes``, ``stiff_steps``
    (Rosenbrock steps of the stiff tail).

    ``sliding``: ``"follow"`` (default) continues on an attracting kink with the minimal-norm
    Clarke velocity; ``"stop"`` ends such an instance with status SLIDING.

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
                          growth_t_min=growth_t_min, growth_min_rate=growth_min_rate,
                          sliding=sliding, stiff_after=stiff_after)
    finally:
        if threads and threads != prev_threads:
            torch.set_num_threads(prev_threads)


def _solve(model, X, y, mask, theta0, *, rtol, atol, fit_tol, drift_tol, t_max, max_steps, div_norm,
           order, sliding_count, growth_window, growth_t_min, growth_min_rate,
           sliding="follow", stiff_after=1000) -> SolveResult:
    if sliding not in ("follow", "stop"):
        raise ValueError(f"sliding must be 'follow' or 'stop', got {sliding!r}")
    tab = _tableau(int(order))
    S, A, bw, E, E3 = tab["S"], tab["A"], tab["b"], tab["E"], tab["E3"]
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
    preact = preact_fn(model)
    kf = kink_field(model) if sliding == "follow" else None

    # ---- outputs --------------------------------------------------------------------------
    out_theta = theta0.clone()
    out_status = torch.full((B,), st.BUDGET, dtype=torch.int64)
    out_t = torch.zeros(B, dtype=dt)
    out_steps = torch.zeros(B, dtype=torch.int64)
    out_drift = torch.full((B,), math.inf, dtype=dt)
    out_gnorm = torch.zeros(B, dtype=dt)
    out_rate = torch.zeros(B, dtype=dt)
    out_tslide = torch.zeros(B, dtype=dt)
    out_episodes = torch.zeros(B, dtype=torch.int64)
    out_stiff = torch.zeros(B, dtype=torch.int64)

    # ---- working set ----------------------------------------------------------------------
    idx = torch.arange(B)
    th = theta0.clone()
    Xa, ya, ma = X, y, mask

    # Filippov following: per working-set row the set S of kink entries held (empty: the
    # classical field); ``sl`` caches the sliding rows and their entry lists while S is unchanged
    sl: dict[str, Any] = {"rows": None}
    last_lam: list = [None]

    def entries(Sm: Tensor) -> tuple[Tensor, Tensor]:
        """Flat indices [r, k] of the entries of the masks Sm [r, n, m] (padded; ok False)."""
        Sf = Sm.flatten(1)
        k = int(Sf.sum(-1).max()) if Sf.numel() else 0
        ent = torch.argsort((~Sf).to(torch.int8), dim=-1, stable=True)[:, :k]
        return ent, Sf.gather(1, ent)

    def slide_setup() -> None:
        rows = S_hold.flatten(1).any(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            sl["rows"] = None
            return
        ent, ok = entries(S_hold[rows])
        sl.update(rows=rows, S=S_hold[rows], ent=ent, ok=ok)

    def field_at(rr: Tensor) -> Tensor:
        """The field (Filippov where S is held) at the working-set rows rr."""
        g = -model.grad(th[rr], Xa[rr], ya[rr], ma[rr])
        has = S_hold[rr].flatten(1).any(-1)
        if bool(has.any()):
            sub = rr[has]
            ent, ok = entries(S_hold[sub])
            g[has] = kf.field(th[sub], Xa[sub], ya[sub], ma[sub], S_hold[sub], ent, ok)[0]
        return g

    def F(theta, Xs, ys, ms):
        g = -model.grad(theta, Xs, ys, ms)
        if sl["rows"] is not None:
            r = sl["rows"]
            fs, lam = kf.field(theta[r], Xs[r], ys[r], ms[r], sl["S"], sl["ent"], sl["ok"])
            g[r] = fs
            last_lam[0] = lam
        return g

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
    # the fit threshold per instance: fit_tol relative to the loss scale max(½‖y‖², L(θ0))
    fit = fit_threshold(model, X, y, mask, theta0, fit_tol).to(dt)
    next_check = 1e6 * fit  # run the drift check when loss ≤ this
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
    S_hold = torch.zeros((B,) + ((z_old.shape[1:]) if preact is not None else (0, 0)), dtype=torch.bool)
    pend = torch.zeros_like(S_hold)  # kink entries with evidence of sliding, being approached
    t_slide = torch.zeros(B, dtype=dt)
    episodes = torch.zeros(B, dtype=torch.int64)
    th0n = theta0.norm(dim=-1)
    # stiff tails (module docstring): rows on the Rosenbrock step, their explicit step size to
    # return to, and the stability-limited-step counters (Hairer's DOP853 stiffness test)
    stiff = torch.zeros(B, dtype=torch.bool)
    h_ex = torch.zeros(B, dtype=dt)
    st_cnt = torch.zeros(B, dtype=torch.int64)
    st_non = torch.zeros(B, dtype=torch.int64)
    st_block = torch.zeros(B, dtype=torch.int64)  # no switch before this iteration
    st_steps = torch.zeros(B, dtype=torch.int64)  # Rosenbrock steps taken
    stab = 0.7 * (6.0 if E3 is not None else 3.3)  # of the real stability interval
    can_stiff = bool(stiff_after) and stiff_after > 0
    expo_stiff = -1.0 / _stiff.ELO

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
        out_tslide[gi] = t_slide[sel]
        out_episodes[gi] = episodes[sel]
        out_stiff[gi] = st_steps[sel]

    def enter(rows: Tensor, cand: Tensor) -> Tensor:
        """Try to hold the candidate entries ``cand`` [r, n, m] (plus those held) of working-set
        rows ``rows`` at their kinks: keep the attracting ones (λ* interior, α > 0) at θ projected
        onto them. Returns the rows that now slide (bool [r])."""
        Xr, yr, mr = Xa[rows], ya[rows], ma[rows]
        z = preact(th[rows], Xr)
        near = z.abs() <= 1e-6 * kf.scale(th[rows], Xr)
        C = (cand & near) | S_hold[rows]
        for _ in range(2):
            Cf = C.flatten(1)
            k = int(Cf.sum(-1).max()) if Cf.numel() else 0
            if k == 0:
                break
            ent, ok = entries(C)
            thp = kf.project(th[rows], Xr, C)
            _, lam = kf.field(thp, Xr, yr, mr, C, ent, ok)
            good = ok & (lam > 0.0) & (lam < 1.0)
            keepC = torch.zeros_like(Cf)
            keepC.scatter_(1, ent, good)
            keepC = keepC.view_as(C)
            if torch.equal(keepC, C):
                break
            C = keepC
        now = C.flatten(1).any(-1)
        if bool(now.any()):
            rr = rows[now]
            new_ep = ~S_hold[rr].flatten(1).any(-1)
            episodes[rr] += new_ep.long()
            th[rr] = kf.project(th[rr], Xa[rr], C[now])
            S_hold[rr] = C[now]
        S_hold[rows[~now]] = False
        chat[rows] = 0
        slide_setup()
        if bool(now.any()):
            f[rr] = field_at(rr)
            loss[rr] = model.loss(th[rr], Xa[rr], ya[rr], ma[rr])
        return now

    def approach_kinks(h_next: Tensor) -> None:
        """Rows with pending kink entries: enter the entries that are at their kink to
        rounding (|z_e| ≤ 1e-10·‖x_i‖‖w_j‖; θ is then projected onto it); else cap the next step at 0.8 of the time to
        the nearest pending kink along the current field (z_e·ż_e < 0; entries the field leaves
        are dropped), so the kink is reached geometrically without a step straddling it."""
        rows = pend.flatten(1).any(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return
        Xr = Xa[rows]
        z = preact(th[rows], Xr)
        zd = preact(f[rows], Xr)
        mag = kf.scale(th[rows], Xr)
        p = pend[rows]
        ready = z.abs() <= 1e-10 * mag
        toward = (z * zd < 0) & ~ready
        p = p & (ready | toward)
        go = (p & ready).flatten(1).any(-1)
        pend[rows] = p & ~ready
        if bool(go.any()):
            enter(rows[go], (p & ready)[go])
        wait = (p & ~ready).flatten(1).any(-1)
        if bool(wait.any()):
            tau = torch.where(p & ~ready, z.abs() / zd.abs().clamp_min(1e-300),
                              torch.full_like(z, math.inf)).flatten(1).min(-1).values
            wr = rows[wait]
            h_next[wr] = torch.minimum(h_next[wr], 0.8 * tau[wait])

    while idx.numel() > 0:
        b = idx.numel()
        # ---- one embedded RK step for every active instance --------------------------------
        sliding_rows = sl["rows"]
        any_stiff = bool(stiff.any())
        h_rk = torch.where(stiff, torch.zeros_like(h), h) if any_stiff else h
        K = torch.empty(S + 1, b, P, dtype=dt)
        Kf = K.view(S + 1, b * P)
        K[0] = f
        hc = h_rk.unsqueeze(-1)
        for s in range(1, S):
            dy = (A_rows[s] @ Kf[:s]).view(b, P)
            y_s = torch.addcmul(th, hc, dy)
            K[s] = F(y_s, Xa, ya, ma)
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
        kinked = None
        if any_stiff:  # the stiff rows take a Rosenbrock step instead (their RK step had h = 0)
            rs = stiff.nonzero().squeeze(-1)
            ths, fs, errs, kk = _stiff.tail_step(model, preact, th[rs], f[rs], h[rs], Xa[rs], ya[rs],
                                                 ma[rs], rtol, atol, held=S_hold[rs] if kf is not None else None,
                                                 kf=kf)
            th_new = th_new.index_copy(0, rs, ths)
            K[S].index_copy_(0, rs, fs)
            err.index_copy_(0, rs, errs)
            kinked = torch.zeros(b, dtype=torch.bool).index_copy_(0, rs, kk)
            st_steps += stiff
        accept = err <= 1.0
        n_iter += 1

        # ---- step size update --------------------------------------------------------------
        # err = 0 gives fac_max through the clamp; after a rejection the step may not grow
        # (growth_lim = 1 then; a rejected step has fac < 1 anyway)
        ex = torch.where(stiff, expo_stiff, expo) if any_stiff else expo
        fac = torch.minimum(err.clamp_min(1e-300).pow_(ex).mul_(safety_fac).clamp_(fac_min, fac_max),
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
        if sliding_rows is not None:
            t_slide[sliding_rows] += h_acc[sliding_rows]
        loss = torch.where(accept, model.loss(th_new, Xa, ya, ma), loss)
        # the step budget: h_cap (stability), and landing exactly on t_max
        cap = torch.where(stiff, math.inf, h_cap) if any_stiff else h_cap
        h_next = torch.minimum(h * fac, torch.minimum(cap, (t_max - t).clamp_min_(0.0)))
        if kinked is not None and bool(kinked.any()):
            # the activation pattern changed within a Rosenbrock step: back to the explicit
            # method (it resolves kinks and detects sliding), no switch for stiff_after steps
            stiff &= ~kinked
            h_next = torch.where(kinked, h_ex, h_next)
            st_block = torch.where(kinked, n_iter + stiff_after, st_block)
        if can_stiff:
            # Hairer's stiffness test on the last two stages (ρ ≈ ‖ΔK‖/‖Δθ‖ ≤ λ_max), or the
            # stability cap h_cap binding: the explicit step is stability-limited
            num = (K[S] - K[S - 1]).norm(dim=-1)
            den = (th_new - y_s).norm(dim=-1)
            lim = (h * num > stab * den) | (h >= 0.99 * h_cap)
            lim &= accept & ~stiff
            nl = accept & ~stiff & ~lim
            st_cnt = torch.where(lim, st_cnt + 1, st_cnt)
            st_non = torch.where(lim, torch.zeros_like(st_non), st_non + nl.long())
            reset = st_non >= 6
            st_cnt = torch.where(reset, torch.zeros_like(st_cnt), st_cnt)
            st_non = torch.where(reset, torch.zeros_like(st_non), st_non)
            go = (st_cnt >= 15) & (n_iter >= st_block) & (n_iter >= stiff_after)
            if bool(go.any()):
                if preact is not None:  # held kinks are followed (stiff.tail_step)
                    go &= ~pend.flatten(1).any(-1)
                stiff |= go
                h_ex = torch.where(go, h_next, h_ex)
                st_cnt = torch.where(go, torch.zeros_like(st_cnt), st_cnt)

        # ---- sliding detection -------------------------------------------------------------
        # examine the steps that were rejected or whose proposal flipped a pre-activation. Chatter
        # counts only change at events, so the 200-quiet-steps reset is applied lazily there.
        sliding = None
        if sliding_rows is not None:
            # leave a kink whose λ* reached a bound (the one-sided field there is tangent or
            # points away); λ* of the last stage is that of the proposal θ_new
            lam = last_lam[0]
            acc_r = accept[sliding_rows]
            bound = sl["ok"] & ((lam <= 0.0) | (lam >= 1.0)) & acc_r.unsqueeze(-1)
            if bool(bound.any()):
                Sf = S_hold[sliding_rows].flatten(1)
                drop = torch.zeros_like(Sf)
                drop.scatter_(1, sl["ent"], bound)
                S_hold[sliding_rows] = (Sf & ~drop).view_as(S_hold[sliding_rows])
                slide_setup()
                rr = sliding_rows[bound.any(-1)]
                f[rr] = field_at(rr)
        if preact is not None:
            z_new = preact(th_new, Xa)
            pos_new = z_new > 0
            look = (pos_new != pos_old).flatten(1).any(-1).logical_or_(~accept)
            if any_stiff:
                look &= ~stiff if kinked is None else ~(stiff | kinked)
            quiet += accept
            if bool(look.any()):
                ri = look.nonzero().squeeze(-1)
                ev = kink_evidence(preact, A, bw, th_old[ri], K[:, ri], h[ri], Xa[ri], ma[ri])
                hit = ev.flatten(1).any(-1)
                if kf is not None and bool(hit.any()):
                    # follow: approach these kinks without crossing, then hold the attracting ones
                    pend[ri[hit]] |= ev[hit]
                elif bool(hit.any()):
                    rj = ri[hit]
                    stale = (quiet[rj] > 200).view(-1, *([1] * (chat.dim() - 1)))
                    cj = torch.where(stale, torch.zeros_like(chat[rj]), chat[rj]) + ev[hit].long()
                    chat[rj] = cj
                    quiet[rj] = 0
                    slid = cj.flatten(1).max(-1).values >= sliding_count
                    if bool(slid.any()):
                        if kf is not None:  # follow: hold the attracting kinks
                            enter(rj[slid], cj[slid] > 0)
                        else:
                            sliding = torch.zeros(b, dtype=torch.bool)
                            sliding[rj[slid]] = True
            z_old = torch.where(accept.view(-1, *([1] * (z_old.dim() - 1))), z_new, z_old)
            pos_old = z_old > 0
            if kf is not None:
                approach_kinks(h_next)

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
            ok = (dr <= drift_tol / 1.5) & (loss_gn <= fit[ci]) & torch.isfinite(loss_gn)
            drift[ci] = 1.5 * dr  # ‖θ_gn − θ(∞)‖ ≤ ‖θ − θ(∞)‖ + ‖J⁺r‖ ≤ 1.5 · bound
            th[ci[ok]] = th_gn[ok]
            loss[ci[ok]] = loss_gn[ok]
            converged = torch.zeros(b, dtype=torch.bool)
            converged[ci[ok]] = True
            # next check once the loss has fallen so that √L scaling would meet drift_tol
            ratio = (drift_tol / dr.clamp_min(1e-300)) ** 2
            nxt = loss[ci] * torch.clamp(0.5 * ratio, max=0.25)
            # never below the fit threshold: a loss at its round-off floor (already fitted) does not
            # fall by 4× again, and the drift check must still run until the drift estimate passes
            next_check[ci] = torch.where(ok, next_check[ci],
                                         torch.maximum(torch.minimum(nxt, 0.25 * loss[ci]), fit[ci]))
        not_conv = ~diverged if converged is None else ~diverged & ~converged
        stalled = None
        zero_g = (f == 0).all(-1)
        if bool(zero_g.any()):
            stalled = accept & not_conv & (loss > fit) & zero_g

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
            st_rate = have2 & (mu > 0) & (g_ * g_ / (2 * mu) < 1e-6 * loss[ci]) & (loss[ci] > 1e6 * fit[ci])
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
            pinned = (e_exp > 1e-3 * ck_loss[ci]) & (dL < 0.1 * e_exp) & (loss[ci] > fit[ci])
            if preact is not None:
                # only when some pre-activation sits at a kink (0 < |z| ≤ 1e-6·max|z|): the
                # quadrature of ∫‖∇L‖² is not exact on stiff steps, a kink must be in play
                zc = z_old[ci].abs()
                near = (zc > 0) & (zc <= 1e-6 * zc.flatten(1).max(-1).values.view(-1, *([1] * (zc.dim() - 1))))
                at_kink = near.flatten(1).any(-1)
                pk = pinned & at_kink & ~stiff[ci]  # a stiff row keeps its pattern: not pinned
                if kf is not None:
                    pk &= ~S_hold[ci].flatten(1).any(-1)
                    if bool(pk.any()):
                        enter(ci[pk], near[pk])
                else:
                    sliding[ci[pk]] = True
            diss[ci] = 0.0
            ck_loss[ci] = loss[ci]

        # the drift bound is kept only while the loss stays fitted (converged rows have loss_gn ≤ fit_tol)
        drift.masked_fill_(loss > fit, math.inf)

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
            h_cap, fit = h_cap[keep], fit[keep]
            ck_next, ck_hist, ck_n, rate = ck_next[keep], ck_hist[keep], ck_n[keep], rate[keep]
            diss, ck_loss = diss[keep], ck_loss[keep]
            if preact is not None:
                chat, quiet, z_old, pos_old = chat[keep], quiet[keep], z_old[keep], pos_old[keep]
                S_hold, pend = S_hold[keep], pend[keep]
            t_slide, episodes = t_slide[keep], episodes[keep]
            stiff, h_ex, st_cnt, st_non, st_block, st_steps = (
                stiff[keep], h_ex[keep], st_cnt[keep], st_non[keep], st_block[keep], st_steps[keep])
            if sl["rows"] is not None:
                slide_setup()
        h = h_next

    loss_out = model.loss(out_theta, X, y, mask)
    tn = out_theta.norm(dim=-1)
    growth = torch.where(th0n > 0, tn / th0n.clamp_min(1e-300), tn)
    info = {"t": out_t, "steps": out_steps, "drift": out_drift, "grad_norm": out_gnorm,
            "growth": growth, "growth_rate": out_rate, "drift_estimate": out_drift,
            "slid": (out_episodes > 0).long(), "t_sliding": out_tslide, "sliding_episodes": out_episodes,
            "stiff_steps": out_stiff}
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
        "fit_tol": Option(1e-20, float, "loss, relative to max(0.5*|y|^2, L(theta0)), at or below "
                          "which a limit may be declared converged"),
        "drift_tol": Option(1e-9, float, "bound on the remaining motion |theta(t) - theta(inf)|"),
        "t_max": Option(1e7, float, "flow-time budget"),
        "max_steps": Option(200_000, int, "step budget (accepted + rejected) per instance"),
        "div_norm": Option(1e8, float, "|theta| beyond which an instance is diverged"),
        "order": Option(8, int, "8: DOP853, 5: Dormand-Prince 5(4)"),
        "sliding_count": Option(8, int, "chatter events on one pre-activation that mean sliding"),
        "growth_window": Option(8, int, "doublings of t over which power-law escape is fitted"),
        "growth_t_min": Option(100.0, float, "flow time before power-law escape may be declared"),
        "growth_min_rate": Option(0.02, float, "smallest exponent p of |theta| ~ t^p called escape"),
        "sliding": Option("follow", Literal["follow", "stop"],
                          "on a Filippov sliding mode: follow it (minimal-norm Clarke velocity) "
                          "or stop with status sliding"),
        "stiff_after": Option(1000, int, "steps before a stability-limited instance may switch to "
                              "the Rosenbrock (Rodas3) tail integrator (0: never)"),
        "threads": Option(1, int, "torch intra-op threads during the solve (0: leave as is)"),
    },
    tighten=tighten,
)
