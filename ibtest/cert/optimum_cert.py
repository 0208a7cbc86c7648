"""Optimum certificates (``kind: optimum``): a certified survival, one run at a time.

Where the witness search certified that θ∞ is the global minimum of R over Z(D) (a convex R on a
polyhedral zero-loss set, or a model's own convex reformulation such as the min-norm program of a
two-layer ReLU net), the run records it: D, θ0, θ∞, R(θ∞) and how the minimum was certified.

``ibtest verify`` re-solves θ∞ from the data at tighter settings, requires it to converge and fit,
and runs the same search on it (:func:`ibtest.judge.witness.search`, the engine's): confirmed
only if the minimum is certified again and no point of Z(D) beats θ∞ beyond the margin. (Exit 0
means the survival's certificate holds; there is nothing to refute.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ibtest.base.textsafe import clean
from ibtest.cert.certificate import field_text, header_lines, loss_at, side_fields
from ibtest.cert.pair_cert import side_lines
from ibtest.cert.replay import Replay, VerifyResult
from ibtest.judge import evaluation as ev_mod

if TYPE_CHECKING:
    from ibtest.judge.records import Evidence, MemberResult
    from ibtest.solve.batch import Triples
    from ibtest.solve.engine import RunContext


def fields(ctx: RunContext, t: Triples, member: MemberResult, ev: Evidence) -> dict[str, Any]:
    """The certified run: claim, the run, how its optimality was certified."""
    return {"claim": f"theta_inf is a global minimizer of {member.label} over the zero-loss set",
            "refutation": f"certified by the {ev.source}: no point of Z(D) has a smaller R",
            "source": ev.source,
            "a": side_fields(t, ev.a, ev.theta_a, loss_at(ctx, t, ev.theta_a, ev.a), ev.side_a)}


def replay(cert: dict[str, Any], rp: Replay) -> VerifyResult:
    """Re-solve θ∞ and certify its optimality again with the engine's search."""
    from ibtest.judge.witness import search

    theta, status, _err, lines = rp.resolve()
    rp.lines += [line.replace("side a:", "theta_inf") for line in lines]
    if status[0] != 0:
        return rp.result(rp.verdict(False))
    X, y, mask, th0 = rp.data.rows([0])
    try:
        res = search(rp.model, rp.spec, rp.params, X, y, mask, th0, theta, rp.rules, rp.tol, certify_limit=1)
    except ev_mod.NonFiniteValue as exc:
        rp.lines.append(f"  at the re-solved theta_inf: {clean(exc)}: no certificate")
        return rp.result(rp.verdict(False))
    certified, beaten = bool(res.certified[0]), bool(res.found[0])
    rp.lines.append(f"  R(theta_inf) = {float(res.R_inf[0]):.12g}; minimum over Z(D) ({res.method}): "
                    f"{float(res.R[0]):.12g}, {'certified' if certified else 'NOT certified'}"
                    + ("; a point of Z(D) beats theta_inf" if beaten else ""))
    ok = certified and not beaten and not bool(res.vacuous[0])
    rp.lines.append("  certified optimum CONFIRMED" if ok else "  certified optimum WITHDRAWN")
    return rp.result(ok)


def describe(cert: dict[str, Any]) -> list[str]:
    """``ibtest show`` of an optimum certificate."""
    return [*header_lines(cert, "Certified survival:"), *side_lines(cert, "a"),
            f"  {cert.get('refutation', '')}", f"  R(theta_inf) = {field_text(cert['a'].get('R'), '.12g')}",
            f"  replay: {cert.get('replay', '')}"]
