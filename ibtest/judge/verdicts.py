"""Verdicts of every hypothesis member of a run (:func:`judge_all`), and the names of the judge layer.

For a regularizer R and an admissible pair (θa, θb) (each fits the other's dataset), a valid R
must rate them equal. The pair refutes R when |R(θa) − R(θb)| exceeds the margin of
:mod:`ibtest.judge.evaluation` (tolerance floor relative to |R| plus safety · ‖∇R‖ · err per side),
where err is the *measured* solver error of each side: ‖θ∞ − θ∞'‖ with θ∞' re-solved at the
solver's tightened settings (``Solver.tighten``). The pair is re-checked on the re-solved θ∞'
(both still converged, still cross-fitting) before it certifies anything. An invariant C is
refuted by one converged triple with ‖C(θ∞) − C(θ0)‖∞ beyond the same kind of margin.

Which pairs count: ``params`` hypotheses every admissible pair; ``init`` only pairs sharing θ0;
``data`` none (a cross-dataset comparison proves nothing for a data-dependent R) → inconclusive.
"survives" is earned: it needs ``min_pairs`` admissible pairs with *distinct* solutions (two
identical solutions rate every R alike and prove nothing). A hypothesis that returns NaN or ±inf
anywhere gets an ``error`` row, never a survival.

The parts: :mod:`~ibtest.judge.records` (results, counts, error meter),
:mod:`~ibtest.judge.regularizer`, :mod:`~ibtest.judge.invariant_bound`,
:mod:`~ibtest.judge.search_verdict` (witness search inside one Z(D)).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ibtest.base import status as st
from ibtest.judge.invariant_bound import InvariantScore, judge_invariant, score_invariant
from ibtest.judge.records import (
    RECHECK_TOP,
    ErrorMeter,
    Evidence,
    MemberCounts,
    MemberResult,
    SearchTotals,
    evaluate,
    hyp_context,
    no_converged_reason,
    no_pair_reason,
)
from ibtest.judge.regularizer import PairScores, RegularizerScore, finish_regularizer, score_regularizer
from ibtest.judge.search_verdict import (
    SETTLED,
    SETTLED_CERTIFY,
    SETTLED_SAMPLE,
    SearchScore,
    finish_search,
    recheck_witness,
    score_search,
)
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext

__all__ = ["RECHECK_TOP", "SETTLED", "SETTLED_CERTIFY", "SETTLED_SAMPLE", "ErrorMeter", "Evidence", "InvariantScore",
           "MemberCounts", "MemberResult", "PairScores", "RegularizerScore", "SearchScore", "SearchTotals",
           "evaluate", "finish_regularizer", "finish_search", "hyp_context", "judge_all", "judge_invariant",
           "no_converged_reason", "no_pair_reason", "recheck_witness", "score_invariant", "score_regularizer",
           "score_search"]

MemberKey = tuple[int, int]  # (hypothesis position, member position) in the study


def judge_all(ctx: RunContext, t: Triples, pairs: Pairs, counts: dict[MemberKey, MemberCounts],
              also_measure: Sequence[int] = ()) -> tuple[list[MemberResult], ErrorMeter]:
    """Verdict of every member of every hypothesis; a raising hypothesis gets an error row.

    ``t`` and ``pairs``: the triples and pairs a run retained (see :mod:`ibtest.run.streaming`);
    ``counts``: every member's counts over the whole run (they set ``n_pairs``, ``n_distinct``,
    ``max_rel_gap``, ``worst``, and the reason when nothing was judged). Two passes: score every
    member on the first solutions, re-solve the union of all candidate triples (plus
    ``also_measure``) at tighter settings in one batch, then decide.
    """
    meter = ErrorMeter(ctx, t)
    scored: list[tuple[str, Any, dict, Any]] = []
    for i, use in enumerate(ctx.study.hypotheses):
        for j, params in enumerate(use.members):
            tot = counts[(i, j)]
            try:
                if tot.raised:
                    raise _Raised(tot.raised)
                if use.spec.kind in ("invariant", "bound"):
                    scored.append(("inv", use, params, tot))
                else:
                    sc = score_regularizer(ctx, t, pairs, use, params)
                    tot.apply(sc.result)
                    if tot.n == 0 and tot.no_pairs_reason:
                        sc.result.reason = tot.no_pairs_reason
                    scored.append(("reg", use, params, sc))
            except Exception as exc:
                scored.append(("err", use, params, exc))
    if ctx.study.verdict.recheck:
        todo = list(also_measure)
        for kind, _, _, sc in scored:
            if kind == "reg":
                todo += sc.triples_to_measure()
        conv = (t.status == st.CONVERGED).nonzero().flatten()
        if any(k == "inv" for k, *_ in scored):
            todo += conv[:RECHECK_TOP * 4].tolist()
        meter.measure(todo)
    out: list[MemberResult] = []
    for kind, use, params, sc in scored:
        try:
            if kind == "err":
                raise sc
            if kind == "inv":
                out.append(judge_invariant(ctx, t, use, params, meter, counts=sc))
            else:
                out.append(finish_regularizer(ctx, t, sc, params, meter))
        except Exception as exc:
            r = MemberResult(use.name, params, use.spec.kind, use.spec.depends_on, "error", use.expect,
                             spec=use.spec, use=use)
            r.error = str(exc) if isinstance(exc, _Raised) else f"{type(exc).__name__}: {exc}"
            r.reason = f"hypothesis raised: {r.error}"
            out.append(r)
    return out, meter


class _Raised(Exception):
    """A hypothesis that raised on an earlier block of the run (message kept as is)."""
