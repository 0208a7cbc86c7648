"""The witness claim: a regularizer R judged inside one zero-loss set.

For a converged triple (D, θ0, θ∞), a point θ' that fits D with R(θ∞) − R(θ') beyond the margin
(and beyond R's evaluation noise) refutes "gradient flow converges to argmin R over Z(D)". The
search itself is :mod:`ibtest.judge.witness`; this module scores a member with it, re-checks its
best candidates on θ∞ re-solved at tighter settings, and says what the search supports: a
*certified* global argmin (a convex R on a polyhedral Z(D)) is support for a survival, a local
search that found nothing is not (the member is at best ``unrefuted``), and a triple whose Z(D)
is a single point in the variable R reads has no power at all.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.judge.records import (
    RECHECK_TOP,
    ErrorMeter,
    Evidence,
    Finding,
    MemberCounts,
    SearchTotals,
    TableScore,
    settle,
    sides_at,
    study_values,
    tolerance,
)
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext
from ibtest.solve.rules import Grade, Judgement
from ibtest.study.typed import HypothesisUse

Tensor = torch.Tensor
SETTLED_SAMPLE = 128  # triples per block searched for a member a pair already refutes by far
SETTLED_CERTIFY = 0  # cvxpy optima per block for such a member (its verdict needs none)


@dataclass
class SearchScore(TableScore):
    """The search of one member on the converged study triples ``idx`` of one table."""

    idx: Tensor
    res: Any  # witness.SearchResult
    skipped: int = 0  # converged triples left out (a settled member's sample)
    part: MemberCounts = field(default_factory=MemberCounts)

    def candidates(self) -> list[int]:
        """Triples (table positions) of the best candidate witnesses (gap / floor, beyond the floor)."""
        found = self.res.found
        if not bool(found.any()):
            return []
        ratio = torch.where(found, self.res.gap / self.res.floor.clamp_min(1e-300), torch.full_like(self.res.gap, -1.0))
        order = torch.argsort(ratio, descending=True)[:RECHECK_TOP]
        return [int(self.idx[k]) for k in order if bool(found[k])]

    def keep_triples(self) -> list[int]:
        worst = int(torch.argmax(self.res.sub))
        return sorted(set(self.candidates()) | {int(self.idx[worst])})

    def triples_to_measure(self) -> list[int]:
        return self.candidates()

    def totals(self) -> SearchTotals:
        r = self.res
        powered = ~r.vacuous
        cert = r.certified & powered
        sub = r.sub
        local = powered & ~cert
        return SearchTotals(int(self.idx.numel()), int(cert.sum()), int(r.found.sum()),
                            float(sub[cert].max()) if bool(cert.any()) else 0.0,
                            float(sub[local].max()) if bool(local.any()) else 0.0, r.method, self.skipped,
                            int(r.vacuous.sum()))


def score_search(ctx: RunContext, t: Triples, pairs: Pairs, use: HypothesisUse, params: dict,
                 prior: Sequence[Any] = ()) -> SearchScore | None:
    """Search Z(D) of every converged *study* triple of ``t`` for a witness against a regularizer
    member (batched; see :mod:`ibtest.judge.witness`). Constructed partners are judged through their
    pairs only. When a pair score of this table (in ``prior``) already refutes the member by far,
    only an evenly spread sample is searched, with no cvxpy optimum; the totals count the rest as
    ``skipped``. None when the study switched the search off or nothing converged."""
    vs = ctx.study.verdict
    if not vs.search:
        return None
    study = torch.tensor([o == "study" for o in t.origin], dtype=torch.bool)
    idx = ((t.status == st.CONVERGED) & study).nonzero().flatten()
    if idx.numel() == 0:
        return None
    from ibtest.judge.witness import search

    n_all, certify = int(idx.numel()), vs.certify_max
    if any(getattr(s, "settled", False) for s in prior) and n_all > SETTLED_SAMPLE:  # evenly spread
        idx = idx[torch.linspace(0, n_all - 1, SETTLED_SAMPLE).round().long().unique()]
        certify = min(certify, SETTLED_CERTIFY)
    res = search(ctx.model, use.spec, params, t.X[idx], t.y[idx], t.mask[idx], t.theta0[idx], t.theta[idx],
                 ctx.rules, tolerance(use), steps=vs.search_steps, certify_limit=certify, study=study_values(ctx))
    sc = SearchScore(idx, res, n_all - int(idx.numel()))
    sc.part = MemberCounts(search=sc.totals())
    sc.part.probe(ctx, t, use.spec, params, idx)
    return sc


def recheck_witness(ctx: RunContext, t: Triples, use: HypothesisUse, params: dict, i: int, theta_w: Tensor,
                    meter: ErrorMeter, source: str) -> Evidence | None:
    """A search witness θ' at triple i re-judged on θ∞ re-solved at tighter settings: θ' must fit D
    and R(θ∞) − R(θ') must beat the margin (θ∞ with its measured error; θ' is a given point).
    None when the re-solve did not converge or θ' does not fit."""
    if not meter.usable(i):
        return None
    th, e = meter.theta_err(i)
    sl = slice(i, i + 1)
    if not bool(ctx.rules.fits(ctx.model, theta_w[None], t.X[sl], t.y[sl], t.mask[sl], t.theta0[sl])[0]):
        return None
    inf, w, pn = sides_at(ctx, t, use.spec, params, [i, i], torch.stack([th, theta_w]), [e, 0.0])
    return Evidence("witness", i, i, inf, w, ctx.rules.judge_witness(tolerance(use), inf, w, pn), source,
                    rechecked=ctx.rules.recheck)


def finish_search(ctx: RunContext, t: Triples, s: SearchScore | None, use: HypothesisUse, params: dict,
                  meter: ErrorMeter, counts: MemberCounts) -> Finding:
    """The best re-checked search witness of ``s`` (refuting, or inside R's noise), and the support
    the run's search gives (``counts.search``: certified triples; local ones are not support)."""
    found = Finding()
    if s is not None:
        pos = {int(i): k for k, i in enumerate(s.idx.tolist())}
        settle(found, (recheck_witness(ctx, t, use, params, i, s.res.theta[pos[i]], meter,
                                       "search (convex optimum)" if bool(s.res.certified[pos[i]])
                                       else "search (local, on Z(D))") for i in s.candidates()))
        if found.evidence is not None:
            return found
    tot = counts.search
    if tot is None or not tot.searched:
        found.reason = "" if ctx.study.verdict.search else "the witness search is switched off"
        return found
    if tot.certified:
        found.support = (Grade.CERTIFIED, tot.certified)
        found.support_text = tot.describe()
        found.support_evidence = _certified_triple(ctx, t, s, use, params)
    elif tot.local:
        found.local, found.local_text = tot.local, tot.describe()
    else:
        found.reason = tot.describe() + " (any R is minimized there: no power)"
    return found


def _certified_triple(ctx: RunContext, t: Triples, s: SearchScore | None, use: HypothesisUse,
                      params: dict) -> Evidence | None:
    """The first triple of ``s`` whose global optimality was certified (with power: Z(D) more than a
    point), as the evidence an ``optimum`` certificate holds."""
    if s is None:
        return None
    rows = (s.res.certified & ~s.res.vacuous).nonzero().flatten()
    if rows.numel() == 0:
        return None
    i = int(s.idx[int(rows[0])])
    a, _, _ = sides_at(ctx, t, use.spec, params, [i, i], t.theta[torch.tensor([i, i])], [0.0, 0.0])
    return Evidence("optimum", i, None, a, None, Judgement(0.0, 0.0, a.noise, abs(a.value)),
                    f"search ({s.res.method})", rechecked=False)
