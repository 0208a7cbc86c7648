"""The pair claim: a regularizer R judged on admissible pairs.

For an admissible pair (θa, θb) (each fits the other's dataset) a valid R rates both equal. The
pair refutes R when |R(θa) − R(θb)| beats the margin of :mod:`ibtest.solve.rules` (floor, the
measured error of each side, R's evaluation noise at each side); a candidate is re-checked on its
re-solved solutions (both still converged, still cross-fitting) before it refutes anything.
Which pairs count is decided by ``depends_on`` (:func:`ibtest.solve.rules.eligible`).

A survival on pairs needs pairs whose solutions are *distinct in the variable R reads* (θ, or the
predictor for ``on="predictor"``): two solutions with one predictor rate a predictor-R alike.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ibtest.judge import evaluation as ev_mod
from ibtest.judge.records import (
    RECHECK_TOP,
    ErrorMeter,
    Evidence,
    Finding,
    MemberCounts,
    TableScore,
    hyp_context,
    settle,
    sides_at,
    tolerance,
)
from ibtest.pairs.admissible import distinct
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext
from ibtest.solve.rules import Grade, eligible, floor
from ibtest.study.typed import HypothesisUse

Tensor = torch.Tensor
#: a pair candidate's gap over its tolerance floor that makes a member "settled" in a block: its
#: witness search is then only sampled (its verdict is decided; the search gives statistics)
SETTLED = 1e3


@dataclass
class PairScore(TableScore):
    """R on both sides of a member's P eligible pairs of one table (first solutions)."""

    p: Pairs  # the eligible pairs (P of them)
    sel: Tensor  # [P] their positions in the pairs they were selected from
    Ra: Tensor  # [P] R(θa)
    Rb: Tensor  # [P] R(θb)
    gap: Tensor  # [P] |R(θa) − R(θb)|
    floor: Tensor  # [P] tolerance floor
    rel: Tensor  # [P] gap / max(|R(θa)|, |R(θb)|)
    cand: list[int]  # positions in ``p`` to re-check: largest gap / floor, beyond the floor
    part: MemberCounts = field(default_factory=MemberCounts)

    @property
    def settled(self) -> bool:
        return any(bool(self.gap[k] > SETTLED * self.floor[k]) for k in self.cand)

    def closest(self) -> int:
        """Position (in ``p``) of the closest call: the largest gap over its floor."""
        return int(torch.argmax(torch.nan_to_num(self.gap / self.floor.clamp_min(1e-300), nan=0.0)))

    def keep_pairs(self) -> list[int]:
        """Positions (in the scored pairs) a verdict can rest on: the candidates and the closest call."""
        return sorted({int(self.sel[k]) for k in self.cand} | {int(self.sel[self.closest()])})

    def triples_to_measure(self) -> list[int]:
        return [int(self.p.a[k]) for k in self.cand] + [int(self.p.b[k]) for k in self.cand]


def score_pairs(ctx: RunContext, t: Triples, pairs: Pairs, use: HypothesisUse, params: dict,
                prior: Sequence[Any] = ()) -> PairScore | None:
    """R on both sides of every eligible pair, and the candidates to re-check; None when no pair
    is eligible (no pair at all, none sharing θ0, or a data-dependent R)."""
    spec = use.spec
    if spec.depends_on == "data":
        return None
    sel = eligible(spec.depends_on, pairs.same_init).nonzero().flatten()
    p = pairs.select(sel)
    if len(p) == 0:
        return None
    hit = torch.zeros(len(t), dtype=torch.bool)
    hit[p.a] = True
    hit[p.b] = True
    used = hit.nonzero().flatten()
    R_all, _ = ev_mod.evaluate(ctx.model, spec, params, t.theta[used], hyp_context(ctx, t, used, spec), grad=False)
    pos = torch.zeros(len(t), dtype=torch.int64)
    pos[used] = torch.arange(used.numel())
    Ra, Rb = R_all[pos[p.a]], R_all[pos[p.b]]
    gap = (Ra - Rb).abs()
    scale = torch.maximum(Ra.abs(), Rb.abs())
    fl = floor(tolerance(use), Ra, Rb)
    rel = gap / scale.clamp_min(1e-300)
    order = torch.argsort(gap / fl.clamp_min(1e-300), descending=True)
    cand = [int(k) for k in order[:RECHECK_TOP] if bool(gap[k] > fl[k])]
    if spec.on == "predictor":  # distinct in the variable R reads
        with torch.no_grad():
            dist = distinct(ctx.model.predictor(t.theta[p.a]), ctx.model.predictor(t.theta[p.b])).cpu()
    else:
        dist = p.distinct
    part = MemberCounts(n=len(p), distinct=int(dist.sum()), max_rel_gap=float(rel.max()))
    part.probe(ctx, t, spec, params, used)
    return PairScore(p, sel, Ra, Rb, gap, fl, rel, cand, part)


def finish_pairs(ctx: RunContext, t: Triples, sc: PairScore | None, use: HypothesisUse, params: dict,
                 meter: ErrorMeter, counts: MemberCounts) -> Finding:
    """Re-check the candidates on re-solved solutions; the strongest one (refuting or closest),
    and the support the run's pairs give (``counts``: the member's run-wide counts)."""
    spec = use.spec
    if spec.depends_on == "data":
        return Finding(reason="not applicable: a data-dependent R cannot be refuted by comparing R across "
                              "datasets, only by a witness inside one Z(D)")
    found = Finding()
    if counts.n == 0 or sc is None:
        found.reason = counts.no_pairs_reason
        return found
    p = sc.p
    best = settle(found, (_recheck(ctx, t, use, params, meter, int(p.a[k]), int(p.b[k]), p.source(k))
                          for k in sc.cand))
    if found.evidence is not None:
        return found
    if best is None:  # the closest call, on the first solutions
        k = sc.closest()
        a, b = int(p.a[k]), int(p.b[k])
        sa, sb, pn = sides_at(ctx, t, spec, params, [a, b], t.theta[torch.tensor([a, b])], [0.0, 0.0])
        best = Evidence("pair", a, b, sa, sb, ctx.rules.judge_pair(tolerance(use), sa, sb, pn), p.source(k),
                        rechecked=False)
    found.evidence = best
    if counts.distinct:
        found.support = (Grade.PAIRS, counts.distinct)
        found.support_text = (f"{counts.n} admissible pairs ({counts.distinct} distinct in the variable R reads), "
                              "no witness beyond the margin")
    else:
        found.reason = (f"no evidence: all {counts.n} admissible pairs have identical solutions"
                        + (" in the predictor R reads" if spec.on == "predictor" else "")
                        + " (an identical pair rates every R alike)")
    return found


def _recheck(ctx: RunContext, t: Triples, use: HypothesisUse, params: dict, meter: ErrorMeter, a: int, b: int,
             source: str) -> Evidence | None:
    """A candidate pair judged on its re-solved (tight) solutions, each side with its own measured
    error; None if it no longer qualifies (not converged, not fitting, not cross-fitting)."""
    rules = ctx.rules
    if not (meter.usable(a) and meter.usable(b)):
        return None
    tha, ea = meter.theta_err(a)
    thb, eb = meter.theta_err(b)
    if rules.recheck:
        ab = torch.tensor([b, a])
        cross = rules.fits(ctx.model, torch.stack([tha, thb]), t.X[ab], t.y[ab], t.mask[ab], t.theta0[ab])
        if not bool(cross.all()):
            return None
    sa, sb, pn = sides_at(ctx, t, use.spec, params, [a, b], torch.stack([tha, thb]), [ea, eb])
    return Evidence("pair", a, b, sa, sb, rules.judge_pair(tolerance(use), sa, sb, pn), source,
                    rechecked=rules.recheck)
