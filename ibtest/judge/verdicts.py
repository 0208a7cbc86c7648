"""Verdicts of every hypothesis member of a run (:func:`judge_all`), decided by one rule
(:func:`decide`) from what each claim kind found.

A member of a hypothesis of kind K is judged by every claim kind registered for K (``ctx.study.kinds``;
built in: ``pair`` and ``witness`` for regularizers, ``invariant``, ``bound``). Each kind scores the
member on the run's retained triples, re-checks its best candidates on solutions re-solved at
tighter settings (one batch for every member), and returns a :class:`~ibtest.judge.records.Finding`.
Then, in this order:

1. a finding whose evidence refutes (gap > margin + noise, :mod:`ibtest.solve.rules`) → **falsified**,
   on the evidence of the first claim kind that refutes (registration order: pairs, the paper's own
   argument, before a search witness);
2. a candidate beyond the margin but inside R's evaluation noise → **inconclusive** (the noise);
3. R constant at every solution seen → **survives**, grade *vacuous*;
4. support of ``min_pairs`` or more: *certified* triples, distinct *pairs*, checked *triples* →
   **survives** with that grade (the strongest one);
5. only a local search that found nothing on ``min_pairs`` or more triples → **unrefuted**;
6. otherwise **inconclusive**, with the most specific reason (nothing converged, no pair,
   identical pairs only, Z(D) a single point in R's variable, too few).

A hypothesis that raises, writes into its inputs or returns NaN/inf gets an **error** row. A study
whose data float64 cannot hold (:func:`ibtest.solve.fit.range_warning`) gets no verdict: every
other member is **inconclusive**, with that reason.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ibtest.judge.records import ErrorMeter, Finding, MemberCounts, MemberResult
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext
from ibtest.solve.rules import Grade, Verdict
from ibtest.study.typed import HypothesisUse

MemberKey = tuple[int, int]  # (hypothesis position, member position) in the study
#: the order of strength of the grades of a survival
GRADE_ORDER = (Grade.CERTIFIED, Grade.PAIRS, Grade.TRIPLES)


@dataclass
class _Scored:
    use: HypothesisUse
    params: dict[str, Any]
    counts: MemberCounts
    scores: list[Any]
    error: str | None = None


def new_result(use: HypothesisUse, params: dict[str, Any], verdict: Verdict = Verdict.INCONCLUSIVE) -> MemberResult:
    spec = use.spec
    return MemberResult(use.name, params, spec.kind, spec.depends_on, verdict, use.expect, spec=spec, use=use)


def error_result(use: HypothesisUse, params: dict[str, Any], message: str) -> MemberResult:
    """An error row: the hypothesis raised (``message``: "Type: text")."""
    r = new_result(use, params, Verdict.ERROR)
    r.error = message
    r.reason = f"hypothesis raised: {message}"
    return r


def raised_message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def judge_all(ctx: RunContext, t: Triples, pairs: Pairs, counts: dict[MemberKey, MemberCounts],
              also_measure: Sequence[int] = ()) -> tuple[list[MemberResult], ErrorMeter]:
    """Verdict of every member of every hypothesis; a raising hypothesis gets an error row.

    ``t`` and ``pairs``: the triples and pairs a run retained (see :mod:`ibtest.run.streaming`);
    ``counts``: every member's counts over the whole run. Two passes: every claim kind scores
    every member on the first solutions, the union of all candidate triples (plus
    ``also_measure``) is re-solved at tighter settings in one batch, then each kind finishes and
    :func:`decide` gives the verdict.
    """
    meter = ErrorMeter(ctx, t)
    scored: list[_Scored] = []
    for i, use in enumerate(ctx.study.hypotheses):
        for j, params in enumerate(use.members):
            tot = counts[(i, j)]
            s = _Scored(use, params, tot, [], tot.raised)
            scored.append(s)
            if s.error:
                continue
            try:
                for kind in ctx.study.claim_kinds(use):
                    assert kind.score is not None  # claim_kinds gives the kinds that score a run
                    s.scores.append(kind.score(ctx, t, pairs, use, params, list(s.scores)))
            except Exception as exc:
                s.error = raised_message(exc)
    if ctx.rules.recheck:
        todo = list(also_measure)
        for s in scored:
            for sc in s.scores:
                if sc is not None and not s.error:
                    todo += sc.triples_to_measure()
        meter.measure(todo)
    out: list[MemberResult] = []
    for s in scored:
        if s.error:
            out.append(error_result(s.use, s.params, s.error))
            continue
        try:
            findings = []
            for kind, sc in zip(ctx.study.claim_kinds(s.use), s.scores):
                assert kind.finish is not None
                f = kind.finish(ctx, t, sc, s.use, s.params, meter, s.counts)
                for e in (f.evidence, f.noisy):
                    if e is not None:
                        e.label = kind.label
                findings.append(f)
            r = decide(new_result(s.use, s.params), findings, s.counts, ctx.rules.min_pairs)
        except Exception as exc:
            r = error_result(s.use, s.params, raised_message(exc))
        if ctx.out_of_range and r.verdict != Verdict.ERROR:  # no verdict float64 cannot hold
            r.verdict, r.grade, r.reason = Verdict.INCONCLUSIVE, None, ctx.out_of_range
        out.append(r)
    return out, meter


def decide(r: MemberResult, findings: Sequence[Finding], counts: MemberCounts, min_pairs: int) -> MemberResult:
    """The verdict of one member from its claim kinds' findings (see the module docstring)."""
    counts.apply(r)
    refuting = [f.evidence for f in findings if f.evidence is not None and f.evidence.judgement.refutes]
    if refuting:  # the first claim kind that refutes (registration order: a pair before a search witness)
        best = refuting[0]
        r.verdict, r.evidence = Verdict.FALSIFIED, best
        r.reason = _refutation_text(best)
        return r
    closest = [f.evidence for f in findings if f.evidence is not None]
    if closest:
        r.evidence = max(closest, key=lambda e: e.judgement.strength)
    noisy = [f.noisy for f in findings if f.noisy is not None]
    if noisy:
        n = max(noisy, key=lambda e: e.judgement.strength)
        r.verdict, r.evidence = Verdict.INCONCLUSIVE, n
        r.reason = (f"inconclusive: the gap is within R's evaluation noise ({n.kind} from {n.source}: gap {n.gap:.3g} "
                    f"> margin {n.margin:.3g}, but R's float64 value at these points varies by up to {n.noise:.3g})")
        return r
    if counts.constant:
        r.verdict, r.grade = Verdict.SURVIVES, Grade.VACUOUS
        r.reason = (f"R is constant on every Z(D) seen (R = {counts.r_value:.6g} at the solutions and around them): "
                    "it is minimized everywhere and expresses no bias")
        return r
    support = {f.support[0]: (f.support[1], f.support_text) for f in findings if f.support is not None}
    texts = [support[g][1] for g in GRADE_ORDER if g in support and support[g][0] >= min_pairs]
    for g in GRADE_ORDER:
        if g in support and support[g][0] >= min_pairs:
            r.verdict, r.grade = Verdict.SURVIVES, g
            r.reason = "; ".join(texts)
            r.support = next((f.support_evidence for f in findings if f.support_evidence is not None), None)
            return r
    local = sum(f.local for f in findings)
    if local >= min_pairs:
        r.verdict = Verdict.UNREFUTED
        r.reason = ("unrefuted (not support): " + "; ".join(f.local_text for f in findings if f.local_text)
                    + ". A local search that finds nothing is a lower bound, not a certificate")
        return r
    r.verdict = Verdict.INCONCLUSIVE
    weak = [f"{support[g][1]} (fewer than min_pairs {min_pairs})" for g in GRADE_ORDER if g in support]
    reasons = [f.reason for f in findings if f.reason] + weak
    r.reason = "; ".join(dict.fromkeys(reasons)) or "no evidence"
    return r


def _refutation_text(e: Any) -> str:
    if e.kind == "witness":
        return (f"witness inside one Z(D) from {e.source}: θ' fits D and R(θ∞) − R(θ') = {e.gap:.3g} "
                f"> margin {e.margin:.3g}")
    if e.kind == "invariant":
        return f"C(θ∞) ≠ C(θ0): |ΔC| = {e.gap:.3g} > margin {e.margin:.3g}"
    if e.kind == "bound":
        return f"bound broken: value {e.Ra:.6g} exceeds {e.Rb:.6g} by {e.gap:.3g} > margin {e.margin:.3g}"
    if e.kind == "pair":
        return f"certified witness from {e.source}: |ΔR| = {e.gap:.3g} > margin {e.margin:.3g}"
    return f"{e.kind} from {e.source}: gap {e.gap:.3g} > margin {e.margin:.3g}"
