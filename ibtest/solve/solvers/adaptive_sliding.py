"""Kinks in the ``adaptive`` solver: the activation pattern, events, and held kinks (the rules
are in :mod:`ibtest.solve.solvers.adaptive`, the kink geometry in
:mod:`ibtest.solve.solvers.kinks`, the interpolant and root finding in
:mod:`ibtest.solve.solvers.events`).

Per working-set row the solver carries the side of its kink every entry is on
(``WorkingSet.slope``: σ'₊ above, σ'₋ below) and a set S of entries *held* at their kinks
(``WorkingSet.S_hold``). The field of a Runge–Kutta stage is −∇L with that pattern held, and on
the rows that hold kinks its W blocks are projected onto the kinks' tangent space (the
Filippov velocity while every held kink attracts; :meth:`Sliding.stage_field`). The field is
smooth inside a step, so the step is accepted or rejected by accuracy alone. After an accepted
step, :meth:`Sliding.after_step` looks for the first *event* in it:

* a free entry whose pre-activation crosses its kink against its side (its polynomial on the
  dense output changes sign beyond rounding): the arrival is located by root finding on the
  interpolant (no field evaluation);
* a held entry that stops being held (min(α_e, μ_e, α_e − μ_e) reaches 0:
  :meth:`KinkField.hold_margin`): located by root finding with one field evaluation per
  iteration on the rows concerned.

A crossing whose entry, at the located point, has both one-sided normal velocities pointing
back to its side (beyond rounding) and is within ``AT_KINK`` of its kink at the end of the step
is *grazing*, no event (:meth:`Sliding._grazing`): the interpolant dipped below the kink by the
integration error of z. The step is kept whole and the entry put back at ``RELEASE_OFFSET`` on
its side at its end. The Rosenbrock step of the stiff tail applies the same rule
(:func:`~ibtest.solve.solvers.stiff.grazes_back`): a grazing entry does not reject it.

Cost. Everything an event touches is proportional to what changes: the factors of held kinks
are cached per held unit (:class:`~ibtest.solve.solvers.kinks.UnitFactors`, compact), and an
event recomputes only the units whose held set changed; :meth:`Sliding.settle` factors only the
units of the arriving and leaving entries; a held kink's leave time is refined on one smooth
condition at a time (:func:`leave_root`), on the rows still searching.

The step is cut at the first event (θ from the interpolant), and :meth:`Sliding.settle` decides
the pattern there: the arriving entries and the held ones are held if together they attract
(every α_e > 0 and λ*_e in (0, 1)), else dropped (arrivals first) and put on the side their
one-sided normal velocities take them to. The next step starts there with the step size the
controller proposed: a transversal crossing costs one cut step, not a cascade of rejected ones,
and crossings later in the same step are found, in order, by the next steps.

``sliding: stop``: a row that would hold a kink ends with status SLIDING instead.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ibtest.plugin.specs import ModelBase
from ibtest.solve.solvers.adaptive_state import WorkingSet
from ibtest.solve.solvers.events import DenseOutput, first_crossing, horner, illinois
from ibtest.solve.solvers.kinks import KinkField, UnitFactors, _pack
from ibtest.solve.solvers.stiff import grazes_back

Tensor = torch.Tensor
#: the field of a stage: (θ [b, P], X [b, n, d], y [b, n], mask [b, n]) -> f [b, P]
Field = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
#: an entry that leaves its kink (or crosses it) is put at z_e = ±RELEASE_OFFSET·‖x_i‖‖w_j‖ on its
#: side (far above the rounding of z, ~1e-16 of that scale; far below the solver's tolerances),
#: so that its sign agrees with its side
RELEASE_OFFSET = 1e-12
#: |z_e| ≤ AT_KINK·‖x_i‖‖w_j‖: an entry settled at an event is at its kink, and goes to ±offset
AT_KINK = 1e-10
#: at most this many Illinois iterations per round of :func:`leave_root` (a row stops when its
#: bracket is at rounding). Its bracket is the whole step (a crossing's is 1/16 of it); a leave
#: time left 3.3e-6 off (8 iterations on φ itself) put the limit 4.7e-3 off a tightened
#: re-solve's (width 16, seed 11, instance 6: point 5 left four units when its residual crossed 0)
LEAVE_ITERS = 40
#: a leave root is refined to 1e-13 of its step (a time error ~1e-13·h, far below rtol; a leave
#: located 3.3e-6 off moved a limit by 4.7e-3, see above); below that g is rounding noise
LEAVE_XTOL = 1e-13
#: rounds of :func:`leave_root` (a new round only where another condition turned out to fail
#: before the one refined)
LEAVE_ROUNDS = 4
#: a row whose events keep arriving within ZENO_DT·max(1, t) of each other, ZENO_EVENTS of them,
#: is caught in a cycle of the event rule at one instant (width 64, seed 11, instance 1: the box
#: QP releases two entries of unit 11 at λ* = 1, the next event at t + 1e-12 brings one back,
#: it is held, and so on, thousands of times): it ends AMBIGUOUS. Ordinary events are ~1e-5
#: apart in the densest phase (1,000 events in t ≲ 0.03 at width 64)
ZENO_DT = 1e-8
ZENO_EVENTS = 200
#: rounds of dropping grazing crossings and locating the next first crossing (:meth:`Sliding._grazing`)
GRAZE_ITERS = 4


def _conditions(m: tuple[Tensor, Tensor, Tensor], S: Tensor) -> Tensor:
    """The hold conditions α_e, μ_e, α_e − μ_e of the held entries S [r, n, m] side by side,
    [r, 3·n·m] (+inf off S), from :meth:`KinkField.hold_margin`'s (φ, α, μ)."""
    _, al, mu = m
    inf = torch.full_like(al, float("inf"))
    return torch.stack([torch.where(S, al, inf), torch.where(S, mu, inf), torch.where(S, al - mu, inf)],
                       1).flatten(1)


def leave_root(margin: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]], S: Tensor,
               at0: tuple[Tensor, Tensor, Tensor], x_top: Tensor,
               at_top: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The first x ∈ (0, x_top] [r] where a held entry of S [r, n, m] stops being held, i.e.
    where φ = min_e min(α_e, μ_e, α_e − μ_e) reaches 0 (``margin(x, rows)`` gives (φ, α, μ) of
    the rows ``rows`` [k] (ascending) at their interpolants' points x [k]; ``at0`` is its value at
    0 on every row, where every condition holds; ``at_top`` at x_top, where φ ≤ 0). Returns a
    point with φ ≤ 0 within rounding of the root, and (φ, α, μ) there.

    φ is a minimum of smooth conditions and bends where the minimum changes hands, which slows a
    root finder on φ itself (Illinois needed ~30 evaluations). Instead, each round takes the
    condition that is most violated at the current right end, refines *its* root (smooth: a few
    Illinois iterations), and checks at that root that no other condition is more violated (it
    would have failed earlier): if one is, the next round does the same on [0, that root]. Only
    the rows still searching are evaluated."""
    hi = x_top.clone()
    m_hi = tuple(t.clone() for t in at_top)
    c0 = _conditions(at0, S)
    c_hi = _conditions(at_top, S)
    todo = torch.ones_like(x_top, dtype=torch.bool)
    for _ in range(LEAVE_ROUNDS):
        k = c_hi.argmin(-1, keepdim=True)  # [r, 1]: the condition most violated at hi
        g_lo = c0.gather(1, k).squeeze(-1)
        g_hi = c_hi.gather(1, k).squeeze(-1)

        def g(x: Tensor, rows: Tensor, k: Tensor = k) -> Tensor:
            return _conditions(margin(x, rows), S[rows]).gather(1, k[rows]).squeeze(-1)

        lo = torch.where(todo, torch.zeros_like(hi), hi)  # an empty bracket: the row is done
        x = illinois(g, lo, hi, torch.where(todo, g_lo, g_hi), g_hi, iters=LEAVE_ITERS, partial=True,
                     xtol=LEAVE_XTOL)
        act = todo.nonzero().squeeze(-1)
        m_x = margin(x[act], act)
        c_x = _conditions(m_x, S[act])
        for t, v in zip(m_hi, m_x):
            t[act] = v
        # done where the refined condition is (one of) the most violated at its root
        ok = c_x.gather(1, k[act]).squeeze(-1) <= c_x.min(-1).values
        hi[act] = x[act]
        c_hi[act] = c_x
        todo[act] = ~ok
        if not bool(todo.any()):
            break
    return hi, (m_hi[0], m_hi[1], m_hi[2])


def entries(Sm: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices [r, k] of the entries of the masks Sm [r, n, m] (padded; ok [r, k] False)."""
    Sf = Sm.flatten(1)
    k = int(Sf.sum(-1).max()) if Sf.numel() else 0
    ent = torch.argsort((~Sf).to(torch.int8), dim=-1, stable=True)[:, :k]
    return ent, Sf.gather(1, ent)


class Sliding:
    """The kink bookkeeping of one solve (``kf`` None: the model has no kinks the solver knows;
    every method is then a no-op or the classical field). ``follow``: hold attracting kinks
    (``sliding: follow``); else a row that reaches one is flagged SLIDING."""

    def __init__(self, model: ModelBase, kf: KinkField | None, follow: bool, dense: DenseOutput) -> None:
        self.model = model
        self.kf = kf
        self.follow = follow
        self.dense = dense
        #: working-set rows with some entry held [r] (None: none), their instances [r] (to
        #: re-align the cache when rows leave), held masks [r, n, m] and the factors
        #: (projector and pseudo-inverse, :func:`~ibtest.solve.solvers.kinks.unit_factors`) of
        #: the units that hold entries, compact (:class:`UnitFactors`, rows numbered as in
        #: ``rows``): at width 64 about half the units hold kinks, and a dense [r, m, d, d + n]
        #: cache cost a copy of all of it at every event
        self.rows: Tensor | None = None
        self.inst: Tensor | None = None
        self.S = torch.zeros(0, device=dense.U.device)
        self.U = UnitFactors(torch.zeros(0, dtype=torch.long, device=dense.U.device),
                             torch.zeros(0, dtype=torch.long, device=dense.U.device),
                             torch.zeros(0, 0, 0, device=dense.U.device))
        #: repelling releases of this iteration: (output slots [k], released entries [k, n, m]),
        #: for :func:`~ibtest.solve.solvers.adaptive_branches.open_branches`
        self.repelled: list[tuple[Tensor, Tensor]] = []

    # ---- the field ----------------------------------------------------------------------
    def plain(self, theta: Tensor, Xs: Tensor, ys: Tensor, ms: Tensor) -> Tensor:
        """The classical field −∇L [b, P] at θ [b, P]."""
        return -self.model.grad(theta, Xs, ys, ms)

    def stage_field(self, w: WorkingSet, rows: Tensor | None = None) -> Field:
        """The field of this step's stages for the working-set rows ``rows`` [r] (None: all):
        −∇L with each row's pattern held, its W blocks projected onto the tangent space of the
        row's held kinks (module docstring)."""
        kf = self.kf
        if kf is None:
            return self.plain
        slope = w.slope if rows is None else w.slope[rows]
        pr, U = self._held_positions(w, rows)
        Uf = U.rows_to(pr) if pr is not None else None  # rows numbered as the field's rows

        def F(theta: Tensor, Xs: Tensor, ys: Tensor, ms: Tensor) -> Tensor:
            g = kf.grad(theta, Xs, ys, ms, slope)
            if Uf is not None:
                g = kf.project_field(Uf, Xs, g)
            return -g
        return F

    def _held_positions(self, w: WorkingSet, rows: Tensor | None) -> tuple[Tensor | None, UnitFactors]:
        """Positions (within ``rows``, or the working set) of the rows that hold kinks, and the
        factors of their held units (:class:`UnitFactors`, rows numbered in the order of the
        positions)."""
        if self.rows is None:
            return None, self.U
        if rows is None:
            return self.rows, self.U
        pos = torch.full((w.idx.numel(),), -1, dtype=torch.long, device=w.idx.device)
        pos[rows] = torch.arange(rows.numel(), device=w.idx.device)
        p = pos[self.rows]
        keep = p >= 0
        if not bool(keep.any()):
            return None, self.U
        if bool(keep.all()):
            return p, self.U
        return p[keep], self.U.take(keep)

    def field_at(self, w: WorkingSet, rr: Tensor) -> Tensor:
        """The field [r, P] at the working-set rows rr [r] (pattern held, projected where held)."""
        return self.stage_field(w, rr)(w.th[rr], w.Xa[rr], w.ya[rr], w.ma[rr])

    # ---- the cache of held rows ---------------------------------------------------------
    def setup(self, w: WorkingSet) -> None:
        """Re-align the cache with the working set after S_hold changed or rows left: the
        factors of an instance's unit are kept where its held set on that unit is unchanged,
        and computed for the changed and new units only (an event changes one or two units of a
        row)."""
        kf = self.kf
        if kf is None:
            return
        rows = w.S_hold.flatten(1).any(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            self.rows = self.inst = None
            return
        S = w.S_hold[rows]
        inst = w.idx[rows]
        b, n, m = S.shape
        has = S.transpose(1, 2).any(-1)  # [r, m]: units with held entries
        todo = has
        parts_r, parts_j, parts_F = [], [], []
        if self.inst is not None and self.rows is not None and self.U.row.numel():
            # instance indices are ascending in the working set (rows only ever leave it)
            old = self.inst
            j = torch.searchsorted(old, inst).clamp_max(old.numel() - 1)
            known = old[j] == inst  # [r]
            changed = ~known.unsqueeze(-1) | (self.S[j] != S).any(1)  # [r, m]
            todo = has & changed
            # the cached units of rows still held whose held set did not change: kept
            k = torch.searchsorted(inst, old).clamp_max(b - 1)  # old row -> new row
            present = inst[k] == old
            U = self.U
            nr = k[U.row]
            stay = present[U.row] & ~changed[nr, U.unit] & has[nr, U.unit]
            parts_r.append(nr[stay])
            parts_j.append(U.unit[stay])
            parts_F.append(U.F[stay])
        new = UnitFactors.of(w.Xa[rows], S & todo.unsqueeze(1))  # the changed and new units
        if new.row.numel():
            parts_r.append(new.row)
            parts_j.append(new.unit)
            parts_F.append(new.F)
        if len(parts_r) == 1:
            U_new = UnitFactors(parts_r[0], parts_j[0], parts_F[0])
        else:
            U_new = UnitFactors(torch.cat(parts_r), torch.cat(parts_j), torch.cat(parts_F))
        self.rows, self.inst, self.S, self.U = rows, inst, S, U_new

    # ---- events -------------------------------------------------------------------------
    def after_step(self, w: WorkingSet, A: Tensor, K: Tensor, th_old: Tensor, t_old: Tensor, h: Tensor,
                   accept: Tensor, stiff_grazed: tuple[Tensor, Tensor] | None = None) -> Tensor | None:
        """Find the first event in each accepted explicit step (``accept`` [b]: the rows whose
        explicit step was accepted; module docstring), cut the step there and settle the
        pattern. K [S+1, b, P] the stages, A [S, S] the tableau, θ_old [b, P] and t_old [b] the
        start of the step, h [b]. Returns the rows flagged SLIDING (``stop``; bool [b]) or None.
        Grazing crossings (:meth:`_grazing`) are no events: their entries are put back on their
        side at the end of the step (:meth:`_snap`), as are ``stiff_grazed`` (working-set rows
        [r], entries [r, n, m]): the grazing entries of accepted Rosenbrock steps
        (:func:`ibtest.solve.solvers.stiff.tail_step`; their rows are not in ``accept``)."""
        self.grazed: tuple[Tensor, Tensor] | None = None
        flag = self._events(w, A, K, th_old, t_old, h, accept)
        if self.grazed is not None:
            self._snap(w, *self.grazed)
        if stiff_grazed is not None:
            self._snap(w, *stiff_grazed)
        return flag

    def _grazing(self, w: WorkingSet, re: Tensor, th0: Tensor, C: Tensor, z0: Tensor, Zc: Tensor, sgn: Tensor,
                 cand: Tensor, tol: Tensor, x_c: Tensor, hit: Tensor) -> tuple[Tensor, Tensor]:
        """Drop the *grazing* crossings from the first crossings (x_c [r], hit [r, n, m]) of the
        working-set rows ``re`` [r] and locate the first real one (returns the new x_c, hit).

        A crossing is grazing when, at its located point, both one-sided normal velocities of the
        entry point back to the side it came from beyond rounding (``hold_tolerance``; its unit
        holds no kink), and at the end of the step the entry is within ``AT_KINK`` of its kink or
        on its side: the flow does not cross there, and the interpolant's dip below the kink is
        the integration error of z (about rtol·‖θ‖‖x_i‖, far above the rounding of z). An entry
        that sits within that error of its kink with a normal velocity of the order of the
        residuals otherwise dips at every step and each dip is an event that cuts the step early
        and puts it back (W2, seed 0, instance 318: 11,879 such events)."""
        kf = self.kf
        assert kf is not None
        Xe, ye, me, sl = w.Xa[re], w.ya[re], w.ma[re], w.slope[re]
        shp = z0.shape
        free_u = ~w.S_hold[re].any(1, keepdim=True)  # [r, 1, m]: units that hold no kink
        th_end = w.th[re]
        # the entries that may graze: on a unit that holds no kink, within AT_KINK of the kink or on
        # their side at the end of the step (a real crossing that ends beyond AT_KINK costs nothing more)
        may = free_u & (sgn.view(shp) * kf.preact(th_end, Xe) >= -AT_KINK * kf.scale(th_end, Xe))
        grazed = torch.zeros_like(hit)
        cand = cand.clone()
        x_c, hit = x_c.clone(), hit.clone()
        E = cand.shape[1]
        for _ in range(GRAZE_ITERS):
            # only the rows whose first crossing has an entry that may graze (after the first
            # round: the rows re-located after dropping one); the others keep their crossing
            at = (hit & may).flatten(1).any(-1)
            if not bool(at.any()):
                break
            fi = at.nonzero().squeeze(-1)
            th_x = horner(th0[fi], C[:, fi], x_c[fi].clamp(0.0, 1.0).unsqueeze(-1))
            Xf, yf, mf, sf = Xe[fi], ye[fi], me[fi], sl[fi]
            s = sgn.view(shp)[fi]
            zd = -kf.preact(kf.grad(th_x, Xf, yf, mf, sf), Xf)  # ż on the entry's own side
            g = hit[fi] & may[fi] & (s * zd > 0)  # the test below needs s·ż > tolerance ≥ 0
            if not bool(g.any()):
                break
            g &= grazes_back(kf, th_x, Xf, yf, mf, sf, s, zd)
            gi = g.flatten(1).any(-1)
            if not bool(gi.any()):
                break
            fi, g = fi[gi], g[gi]
            grazed[fi] |= g
            cand[fi] &= ~g.flatten(1)
            # the next crossing of the rows that dropped a grazing one (none where no candidate is
            # left; first_crossing's answer for a row does not depend on the other rows)
            hit[fi] = False
            x_c[fi] = float("inf")
            left = cand[fi].any(-1)
            if not bool(left.any()):
                break
            fl = fi[left]
            x2, h2 = first_crossing(z0[fl].reshape(-1, E), Zc[:, fl], sgn[fl], cand[fl], tol[fl])
            x_c[fl] = x2
            hit[fl] = h2.view(-1, *shp[1:])
            may_r = torch.zeros_like(at)
            may_r[fl] = True
            may = may & may_r.view(-1, 1, 1)  # later rounds: the re-located rows only
        if bool(grazed.any()):
            gr = grazed.flatten(1).any(-1)
            self.grazed = (re[gr], grazed[gr])
        return x_c, hit

    def _snap(self, w: WorkingSet, rows: Tensor, ent: Tensor) -> None:
        """The grazed entries ``ent`` [r, n, m] of the working-set rows ``rows`` [r] that are
        closer to their kink than ``RELEASE_OFFSET`` (or past it) at the row's θ go to
        ±``RELEASE_OFFSET`` on their side (as :meth:`settle` puts an entry that leaves), where
        their unit still holds no kink; the field and loss are recomputed there."""
        kf = self.kf
        assert kf is not None
        Xr = w.Xa[rows]
        th = w.th[rows]
        sgn = torch.where(w.slope[rows] == kf.hi, 1.0, -1.0).to(th.dtype)
        z = kf.preact(th, Xr)
        mag = kf.scale(th, Xr)
        near = ent & ~w.S_hold[rows].any(1, keepdim=True) & (sgn * z < RELEASE_OFFSET * mag)
        go = near.flatten(1).any(-1)
        if not bool(go.any()):
            return
        rows, near, sgn, mag, th, Xr = rows[go], near[go], sgn[go], mag[go], th[go], Xr[go]
        th_new = kf.project(th, Xr, near, torch.where(near, sgn * RELEASE_OFFSET * mag, torch.zeros_like(mag)))
        w.th[rows] = th_new
        w.f[rows] = self.field_at(w, rows)
        w.loss[rows] = self.model.loss(th_new, Xr, w.ya[rows], w.ma[rows])

    def _events(self, w: WorkingSet, A: Tensor, K: Tensor, th_old: Tensor, t_old: Tensor, h: Tensor,
                accept: Tensor) -> Tensor | None:
        """:meth:`after_step` without the snapping of grazed entries."""
        kf = self.kf
        if kf is None:
            return None
        look = accept
        if not bool(look.any()):
            return None
        ri = look.nonzero().squeeze(-1)
        Xr = w.Xa[ri]
        live = (w.ma[ri] > 0).unsqueeze(-1)
        S_r = w.S_hold[ri]
        above = w.slope[ri] == kf.hi
        sgn = torch.where(above, 1.0, -1.0).to(w.th.dtype)
        free = ~S_r & live
        tol = kf.rounding(th_old[ri], Xr)
        z0 = kf.preact(th_old[ri], Xr)
        # pre-activations at the stage points and at the end (z is linear in θ)
        S1 = K.shape[0]
        Kr = K[:, ri]
        Zk = kf.preact(Kr.reshape(S1 * ri.numel(), -1), Xr.repeat(S1, 1, 1)).reshape(S1, -1)
        hz = h[ri].view(-1, 1, 1)
        past = (sgn * kf.preact(w.th[ri], Xr) < -tol) & free  # [r, n, m]: past the kink at the end
        for s in range(1, A.shape[0]):  # the stage points (vector @ matrix: batch-independent bits)
            zs = z0 + hz * (A[s, :s] @ Zk[:s]).view_as(z0)
            past |= (sgn * zs < -tol) & free
        cross = past.flatten(1).any(-1)
        # held entries that stop being held by the end of the step
        leave = torch.zeros_like(cross)
        if self.rows is not None:
            pr, Ap = self._held_positions(w, ri)
            if pr is not None:
                phi, _, _ = kf.hold_margin(w.th[ri][pr], Xr[pr], w.ya[ri][pr], w.ma[ri][pr], w.slope[ri][pr],
                                           Ap, S_r[pr])
                leave[pr] = (phi <= 0).flatten(1).any(-1)
        ev = cross | leave
        if not bool(ev.any()):
            return None
        # ---- locate the first event on the interpolant of the flagged rows
        e = ev.nonzero().squeeze(-1)
        re = ri[e]
        F = self.stage_field(w, re)
        Xe, ye, me = w.Xa[re], w.ya[re], w.ma[re]
        Ke = self.dense.extend(lambda u: F(u, Xe, ye, me), th_old[re], K[:, re], h[re])
        C = self.dense.coefficients(Ke, h[re])  # [deg, r, P]
        deg, r, P = C.shape
        Zc = kf.preact(C.reshape(deg * r, P), Xe.repeat(deg, 1, 1)).view(deg, r, -1)
        E = Zc.shape[-1]
        x_c, hit = first_crossing(z0[e].reshape(r, E), Zc, sgn[e].reshape(r, E), past[e].reshape(r, E),
                                  tol[e].reshape(r, E))
        hit = hit.view_as(z0[e])
        if bool(torch.isfinite(x_c).any()):
            x_c, hit = self._grazing(w, re, th_old[re], C, z0[e], Zc, sgn[e].reshape(r, E), past[e].reshape(r, E),
                                     tol[e].reshape(r, E), x_c, hit)
        x_l = torch.full_like(x_c, float("inf"))
        leave_e = leave[e]
        forced = torch.zeros_like(z0[e], dtype=torch.int8)
        f_rep = torch.zeros_like(z0[e], dtype=torch.bool)  # forced leaves that are repelling releases
        if bool(leave_e.any()):
            li = leave_e.nonzero().squeeze(-1)
            pr, Ap = self._held_positions(w, re[li])
            assert pr is not None
            lr = li[pr]
            th0_l, C_l = th_old[re[lr]], C[:, lr]
            Xl, yl, ml, sl_l, S_l = Xe[lr], ye[lr], me[lr], w.slope[re[lr]], w.S_hold[re[lr]]

            def margin(x: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
                if rows is None or rows.numel() == th0_l.shape[0]:
                    th_x = horner(th0_l, C_l, x.unsqueeze(-1))
                    return kf.hold_margin(th_x, Xl, yl, ml, sl_l, Ap, S_l)
                sel = torch.zeros(th0_l.shape[0], dtype=torch.bool, device=x.device)
                sel[rows] = True
                th_x = horner(th0_l[rows], C_l[:, rows], x.unsqueeze(-1))
                return kf.hold_margin(th_x, Xl[rows], yl[rows], ml[rows], sl_l[rows], Ap.take(sel), S_l[rows])

            # a held entry can leave before the row's first crossing only if it is no longer held
            # there: one evaluation at that point, the root only where that is so
            x_top = x_c[lr].clamp(max=1.0)
            top = margin(x_top)
            go_l = top[0].flatten(1).min(-1).values <= 0
            if bool(go_l.any()):
                lr, x_top = lr[go_l], x_top[go_l]
                top = (top[0][go_l], top[1][go_l], top[2][go_l])
                th0_l, C_l = th0_l[go_l], C_l[:, go_l]
                Xl, yl, ml, sl_l, S_l = Xl[go_l], yl[go_l], ml[go_l], sl_l[go_l], S_l[go_l]
                Ap = Ap.take(go_l)
                x0 = torch.zeros_like(x_top)
                phi0, al0, mu0 = margin(x0)
                xl, (phi, al, mu) = leave_root(margin, S_l, (phi0, al0, mu0), x_top, top)
                x_l[lr] = xl
                # the entry that leaves, and to which side: μ → 0: below; μ → α: above; α → 0
                # (the kink turns concave, repelling): the side with λ* = μ/α at the step's
                # start, where it held, above when λ* ≥ ½ (gradient descent's more likely side)
                k = phi.flatten(1).argmin(-1).unsqueeze(-1)
                al_k = al.flatten(1).gather(1, k).squeeze(-1)
                mu_k = mu.flatten(1).gather(1, k).squeeze(-1)
                rep = al_k <= torch.minimum(mu_k, al_k - mu_k)
                lam0 = mu0.flatten(1).gather(1, k).squeeze(-1) / al0.flatten(1).gather(1, k).squeeze(-1).clamp_min(1e-300)
                up = torch.where(rep, lam0 >= 0.5, (al_k - mu_k) <= mu_k)
                fl = torch.zeros(lr.numel(), E, dtype=torch.int8, device=x_c.device)
                fl.scatter_(1, k, torch.where(up, 1, -1).to(torch.int8).unsqueeze(-1))
                forced[lr] = fl.view(-1, *z0.shape[1:])
                f_rep[lr] = (fl != 0).view(-1, *z0.shape[1:]) & rep.view(-1, 1, 1)
        use_l = x_l <= x_c
        x_ev = torch.minimum(x_c, x_l)
        go = torch.isfinite(x_ev)
        if not bool(go.any()):
            return None
        gi = go.nonzero().squeeze(-1)
        rg = re[gi]
        xg = x_ev[gi].clamp(0.0, 1.0)
        th_ev = horner(th_old[rg], C[:, gi], xg.unsqueeze(-1))
        th_ev = torch.where((xg >= 1.0).unsqueeze(-1), w.th[rg], th_ev)
        # the step ends at the event
        t_ev = t_old[rg] + xg * h[rg]
        if self.rows is not None:
            was = w.S_hold[rg].flatten(1).any(-1)
            w.t_slide[rg] -= torch.where(was, w.t[rg] - t_ev, torch.zeros_like(t_ev))
        w.th[rg] = th_ev
        w.t[rg] = t_ev
        arrive = torch.where(use_l[gi].view(-1, 1, 1), torch.zeros_like(hit[gi]), hit[gi])
        frc = torch.where(use_l[gi].view(-1, 1, 1), forced[gi], torch.zeros_like(forced[gi]))
        frep = f_rep[gi] & use_l[gi].view(-1, 1, 1)
        w.events[rg] += 1
        # runs of events at one instant (within ZENO_DT·max(1, t) of the run's first)
        same = (t_ev - w.z_t[rg]) <= ZENO_DT * t_ev.clamp_min(1.0)
        w.z_n[rg] = torch.where(same, w.z_n[rg] + 1, torch.ones_like(w.z_n[rg]))
        w.z_t[rg] = torch.where(same, w.z_t[rg], t_ev)
        return self.settle(w, rg, arrive, frc, frep)

    def settle(self, w: WorkingSet, rows: Tensor, arrive: Tensor, forced: Tensor,
               repelled: Tensor | None = None) -> Tensor | None:
        """Decide the pattern at an event for the working-set rows ``rows`` [r] (θ at the event):
        the entries ``arrive`` [r, n, m] are at their kinks, the held entries with ``forced``
        [r, n, m] ≠ 0 leave (+1 above, −1 below). Only the units these entries belong to change
        (the units decouple); on them the arrivals and the other held entries are held where
        together they attract (:meth:`KinkField.hold_margin` > 0, beyond its rounding allowance
        :meth:`KinkField.hold_tolerance` for an arrival), dropping inconsistent arrivals first
        and then the most violating held entry; a dropped entry goes to the side its one-sided
        normal velocities a₋ (below) and a₊ (above) take it to (both < 0: below, both > 0: above;
        a₊ < 0 < a₋, or a concave kink a₋ < 0 < a₊: above when a₋/(a₋ − a₊) ≥ ½, the latter
        counted as a repelling release, like the forced leaves marked in ``repelled``). θ is put
        on the held kinks and at ±``RELEASE_OFFSET`` on the dropped ones that are within
        ``AT_KINK`` of theirs. Repelling releases are counted and queued for a branch
        (``self.repelled``). ``stop``: rows that would hold a kink are returned (bool [b])
        unchanged; else None."""
        kf = self.kf
        assert kf is not None
        dt = w.th.dtype
        th = w.th[rows]
        Xr, yr, mr = w.Xa[rows], w.ya[rows], w.ma[rows]
        held0 = w.S_hold[rows]
        fl = forced != 0
        above = torch.where(fl, forced > 0, w.slope[rows] == kf.hi)
        touched = (arrive | fl).any(1, keepdim=True)  # [r, 1, m]: the units whose pattern is decided
        keep = held0 & ~touched  # held entries of the other units stay held
        C = ((held0 & ~fl) | arrive) & touched
        shape = (-1,) + (1,) * (C.dim() - 1)
        lo = torch.tensor(kf.lo, dtype=dt, device=th.device)
        # one candidate alone on its unit (the common case): it is held iff it attracts beyond
        # rounding, a₋ > tol and a₊ < −tol (the same test as φ > tol, from one field
        # evaluation, no factorization); else it goes to the side a₋, a₊ take it to
        single = C & (C.sum(1, keepdim=True) == 1)
        multi = C & ~single
        slope = torch.where(C | keep, lo, kf.slope_of(above))
        g0 = kf.grad(th, Xr, yr, mr, slope)
        a_lo = -kf.preact(g0, Xr)
        al = kf.alpha(th, kf.residual(th, Xr, yr, mr, slope))
        nx = (Xr * Xr).sum(-1).unsqueeze(-1)  # ‖x_i‖² [r, n, 1]
        a_hi = a_lo - al * nx
        tol_v = kf.hold_tolerance(th, Xr, yr, mr, slope) * nx
        held_1 = single & (a_lo > tol_v) & (a_hi < -tol_v)
        free_new = single & ~held_1 & ~fl
        dropped = fl | (single & ~held_1)
        C = multi
        if bool(multi.any()):
            # several candidates on a unit: the Filippov velocity's own active set first. The
            # box QP's λ* on all candidates: an entry with λ*_e at a bound (or on a concave kink,
            # α_e ≤ 0) is not held by the minimal-norm velocity and leaves (KKT: its one-sided
            # field points off the kink). Dropping one violating entry at a time instead, with
            # the others projected, could drop entries the velocity holds, which then arrived
            # again at once: a cycle of events at one instant (width 16, seed 11, instance 0:
            # 1,500 events at t = 0.0465).
            thq = kf.project(th, Xr, multi)
            sq = torch.where(multi | keep | held_1, lo, kf.slope_of(above))
            lam_q, al_q, _, _ = kf.unit_qp(thq, Xr, yr, mr, sq, multi)
            out_q = multi & ((lam_q <= 0) | (lam_q >= 1) | (al_q <= 0))
            C = multi & ~out_q
            dropped |= out_q
            # on the side of its bound: the field of the entries left is the one with λ_e = 1
            # above (σ'₊) and λ_e = 0 below
            above = torch.where(out_q, lam_q >= 0.5, above)
        # then, until those left attract together beyond rounding: drop inconsistent arrivals
        # first, then the most violating held entry
        for _ in range(int(C.flatten(1).sum(-1).max()) + 1 if bool(C.any()) else 0):
            thp = kf.project(th, Xr, C)
            slope = torch.where(C | keep | held_1, lo, kf.slope_of(above))
            phi, _, _ = kf.hold_margin(thp, Xr, yr, mr, slope, UnitFactors.of(Xr, C), C)
            need = torch.where(arrive, kf.hold_tolerance(thp, Xr, yr, mr, slope), torch.zeros_like(phi))
            bad = C & (phi <= need)
            if not bool(bad.any()):
                break
            new_bad = bad & arrive
            has_new = new_bad.flatten(1).any(-1).view(shape)
            worst = torch.where(bad, phi - need, torch.full_like(phi, float("inf"))).flatten(1).argmin(-1)
            one = torch.zeros_like(bad).flatten(1)
            one.scatter_(1, worst.unsqueeze(-1), True)
            drop = torch.where(has_new, new_bad, one.view_as(bad) & bad)
            C = C & ~drop
            dropped |= drop
            if not bool(C.any()):
                break
        free_m = (multi & dropped) & ~fl
        C = C | held_1
        flag = None
        if not self.follow:
            sliding = C.flatten(1).any(-1)
            if bool(sliding.any()):
                flag = torch.zeros(w.idx.numel(), dtype=torch.bool, device=rows.device)
                flag[rows[sliding]] = True
                if bool(sliding.all()):
                    return flag
                C = C & ~sliding.view(shape)  # the other rows still take their new sides
        if bool(free_m.any()):
            # the normal velocities of the entries dropped from a unit that holds others: with
            # the field projected onto the kinks that unit keeps
            # (a₊ − a₋ = −α_e‖Π_j x_i‖²: the jump α_e x_i of the field, projected)
            thp = kf.project(th, Xr, C)
            slope = torch.where(C | keep | free_m, lo, kf.slope_of(above))
            Fm = UnitFactors.of(Xr, C)
            gm = kf.project_field(Fm, Xr, kf.grad(thp, Xr, yr, mr, slope))
            a_lo = torch.where(free_m, -kf.preact(gm, Xr), a_lo)
            al_m = kf.alpha(thp, kf.residual(thp, Xr, yr, mr, slope))
            a_hi = torch.where(free_m, a_lo - al_m * kf.projected_norms(Fm, Xr, C.shape[-1]), a_hi)
            free_new = free_new | free_m
        if bool(free_new.any()):
            # sides: both velocities ≤ 0 below, ≥ 0 above; mixed (an attracting kink within
            # rounding, or a concave one: repelling) above when a₋/(a₋ − a₊) ≥ ½
            down = (a_lo <= 0) & (a_hi <= 0)
            up = (a_lo >= 0) & (a_hi >= 0) & ~down
            mixed = ~down & ~up
            lam = a_lo / (a_lo - a_hi).where(a_lo != a_hi, torch.ones_like(a_lo))
            above = torch.where(free_new, torch.where(mixed, lam >= 0.5, up), above)
            repel = free_new & mixed & (a_lo < 0)
            repelled = repel if repelled is None else repelled | repel
        if repelled is not None and bool(repelled.any()):
            w.repel[rows] += repelled.flatten(1).sum(-1)
            first_rep = (w.repel[rows] > 0) & ~torch.isfinite(w.t_repel[rows])
            w.t_repel[rows] = torch.where(first_rep, w.t[rows], w.t_repel[rows])
            has = repelled.flatten(1).any(-1)
            self.repelled.append((w.idx[rows[has]], repelled[has]))
        # θ onto the held kinks; the entries that left within AT_KINK of theirs at ±offset
        moved = (arrive | dropped) & ~C
        z = kf.preact(th, Xr)
        mag = kf.scale(th, Xr)
        sgn = torch.where(above, 1.0, -1.0).to(dt)
        near = moved & (sgn * z <= AT_KINK * mag)
        target = torch.where(near, sgn * RELEASE_OFFSET * mag, torch.zeros_like(z))
        th_new = kf.project(th, Xr, C | near, target)
        S_new = C | keep
        new_ep = S_new.flatten(1).any(-1) & ~held0.flatten(1).any(-1)
        w.episodes[rows] += new_ep.long()
        w.th[rows] = th_new
        w.S_hold[rows] = S_new
        w.slope[rows] = torch.where(S_new, lo, kf.slope_of(above))
        self.setup(w)
        w.f[rows] = self.field_at(w, rows)
        w.loss[rows] = self.model.loss(th_new, Xr, yr, mr)
        return flag

    def start(self, w: WorkingSet) -> Tensor | None:
        """The pattern at the start of a solve: every entry on the side of its sign (σ'(0)
        decides for an entry exactly at 0); entries at 0 that the field with that pattern
        drives to the other side, or presses from both sides, are settled at once."""
        kf = self.kf
        if kf is None:
            return None
        z = kf.preact(w.th, w.Xa)
        w.slope = kf.slope_of(kf.start_side(z))
        w.f = self.field_at(w, torch.arange(w.idx.numel(), device=w.idx.device))
        at0 = (z == 0) & (w.ma > 0).unsqueeze(-1)
        if not bool(at0.any()):
            return None
        zd = kf.preact(w.f, w.Xa)
        sgn = torch.where(w.slope == kf.hi, 1.0, -1.0).to(z.dtype)
        against = at0 & (sgn * zd < 0)
        rows = against.flatten(1).any(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return None
        return self.settle(w, rows, against[rows], torch.zeros_like(against[rows], dtype=torch.int8))


__all__ = ["Sliding", "entries", "Field", "RELEASE_OFFSET", "AT_KINK", "_pack"]
