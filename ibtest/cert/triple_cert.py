"""Triple certificates (``kind: invariant`` or ``kind: bound``): one run (D, θ0, θ∞) whose C(θ∞)
differs from C(θ0) (an invariant), or whose B(θ∞) exceeds the bound.

The file holds D, θ0, θ∞ (re-solved at tightened settings), C(θ∞), the reference ``C_init``
(C(θ0), or the bound), the gap, margin and noise. The replay re-solves θ∞ from the data, requires it
to converge and fit, and judges it by :meth:`ibtest.solve.rules.Rules.judge_triple` (the bound is
the registered one, or the member's parameter in the file; C(θ0) is recomputed, never read).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ibtest.base.errors import UserError
from ibtest.base.jsonio import encode_float
from ibtest.base.textsafe import clean
from ibtest.cert.certificate import header_lines, loss_at, side_fields
from ibtest.cert.pair_cert import side_lines
from ibtest.cert.replay import Replay, VerifyResult
from ibtest.judge import evaluation as ev_mod
from ibtest.judge.triple_claim import reference_noise
from ibtest.solve.rules import ROUNDING, Judgement

if TYPE_CHECKING:
    from ibtest.judge.records import Evidence, MemberResult
    from ibtest.solve.batch import Triples
    from ibtest.solve.engine import RunContext


def fields(ctx: RunContext, t: Triples, member: MemberResult, ev: Evidence) -> dict[str, Any]:
    """The triple's part of a certificate: claim, refutation, the run, the reference value."""
    a = ev.a
    if ev.kind == "bound":
        claim = f"{member.label}: B(theta_inf) <= {ev.Rb:.6g} whenever gradient flow converges"
        refutation = f"B(theta_inf) = {ev.Ra:.6g} exceeds the bound by {ev.gap:.6g} > margin {ev.margin:.6g}"
    else:
        claim = f"{member.label} is conserved by gradient flow: C(theta_inf) = C(theta0)"
        refutation = f"|C(theta_inf) - C(theta0)| = {ev.gap:.6g} > margin {ev.margin:.6g}"
    ref = ev.ref.reshape(-1) if ev.ref is not None else torch.tensor([ev.Rb])
    return {"claim": claim, "refutation": refutation, "source": ev.source,
            "a": side_fields(t, a, ev.theta_a, loss_at(ctx, t, ev.theta_a, a), ev.side_a),
            "C_init": encode_float(float(ref[0])) if ref.numel() == 1 else [encode_float(float(v)) for v in ref]}


def replay(cert: dict[str, Any], rp: Replay) -> VerifyResult:
    """Confirmed only if θ∞ re-solved at tight settings converges and fits D and its excess over
    C(θ0) (recomputed) or the bound beats the margin and the evaluation noise."""
    if "b" in cert:
        raise UserError(f"{rp.where}: hypothesis {rp.spec.name!r} is {_article(rp.spec.kind)} (registered kind), "
                        "judged on one run: the file has a side 'b'")
    bound = rp.bound is not None
    _stored(cert, rp)
    theta, status, err, lines = rp.resolve()
    rp.lines += lines
    if status[0] != 0:
        return rp.result(rp.verdict(False))

    def judge() -> tuple[Judgement, str]:
        (side,) = rp.sides(theta, [0], err)
        ref = torch.tensor([rp.bound], dtype=torch.float64) if bound else rp.values(rp.data.theta0[:1], [0])[0]
        noise = reference_noise(rp.model, rp.spec, rp.params, theta[0], rp.data.theta0[0], rp.context([0]), side)
        j = rp.rules.judge_triple(rp.tol, side, ref, one_sided=bound, ref_noise=noise)
        what = "B(theta_inf) - bound" if bound else "|C(theta_inf) - C(theta0)|"
        return j, f"  {what} = {j.gap:.3g}, margin = {j.margin:.3g}, evaluation noise = {j.noise:.3g}"

    return rp.result(rp.judged("the re-solved solution", judge))


def _stored(cert: dict[str, Any], rp: Replay) -> None:
    D = rp.data
    try:
        C = rp.values(D.theta[:1], [0])[0]
        ref = torch.tensor([rp.bound], dtype=torch.float64) if rp.bound is not None else rp.values(D.theta0[:1], [0])[0]
    except ev_mod.NonFiniteValue as exc:
        rp.lines.append(f"  at the file's own theta: {clean(exc)} (the stored numbers cannot be checked)")
        return
    diff = C - ref
    gap = float(diff.max() if rp.bound is not None else diff.abs().max())
    rnd = ROUNDING * (float(C.abs().max()) + float(ref.abs().max()))
    own = rp.fit(D.theta[:1], [0])
    rp.stored([("R(theta_a)", cert["a"].get("R"), float(C[0]), 1e-9, rnd),
               ("C_init", cert.get("C_init"), float(ref[0]), 1e-9, rnd),
               ("gap", cert.get("gap"), gap, 1e-9, rnd),
               ("loss of side a", cert["a"].get("loss"), float(own.loss[0]), 1e-6, 1e-3 * float(own.threshold[0]))])


def _article(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def describe(cert: dict[str, Any]) -> list[str]:
    """``ibtest show`` of an invariant or bound certificate, in words."""
    return [
        *header_lines(cert),
        f"  theta0 = {cert['theta0']}",
        *side_lines(cert, "a"),
        f"  reference (C(theta0), or the bound) = {cert.get('C_init')}",
        f"  {cert.get('refutation', '')}", f"  replay: {cert.get('replay', '')}",
        "  (numbers as stored in the file: 'ibtest verify' re-solves and judges them)",
    ]
