"""The claim kinds of ``ibtest fit``, registered like the built-in ones (:mod:`ibtest.kinds`):

=============  =============  ======================================================================
claim kind     judges         evidence
=============  =============  ======================================================================
``fit``        family         a member of the family satisfies the KKT conditions of every triple
                              (a proposal: KKT is only necessary; the falsifier judges the member)
``no_fit``     family         a few triples (and pairs) whose KKT conditions no member satisfies at once
=============  =============  ======================================================================

A family ``F`` registers the hypothesis ``F_family`` of kind ``family`` (:class:`ibtest.Family`).
In ``ibtest run`` such a hypothesis is fitted on each block's triples (:func:`ibtest.propose.engine.fit_table`,
no strictness): ``no_fit`` falsifies it with a certificate; a fit makes it *unrefuted* (KKT consistency
is necessary, not support). ``ibtest fit`` (:mod:`ibtest.propose.study`) fits all triples of a study
at once, judges the fitted member on held-out triples, and writes both kinds of certificate.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ibtest.judge.records import ErrorMeter, Finding, MemberCounts, TableScore
from ibtest.plugin.hookspecs import hookimpl
from ibtest.plugin.specs import ClaimKind, FamilyFunction
from ibtest.propose import cert as cert_mod, engine as eng, program as prog_mod
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext
from ibtest.solve.rules import Judgement, Side
from ibtest.study.typed import HypothesisUse


@dataclass
class FitScore(TableScore):
    """A family fitted on one table (the outcome is shared by both claim kinds; only the first
    carries the counts)."""

    outcome: eng.FitOutcome
    pairs: Pairs
    part: MemberCounts = field(default_factory=MemberCounts)

    def keep_triples(self) -> list[int]:
        return list(self.outcome.core)

    def triples_to_measure(self) -> list[int]:
        return []


def score(ctx: RunContext, t: Triples, pairs: Pairs, use: HypothesisUse, params: dict, prior: Sequence[Any] = ()
          ) -> FitScore | None:
    """Fit the family of ``use`` (its options from ``params``) to every converged triple of ``t``."""
    for p in prior:
        if isinstance(p, FitScore):
            return FitScore(p.outcome, p.pairs)
    family = family_of(use.spec)
    settings = {**family.settings(), **params}
    out = eng.fit_table(ctx, t, pairs, family, settings, None, torch.arange(len(t)), ErrorMeter(ctx, t))
    return FitScore(out, pairs, MemberCounts(n=len(out.rows), distinct=out.n_pairs))


def family_of(spec: Any) -> Any:
    """The family a ``family`` hypothesis evaluates (its ``fn`` is a :class:`ibtest.plugin.specs.FamilyFunction`)."""
    fn = spec.fn
    if not isinstance(fn, FamilyFunction):
        raise TypeError(f"hypothesis {spec.name!r} of kind 'family' is not a family's (register it with ibtest_families)")
    return fn.family


def evidence(kind: str, out: eng.FitOutcome, pairs: Pairs, runs: Sequence[int], theta: torch.Tensor,
             err: Sequence[float], pair_idx: Sequence[int], gap: float, margin: float) -> cert_mod.FitEvidence:
    """The evidence of a fit or a no-fit, resting on the triples ``runs`` (θ∞ ``theta``, errors ``err``)
    and the pairs ``pair_idx`` of ``pairs`` (both sides among the runs)."""
    pos = {int(i): j for j, i in enumerate(runs)}
    prs = tuple((pos[int(pairs.a[k])], pos[int(pairs.b[k])]) for k in pair_idx)
    srcs = tuple(pairs.source(int(k)) for k in pair_idx)
    side = Side(theta[0].clone(), torch.tensor([gap], dtype=torch.float64), 0.0)
    return cert_mod.FitEvidence(kind, int(runs[0]), None, side, None, Judgement(gap, margin, 0.0), "ibtest fit",
                                outcome=out, runs=tuple(int(i) for i in runs), run_theta=theta,
                                run_err=tuple(float(e) for e in err), pairs=prs, pair_sources=srcs)


def no_fit_evidence(out: eng.FitOutcome, pairs: Pairs) -> cert_mod.FitEvidence | None:
    """The certificate-ready evidence of a confirmed no-fit (None when there is no core)."""
    mm = out.core_minimax
    if out.status != eng.NO_FIT or mm is None or out.core_theta is None:
        return None
    return evidence("no_fit", out, pairs, out.core, out.core_theta, out.core_err, out.core_pairs, mm.s,
                    prog_mod.PROGRAM_SAFETY * mm.s_err)


def finish_fit(ctx: RunContext, t: Triples, sc: FitScore | None, use: HypothesisUse, params: dict, meter: Any,
               counts: MemberCounts) -> Finding:
    """A fit is consistency with a necessary condition: counted as a local result (unrefuted)."""
    found = Finding()
    if sc is None:
        found.reason = counts.no_pairs_reason or "nothing to fit"
        return found
    o = sc.outcome
    if o.status == eng.FITS:
        found.local = len(o.rows)
        found.local_text = (f"a member of {o.family.name} satisfies the KKT conditions of {len(o.rows)} triples "
                            "(necessary only: judge the fitted member on held-out triples with ibtest fit)")
    elif o.status != eng.NO_FIT:
        found.reason = o.reason
    return found


def finish_no_fit(ctx: RunContext, t: Triples, sc: FitScore | None, use: HypothesisUse, params: dict, meter: Any,
                  counts: MemberCounts) -> Finding:
    """A confirmed no-fit refutes the family (its evidence: the core, re-solved at tight settings)."""
    found = Finding()
    if sc is None:
        return found
    e = no_fit_evidence(sc.outcome, sc.pairs)
    if e is not None:
        found.evidence = e
    elif sc.outcome.status == eng.NO_FIT:
        found.reason = sc.outcome.reason
    return found


FIT = ClaimKind(
    name="fit", judges="family", label="KKT residual / tolerance",
    score=score, finish=finish_fit, certificate=cert_mod.fields, replay=cert_mod.replay_fit,
    describe=cert_mod.describe_fit, doc="a member of a family satisfies the KKT conditions of min R over Z(D) at every triple")
NO_FIT = ClaimKind(
    name="no_fit", judges="family", label="minimax excess s*",
    score=score, finish=finish_no_fit, certificate=cert_mod.fields, replay=cert_mod.replay_no_fit,
    describe=cert_mod.describe_no_fit, shrink=cert_mod.shrink_no_fit,
    doc="a few triples whose KKT conditions no member of a family satisfies at once")


@hookimpl
def ibtest_claim_kinds() -> list[ClaimKind]:
    return [FIT, NO_FIT]
