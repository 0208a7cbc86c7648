"""The fitted member judged by the normal falsifier on held-out triples.

The member R_λ is the family's registered regularizer hypothesis (``Family.name``) with
``params = {lam: λ, **settings}``, declared convex where the family says R_λ is (so the witness
search can certify optimality over a polyhedral Z(D)), with its cvxpy form where the family has one.
It is judged exactly as ``ibtest run`` judges a hypothesis (:class:`ibtest.run.streaming.Retainer`,
:func:`ibtest.judge.verdicts.judge_all`: the ``pair`` and ``witness`` claim kinds, margins from the
measured solver error of the held-out triples re-solved at tight settings), on the held-out triples
and the admissible pairs between them only. A refutation's certificate is an ordinary pair or witness
certificate of that hypothesis, which ``ibtest verify`` replays.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ibtest.cert import certificate
from ibtest.judge.records import MemberResult
from ibtest.plugin.specs import Family, replace
from ibtest.run.streaming import Retainer, Tally
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext
from ibtest.solve.rules import Verdict
from ibtest.study.typed import HypothesisUse


@dataclass
class HeldOut:
    """The fitted member's verdict on the held-out triples (``member``), how many there were, and
    its certificate when refuted."""

    member: MemberResult | None
    triples: int
    pairs: int
    certificate: str | None = None
    reason: str = ""


def member_use(reg: Any, family: Family, lam: list[float], settings: Mapping[str, Any], Q: int) -> HypothesisUse:
    """The study use of the fitted member (one member: λ and the family's settings)."""
    spec = reg.get("hypotheses", family.name)
    convex = bool(family.convex(lam, Q, **settings)) if family.convex is not None else False
    cvx = None
    if family.cvx is not None and convex:
        fam_cvx = family.cvx

        def cvx(x: Any, ctx: Any, lam: Any = (), **s: Any) -> Any:
            return fam_cvx(x, ctx, lam, **s)
    spec = replace(spec, convex=convex, cvx=cvx)
    params = {"lam": list(lam), **dict(settings)}
    return HypothesisUse(family.name, spec, [params], None, float(spec.atol), float(spec.rtol), ("fit",))


def judge_heldout(ctx: RunContext, reg: Any, use: HypothesisUse, t: Triples, pairs: Pairs,
                  out_dir: Path | None) -> HeldOut:
    """Judge the member ``use`` on the held-out table ``t`` and its pairs (see the module docstring)."""
    from ibtest.base import status as st

    n = int((t.status == st.CONVERGED).sum())
    if n == 0:
        return HeldOut(None, 0, 0, reason="no converged held-out triple: the fitted member is not judged")
    study = copy.copy(ctx.study)
    study.hypotheses = [use]
    study.kinds = {"regularizer": reg.kinds_for("regularizer")}
    hctx = copy.copy(ctx)
    hctx.study = study
    retainer = Retainer(hctx)
    tally = Tally(ctx.model, 0)
    tally.add(t, pairs)
    retainer.add(t, pairs)
    kept, _, members, _ = retainer.finish(tally)
    m = members[0]
    out = HeldOut(m, n, int(pairs.distinct.sum()) if len(pairs) else 0)
    if m.verdict == Verdict.FALSIFIED and m.evidence is not None and out_dir is not None:
        path = out_dir / "certificates" / f"{certificate.slug(use.name)}.heldout.json"
        cert = certificate.build(hctx, kept, m)
        certificate.write(cert, path)
        out.certificate = m.certificate = str(path)
    return out
