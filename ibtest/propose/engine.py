r"""Fit a family to one table of triples: errors, KKT data, free parameters, the program, the decision.

:func:`fit_table` (a table of solved triples and its admissible pairs, a family, a run context):

1. **free parameters** (:mod:`ibtest.propose.search`), then the KKT data (:mod:`ibtest.propose.kkt`)
   and the least-squares member λ̂ (:func:`ibtest.propose.program.least_squares`);
2. **solver error**: the first SAMPLE converged triples and the MEASURE_TOP closest to (or beyond)
   their tolerance under λ̂ are re-solved at the tightened settings, in one batch
   (:class:`ibtest.judge.records.ErrorMeter`); each one's error in the KKT variable is
   ‖z(θ∞') − z(θ∞)‖ plus its distance to Z(D); the others get the sample's largest relative error
   times their own size (an estimate: whatever a decision rests on is measured, see below);
3. **decision**: every triple's residual |ρ_t(λ̂)|_∞ against what the solver error and rounding can
   do to it, Σ_k |λ̂_k| a_tk (the Hessian terms added on the rows that need them), and every pair's
   |Δφᵀλ̂| against its margin. All within → **fits**. Else the minimax program (over the box
   |λ_k| ≤ Λ_k, BOX × λ̂'s largest scaled coefficient, unless the family bounds |λ| on its cone) on a
   working set of rows (the WORK most beyond their tolerance and WORK spread over the rest), grown
   by the rows its member misses (constraint generation, ROUNDS at most): s* ≤ 0 on every row →
   **fits** (that member); s* > 0 on the working set → the rows its multipliers carry, reduced by
   deletion (drop a triple, or a pair, while the rest stays infeasible with at least CORE_FRACTION of
   the whole's excess; one compiled program re-solved per candidate, each subset with its own
   normalization), re-solved at tight settings with their errors measured, judged again: still
   infeasible → **no fit** on those k triples; otherwise **inconclusive** (the infeasibility did not
   survive the tight re-solve).

A family that declares no strictly convex member (``Family.strict`` None) asked for strictness is
``no_fit`` without a certificate ("the family has no strictly convex member").
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.judge.records import ErrorMeter
from ibtest.judge.witness import _one_thread as one_thread
from ibtest.plugin.specs import Family, ModelBase
from ibtest.propose import kkt as kkt_mod, program as prog_mod
from ibtest.propose.search import SearchResult, grid_of, residual_vector, search
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext

Tensor = torch.Tensor
SAMPLE = 16  # converged triples re-solved to estimate the solver error of the others
MEASURE_TOP = 16  # triples closest to (or beyond) their tolerance re-solved before a decision
WORK, ROUNDS = 64, 8  # rows added to the minimax program's working set per round, and rounds at most
CORE_FRACTION = 0.01  # the deletion search keeps a subset whose minimax excess is at least this share of the whole's

FITS, NO_FIT, INCONCLUSIVE = "fits", "no_fit", "inconclusive"


@dataclass
class FitOutcome:
    """What fitting one family to one table gave (indices ``rows``/``core`` into the table,
    ``core_pairs`` into the pairs passed)."""

    family: Family
    settings: dict[str, Any]
    strict: float | None
    status: str
    reason: str
    var: str = ""
    Q: int = 0  # dimension of the KKT variable
    rows: list[int] = field(default_factory=list)
    n_pairs: int = 0  # distinct eligible pairs in the fit (a fit then only ties: see ``ties``)
    lam: Tensor | None = None
    member: str = "least squares"  # which program gave ``lam``: "least squares" or "minimax"
    ls: prog_mod.LSFit | None = None
    worst_ratio: float = math.nan  # the largest residual / tolerance at the fitted member
    worst_residual: float = math.nan  # the largest relative residual |ρ_t|/w_t at the fitted member
    minimax: prog_mod.Minimax | None = None
    box: Tensor | None = None
    core: list[int] = field(default_factory=list)
    core_pairs: list[int] = field(default_factory=list)
    core_theta: Tensor | None = None  # tight re-solves of the core triples
    core_err: list[float] = field(default_factory=list)
    core_minimax: prog_mod.Minimax | None = None
    search: SearchResult | None = None
    free_claim: str = ""  # the free values the no-fit claim covers
    measured: int = 0
    notes: list[str] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # residual / tolerance per fitted triple (``rows`` order)
    pair_rows: list[tuple[int, int]] = field(default_factory=list)  # the fit's pairs (table indices)
    pair_ratios: list[float] = field(default_factory=list)

    @property
    def ties(self) -> bool:
        """A fit on distinct admissible pairs only ties: both solutions lie in both zero-loss sets
        and R_λ rates them equal, so θ∞ is not the unique minimizer (no strictly convex R does that
        on a convex Z(D))."""
        return self.status == FITS and self.n_pairs > 0


def z_of(model: ModelBase, var: str, theta: Tensor) -> Tensor:
    """The KKT variable of θ [B, P]."""
    return model.predictor(theta) if var == "predictor" else theta


def z_error(model: ModelBase, var: str, theta: Tensor, tight: Tensor, err: float) -> float:
    """The error of θ [1, P] in the KKT variable, from its tight re-solve θ' and its measured error
    ``err`` (‖θ' − θ‖ plus θ''s distance to Z(D)): ‖z(θ') − z(θ)‖ plus that distance."""
    moved = float((tight - theta).norm())
    return float((z_of(model, var, tight) - z_of(model, var, theta)).norm()) + max(0.0, float(err) - moved)


def problem(model: ModelBase, family: Family, settings: Mapping[str, Any], strict: float | None, t: Triples,
            rows: Tensor, pairs: Pairs, err: Tensor, safety: float, rtol: float, hess: bool = True
            ) -> prog_mod.Problem:
    """The fit problem of triples ``rows`` of ``t`` (``err`` [len(rows)] their errors) and the pairs
    of ``pairs`` between them."""
    k = kkt_mod.build(model, family, settings, t, rows, err, safety, hess=hess)
    pos = torch.full((len(t),), -1, dtype=torch.int64)
    pos[rows] = torch.arange(rows.numel())
    pd = kkt_mod.pair_data(k, pairs, pos, err, safety, rtol, family)
    return prog_mod.Problem(k, pd, family, dict(settings), strict)


def judge(pb: prog_mod.Problem, err: Tensor, safety: float, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(residual / tolerance per triple [T], per pair [p], relative residual |ρ_t|/w_t [T]) at λ."""
    a = kkt_mod.tolerance(pb.kkt, err, safety)
    rho, pi, _ = prog_mod.residuals(pb, lam)
    tau_t, tau_p = prog_mod.tolerances(pb, a, lam.abs())
    return _ratio(rho, tau_t), _ratio(pi, tau_p), rho / pb.scale


def _ratio(r: Tensor, tau: Tensor) -> Tensor:
    out = r / tau.clamp_min(1e-300)
    return torch.where((r == 0), torch.zeros_like(r), out)


def infeasible(pb: prog_mod.Problem, err: Tensor, safety: float, box: Tensor | None, measure: bool = False
               ) -> prog_mod.Minimax:
    """The minimax program on ``pb`` with the box; ``measure``: solved at both tolerances (its error
    measured), else once at the tighter one (error 0: for the deletion search only)."""
    a = kkt_mod.tolerance(pb.kkt, err, safety)
    if measure:
        return prog_mod.minimax(pb, a, box)
    return prog_mod._minimax_once(pb, a, box, prog_mod.TOLS[1])


# ------------------------------------------------------------------------------------------
class _Errors:
    """Errors of the triples in the KKT variable: measured (tight re-solve) where measured, else the
    sample's largest relative error times the triple's size."""

    def __init__(self, ctx: RunContext, t: Triples, meter: ErrorMeter, var: str):
        self.ctx, self.t, self.meter, self.var = ctx, t, meter, var
        self.rel = 0.0

    def measure(self, idx: list[int]) -> None:
        if not self.ctx.rules.recheck or not idx:
            return
        self.meter.measure(idx)
        for i in idx:
            e = self.of(i)
            z = float(z_of(self.ctx.model, self.var, self.t.theta[i:i + 1]).norm())
            if z > 0 and math.isfinite(e):
                self.rel = max(self.rel, e / z)

    def of(self, i: int) -> float:
        """Measured error of triple i in z (nan if not measured)."""
        m = self.meter
        if i not in m.err:
            return math.nan
        return z_error(self.ctx.model, self.var, self.t.theta[i:i + 1], m.tight_theta[i][None], m.err[i])

    def vector(self, rows: Tensor) -> Tensor:
        z = z_of(self.ctx.model, self.var, self.t.theta[rows]).norm(dim=-1)
        out = self.rel * z
        for j, i in enumerate(rows.tolist()):
            e = self.of(i)
            if math.isfinite(e):
                out[j] = e
        return out


def fit_table(ctx: RunContext, t: Triples, pairs: Pairs, family: Family, settings: Mapping[str, Any],
              strict: float | None, rows: Tensor, meter: ErrorMeter | None = None) -> FitOutcome:
    """Fit ``family`` to the converged triples among ``rows`` of ``t`` and the admissible pairs
    between them (see the module docstring)."""
    model, safety = ctx.model, ctx.rules.safety
    rtol = float(family.hypotheses()[0].rtol)
    out = FitOutcome(family, dict(settings), strict, INCONCLUSIVE, "")
    conv = rows[t.status[rows] == st.CONVERGED]
    out.rows = conv.tolist()
    if conv.numel() == 0:
        out.reason = "no converged triple to fit"
        return out
    if strict and family.strict is None:
        out.status, out.reason = NO_FIT, str(prog_mod.NoStrictMember(family.name))
        return out
    zs = model.zero_set(t.X[conv[:1]], t.y[conv[:1]], t.mask[conv[:1]])
    out.var = kkt_mod.kkt_variable(model, family, zs)
    errs = _Errors(ctx, t, meter or ErrorMeter(ctx, t), out.var)
    Q = out.Q = z_of(model, out.var, t.theta[conv[:1]]).shape[1]

    def at(s: Mapping[str, Any], hess: bool = False) -> prog_mod.Problem:
        return problem(model, family, s, strict, t, conv, pairs, errs.vector(conv), safety, rtol, hess)

    s = dict(settings)
    with one_thread():
        if family.free:
            out.search = search(family, s, Q, lambda v: residual_vector(at(v)))
            s = out.search.values
        out.settings = s
        try:
            pb = at(s)
        except (ValueError, kkt_mod.FamilyError) as exc:
            out.reason = f"the fit could not be set up: {exc}"
            return out
        try:
            lam, _, null_dim = prog_mod.unconstrained(pb)
        except ValueError as exc:
            out.reason = f"the fit could not be set up: {exc}"
            return out
        out.ls = prog_mod.LSFit(lam, math.nan, null_dim, "least squares (LAPACK)")
        out.n_pairs = len(pb.pairs)
        err = errs.vector(conv)
        rt, rp, rel = judge(pb, err, safety, lam)
        if prog_mod.needs_constraints(pb, lam):  # the family's cone, strictness or a sign of μ: on a working set
            work = _working_set(rt, rp, pb, torch.empty(0, dtype=torch.int64))
            sub = pb.take(*work)
            try:
                out.ls = prog_mod.least_squares(sub)
                out.ls.method += f", on a working set of {sub.kkt.T} triples (the worst under the unconstrained one)"
                lam = out.ls.lam
            except ValueError as exc:  # no member meets the constraints (strictness) with cᵀλ = 1
                out.notes.append(f"no least-squares member: {exc}")
            rt, rp, rel = judge(pb, err, safety, lam)
        errs.measure(sorted(set(conv[:SAMPLE].tolist()) | set(_closest(rt, rp, pb, conv))))  # one re-solve
        out.measured = len(errs.meter.err)
        err = errs.vector(conv)
        pb.kkt.rebind(err, safety)  # binding rows and pair tolerances with the measured errors
        pb = prog_mod.Problem(pb.kkt, _pair_rows(pb.kkt, pairs, conv, err, safety, rtol, family), family, s, strict)
        rt, rp, rel = judge(pb, err, safety, lam)
        over = (rt > 1).nonzero().flatten()
        if 0 < over.numel() <= 4 * WORK:  # the Hessian terms only widen the tolerance: add them where it matters
            pb.kkt.hessian(over, err)  # (beyond that many rows the misfit is plain: the working set adds them)
            rt, rp, rel = judge(pb, err, safety, lam)
        return _decide(ctx, t, pairs, conv, pb, err, lam, rt, rp, rel, out, errs)


def _pair_rows(k: kkt_mod.KKT, pairs: Pairs, conv: Tensor, err: Tensor, safety: float, rtol: float,
               family: Family) -> kkt_mod.PairData:
    pos = torch.full((int(conv.max()) + 1 if conv.numel() else 0,), -1, dtype=torch.int64)
    pos[conv] = torch.arange(conv.numel())
    if len(pairs):
        top = int(max(int(pairs.a.max()), int(pairs.b.max()))) + 1
        if top > pos.numel():
            pos = torch.cat([pos, torch.full((top - pos.numel(),), -1, dtype=torch.int64)])
    return kkt_mod.pair_data(k, pairs, pos, err, safety, rtol, family)


def _working_set(rt: Tensor, rp: Tensor, pb: prog_mod.Problem, have: Tensor) -> tuple[Tensor, Tensor]:
    """(triple rows, pair rows) of a working set: ``have`` plus the WORK rows most beyond their
    tolerance, WORK spread evenly over the rest (a sample), and the triples of the pairs taken."""
    T, n = len(rt), len(rp)
    ratio = torch.cat([rt, rp])
    worst = ratio.argsort(descending=True)[:WORK].tolist()
    spread = torch.linspace(0, T - 1, min(T, WORK)).round().to(torch.int64).tolist() if T else []
    rows = set(have.tolist()) | {i for i in worst if i < T} | set(spread)
    prs = {i - T for i in worst if i >= T} | {p for p in range(n) if int(pb.pairs.a[p]) in rows
                                                and int(pb.pairs.b[p]) in rows}
    for p in list(prs):
        rows |= {int(pb.pairs.a[p]), int(pb.pairs.b[p])}
    return torch.tensor(sorted(rows), dtype=torch.int64), torch.tensor(sorted(prs), dtype=torch.int64)


def _closest(rt: Tensor, rp: Tensor, pb: prog_mod.Problem, conv: Tensor) -> list[int]:
    """The triples (table indices) of the MEASURE_TOP rows closest to, or beyond, their tolerance."""
    worst = torch.cat([rt, rp]).argsort(descending=True)[:MEASURE_TOP].tolist()
    n = len(rt)
    out = {int(conv[i]) for i in worst if i < n}
    for i in worst:
        if i >= n:
            out |= {int(conv[int(pb.pairs.a[i - n])]), int(conv[int(pb.pairs.b[i - n])])}
    return sorted(out)


def _decide(ctx: RunContext, t: Triples, pairs: Pairs, conv: Tensor, pb: prog_mod.Problem, err: Tensor, lam: Tensor,
            rt: Tensor, rp: Tensor, rel: Tensor, out: FitOutcome, errs: _Errors) -> FitOutcome:
    """Fits, or the minimax program and the no-fit core (see the module docstring)."""
    safety = ctx.rules.safety
    out.ratios, out.pair_ratios = rt.tolist(), rp.tolist()
    out.pair_rows = [(int(conv[int(a)]), int(conv[int(b)])) for a, b in zip(pb.pairs.a.tolist(), pb.pairs.b.tolist())]
    out.worst_ratio = float(torch.cat([rt, rp]).max())
    out.worst_residual = float(rel.max())
    if out.worst_ratio <= 1:
        out.status, out.lam = FITS, lam
        out.reason = (f"the least-squares member satisfies the KKT conditions of all {len(conv)} triples"
                      + (f" and rates all {len(pb.pairs)} distinct admissible pairs equal" if len(pb.pairs) else "")
                      + f" within what the measured solver error can do (worst residual / tolerance {out.worst_ratio:.3g})")
        return out
    # constraint generation: the minimax program on a working set of rows; a member that fits it is
    # checked on every row, and the rows it misses join the set; an infeasible working set is the no-fit
    rows, prs = _working_set(rt, rp, pb, torch.empty(0, dtype=torch.int64))
    for _ in range(ROUNDS):
        pb.kkt.hessian(rows, err)  # the working set's tolerances in full
        sub = pb.take(rows, prs)
        out.box = prog_mod.default_box(lam, sub)
        mm = infeasible(sub, err[rows], safety, out.box, measure=True)
        out.minimax = mm
        if mm.infeasible:
            _core(ctx, t, pairs, conv[rows], sub, err[rows], out, errs)
            return out
        if mm.lam is None or not mm.fits:
            out.reason = (f"the minimax program ended '{mm.status}'" if mm.lam is None else
                          f"undecided: minimax excess s* = {mm.s:.3g} is within {prog_mod.PROGRAM_SAFETY:g} x the "
                          f"program's error {mm.s_err:.2g} of 0")
            return out
        rt2, rp2, rel2 = judge(pb, err, safety, mm.lam)
        everything = len(rows) == pb.kkt.T and len(prs) == len(pb.pairs)  # the program saw every row
        if everything or float(torch.cat([rt2, rp2]).max()) <= 1:
            out.status, out.lam = FITS, mm.lam
            out.ratios, out.pair_ratios = rt2.tolist(), rp2.tolist()
            out.worst_residual = float(rel2.max())
            inbox = "of the box " if out.box is not None else ""
            out.member = "minimax"
            out.reason = (f"no least-squares member fits every triple (worst residual / tolerance {out.worst_ratio:.3g}), "
                          f"but a member {inbox}fits all {len(conv)} within their tolerances: minimax s* = {mm.s:.3g} "
                          f"(program error {mm.s_err:.2g}) on a working set of {len(rows)} triples"
                          + ("" if everything else f", worst residual / tolerance on the others "
                             f"{float(torch.cat([rt2, rp2]).max()):.3g}"))
            out.worst_ratio = float(torch.cat([rt2, rp2]).max())
            return out
        rows, prs = _working_set(rt2, rp2, pb, rows)
    out.reason = f"undecided after {ROUNDS} rounds of the working set ({len(rows)} triples)"
    return out


def _core(ctx: RunContext, t: Triples, pairs: Pairs, conv: Tensor, pb: prog_mod.Problem, err: Tensor,
          out: FitOutcome, errs: _Errors) -> None:
    """The no-fit core: the minimax multipliers' support, reduced by deletion, confirmed on tight
    re-solves (see the module docstring); sets ``out``."""
    mm, box = out.minimax, out.box
    assert mm is not None
    safety = ctx.rules.safety
    # a subset stays only while its excess is a fair share of the whole's: a core whose excess is at
    # the level of the program's own accuracy (an SDP near the cone's boundary) would not confirm
    floor = CORE_FRACTION * mm.s if math.isfinite(mm.s) else 0.0
    rows, prow = mm.support()
    keep_t = set(rows.tolist()) | set(pb.pairs.a[prow].tolist()) | set(pb.pairs.b[prow].tolist())
    keep_p = set(prow.tolist())

    def screen_of(tr: set[int], pr: set[int]) -> Any:
        """bad(subset): the minimax program of ``tr``/``pr``, compiled once, re-solved on subsets."""
        base, base_p = torch.tensor(sorted(tr), dtype=torch.int64), torch.tensor(sorted(pr), dtype=torch.int64)
        sub = pb.take(base, base_p)
        prog = prog_mod.Program(sub, kkt_mod.tolerance(sub.kkt, err[base], safety), box)
        pos = {int(i): j for j, i in enumerate(base.tolist())}
        ppos = {int(p): j for j, p in enumerate(base_p.tolist())}

        def bad(t2: set[int], p2: set[int]) -> bool:
            if not t2:
                return False
            m = prog.solve(prog_mod.TOLS[1], torch.tensor(sorted(pos[i] for i in t2)),
                           torch.tensor(sorted(ppos[p] for p in p2), dtype=torch.int64))
            return m.status == "infeasible" or (m.infeasible_once and m.s >= floor)

        return bad

    bad = screen_of(keep_t, keep_p) if keep_t else None
    if bad is None or not bad(keep_t, keep_p):
        keep_t, keep_p = set(range(pb.kkt.T)), set(range(len(pb.pairs)))
        bad = screen_of(keep_t, keep_p)
    whole_t, whole_p = set(keep_t), set(keep_p)
    order = sorted(keep_t, key=lambda i: float(mm.dual_t[i]))
    for i in order:  # drop triples while the rest stays infeasible
        tr = keep_t - {i}
        pr = {p for p in keep_p if int(pb.pairs.a[p]) != i and int(pb.pairs.b[p]) != i}
        if bad(tr, pr):
            keep_t, keep_p = tr, pr
    for p in sorted(keep_p):
        if bad(keep_t, keep_p - {p}):
            keep_p = keep_p - {p}
    for tr, pr in ((keep_t, keep_p), (whole_t, whole_p)):  # the reduced core; if it does not confirm, all it came from
        out.core = [int(conv[i]) for i in sorted(tr)]
        out.core_pairs = _pair_positions(pairs, pb, conv, pr)
        confirm_core(ctx, t, pairs, out, errs)
        if out.status == NO_FIT or (tr, pr) == (whole_t, whole_p):
            break
        out.notes.append(f"the reduced core of {len(tr)} triples did not confirm on tight re-solves ({out.reason}); "
                         f"judged again on the {len(whole_t)} triples it was reduced from")


def _pair_positions(pairs: Pairs, pb: prog_mod.Problem, conv: Tensor, keep: set[int]) -> list[int]:
    """Positions in ``pairs`` of the program's pairs ``keep`` (matched by their two triples)."""
    want = {(int(conv[int(pb.pairs.a[p])]), int(conv[int(pb.pairs.b[p])])) for p in keep}
    return [k for k in range(len(pairs)) if (int(pairs.a[k]), int(pairs.b[k])) in want]


def confirm_core(ctx: RunContext, t: Triples, pairs: Pairs, out: FitOutcome, errs: _Errors) -> None:
    """Re-solve the core at tight settings, re-check fits and cross-fits there, and judge the core
    on those solutions with their measured errors: NO_FIT when it stays infeasible."""
    model, rules = ctx.model, ctx.rules
    errs.measure(out.core)
    core = torch.tensor(out.core)
    tc = t.take(core)
    ok = [errs.meter.usable(i) for i in out.core] if rules.recheck else [True] * len(out.core)
    if rules.recheck:
        tc.theta = torch.stack([errs.meter.tight_theta[i] for i in out.core])
    out.core_theta = tc.theta.clone()
    out.core_err = [float(v) for v in errs.vector(core)]
    if not all(ok):
        out.status = INCONCLUSIVE
        out.reason = "a triple of the no-fit core does not converge and fit at tight settings: no certificate"
        return
    sub = _core_pairs(ctx, tc, pairs, out)
    if sub is None:
        out.status = INCONCLUSIVE
        out.reason = "a pair of the no-fit core does not cross-fit at tight settings: no certificate"
        return
    err = torch.tensor(out.core_err, dtype=torch.float64)
    rtol = float(out.family.hypotheses()[0].rtol)
    pb = problem(model, out.family, out.settings, out.strict, tc, torch.arange(len(tc)), sub, err, rules.safety, rtol)
    mm = infeasible(pb, err, rules.safety, out.box, measure=True)
    out.core_minimax = mm
    n, p = len(out.core), len(out.core_pairs)
    what = runs_text(n, p)
    if mm.infeasible:
        out.status = NO_FIT
        out.free_claim = free_claim(ctx.model, out, tc, sub, err, rules.safety, rtol)
        inbox = " (in the box)" if out.box is not None else ""
        out.reason = (f"no member of {out.family.name}{inbox} satisfies the KKT conditions of {what} at once: "
                      + excess_text(mm) + ", on tight re-solves with measured errors")
        if mm.box_binds:
            out.notes.append("the box |lambda_k| <= Lambda_k binds at the optimum: members beyond it were not considered")
    else:
        out.status = INCONCLUSIVE
        out.reason = (f"the infeasibility on {what} does not hold on their tight re-solves (s* = {mm.s:.3g}, "
                      f"program error {mm.s_err:.2g})")


def excess_text(mm: prog_mod.Minimax) -> str:
    """Why the minimax program says "no member": its excess s* beyond its error, or its infeasibility."""
    if mm.status == "infeasible":
        return ("no member meets the family's constraints (its cone, strict convexity) with the growth "
                "normalized on these triples: the program is infeasible (Clarabel's certificate)")
    return f"minimax excess s* = {mm.s:.3g} > {prog_mod.PROGRAM_SAFETY:g} x the program's error {mm.s_err:.2g}"


def runs_text(n: int, p: int) -> str:
    """"these 3 triples and 1 admissible pair", "this triple"."""
    t = "this triple" if n == 1 else f"these {n} triples"
    return t + (f" and {p} admissible pair{'s' if p != 1 else ''}" if p else "")


def _core_pairs(ctx: RunContext, tc: Triples, pairs: Pairs, out: FitOutcome) -> Pairs | None:
    """The core's pairs re-indexed into the core table, their cross-fits re-checked on its θ (None
    when one no longer cross-fits)."""
    pos = {i: j for j, i in enumerate(out.core)}
    if not out.core_pairs:
        return Pairs.empty()
    sel = pairs.select(torch.tensor(out.core_pairs))
    sel.a = torch.tensor([pos[int(i)] for i in sel.a.tolist()])
    sel.b = torch.tensor([pos[int(i)] for i in sel.b.tolist()])
    r = ctx.rules
    fab = r.fits(ctx.model, tc.theta[sel.a], tc.X[sel.b], tc.y[sel.b], tc.mask[sel.b], tc.theta0[sel.b])
    fba = r.fits(ctx.model, tc.theta[sel.b], tc.X[sel.a], tc.y[sel.a], tc.mask[sel.a], tc.theta0[sel.a])
    return sel if bool((fab & fba).all()) else None


def free_claim(model: ModelBase, out: FitOutcome, tc: Triples, sub: Pairs, err: Tensor, safety: float,
               rtol: float) -> str:
    """Which free values the no-fit covers: every value of the search's grid (the core infeasible at
    each, all per-coordinate entries equal) and the best value found, or only the latter."""
    fam = out.family
    if not fam.free:
        return ""
    Q = tc.theta.shape[1] if out.var != "predictor" else model.predictor(tc.theta[:1]).shape[1]
    missed = []
    for name, f in fam.free.items():
        for g in grid_of(f):
            s = dict(out.settings)
            s[name] = [g] * Q if f.per_coordinate else g
            try:
                pb = problem(model, fam, s, out.strict, tc, torch.arange(len(tc)), sub, err, safety, rtol)
                box = prog_mod.default_box(prog_mod.unconstrained(pb)[0], pb)
                covered = infeasible(pb, err, safety, box).infeasible_once
            except (ValueError, kkt_mod.FamilyError):
                covered = False  # the family cannot be evaluated there: not covered by the claim
            if not covered:
                missed.append(f"{name}={g:.4g}")
    found = ", ".join(f"{n}={_fmt(out.settings[n])}" for n in fam.free)
    if missed:
        return (f"at {found} (the best found); not shown at {len(missed)} grid value(s) such as {missed[0]} (a member "
                "may fit there)")
    ranges = ", ".join(f"{n} in [{f.low:g}, {f.high:g}]" for n, f in fam.free.items())
    return f"at {found} (the best found) and at every value of the search grid ({ranges})"


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.6g}" for x in v) + "]"
    return f"{v:.10g}" if isinstance(v, float) else str(v)
