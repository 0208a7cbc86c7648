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

Modules. This module wires the pieces into the loop (one iteration: one step of every active
instance, then the checks, then the finished rows leave). The pieces, one job each:
:mod:`~ibtest.solve.solvers.adaptive_state` (the per-row working set, :meth:`WorkingSet.keep`,
and the outputs), :mod:`~ibtest.solve.solvers.adaptive_step` (initial step, Runge–Kutta stages,
error norm, step-size control and the stiffness switch; the per-step cost notes),
:mod:`~ibtest.solve.solvers.adaptive_sliding` (chatter detection, pending and held kinks, the
Filippov field) and :mod:`~ibtest.solve.solvers.adaptive_stop` (the stopping rules). Every active
instance takes one step per iteration (one step counter for the whole batch), and the rare-event
rules (drift check, exact zero gradient, doubling checkpoints, chatter) each sit behind one cheap
test, their bookkeeping run only when it fires.

Stiff tails (issue 12). Some instances end on a slow last piece against a large curvature
(W2: σ_min(J) ≈ 0.01–0.03 against λ_max(∇²L) ≈ 70): the explicit step is held at the edge of its
stability region while the tail lasts t ~ 1/σ_min², far beyond any step budget. Each accepted
explicit step applies Hairer's stiffness test (h·‖K_S − K_{S−1}‖/‖θ_new − Y_{S−1}‖ above 0.7 of the
real stability interval, or the stability cap h_cap of the drift check binding); after 15 such
steps (6 unlimited steps reset the count) and at least ``stiff_after`` steps (default 100), the
instance switches to a batched Rosenbrock step (``stiff_method``: Rodas5P, order 5, by default,
Rodas5 or Rodas3; L-stable, exact Hessian on the current activation pattern:
:mod:`ibtest.solve.solvers.stiff`, :mod:`ibtest.solve.solvers.rosenbrock`), whose step is limited
by accuracy only. Its explicit stages are then skipped (an iteration in which every row is
stiff takes no explicit stages, error norm or stiffness test at all). Held kinks are followed in
that phase (the Filippov field there is −Π∇L, see :func:`ibtest.solve.solvers.stiff.tail_step`);
a pending kink does not block the switch. An entry that only grazes its kink at the stage
points does not reject the step (the grazing rule below, :mod:`ibtest.solve.solvers.stiff`). A
Rosenbrock step whose stage points cross a kink against the pattern (or at whose end a held kink
stops being held) is rejected; while the step shortened toward the crossing stays above
``APPROACH`` = 2 explicit steps the row retries it, else it returns to the explicit method (its
last explicit step size h_ex; no new switch for the steps that cover twice the rejected step at
h_ex, at most ``RESWITCH_AFTER`` = 50: :func:`~ibtest.solve.solvers.adaptive_step.stiff_exit`), so
kinks crossed in the tail are resolved and checked for sliding as before. Every stopping rule
below applies unchanged to both kinds of step (the energy-identity test for pinned iterates skips
Rosenbrock rows, which keep their pattern). ``info["stiff_steps"]`` counts the Rosenbrock steps
of an instance. ``stiff_after=0`` disables the switch.

Kinks (an activation switching) are events: the field of a step is −∇L with the activation
pattern held, smooth inside the step, and the first crossing in an accepted step is located on
its dense output and the step cut there (:mod:`ibtest.solve.solvers.adaptive_sliding`); a
grazing crossing (the field points back on both sides: the interpolant's dip is integration
error) is no event.

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
few percent of instances, issue 12): ``info["drift_estimate"]``. Verdicts re-measure the error
by a tighter re-solve and read the estimate only when that re-check is off. CONVERGED needs loss ≤ fit_tol and the estimate
≤ ``drift_tol``; the Gauss–Newton end point θ − J⁺r is then returned.

Sliding (``sliding: follow`` — the default — or ``stop``)
---------------------------------------------------------
For models with :class:`ibtest.PiecewiseLinearUnits` the solver carries the side of every
kink entry z_e = ⟨w_j, x_i⟩ = 0 and a set of *held* entries
(:mod:`ibtest.solve.solvers.adaptive_sliding`, :mod:`ibtest.solve.solvers.kinks`). An entry
whose one-sided fields both point at its kink is held: the field is then the Filippov /
minimal-norm Clarke velocity, −∇L with the W blocks projected onto the held kinks' tangent
space; with several candidates on a unit the box QP's λ* decides which are held. A held entry
leaves when λ*_e reaches 0 or 1 (located by root finding on the interpolant), and is released
at once when its kink turns concave (α_e < 0: repelling; the flow is not unique there). A
repelling release is followed both ways (``branches``); an instance whose branches end apart is
``AMBIGUOUS`` (``info["ambiguous"]``, ``info["branch_spread"]``). ``info``: ``slid``,
``t_sliding``, ``sliding_episodes``, ``kink_events``, ``repelling_releases``, ``t_repelling``.

``stop``: an instance that would hold a kink ends with status SLIDING; its θ is the iterate at
the kink. A model without :class:`ibtest.PiecewiseLinearUnits` is integrated on its classical
field −∇L.
"""
from __future__ import annotations

import math

import torch

from ibtest.base import status as st
from ibtest.base.progress import solver_reporter
from ibtest.plugin.specs import DEFAULT_FIT_TOL, ModelBase, Solver, SolveResult
from ibtest.solve.fit import fit_threshold
from ibtest.solve.solvers.adaptive_branches import fold_branches, open_branches
from ibtest.solve.solvers.adaptive_options import DEFAULTS, OPTIONS, tighten
from ibtest.solve.solvers.adaptive_sliding import ZENO_EVENTS, Sliding
from ibtest.solve.solvers.adaptive_state import Outputs, WorkingSet
from ibtest.solve.solvers.adaptive_step import (
    FAC_MAX,
    RKMethod,
    advance,
    initial_step,
    stiff_exit,
    stiff_rows,
    stiffness_switch,
)
from ibtest.solve.solvers.adaptive_stop import checkpoints, drift_check, status_codes, zero_gradient
from ibtest.solve.solvers.events import DenseOutput
from ibtest.solve.solvers.kinks import kink_field

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
    rtol: float = DEFAULTS["rtol"],
    atol: float = DEFAULTS["atol"],
    fit_tol: float = DEFAULT_FIT_TOL,
    drift_tol: float = DEFAULTS["drift_tol"],
    t_max: float = DEFAULTS["t_max"],
    max_steps: int = DEFAULTS["max_steps"],
    div_norm: float = DEFAULTS["div_norm"],
    order: int = DEFAULTS["order"],
    growth_window: int = DEFAULTS["growth_window"],
    growth_t_min: float = DEFAULTS["growth_t_min"],
    growth_min_rate: float = DEFAULTS["growth_min_rate"],
    sliding: str = DEFAULTS["sliding"],
    stiff_after: int = DEFAULTS["stiff_after"],
    stiff_method: str = DEFAULTS["stiff_method"],
    threads: int = DEFAULTS["threads"],
    branches: int = DEFAULTS["branches"],
) -> SolveResult:
    """Integrate gradient flow for B instances at once; see the module docstring for the rules.

    X [B, n, d], y [B, n], mask [B, n], theta0 [B, P] (float64). Returns a :class:`SolveResult`
    with ``info``: ``t``, ``steps`` (accepted + rejected), ``drift_estimate`` (the drift
    estimate at stop; inf where it was not established), ``grad_norm``, ``growth`` (‖θ‖/‖θ0‖), ``growth_rate`` (fitted exponent of
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
                          order=order, growth_window=growth_window,
                          growth_t_min=growth_t_min, growth_min_rate=growth_min_rate,
                          sliding=sliding, stiff_after=stiff_after, stiff_method=stiff_method,
                          branches=branches)
    finally:
        if threads and threads != prev_threads:
            torch.set_num_threads(prev_threads)


def _solve(model: ModelBase, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor, *, rtol: float, atol: float,
           fit_tol: float, drift_tol: float, t_max: float, max_steps: int, div_norm: float, order: int,
           growth_window: int, growth_t_min: float, growth_min_rate: float, sliding: str, stiff_after: int,
           stiff_method: str, branches: int) -> SolveResult:
    """The loop of :func:`solve_adaptive` (same arguments; X [B, n, d], y [B, n], mask [B, n],
    theta0 [B, P]): one step of every row of the working set per iteration, then the stopping
    rules, then the finished rows leave."""
    if sliding not in ("follow", "stop"):
        raise ValueError(f"sliding must be 'follow' or 'stop', got {sliding!r}")
    rk = RKMethod(int(order), stiff_method)
    A = rk.A

    dt = torch.float64
    X, y, mask = X.to(dt), y.to(dt), mask.to(dt)
    theta0 = theta0.to(dt)
    dev = theta0.device
    rk.to(dev)
    B, P = theta0.shape
    kf = kink_field(model)
    sl = Sliding(model, kf, sliding == "follow", DenseOutput(int(order), dev))
    out = Outputs.start(theta0, branches)

    th = theta0.clone()
    loss = model.loss(th, X, y, mask)
    # the fit threshold per instance: fit_tol relative to the loss scale max(½‖y‖², L(θ0))
    fit = fit_threshold(model, X, y, mask, theta0, fit_tol).to(dt)
    W = int(growth_window)
    E = (B, X.shape[1], kf.preact(th[:1], X[:1]).shape[-1]) if kf is not None else (B, 0, 0)
    i64 = torch.int64

    def full(v: float, dtype: torch.dtype = dt, shape: tuple[int, ...] = (B,)) -> Tensor:
        return torch.full(shape, v, dtype=dtype, device=dev)

    w = WorkingSet(
        idx=torch.arange(B, device=dev), th=th, f=torch.zeros_like(th), t=full(0.0), h=full(0.0), loss=loss,
        Xa=X, ya=y, ma=mask, growth_lim=full(FAC_MAX), fit=fit, next_check=1e6 * fit, h_cap=full(math.inf),
        drift=full(math.inf), ck_next=full(1e-3), ck_hist=full(math.nan, shape=(B, W + 1, 4)),
        ck_n=full(0, i64), rate=full(0.0), slope=full(0.0, shape=E), S_hold=full(False, torch.bool, E),
        t_slide=full(0.0), episodes=full(0, i64), events=full(0, i64), repel=full(0, i64), t_repel=full(math.inf),
        stiff=full(False, torch.bool), h_ex=full(0.0), st_cnt=full(0, i64), st_non=full(0, i64),
        st_block=full(0, i64), st_steps=full(0, i64), z_t=full(-math.inf), z_n=full(0, i64))
    if kf is not None:
        slid0 = sl.start(w)
    else:
        w.f = sl.plain(th, X, y, mask)
        slid0 = None
    w.h = initial_step(sl.stage_field(w), w.th, w.f, X, y, mask, rtol, atol, rk.order, t_max)
    th0n = theta0.norm(dim=-1)
    can_stiff = bool(stiff_after) and stiff_after > 0
    n_iter = 0  # every active instance takes one (accepted or rejected) step per iteration
    if slid0 is not None and bool(slid0.any()):  # sliding: stop, and a kink held from the start
        out.retire(w, slid0, st.SLIDING, n_iter)
        w.keep(~slid0)
        sl.setup(w)

    report = solver_reporter()  # the progress bar of the call, if someone watches it
    while w.idx.numel() > 0:
        b = w.idx.numel()
        if report is not None and n_iter % 8 == 0:  # instances done: none of their rows (branches) left
            report(B - int(torch.unique(out.parent[w.idx]).numel()), n_iter, float(w.t.min()))
        # ---- one embedded RK step for every active instance (stiff rows: Rosenbrock) -------
        sliding_rows = sl.rows
        n_stiff = int(w.stiff.sum()) if can_stiff else 0
        any_stiff = n_stiff > 0
        all_stiff = n_stiff == b  # no explicit step this iteration: its stages, error and tests are skipped
        explicit = ~w.stiff  # the rows taking an explicit step (the switch below may change w.stiff)
        h = w.h
        if all_stiff:  # K = f at every stage (an explicit step of h = 0); stiff_rows fills K[S] and err
            K, th_new, y_s = w.f.unsqueeze(0).repeat(rk.S + 1, 1, 1), w.th, w.th
            err = torch.empty_like(h)
        else:
            if any_stiff:  # the explicit stages of the explicit rows only
                ex_rows = explicit.nonzero().squeeze(-1)
                K, th_new, y_s = rk.stages(sl.stage_field(w), w.th, w.f, h, w.Xa, w.ya, w.ma, rows=ex_rows,
                                           F_rows=sl.stage_field(w, ex_rows))
            else:
                K, th_new, y_s = rk.stages(sl.stage_field(w), w.th, w.f, h, w.Xa, w.ya, w.ma)
            err = rk.error(K, w.th, th_new, h, rtol, atol)
        kinked = grazed = None
        frac = h
        if any_stiff:
            th_new, kinked, frac, grazed = stiff_rows(model, sl, rk, w, K, th_new, err, rtol, atol)
        accept = err <= 1.0
        n_iter += 1

        # ---- step size update, stiffness switch ----------------------------------------------
        t_old = w.t
        th_old, h_next = advance(model, rk, w, K, th_new, err, accept, any_stiff, sliding_rows)
        if kinked is not None and bool(kinked.any()):
            # the Rosenbrock step crossed or left a kink: a shorter one, or back to the explicit
            # method (it locates the event), no switch for RESWITCH_AFTER steps
            h_next = stiff_exit(w, kinked, frac, h, h_next, n_iter)
        if can_stiff and not all_stiff:  # the test counts explicit steps only
            stiffness_switch(rk, w, K, th_new, y_s, h, h_next, accept, n_iter, stiff_after)

        # ---- kink events: the first in each accepted explicit step (the step is cut there) ----
        if grazed is not None:  # the grazed entries of accepted Rosenbrock steps
            ga = accept[grazed[0]]
            grazed = (grazed[0][ga], grazed[1][ga]) if bool(ga.any()) else None
        slid = sl.after_step(w, A, K, th_old, t_old, h, accept & explicit, grazed)
        h_next = torch.minimum(h_next, (t_max - w.t).clamp_min_(0.0))  # t lands exactly on t_max
        w.h = h_next

        # ---- status checks -----------------------------------------------------------------
        thn = w.th.norm(dim=-1)
        diverged = ~(thn <= div_norm) | ~torch.isfinite(w.loss)  # non-finite θ or loss, or ‖θ‖ large
        converged = drift_check(model, w, accept, diverged, drift_tol)
        not_conv = ~diverged if converged is None else ~diverged & ~converged
        stalled = zero_gradient(w, accept, not_conv)
        escaped, stalled = checkpoints(w, accept, not_conv, thn, stalled, growth_t_min, growth_min_rate, sl)
        # the drift bound is kept only while the loss stays fitted (converged rows have loss_gn ≤ fit_tol)
        w.drift.masked_fill_(w.loss > w.fit, math.inf)

        budget_all = n_iter >= max_steps
        budget = h_next <= 1e-15 * w.t.clamp_min(1.0)  # the step underflowed (or t reached t_max)
        done = diverged | budget
        # events piling up at one instant: a tangent kink configuration the event rule cannot
        # settle (it releases an entry that re-arrives at once); the flow's continuation there is
        # not decided: AMBIGUOUS (info["ambiguous"] = 3), never a limit
        piled = w.z_n >= ZENO_EVENTS
        zeno = piled if bool(piled.any()) else None
        for flag in (converged, stalled, escaped, slid, zeno):
            if flag is not None:
                done |= flag
        if budget_all or bool(done.any()):
            if budget_all:
                done = torch.ones(b, dtype=torch.bool, device=dev)
            codes = status_codes(b, diverged, converged, stalled, escaped, slid)
            if zeno is not None:
                codes = torch.where(zeno & ~diverged, torch.full_like(codes, st.AMBIGUOUS), codes)
            out.retire(w, done, codes, n_iter)
            w.keep(~done)
            sl.setup(w)
        if sl.repelled:  # follow this iteration's repelling releases both ways, in branches
            open_branches(model, w, out, sl)

    if report is not None:
        report(B, n_iter, float(out.t.min()) if B else 0.0)
    folded = fold_branches(out, B)
    theta = out.theta[:B]
    loss_out = model.loss(theta, X, y, mask)
    tn = theta.norm(dim=-1)
    growth = torch.where(th0n > 0, tn / th0n.clamp_min(1e-300), tn)
    return SolveResult(theta, out.status[:B], loss_out, out.info(growth) | folded)


SPEC = Solver(
    name="adaptive",
    solve=solve_adaptive,
    doc="batched embedded Runge-Kutta (DOP853 or Dormand-Prince 5(4)) with per-instance step "
        "size, drift-bounded convergence and divergence/stall/sliding detection; every model",
    options=OPTIONS,
    tighten=tighten,
)
