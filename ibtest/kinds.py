"""The built-in claim kinds, one object each: everything the tool does with one kind of evidence.

=============  =============  ======================================================================
claim kind     judges         evidence
=============  =============  ======================================================================
``pair``       regularizer    an admissible pair rated apart by R (:mod:`ibtest.judge.pair_claim`)
``witness``    regularizer    a point of one Z(D) with a smaller R (:mod:`ibtest.judge.witness_claim`)
``invariant``  invariant      one triple with C(θ∞) ≠ C(θ0) (:mod:`ibtest.judge.triple_claim`)
``bound``      bound          one triple with B(θ∞) > bound (:mod:`ibtest.judge.triple_claim`)
``optimum``    regularizer    a certified survival: θ∞ is the global argmin over Z(D) (certificate only)
``limit``      any (``*``)    a member's trend over a swept scale (:mod:`ibtest.judge.limits`)
=============  =============  ======================================================================

Each :class:`~ibtest.plugin.specs.ClaimKind` bundles score, finish (the judge layer), certificate,
replay, describe (the cert layer), plot (the out layer) and its report label; this module sits
above the layers so that it can name them all. It registers through the ``ibtest_claim_kinds``
hook like any plugin: a new kind is a plugin of its own, with no edit here or anywhere in the core.
"""
from __future__ import annotations

from ibtest.cert import limit_cert, optimum_cert, pair_cert, triple_cert, witness_cert
from ibtest.judge import pair_claim, triple_claim, witness_claim
from ibtest.out import limit_plot, plots, witness_plot
from ibtest.plugin.hookspecs import hookimpl
from ibtest.plugin.specs import ClaimKind

PAIR = ClaimKind(
    name="pair", judges="regularizer", label="|ΔR|",
    score=pair_claim.score_pairs, finish=pair_claim.finish_pairs,
    certificate=pair_cert.fields, replay=pair_cert.replay, describe=pair_cert.describe, plot=plots.plot_sides,
    doc="two runs whose solutions each fit the other's dataset, rated apart by R")
WITNESS = ClaimKind(
    name="witness", judges="regularizer", label="R(θ∞)-R(θ')",
    score=witness_claim.score_search, finish=witness_claim.finish_search,
    certificate=witness_cert.fields, replay=witness_cert.replay, describe=witness_cert.describe,
    plot=witness_plot.plot, doc="a point of one zero-loss set with a smaller R than the flow's limit")
INVARIANT = ClaimKind(
    name="invariant", judges="invariant", label="|ΔC|",
    score=triple_claim.score_triples, finish=triple_claim.finish_triples,
    certificate=triple_cert.fields, replay=triple_cert.replay, describe=triple_cert.describe, plot=plots.plot_sides,
    doc="one run whose C(θ∞) differs from C(θ0)")
BOUND = ClaimKind(
    name="bound", judges="bound", label="B - bound",
    score=triple_claim.score_triples, finish=triple_claim.finish_triples,
    certificate=triple_cert.fields, replay=triple_cert.replay, describe=triple_cert.describe, plot=plots.plot_sides,
    doc="one run whose B(θ∞) exceeds the bound")


OPTIMUM = ClaimKind(
    name="optimum", judges="regularizer", label="certified",
    certificate=optimum_cert.fields, replay=optimum_cert.replay, describe=optimum_cert.describe,
    plot=witness_plot.plot_optimum,
    doc="a certified survival: the run's theta_inf is the global minimum of R over its zero-loss set")
LIMIT = ClaimKind(
    name="limit", judges="*", label="relative gap",
    certificate=limit_cert.build, replay=limit_cert.replay, describe=limit_cert.describe, plot=limit_plot.plot,
    doc="a member's relative gap against a swept scale: consistent in the limit, or not the limit")


@hookimpl
def ibtest_claim_kinds() -> list[ClaimKind]:
    return [PAIR, WITNESS, INVARIANT, BOUND, OPTIMUM, LIMIT]
