"""Regularizer verdicts: "gradient flow converges to argmin R over the zero-loss set".

For an admissible pair (θa, θb) (each fits the other's dataset) a valid R rates both equal. The pair
refutes R when |R(θa) − R(θb)| exceeds the margin of :mod:`ibtest.judge.evaluation` (tolerance floor
relative to |R| plus safety · ‖∇R‖ · err per side, err the *measured* solver error of each side).
A candidate is re-checked on its re-solved θ∞' (both still converged, still cross-fitting) before it
certifies anything. Which pairs count is decided by ``depends_on`` (:func:`evaluation.eligible`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ibtest.base import status as st
from ibtest.judge import evaluation as ev_mod
from ibtest.judge.records import (
    RECHECK_TOP,
    ErrorMeter,
    Evidence,
    MemberCounts,
    MemberResult,
    evaluate,
    evaluate_grad,
    hyp_context,
)
from ibtest.judge.search_verdict import SETTLED, SETTLED_SAMPLE, SearchScore, finish_search, score_search
from ibtest.solve import fit
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext
from ibtest.study.schema import HypothesisUse

Tensor = torch.Tensor


@dataclass
class PairScores:
    """R on both sides of a member's P eligible pairs, on the first solutions (before any re-solve)."""

    p: Pairs  # the eligible pairs (P of them)
    sel: Tensor  # [P] their positions in the pairs they were selected from
    Ra: Tensor  # [P] R(θa)
    Rb: Tensor  # [P] R(θb)
    gap: Tensor  # [P] |R(θa) − R(θb)|
    floor: Tensor  # [P] tolerance floor atol + rtol · max(|R(θa)|, |R(θb)|)
    rel: Tensor  # [P] gap / max(|R(θa)|, |R(θb)|)
    cand: list[int]  # positions in ``p`` to re-check: largest gap / floor, beyond the floor

    def closest(self) -> int:
        """Position (in ``p``) of the closest call: the largest relative gap."""
        return int(torch.argmax(torch.nan_to_num(self.rel, nan=0.0)))


@dataclass
class RegularizerScore:
    """A regularizer member scored on one table: its pairs (None: no eligible pair, or a
    data-dependent R) and its witness search (None: switched off or nothing converged)."""

    result: MemberResult
    pairs: PairScores | None = None
    search: SearchScore | None = None

    def counts(self) -> MemberCounts:
        """This table's contribution to the member's run-wide counts."""
        r = self.result
        return MemberCounts(n=r.n_pairs, distinct=r.n_distinct, max_rel_gap=r.max_rel_gap, error=r.error,
                            search=r.search)

    def keep(self) -> list[int]:
        """Positions (in the scored pairs) a verdict can rest on: the candidates and the closest call."""
        s = self.pairs
        if s is None:
            return []
        return sorted({int(s.sel[k]) for k in s.cand} | {int(s.sel[s.closest()])})

    def keep_triples(self) -> list[int]:
        """Triples the search's verdict can rest on: its candidates and its worst suboptimality."""
        return [] if self.search is None else self.search.keep()

    def triples_to_measure(self) -> list[int]:
        out = [] if self.search is None else self.search.candidates()
        s = self.pairs
        if s is None:
            return out
        return out + [int(s.p.a[k]) for k in s.cand] + [int(s.p.b[k]) for k in s.cand]


def score_regularizer(ctx: RunContext, t: Triples, pairs: Pairs, use: HypothesisUse, params: dict
                      ) -> RegularizerScore:
    """R on both sides of every eligible pair, and the candidate witnesses to re-check.

    With no eligible pair the result's reason is left empty: why (no converged triple, no pair
    sharing θ0, ...) is decided over the whole run (:class:`MemberCounts.no_pairs_reason`)."""
    spec = use.spec
    r = MemberResult(use.name, params, spec.kind, spec.depends_on, "inconclusive", use.expect, spec=spec, use=use)
    sc = RegularizerScore(r)

    def searched(sample: int | None = None) -> RegularizerScore:
        sc.search = score_search(ctx, t, use, params, sample=sample)
        if sc.search is not None:
            r.search = sc.search.totals()
        return sc

    if spec.depends_on == "data":
        r.reason = ("not applicable: a data-dependent R cannot be refuted by comparing R across "
                    "datasets, only by a witness inside one Z(D)")
        return searched()
    sel = ev_mod.eligible(spec.depends_on, pairs.same_init).nonzero().flatten()
    p = pairs.select(sel)
    r.n_pairs, r.n_distinct = len(p), int(p.distinct.sum())
    if len(p) == 0:
        return searched()
    hit = torch.zeros(len(t), dtype=torch.bool)
    hit[p.a] = True
    hit[p.b] = True
    used = hit.nonzero().flatten()
    R_all, _ = evaluate(ctx, spec, params, t.theta[used], hyp_context(ctx, t, used, spec), grad=False)
    pos = torch.zeros(len(t), dtype=torch.int64)
    pos[used] = torch.arange(used.numel())
    Ra, Rb = R_all[pos[p.a]], R_all[pos[p.b]]
    gap = (Ra - Rb).abs()
    scale = torch.maximum(Ra.abs(), Rb.abs())
    floor = ev_mod.floor(use.atol, use.rtol, Ra, Rb)
    rel = gap / scale.clamp_min(1e-300)
    r.max_rel_gap = float(rel.max()) if rel.numel() else 0.0
    order = torch.argsort(gap / floor.clamp_min(1e-300), descending=True)
    cand = [int(k) for k in order[:RECHECK_TOP] if bool(gap[k] > floor[k])]
    sc.pairs = PairScores(p, sel, Ra, Rb, gap, floor, rel, cand)
    # a member this block's pairs already refute by far (a candidate gap ≥ SETTLED × its floor)
    # is searched on a bounded sample only: its suboptimality statistic, not its verdict
    settled = any(bool(gap[k] > SETTLED * floor[k]) for k in cand)
    return searched(SETTLED_SAMPLE if settled else None)


def finish_regularizer(ctx: RunContext, t: Triples, sc: RegularizerScore, params: dict,
                       meter: ErrorMeter) -> MemberResult:
    """Re-check the candidates on re-solved solutions; decide the verdict."""
    r, s = sc.result, sc.pairs
    if s is None:
        if finish_search(ctx, t, r, sc.search, params, meter).verdict == "falsified":
            return r
        if r.search is not None and r.search.searched >= ctx.study.verdict.min_pairs:
            r.verdict, r.reason = "survives", r.search.describe()
        return r
    p = s.p
    use, spec = r.use, r.spec
    best_ratio, best = -1.0, None
    for k in s.cand:
        ev = _recheck_pair(ctx, t, spec, params, use, meter, int(p.a[k]), int(p.b[k]), p.source(k))
        if ev is None:
            continue
        ratio = ev.gap / ev.margin if ev.margin > 0 else math.inf
        if ratio > best_ratio:
            best_ratio, best = ratio, ev
    if best is not None and best.gap > best.margin:
        r.verdict, r.evidence = "falsified", best
        r.reason = f"certified witness from {best.source}: |ΔR| = {best.gap:.3g} > margin {best.margin:.3g}"
        return r
    if finish_search(ctx, t, r, sc.search, params, meter).verdict == "falsified":
        return r
    # survives or inconclusive: report the closest call (largest relative gap)
    if best is None:
        k = s.closest()
        ab = torch.stack([p.a[k], p.b[k]])
        _, G = evaluate_grad(ctx, spec, params, t.theta[ab], hyp_context(ctx, t, ab, spec))
        best = Evidence(int(p.a[k]), int(p.b[k]), float(s.Ra[k]), float(s.Rb[k]), float(s.gap[k]),
                        float(s.floor[k]), float("nan"), float("nan"), float(G[0]), float(G[1]), p.source(k))
    r.evidence = best
    need = ctx.study.verdict.min_pairs
    if r.n_distinct >= need:
        r.verdict = "survives"
        r.reason = f"{r.n_pairs} admissible pairs ({r.n_distinct} distinct), no witness beyond the margin"
        if r.search is not None and r.search.searched:
            r.reason += "; " + r.search.describe()
    elif r.search is not None and r.search.searched >= need:
        r.verdict = "survives"
        r.reason = r.search.describe() + (f" ({r.n_pairs} admissible pairs, {r.n_distinct} distinct)"
                                          if r.n_pairs else "")
    elif r.n_distinct == 0:
        r.reason = (f"no evidence: all {r.n_pairs} admissible pairs have identical solutions "
                    "(an identical pair rates every R alike)")
    else:
        r.reason = f"too few admissible pairs with distinct solutions ({r.n_distinct} < min_pairs {need})"
    return r


def _recheck_pair(ctx, t, spec, params, use, meter: ErrorMeter, a: int, b: int, source: str) -> Evidence | None:
    """Re-evaluate a candidate pair on its re-solved (tight) solutions; None if it no longer qualifies."""
    recheck = ctx.study.verdict.recheck
    if recheck:
        if meter.tight_status.get(a) != st.CONVERGED or meter.tight_status.get(b) != st.CONVERGED:
            return None
        tha, thb = meter.tight_theta[a], meter.tight_theta[b]
        ea, eb = meter.err[a], meter.err[b]
        # the re-solved pair must still be admissible
        ab = torch.tensor([b, a])
        cross = fit.fits(ctx.model, torch.stack([tha, thb]), t.X[ab], t.y[ab], t.mask[ab], t.theta0[ab], ctx.fit_tol)
        if not bool(cross.all()):
            return None
    else:
        tha, thb = t.theta[a], t.theta[b]
        ea = eb = float(t.info.get("drift", torch.zeros(len(t)))[a]) if "drift" in t.info else 0.0
    idx = torch.tensor([a, b])
    R, G = evaluate_grad(ctx, spec, params, torch.stack([tha, thb]), hyp_context(ctx, t, idx, spec))
    Ra, Rb = float(R[0]), float(R[1])
    gap = abs(Ra - Rb)
    margin = float(ev_mod.margin(use.atol, use.rtol, ctx.study.verdict.safety, R[:1], R[1:], G[:1], G[1:],
                                 tha[None], thb[None], ea, eb)[0])
    return Evidence(a, b, Ra, Rb, gap, margin, ea, eb, float(G[0]), float(G[1]), source, tha, thb)

