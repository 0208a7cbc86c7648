"""Witness certificates (``kind: witness``): one triple (D, θ0, θ∞) and a point θ' of its
zero-loss set with a smaller R. Built, described and drawn here (``certificate.py``, ``show.py``
and ``plots.py`` dispatch to this module on ``kind == "witness"``); ``ibtest verify`` replays it in
:func:`ibtest.cert.replay.verify`, by the registry's rules like every certificate.

The file holds D = (X, y) (real points only), θ0, θ∞ (re-solved at tightened settings) with the
solver and its settings, θ', loss(θ') and the fit threshold, R(θ∞), R(θ'), the gap and margin.

The replay trusts only the data: it re-solves θ∞ from D and θ0 at settings tighter than the
file's, measures its error against the file's θ∞, re-checks that θ' fits D with the tool's own
fit rule (:func:`ibtest.solve.fit.fits`, fit_tol no looser than the tool's default) and that
R(θ∞) − R(θ') exceeds the margin of :func:`ibtest.judge.evaluation.margin` (tolerances no looser than
the registered hypothesis's). The refutation holds (exit 0) only if all of that holds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ibtest.base.jsonio import encode_float, tensor_to_list
from ibtest.solve import fit

if TYPE_CHECKING:
    from ibtest.judge.verdicts import MemberResult
    from ibtest.solve.batch import Triples
    from ibtest.solve.engine import RunContext

KIND = "witness"


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def build(ctx: RunContext, t: Triples, member: MemberResult, options_tight: dict[str, Any],
          base: dict[str, Any]) -> dict[str, Any]:
    """A witness certificate from a member falsified by a search witness (``Evidence.kind ==
    "witness"``: a = the triple, theta_a = re-solved θ∞, theta_b = θ'). ``base`` holds the
    fields every certificate shares (format, hypothesis, model, solver, versions ...)."""
    from ibtest.cert.certificate import _side

    e = member.evidence
    if e is None:
        raise ValueError(f"{member.label}: no evidence to certify")
    if e.theta_a is None or e.theta_b is None:
        raise ValueError(f"{member.label}: the witness evidence holds no theta_inf and theta' to certify")
    theta_inf, theta_w = e.theta_a, e.theta_b
    i = e.a
    m = ctx.model
    sl = slice(i, i + 1)
    loss_inf = float(m.loss(theta_inf[None], t.X[sl], t.y[sl], t.mask[sl])[0])
    loss_w = float(m.loss(theta_w[None], t.X[sl], t.y[sl], t.mask[sl])[0])
    thr = float(fit.fit_threshold(m, t.X[sl], t.y[sl], t.mask[sl], t.theta0[sl], ctx.fit_tol)[0])
    doc = member.spec.doc or member.label
    out = dict(base)
    out.update({
        "kind": KIND,
        "claim": f"gradient flow converges to argmin {member.label} over the zero-loss set",
        "refutation": (f"theta' also fits every data point of D (loss {loss_w:.3g} <= {thr:.3g}) and has a smaller "
                       f"{doc}: R(theta_inf) - R(theta') = {e.gap:.6g} > margin {e.margin:.6g}, so theta_inf is not "
                       f"a minimizer of R on Z(D)"),
        "source": e.source,
        "a": _side(t, i, theta_inf, loss_inf, e.Ra, e.err_a),
        "witness": {"theta": tensor_to_list(theta_w), "loss": loss_w, "fit_threshold": thr, "R": encode_float(e.Rb),
                    "predictor": tensor_to_list(m.predictor(theta_w[None])[0])},
    })
    return out


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
        f"    loss = {side['loss']:.3g}, R(theta_inf) = {side['R']}, measured solver error = {side['measured_error']:.3g}",
        f"  witness theta' = {w['theta']}",
        f"    loss = {w['loss']:.3g} (fits D: at most {w['fit_threshold']:.3g}), R(theta') = {w['R']}",
        f"  In words: this point also fits every data point and has a smaller {what}",
        f"  (by {cert['gap']:.6g}, more than the margin {cert['margin']:.6g}), so gradient flow did not",
        "  end at a minimizer of R over the zero-loss set.",
        f"  found by: {cert.get('source', 'search')}",
        f"  replay: {cert.get('replay', '')}",
    ]
