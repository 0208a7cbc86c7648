"""Witness certificates (``kind: witness``): one run (D, θ0, θ∞) and a point θ' of its zero-loss
set with a smaller R.

The file holds D = (X, y) (real points only), θ0, θ∞ (re-solved at tightened settings) with the
solver and its settings, θ', loss(θ') and the fit threshold, R(θ∞), R(θ'), the gap, margin and
noise. The replay trusts only the data: it re-solves θ∞ from D and θ0 at settings tighter than the
file's, measures its error (distance to the file's θ∞ plus distance to Z(D)), re-checks that θ'
fits D by the fit rule, and judges the gap by :meth:`ibtest.solve.rules.Rules.judge_witness` (θ'
is data: no solver error). A witness lies inside one Z(D), so it is valid evidence for every
``depends_on``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ibtest.base.errors import UserError
from ibtest.base.jsonio import encode_float, tensor_to_list
from ibtest.base.textsafe import clean
from ibtest.cert.certificate import field_text, loss_at, side_fields
from ibtest.cert.replay import Replay, VerifyResult
from ibtest.judge import evaluation as ev_mod
from ibtest.solve.rules import ROUNDING, Judgement

if TYPE_CHECKING:
    from ibtest.judge.records import Evidence, MemberResult
    from ibtest.solve.batch import Triples
    from ibtest.solve.engine import RunContext


def fields(ctx: RunContext, t: Triples, member: MemberResult, ev: Evidence) -> dict[str, Any]:
    """The witness's part of a certificate (``ev``: a = the triple, side a = re-solved θ∞, side b = θ')."""
    theta_w = ev.theta_b
    if theta_w is None or ev.side_b is None:
        raise ValueError(f"{member.label}: the witness evidence holds no theta' to certify")
    theta_inf, i = ev.theta_a, ev.a
    sl = slice(i, i + 1)
    fc = ctx.rules.check_fit(ctx.model, theta_w[None], t.X[sl], t.y[sl], t.mask[sl], t.theta0[sl])
    doc = (member.spec.doc if member.spec is not None else "") or member.label
    loss_w, thr = float(fc.loss[0]), float(fc.threshold[0])
    return {
        "claim": f"gradient flow converges to argmin {member.label} over the zero-loss set",
        "refutation": (f"theta' also fits every data point of D (loss {loss_w:.3g} <= {thr:.3g}) and has a smaller "
                       f"{doc}: R(theta_inf) - R(theta') = {ev.gap:.6g} > margin {ev.margin:.6g}, so theta_inf is not "
                       f"a minimizer of R on Z(D)"),
        "source": ev.source,
        "a": side_fields(t, i, theta_inf, loss_at(ctx, t, theta_inf, i), ev.side_a),
        "witness": {"theta": tensor_to_list(theta_w), "loss": loss_w, "fit_threshold": thr,
                    "R": encode_float(ev.side_b.value), "noise": ev.side_b.noise,
                    "predictor": tensor_to_list(ctx.model.predictor(theta_w[None])[0])},
    }


def replay(cert: dict[str, Any], rp: Replay) -> VerifyResult:
    """Confirmed only if θ∞ re-solved at tight settings converges and fits D, the file's θ' fits D,
    and R(θ∞) − R(θ') beats the margin and R's evaluation noise."""
    if "witness" not in cert:
        raise UserError(f"{rp.where}: required field 'witness' is missing")
    if "b" in cert:
        raise UserError(f"{rp.where}: a witness certificate holds one run and a point of its zero-loss set: "
                        "the file has a side 'b'")
    tw = torch.tensor(cert["witness"]["theta"], dtype=torch.float64)[None]
    _stored(cert, rp, tw)
    theta, status, err, lines = rp.resolve()
    rp.lines += [line.replace("side a:", "theta_inf") for line in lines]
    wf = rp.fit(tw, [0])
    rp.lines.append(f"  theta' in Z(D): loss(theta') = {float(wf.loss[0]):.3g} (fits at <= "
                    f"{float(wf.threshold[0]):.3g}): {'yes' if bool(wf.ok[0]) else 'NO'}")
    if not (status[0] == 0 and bool(wf.ok[0])):
        return rp.result(rp.verdict(False))

    def judge() -> tuple[Judgement, str]:
        inf, w, pn = rp.compare(torch.cat([theta, tw]), [0, 0], [err[0], 0.0])
        j = rp.rules.judge_witness(rp.tol, inf, w, pn)
        return j, (f"  R(theta_inf) = {inf.value:.12g}, R(theta') = {w.value:.12g}, "
                   f"R(theta_inf) - R(theta') = {j.gap:.3g}, margin = {j.margin:.3g}, "
                   f"R's evaluation noise = {j.noise:.3g}")

    return rp.result(rp.judged("the re-solved theta_inf", judge))


def _stored(cert: dict[str, Any], rp: Replay, tw: torch.Tensor) -> None:
    try:
        R = rp.values(torch.cat([rp.data.theta, tw]), [0, 0])[:, 0]
    except ev_mod.NonFiniteValue as exc:
        rp.lines.append(f"  at the file's own theta: {clean(exc)} (the stored numbers cannot be checked)")
        return
    Ri, Rw = float(R[0]), float(R[1])
    rp.stored([("R(theta_inf)", cert["a"].get("R"), Ri, 1e-9, ROUNDING * abs(Ri)),
               ("R(theta')", cert["witness"].get("R"), Rw, 1e-9, ROUNDING * abs(Rw)),
               ("gap", cert.get("gap"), Ri - Rw, 1e-9, ROUNDING * (abs(Ri) + abs(Rw)))])


def describe(cert: dict[str, Any]) -> list[str]:
    """``ibtest show`` of a witness certificate, in words."""
    h = cert["hypothesis"]
    params = ", ".join(f"{k}={v}" for k, v in h["params"].items())
    side, w = cert["a"], cert["witness"]
    what = h.get("doc") or h["name"]
    return [
        "Failing case (a witness inside one zero-loss set):",
        f"  hypothesis: {h['name']}{f'[{params}]' if params else ''} ({h['kind']}, depends on {h['depends_on']})",
        f"  claim: {cert.get('claim', '')}",
        f"  model: {cert['model']['name']} {cert['model']['options']}",
        f"  solver: {cert['solver']['name']} {cert['solver']['options']}",
        f"  dataset D ({side['label']}):",
        *[f"    x = {x}, y = {y}" for x, y in zip(side["X"], side["y"])],
        f"  theta0 = {side.get('theta0', cert['theta0'])}",
        f"  gradient flow ends at theta_inf = {side['theta']}",
        f"    loss = {field_text(side.get('loss'))}, R(theta_inf) = {side.get('R')}, measured solver error = "
        f"{field_text(side.get('measured_error'))}",
        f"  witness theta' = {w['theta']}",
        f"    loss = {field_text(w.get('loss'))} (fits D: at most {field_text(w.get('fit_threshold'))}), "
        f"R(theta') = {w.get('R')}",
        f"  In words: this point also fits every data point and has a smaller {what}",
        f"  (by {field_text(cert.get('gap'), '.6g')}, more than the margin {field_text(cert.get('margin'), '.6g')}),",
        "  so gradient flow did not end at a minimizer of R over the zero-loss set.",
        f"  found by: {cert.get('source', 'search')}",
        f"  replay: {cert.get('replay', '')}",
    ]


