"""Invariant and bound verdicts, judged on single converged triples.

An invariant C (values [T, k]) claims C(θ∞) = C(θ0); a bound B claims B(θ∞) ≤ bound. One converged
triple with ‖C(θ∞) − C(θ0)‖∞ (or B(θ∞) − bound) beyond the margin of :mod:`ibtest.judge.evaluation`,
re-checked on θ∞ re-solved at tighter settings, refutes the claim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
from ibtest.plugin.specs import HypothesisContext as HypContext
from ibtest.solve.batch import Triples
from ibtest.solve.engine import RunContext
from ibtest.study.schema import HypothesisUse

Tensor = torch.Tensor


def _reference(ctx: RunContext, spec: Any, params: dict, t: Triples, idx: Tensor, hctx: HypContext) -> Tensor:
    """What C(θ∞) is compared with, [len(idx), k]: C(θ0) for an invariant, the bound for a bound."""
    if spec.kind == "bound":
        return torch.full((idx.numel(), 1), float(params.get("bound", spec.bound)), dtype=torch.float64)
    C0, _ = evaluate(ctx, spec, params, t.theta0[idx], hctx, grad=False)
    return C0.reshape(idx.numel(), -1)


def _excess(spec: Any, C1: Tensor, C0: Tensor) -> Tensor:
    """How far the claim is broken, per triple [T]: max |C1 − C0| (invariant) or max (C1 − bound)."""
    if spec.kind == "bound":
        return (C1 - C0).amax(-1)
    return (C1 - C0).abs().amax(-1)


def _claim_params(spec: Any, params: dict) -> dict:
    """The parameters passed to the hypothesis (a bound's ``bound`` is the verdict's, not B's)."""
    return {k: v for k, v in params.items() if not (spec.kind == "bound" and k == "bound")}


@dataclass
class InvariantScore:
    """An invariant / bound member scored on the N converged triples ``idx`` of one table."""

    idx: Tensor  # [N] table positions of the converged triples
    C0: Tensor  # [N, k] the reference: C(θ0), or the bound
    C1: Tensor  # [N, k] C(θ∞)
    gap: Tensor  # [N] excess (see _excess)
    floor: Tensor  # [N] tolerance floor
    cand: list[int]  # positions in ``idx`` to re-check: largest gap / floor, beyond the floor
    worst: float | None  # bounds: the largest value B(θ∞); None for an invariant
    max_rel_gap: float

    def closest(self) -> int:
        """Position (in ``idx``) of the closest call: the largest gap / floor."""
        return int(torch.argmax(self.gap / self.floor.clamp_min(1e-300)))

    def keep(self) -> list[int]:
        """Triples a verdict can rest on: the candidates and the closest call."""
        return sorted({int(self.idx[k]) for k in self.cand} | {int(self.idx[self.closest()])})

    def counts(self) -> MemberCounts:
        """This table's contribution to the member's run-wide counts."""
        return MemberCounts(n=int(self.idx.numel()), max_rel_gap=self.max_rel_gap, largest=float(self.gap.max()),
                            worst=self.worst)


def score_invariant(ctx: RunContext, t: Triples, use: HypothesisUse, params: dict) -> InvariantScore | None:
    """C(θ∞) against its reference on every converged triple, and the candidates to re-check;
    None when no triple of ``t`` converged."""
    spec = use.spec
    idx = (t.status == st.CONVERGED).nonzero().flatten()
    if idx.numel() == 0:
        return None
    hctx = hyp_context(ctx, t, idx, spec)
    C1, _ = evaluate(ctx, spec, _claim_params(spec, params), t.theta[idx], hctx, grad=False)
    C1 = C1.reshape(idx.numel(), -1)
    C0 = _reference(ctx, spec, params, t, idx, hctx)
    gap = _excess(spec, C1, C0)
    scale = torch.maximum(C1.abs().amax(-1), C0.abs().amax(-1))
    floor = ev_mod.floor(use.atol, use.rtol, C1, C0)
    order = torch.argsort(gap / floor.clamp_min(1e-300), descending=True)
    return InvariantScore(idx, C0, C1, gap, floor, [int(k) for k in order[:RECHECK_TOP] if bool(gap[k] > floor[k])],
                          float(C1.amax(-1).max()) if spec.kind == "bound" else None,
                          float((gap / scale.clamp_min(1e-300)).max()))


def judge_invariant(ctx: RunContext, t: Triples, use: HypothesisUse, params: dict, meter: ErrorMeter,
                    counts: MemberCounts) -> MemberResult:
    """Invariants (C(θ∞) = C(θ0)) and bounds (B(θ∞) ≤ bound), judged on the converged triples of
    ``t`` (the run's retained ones); ``counts``: the member's counts over the whole run."""
    spec = use.spec
    fparams = _claim_params(spec, params)
    r = MemberResult(use.name, params, spec.kind, spec.depends_on, "inconclusive", use.expect, spec=spec, use=use)
    s = score_invariant(ctx, t, use, params)
    counts.apply(r)
    largest = counts.largest
    if s is None or r.n_pairs == 0:
        r.reason = counts.no_pairs_reason
        return r
    idx, cand = s.idx, s.cand
    if cand and ctx.study.verdict.recheck:
        meter.measure([int(idx[k]) for k in cand])
    best = None
    for k in cand:
        i = int(idx[k])
        if ctx.study.verdict.recheck and meter.tight_status.get(i) != st.CONVERGED:
            continue
        th = meter.tight_theta[i] if ctx.study.verdict.recheck else t.theta[i]
        e = meter.err.get(i, 0.0)
        one = torch.tensor([i])
        hc = hyp_context(ctx, t, one, spec)
        c1, g1 = evaluate_grad(ctx, spec, fparams, th[None], hc)
        c1 = c1.reshape(1, -1)
        c0 = _reference(ctx, spec, params, t, one, hc)
        g = float(_excess(spec, c1, c0)[0])
        margin = float(ev_mod.margin(use.atol, use.rtol, ctx.study.verdict.safety, c1, c0, g1, None,
                                     th[None], None, e)[0])
        ev = Evidence(i, None, float(c1.flatten()[0]), float(c0.flatten()[0]), g, margin, e, 0.0, float(g1[0]), 0.0,
                      "study", th, t.theta0[i], kind="triple")
        if best is None or ev.gap / ev.margin > best.gap / best.margin:
            best = ev
    if best is not None and best.gap > best.margin:
        r.verdict, r.evidence = "falsified", best
        r.reason = (f"C(θ∞) ≠ C(θ0): |ΔC| = {best.gap:.3g} > margin {best.margin:.3g}" if spec.kind == "invariant"
                    else f"bound broken: value {best.Ra:.6g} exceeds {best.Rb:.6g} by {best.gap:.3g} > margin {best.margin:.3g}")
        return r
    if best is None:
        k = s.closest()
        one = idx[k : k + 1]
        _, g1 = evaluate_grad(ctx, spec, fparams, t.theta[one], hyp_context(ctx, t, one, spec))
        best = Evidence(int(idx[k]), None, float(s.C1[k, 0]), float(s.C0[k, 0]), float(s.gap[k]),
                        float(s.floor[k]), float("nan"), 0.0, float(g1[0]), 0.0, "study", kind="triple")
    r.evidence = best
    if r.n_pairs >= ctx.study.verdict.min_pairs:
        r.verdict = "survives"
        r.reason = (f"conserved on {r.n_pairs} converged triples (largest change {largest:.3g})"
                    if spec.kind == "invariant" else
                    f"holds on {r.n_pairs} converged triples (worst value {r.worst:.6g} <= {float(s.C0[0, 0]):.6g})")
    else:
        r.reason = f"too few converged triples ({r.n_pairs} < min_pairs)"
    return r
