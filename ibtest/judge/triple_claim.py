"""The triple claims: invariants and bounds, judged on single converged triples.

An invariant C (values [T, k]) claims C(θ∞) = C(θ0); a bound B claims B(θ∞) ≤ bound. One converged
triple with max |C(θ∞) − C(θ0)| (or max (B(θ∞) − bound)) beyond the margin of
:mod:`ibtest.solve.rules` (floor, θ∞'s measured error, C's evaluation noise at θ∞ and, for an
invariant, at θ0), re-checked on θ∞ re-solved at tighter settings, refutes the claim. A survival
rests on the converged triples checked (grade ``triples``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ibtest.base import status as st
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
    tolerance,
)
from ibtest.plugin.specs import Hypothesis, HypothesisContext
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext
from ibtest.solve.rules import Grade, floor
from ibtest.study.typed import HypothesisUse

Tensor = torch.Tensor


def is_bound(spec: Hypothesis) -> bool:
    return spec.kind == "bound"


def claim_params(spec: Hypothesis, params: dict) -> dict:
    """The parameters passed to the hypothesis (a bound's ``bound`` is the verdict's, not B's)."""
    return {k: v for k, v in params.items() if not (is_bound(spec) and k == "bound")}


def bound_value(spec: Hypothesis, params: dict) -> float:
    b = params.get("bound", spec.bound)
    if b is None:
        raise ValueError(f"hypothesis {spec.name!r} is a bound, but no bound is given")
    return float(b)


def reference(ctx: RunContext, spec: Hypothesis, params: dict, theta0: Tensor, hctx: HypothesisContext) -> Tensor:
    """What C(θ∞) is compared with, [k, m]: C(θ0) for an invariant, the bound for a bound."""
    if is_bound(spec):
        return torch.full((theta0.shape[0], 1), bound_value(spec, params), dtype=torch.float64)
    C0, _ = ev_mod.evaluate(ctx.model, spec, claim_params(spec, params), theta0, hctx, grad=False)
    return C0.reshape(theta0.shape[0], -1)


def reference_noise(model: Any, spec: Hypothesis, params: dict, theta: Tensor, theta0: Tensor,
                    hctx1: HypothesisContext, side: Any) -> float:
    """The noise of a triple's comparison beyond C(θ∞)'s own: C(θ0)'s (an invariant) and the path
    noise of C(θ∞) − C(θ0) along the segment from θ0 (:func:`ibtest.judge.evaluation.path_noise`)."""
    C0, _ = ev_mod.evaluate(model, spec, params, theta0[None], hctx1, grad=False)
    own = 0.0 if is_bound(spec) else float(ev_mod.noise(model, spec, params, theta0[None], hctx1, R=C0)[0])
    return own + float(ev_mod.path_noise(model, spec, params, theta[None], theta0[None], hctx1,
                                         (side.R - C0.reshape(-1))[None])[0])


def excess(spec: Hypothesis, C1: Tensor, C0: Tensor) -> Tensor:
    """How far the claim is broken, per triple [T]: max |C1 − C0| (invariant) or max (C1 − bound)."""
    return (C1 - C0).amax(-1) if is_bound(spec) else (C1 - C0).abs().amax(-1)


@dataclass
class TripleScore(TableScore):
    """An invariant / bound member scored on the N converged triples ``idx`` of one table."""

    idx: Tensor  # [N] table positions of the converged triples
    C0: Tensor  # [N, k] the reference: C(θ0), or the bound
    C1: Tensor  # [N, k] C(θ∞)
    gap: Tensor  # [N] excess
    floor: Tensor  # [N] tolerance floor
    cand: list[int]  # positions in ``idx`` to re-check: largest gap / floor, beyond the floor
    part: MemberCounts = field(default_factory=MemberCounts)

    def closest(self) -> int:
        """Position (in ``idx``) of the closest call: the largest gap / floor."""
        return int(torch.argmax(self.gap / self.floor.clamp_min(1e-300)))

    def keep_triples(self) -> list[int]:
        """Triples a verdict can rest on: the candidates and the closest call."""
        return sorted({int(self.idx[k]) for k in self.cand} | {int(self.idx[self.closest()])})

    def triples_to_measure(self) -> list[int]:
        return self.keep_triples()


def score_triples(ctx: RunContext, t: Triples, pairs: Pairs, use: HypothesisUse, params: dict,
                  prior: Sequence[Any] = ()) -> TripleScore | None:
    """C(θ∞) against its reference on every converged triple, and the candidates to re-check;
    None when no triple of ``t`` converged."""
    spec = use.spec
    idx = (t.status == st.CONVERGED).nonzero().flatten()
    if idx.numel() == 0:
        return None
    hctx = hyp_context(ctx, t, idx, spec)
    C1, _ = ev_mod.evaluate(ctx.model, spec, claim_params(spec, params), t.theta[idx], hctx, grad=False)
    C1 = C1.reshape(idx.numel(), -1)
    C0 = reference(ctx, spec, params, t.theta0[idx], hctx)
    gap = excess(spec, C1, C0)
    scale = torch.maximum(C1.abs().amax(-1), C0.abs().amax(-1))
    fl = floor(tolerance(use), C1, C0)
    order = torch.argsort(gap / fl.clamp_min(1e-300), descending=True)
    cand = [int(k) for k in order[:RECHECK_TOP] if bool(gap[k] > fl[k])]
    part = MemberCounts(n=int(idx.numel()), max_rel_gap=float((gap / scale.clamp_min(1e-300)).max()),
                        largest=float(gap.max()), worst=float(C1.amax(-1).max()) if is_bound(spec) else None)
    part.probe(ctx, t, spec, claim_params(spec, params), idx)
    return TripleScore(idx, C0, C1, gap, fl, cand, part)


def _judge_one(ctx: RunContext, t: Triples, use: HypothesisUse, params: dict, i: int, theta: Tensor, err: float,
               rechecked: bool) -> Evidence:
    spec = use.spec
    one = torch.tensor([i])
    hc = hyp_context(ctx, t, one, spec)
    cp = claim_params(spec, params)
    (side,) = ev_mod.sides(ctx.model, spec, cp, theta[None], hc, [err])
    ref = reference(ctx, spec, params, t.theta0[one], hc)[0]
    j = ctx.rules.judge_triple(tolerance(use), side, ref, one_sided=is_bound(spec),
                               ref_noise=reference_noise(ctx.model, spec, cp, theta, t.theta0[i], hc, side))
    return Evidence(spec.kind, i, None, side, None, j, "study", ref=ref, rechecked=rechecked)


def finish_triples(ctx: RunContext, t: Triples, s: TripleScore | None, use: HypothesisUse, params: dict,
                   meter: ErrorMeter, counts: MemberCounts) -> Finding:
    """Re-check the candidates on re-solved θ∞; the strongest (refuting or closest), and the
    support of the run's converged triples."""
    found = Finding()
    if s is None or counts.n == 0:
        found.reason = counts.no_pairs_reason
        return found
    usable = [int(s.idx[k]) for k in s.cand if meter.usable(int(s.idx[k]))]
    best = settle(found, (_judge_one(ctx, t, use, params, i, *meter.theta_err(i), ctx.rules.recheck) for i in usable))
    if found.evidence is not None:
        return found
    if best is None:
        i = int(s.idx[s.closest()])
        best = _judge_one(ctx, t, use, params, i, t.theta[i], 0.0, False)
    found.evidence = best
    spec = use.spec
    found.support = (Grade.TRIPLES, counts.n)
    if is_bound(spec):
        found.support_text = (f"holds on {counts.n} converged triples (worst value {counts.worst:.6g} <= "
                              f"{bound_value(spec, params):.6g})")
    else:
        found.support_text = f"conserved on {counts.n} converged triples (largest change {counts.largest:.3g})"
    return found
