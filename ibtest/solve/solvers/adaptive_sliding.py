"""Sliding in the ``adaptive`` solver: chatter detection, pending and held kinks, and the
Filippov field of the held kinks (the rules are in :mod:`ibtest.solve.solvers.adaptive`, the kink
geometry in :mod:`ibtest.solve.solvers.kinks`).

Per working-set row a set S of kink entries is *held* (``WorkingSet.S_hold``, empty: the
classical field −∇L) and a set is *pending* (``WorkingSet.pend``: evidence of sliding, the kink is
being approached). :class:`Sliding` caches the rows with some entry held and their entry lists
and tangent projectors while S is unchanged (:meth:`Sliding.setup` after every change), so the
field of a Runge–Kutta stage (:meth:`Sliding.stage_field`) costs nothing extra when nothing slides
and one batched product per stage on the sliding rows (the tangent projection −Π∇L, which is the
Filippov velocity while the held λ* are interior); the box QP runs once per step, at the proposal
(:meth:`Sliding.check`), and at every stage only of a step being retried because the flow left a
held kink in it.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ibtest.plugin.specs import ModelBase
from ibtest.solve.solvers.adaptive_state import WorkingSet
from ibtest.solve.solvers.kinks import KinkField, Preact, kink_evidence

Tensor = torch.Tensor
#: the field of a stage: (θ [b, P], X [b, n, d], y [b, n], mask [b, n]) -> f [b, P]
Field = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
#: a released kink entry is left at z_e = ±RELEASE_OFFSET·‖x_i‖‖w_j‖, on the side the flow leaves to
#: (far above the rounding of z, ~1e-16 of that scale; far below the solver's tolerances)
RELEASE_OFFSET = 1e-12
#: |z_e| ≤ AT_KINK·‖x_i‖‖w_j‖: a pending entry is at its kink (entered, θ projected onto it), and a
#: released one that has not left this band is put at ±RELEASE_OFFSET
AT_KINK = 1e-10


def entries(Sm: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices [r, k] of the entries of the masks Sm [r, n, m] (padded; ok [r, k] False)."""
    Sf = Sm.flatten(1)
    k = int(Sf.sum(-1).max()) if Sf.numel() else 0
    ent = torch.argsort((~Sf).to(torch.int8), dim=-1, stable=True)[:, :k]
    return ent, Sf.gather(1, ent)


class Sliding:
    """The kink bookkeeping of one solve. ``preact`` None: the model has no known kinks (no
    detection); ``kf`` None: ``sliding: stop`` or no :class:`KinkField` (chatter counting, status
    SLIDING); else ``sliding: follow`` (pending/held kinks, Filippov field)."""

    def __init__(self, model: ModelBase, preact: Preact | None, kf: KinkField | None,
                 sliding_count: int) -> None:
        self.model = model
        self.preact = preact
        self.kf = kf
        self.sliding_count = sliding_count
        #: working-set rows with some entry held [r] (None: none), their masks [r, n, m] and
        #: entry lists ent/ok [r, k]
        self.rows: Tensor | None = None
        self.S = self.ent = self.ok = torch.zeros(0)
        #: their tangent projectors [r, m, d, d] (:meth:`KinkField.tangent_projector`) and
        #: instance indices [r] (to reuse the projectors across :meth:`setup`)
        self.Pi = torch.zeros(0)
        self.inst: Tensor | None = None
        #: the held entries [r, k] whose kink the flow leaves at the proposal of this step
        #: (:meth:`KinkField.field_leave`; False where not evaluated)
        self.last_leave = torch.zeros(0, dtype=torch.bool)
        #: λ* [r, k] there (where box-QP'd; the side a released kink is left on)
        self.last_lam = torch.zeros(0)

    # ---- the field ----------------------------------------------------------------------
    def plain(self, theta: Tensor, Xs: Tensor, ys: Tensor, ms: Tensor) -> Tensor:
        """The classical field −∇L [b, P] at θ [b, P]."""
        return -self.model.grad(theta, Xs, ys, ms)

    def stage_field(self, w: WorkingSet, rows: Tensor | None = None) -> Field:
        """The field of this step's Runge–Kutta stages: −∇L, and on the rows that hold kinks the
        Filippov velocity, in one of two forms (module docstring): −Π∇L (the tangent
        projection, a product per stage) on the rows whose held kinks the flow did not leave
        at the end of their last step, the box QP of :meth:`KinkField.field_leave` on the rows
        marked ``w.qp`` (a step being retried because the flow left a held kink in it; their
        ``last_leave`` is that of the last stage, the proposal).

        ``rows`` [r]: the field of those working-set rows alone (the explicit rows of a step
        that has stiff rows; the field is then called on θ [r, P]). The held entries of rows
        whose stages are not box-QP'd here do not leave (``last_leave`` False): projected rows
        are tested by :meth:`check`, stiff rows by their Rosenbrock step."""
        if self.rows is None:
            return self.plain
        kf = self.kf
        assert kf is not None
        if rows is None:
            r = self.rows
            kp = torch.ones(r.numel(), dtype=torch.bool)
        else:
            pos = torch.full((w.idx.numel(),), -1, dtype=torch.long)
            pos[rows] = torch.arange(rows.numel())
            r = pos[self.rows]
            kp = r >= 0
        ex = kp & w.qp[self.rows]
        pr = kp & ~ex
        r_pr, Pi_pr = r[pr], self.Pi[pr]
        r_ex, S_ex, ent_ex, ok_ex = r[ex], self.S[ex], self.ent[ex], self.ok[ex]
        self.last_leave = torch.zeros(self.ok.shape, dtype=torch.bool)
        self.last_lam = torch.full(self.ok.shape, 0.5, dtype=torch.float64)
        any_pr, any_ex = r_pr.numel() > 0, r_ex.numel() > 0

        def F(theta: Tensor, Xs: Tensor, ys: Tensor, ms: Tensor) -> Tensor:
            g = -self.model.grad(theta, Xs, ys, ms)
            if any_pr:
                g[r_pr] = kf.project_field(Pi_pr, g[r_pr])
            if any_ex:
                fs, lam, leave = kf.field_leave(theta[r_ex], Xs[r_ex], ys[r_ex], ms[r_ex], S_ex, ent_ex, ok_ex)
                g[r_ex] = fs
                self.last_leave[ex] = leave & ok_ex
                self.last_lam[ex] = lam
            return g
        return F

    def check(self, w: WorkingSet, th_new: Tensor, err: Tensor) -> Tensor | None:
        """After the stages: the leaving test (:meth:`KinkField.field_leave`) at the proposal
        θ_new [b, P] of the sliding rows that took a projected explicit step (one box QP per
        step instead of one per stage). Where the flow leaves a held kink the projected field
        was not the Filippov velocity somewhere in the step: the step is rejected (err [b] set
        to inf in place) and retried with the same h and the box-QP field at every stage
        (``w.qp``), which releases the kink (:meth:`release`). Returns the retried rows [q]
        (None: none)."""
        if self.rows is None:
            return None
        kf = self.kf
        assert kf is not None
        sel = ~w.qp[self.rows] & ~w.stiff[self.rows]
        if not bool(sel.any()):
            return None
        rr = self.rows[sel]
        ok = self.ok[sel]
        _, _, leave = kf.field_leave(th_new[rr], w.Xa[rr], w.ya[rr], w.ma[rr], self.S[sel], self.ent[sel], ok)
        out = (ok & leave).any(-1)
        if not bool(out.any()):
            return None
        q = rr[out]
        err[q] = math.inf
        w.qp[q] = True
        return q

    def setup(self, w: WorkingSet) -> None:
        """Recompute the cache of sliding rows after S_hold changed (or rows left): their masks,
        entry lists and tangent projectors (reused for an instance whose S is unchanged: they
        depend on X and S only)."""
        rows = w.S_hold.flatten(1).any(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            self.rows = None
            self.inst = None
            return
        kf = self.kf
        assert kf is not None
        S = w.S_hold[rows]
        ent, ok = entries(S)
        inst = w.idx[rows]
        reuse = torch.zeros(rows.numel(), dtype=torch.bool)
        Pi = None
        if self.inst is not None:
            # instance indices are ascending in the working set (rows only ever leave it)
            j = torch.searchsorted(self.inst, inst).clamp_max(self.inst.numel() - 1)
            reuse = (self.inst[j] == inst) & (self.S[j] == S).flatten(1).all(-1)
            if bool(reuse.all()):
                Pi = self.Pi[j]
            elif bool(reuse.any()):
                Pi = torch.empty(rows.numel(), *self.Pi.shape[1:], dtype=self.Pi.dtype)
                Pi[reuse] = self.Pi[j[reuse]]
        new = ~reuse
        if Pi is None:
            Pi = kf.tangent_projector(w.Xa[rows], S)
        elif bool(new.any()):
            Pi[new] = kf.tangent_projector(w.Xa[rows[new]], S[new])
        self.rows, self.S, self.ent, self.ok, self.Pi, self.inst = rows, S, ent, ok, Pi, inst
        w.qp[rows[~reuse]] = False

    def field_at(self, w: WorkingSet, rr: Tensor) -> Tensor:
        """The field [r, P] (Filippov where S is held) at the working-set rows rr [r]."""
        g = -self.model.grad(w.th[rr], w.Xa[rr], w.ya[rr], w.ma[rr])
        has = w.S_hold[rr].flatten(1).any(-1)
        if bool(has.any()):
            assert self.kf is not None
            sub = rr[has]
            ent, ok = entries(w.S_hold[sub])
            g[has] = self.kf.field(w.th[sub], w.Xa[sub], w.ya[sub], w.ma[sub], w.S_hold[sub], ent, ok)[0]
        return g

    # ---- holding kinks ------------------------------------------------------------------
    def enter(self, w: WorkingSet, rows: Tensor, cand: Tensor) -> Tensor:
        """Try to hold the candidate entries ``cand`` [r, n, m] (plus those held) of working-set
        rows ``rows`` [r] at their kinks: keep the attracting ones (the flow does not leave them
        at θ projected onto them: λ* interior, α ≠ 0;
        :meth:`KinkField.field_leave`) at that projected θ. Leaving entries are dropped
        until the rest is consistent, candidates before held entries; a row whose candidates are
        all dropped keeps its held set as it is (W2 seed 0, instance 22: read at z_e = rounding,
        the held set alone looked left and was dropped at the kink rather than released on the
        flow's side, 1.6e-8 from the tight solve at t = 50; now 7.9e-10). Returns the rows that
        now slide (bool [r])."""
        kf, preact = self.kf, self.preact
        assert kf is not None and preact is not None
        Xr, yr, mr = w.Xa[rows], w.ya[rows], w.ma[rows]
        z = preact(w.th[rows], Xr)
        near = z.abs() <= 1e-6 * kf.scale(w.th[rows], Xr)
        held0 = w.S_hold[rows]
        C = (cand & near) | held0
        per_row = (-1,) + (1,) * (C.dim() - 1)  # a per-row flag [r] broadcast over C's entries
        # drop entries the flow leaves, one batch of them per pass, until the set is consistent:
        # leaving candidates first, a held entry only when no candidate of its row leaves and one
        # stays (a held set that was consistent is not thrown away with an inconsistent
        # candidate: W2 seed 0, instance 924 lost its two held kinks that way at every step)
        for _ in range(int(C.flatten(1).sum(-1).max()) + 1 if C.numel() else 0):
            if not bool(C.any()):
                break
            ent, ok = entries(C)
            thp = kf.project(w.th[rows], Xr, C)
            _, _, leave = kf.field_leave(thp, Xr, yr, mr, C, ent, ok)
            bad = ok & leave
            if not bool(bad.any()):
                break
            badm = torch.zeros(C.shape[0], C[0].numel(), dtype=torch.bool)
            badm.scatter_(1, ent, bad)
            badm = badm.view_as(C)
            new_bad = badm & ~held0
            # a row back at its held set keeps it: its held kinks are left by the step's own
            # leaving test and released on the flow's side (:meth:`release`), not here at z_e = 0
            only_held = (C == held0).flatten(1).all(-1)
            badm &= ~only_held.view(per_row)
            if not bool(badm.any()):
                break
            has_new = new_bad.flatten(1).any(-1).view(per_row)
            C = C & ~torch.where(has_new, new_bad, badm)
        now = C.flatten(1).any(-1)
        rr = rows[now]
        if bool(now.any()):
            new_ep = ~w.S_hold[rr].flatten(1).any(-1)
            w.episodes[rr] += new_ep.long()
            w.th[rr] = kf.project(w.th[rr], w.Xa[rr], C[now])
            w.S_hold[rr] = C[now]
        w.S_hold[rows[~now]] = False
        w.chat[rows] = 0
        self.setup(w)
        if bool(now.any()):
            w.f[rr] = self.field_at(w, rr)
            w.loss[rr] = self.model.loss(w.th[rr], w.Xa[rr], w.ya[rr], w.ma[rr])
        return now

    def approach(self, w: WorkingSet, h_next: Tensor) -> None:
        """Rows with pending kink entries: enter the entries that are at their kink to rounding
        (|z_e| ≤ ``AT_KINK``·‖x_i‖‖w_j‖; θ is then projected onto it); else cap the next step
        h_next [b] (in place) at 0.8 of the time to the nearest pending kink along the current
        field (z_e·ż_e < 0; entries the field leaves are dropped), so the kink is reached
        geometrically without a step straddling it."""
        kf, preact = self.kf, self.preact
        assert kf is not None and preact is not None
        rows = w.pend.flatten(1).any(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return
        Xr = w.Xa[rows]
        z = preact(w.th[rows], Xr)
        zd = preact(w.f[rows], Xr)
        mag = kf.scale(w.th[rows], Xr)
        p = w.pend[rows]
        ready = z.abs() <= AT_KINK * mag
        toward = (z * zd < 0) & ~ready
        p = p & (ready | toward)
        go = (p & ready).flatten(1).any(-1)
        w.pend[rows] = p & ~ready
        if bool(go.any()):
            self.enter(w, rows[go], (p & ready)[go])
        wait = (p & ~ready).flatten(1).any(-1)
        if bool(wait.any()):
            tau = torch.where(p & ~ready, z.abs() / zd.abs().clamp_min(1e-300),
                              torch.full_like(z, math.inf)).flatten(1).min(-1).values
            wr = rows[wait]
            h_next[wr] = torch.minimum(h_next[wr], 0.8 * tau[wait])

    # ---- after every step ---------------------------------------------------------------
    def release(self, w: WorkingSet, sliding_rows: Tensor, accept: Tensor) -> Tensor | None:
        """Leave the held kinks that the flow leaves at the proposal θ_new of an accepted step
        (λ* at a bound and the one-sided field there pointing away beyond rounding:
        :meth:`KinkField.field_leave`, of the last stage of a box-QP'd step). Returns the
        working-set rows that released a kink (None: none).

        The row is put on the side the flow leaves to: z_e = −ε (λ*_e = 0, the field below the
        kink points away) or +ε (λ*_e = 1), ε = ``RELEASE_OFFSET``·‖x_i‖‖w_j‖, the other held
        kinks staying at 0 (:meth:`KinkField.project`). Left at z_e = ±rounding, the classical
        field would be read on the side σ'(0) picks: with σ'(0) = 1 the side above, which may
        point up while the flow leaves below (both one-sided fields pointing away: the
        minimal-norm velocity is the one below), and the row flew off on the wrong branch
        (W2 seed 0, instance 952: 0.026 from the gradient-descent limit at t = 20). An entry
        that has left the band |z_e| ≤ ``AT_KINK``·‖x_i‖‖w_j‖ on that side keeps its z_e: a
        box-QP'd step integrates the one-sided field −g(λ*) with λ*_e at the bound past the
        moment λ*_e reached it, so z_e has moved off the kink along the flow, and putting it back
        at ±ε threw that motion away (W2 seed 0, instance 61: z_e = −2.5e-5, a jump of 1.2e-5
        in θ, 4.2e-7 from the tight solve's limit; now 5.6e-10). Within the band (z_e at the
        kink to the solver's resolution) it goes to ±ε: instance 952 releases two entries at
        z_e ≈ −2e-11 with the field below nearly tangent and returns to the kink later; kept
        there, it missed the return and ended 0.014 from gradient descent at t = 20."""
        acc_r = accept[sliding_rows]
        bound = self.ok & self.last_leave & acc_r.unsqueeze(-1)
        if not bool(bound.any()):
            return None
        kf = self.kf
        assert kf is not None
        sub = bound.any(-1)
        rr = sliding_rows[sub]
        Sf = w.S_hold[rr].flatten(1)
        drop = torch.zeros_like(Sf)
        drop.scatter_(1, self.ent[sub], bound[sub])
        side = torch.zeros(Sf.shape, dtype=w.th.dtype)
        up = (self.last_lam[sub] >= 1.0).to(side.dtype)
        side.scatter_(1, self.ent[sub], (2.0 * up - 1.0) * bound[sub])
        Xr = w.Xa[rr]
        sv = side.view_as(w.S_hold[rr])
        z = self.preact(w.th[rr], Xr) if self.preact is not None else torch.zeros_like(sv)
        mag = kf.scale(w.th[rr], Xr)
        beyond = sv * z > AT_KINK * mag
        target = sv * torch.where(beyond, sv * z, RELEASE_OFFSET * mag)
        w.th[rr] = kf.project(w.th[rr], Xr, w.S_hold[rr], target)
        w.S_hold[rr] = (Sf & ~drop).view_as(w.S_hold[rr])
        self.setup(w)
        w.f[rr] = self.field_at(w, rr)
        w.loss[rr] = self.model.loss(w.th[rr], Xr, w.ya[rr], w.ma[rr])
        return rr

    def detect(self, w: WorkingSet, preact: Preact, A: Tensor, bw: Tensor, th_new: Tensor,
               th_old: Tensor, K: Tensor, h: Tensor, h_next: Tensor, accept: Tensor,
               any_stiff: bool, kinked: Tensor | None) -> Tensor | None:
        """Examine the steps that were rejected or whose proposal flipped a pre-activation for
        kink evidence (tableau A [S, S], bw [S]; θ_new, θ_old [b, P]; stages K [S+1, b, P]; step
        h [b], accept [b]). ``follow``: evidence makes entries pending, and pending kinks are
        approached (h_next [b] capped in place). ``stop``: chatter counts per entry (reset lazily
        after 200 quiet accepted steps); returns the rows that reached ``sliding_count``
        (bool [b]) or None."""
        kf = self.kf
        sliding = None
        z_new = preact(th_new, w.Xa)
        pos_new = z_new > 0
        look = (pos_new != w.pos_old).flatten(1).any(-1).logical_or_(~accept)
        if any_stiff:
            look &= ~w.stiff if kinked is None else ~(w.stiff | kinked)
        w.quiet += accept
        if bool(look.any()):
            ri = look.nonzero().squeeze(-1)
            ev = kink_evidence(preact, A, bw, th_old[ri], K[:, ri], h[ri], w.Xa[ri], w.ma[ri])
            hit = ev.flatten(1).any(-1)
            if kf is not None and bool(hit.any()):
                # follow: approach these kinks without crossing, then hold the attracting ones
                w.pend[ri[hit]] |= ev[hit]
            elif bool(hit.any()):
                rj = ri[hit]
                chat = w.chat
                stale = (w.quiet[rj] > 200).view(-1, *([1] * (chat.dim() - 1)))
                cj = torch.where(stale, torch.zeros_like(chat[rj]), chat[rj]) + ev[hit].long()
                chat[rj] = cj
                w.quiet[rj] = 0
                slid = cj.flatten(1).max(-1).values >= self.sliding_count
                if bool(slid.any()):
                    if kf is not None:  # follow: hold the attracting kinks
                        self.enter(w, rj[slid], cj[slid] > 0)
                    else:
                        sliding = torch.zeros(w.idx.numel(), dtype=torch.bool)
                        sliding[rj[slid]] = True
        z_old = w.z_old
        w.z_old = torch.where(accept.view(-1, *([1] * (z_old.dim() - 1))), z_new, z_old)
        w.pos_old = w.z_old > 0
        if kf is not None:
            self.approach(w, h_next)
        return sliding
