"""Pair certificates (``kind: pair``): two runs from one θ0 (or two θ0 on one dataset, for a
``params`` hypothesis), each solution fitting the other's dataset, rated apart by R.

The file holds both datasets, θ0 of each side, both solutions (re-solved at tightened settings),
their losses, cross-losses and R values, the gap, margin and noise, the solver and its settings.
``ibtest verify`` re-solves both runs from the data alone and judges the pair by
:meth:`ibtest.solve.rules.Rules.judge_pair`, after the pair rule of the registered hypothesis's
``depends_on`` (:func:`ibtest.solve.rules.pair_invalid`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean
from ibtest.cert.certificate import field_text, header_lines, loss_at, side_fields
from ibtest.cert.replay import Replay, VerifyResult
from ibtest.judge import evaluation as ev_mod
from ibtest.solve.rules import ROUNDING, Judgement, Tolerance, pair_invalid

if TYPE_CHECKING:
    from ibtest.judge.records import Evidence, MemberResult
    from ibtest.solve.batch import Triples
    from ibtest.solve.engine import RunContext


def fields(ctx: RunContext, t: Triples, member: MemberResult, ev: Evidence) -> dict[str, Any]:
    """The pair's part of a certificate: claim, refutation, both runs, cross-losses."""
    a, b = ev.a, ev.b
    theta_b = ev.theta_b
    if b is None or theta_b is None:
        raise ValueError(f"{member.label}: the pair evidence holds no theta_b to certify")
    theta_a = ev.theta_a
    lo, hi = ("a", "b") if ev.Ra < ev.Rb else ("b", "a")
    return {
        "claim": f"gradient flow converges to argmin {member.label} over the zero-loss set",
        "refutation": (f"theta_{lo} fits D_{hi} (cross-loss below fit_tol) and R(theta_{lo}) is lower than "
                       f"R(theta_{hi}) by {ev.gap:.6g} > margin {ev.margin:.6g}: theta_{hi} is not a minimizer on D_{hi}"),
        "source": ev.source,
        "a": side_fields(t, a, theta_a, loss_at(ctx, t, theta_a, a), ev.side_a),
        "b": side_fields(t, b, theta_b, loss_at(ctx, t, theta_b, b), ev.side_b),  # type: ignore[arg-type]
        "cross_loss": {"theta_a_on_D_b": loss_at(ctx, t, theta_a, b), "theta_b_on_D_a": loss_at(ctx, t, theta_b, a)},
    }


def replay(cert: dict[str, Any], rp: Replay) -> VerifyResult:
    """Confirmed only if the pair is valid for the hypothesis's dependence, both runs re-solved at
    tight settings converge and fit, each fits the other's dataset, and the gap beats the margin."""
    D = rp.data
    if "b" not in cert:
        raise UserError(f"{rp.where}: a pair certificate needs two runs: side 'b' is missing")
    _stored(cert, rp)
    why = pair_invalid(rp.spec.depends_on, D.theta0[0], D.theta0[1])
    if why:
        rp.lines.append(f"  pair not valid: {why}")
        return rp.result(rp.verdict(False))
    theta, status, err, lines = rp.resolve()
    rp.lines += lines
    if not all(s == 0 for s in status):
        return rp.result(rp.verdict(False))
    cross = rp.fit(theta, [1, 0])
    rp.lines.append(f"  cross-fit: L(theta_a; D_b) = {float(cross.loss[0]):.3g} (fits at <= "
                    f"{float(cross.threshold[0]):.3g}), L(theta_b; D_a) = {float(cross.loss[1]):.3g} "
                    f"(fits at <= {float(cross.threshold[1]):.3g})")
    if not bool(cross.ok.all()):
        return rp.result(rp.verdict(False))

    def judge() -> tuple[Judgement, str]:
        a, b, pn = rp.compare(theta, [0, 1], err)
        j = rp.rules.judge_pair(rp.tol, a, b, pn)
        return j, (f"  R(theta_a) = {a.value:.12g}, R(theta_b) = {b.value:.12g}, |gap| = {j.gap:.3g}, "
                   f"margin = {j.margin:.3g}, R's evaluation noise = {j.noise:.3g}")

    return rp.result(rp.judged("the re-solved solutions", judge))


def _stored(cert: dict[str, Any], rp: Replay) -> None:
    """The file's own numbers recomputed at its θ (R at each side, the gap, losses, cross-losses)."""
    D = rp.data
    try:
        R = rp.values(D.theta, [0, 1])
    except ev_mod.NonFiniteValue as exc:
        rp.lines.append(f"  at the file's own theta: {clean(exc)} (the stored numbers cannot be checked)")
        return
    rnd = [ROUNDING * abs(float(R[k, 0])) for k in range(2)]
    own = rp.fit(D.theta, [0, 1])
    cross = rp.fit(D.theta, [1, 0])
    checks: list[tuple[str, Any, float, float, float]] = [
        (f"R(theta_{s})", cert[s].get("R"), float(R[k, 0]), 1e-9, rnd[k]) for k, s in enumerate("ab")]
    checks.append(("gap", cert.get("gap"), abs(float(R[0, 0] - R[1, 0])), 1e-9, sum(rnd)))
    checks += [(f"loss of side {s}", cert[s].get("loss"), float(own.loss[k]), 1e-6, 1e-3 * float(own.threshold[k]))
               for k, s in enumerate("ab")]
    errs = [float(cert[s].get("measured_error") or 0.0) for s in "ab"]
    file_tol = Tolerance(float(cert["hypothesis"].get("atol") or rp.tol.atol),
                         float(cert["hypothesis"].get("rtol") or rp.tol.rtol))
    file_rules = replace(rp.rules, safety=float(cert.get("safety") or rp.rules.safety))
    a, b, pn = rp.compare(D.theta, [0, 1], errs)
    checks.append(("margin", cert.get("margin"), file_rules.judge_pair(file_tol, a, b, pn).margin, 1e-6, 0.0))
    cl = cert.get("cross_loss") or {}
    checks += [(f"cross_loss {key}", cl.get(key), float(cross.loss[k]), 1e-6, 1e-3 * float(cross.threshold[k]))
               for k, key in enumerate(("theta_a_on_D_b", "theta_b_on_D_a"))]
    rp.stored(checks)


def describe(cert: dict[str, Any]) -> list[str]:
    """``ibtest show`` of a pair certificate (a validated, cleaned dict), in words."""
    same0 = all((cert[s].get("theta0") or cert["theta0"]) == cert["theta0"] for s in ("a", "b"))
    lines = header_lines(cert) + [f"  theta0 = {cert['theta0']}" + ("" if same0 else " (side a; the sides differ)")]
    for s in ("a", "b"):
        lines += side_lines(cert, s)
    if cert.get("cross_loss"):
        cl = cert["cross_loss"]
        lines.append(f"  cross-fit: L(theta_a; D_b) = {field_text(cl['theta_a_on_D_b'])}, "
                     f"L(theta_b; D_a) = {field_text(cl['theta_b_on_D_a'])}")
    lines += [f"  {cert.get('refutation', '')}", f"  replay: {cert.get('replay', '')}",
              "  (numbers as stored in the file: 'ibtest verify' re-solves and judges them)"]
    return lines


def side_lines(cert: dict[str, Any], s: str) -> list[str]:
    """A run of a certificate in lines: its points, θ0 (when it differs), θ and what was measured."""
    side = cert[s]
    return [
        f"  dataset {s} ({side.get('label', '')}):",
        *[f"    x = {x}, y = {y}" for x, y in zip(side["X"], side["y"])],
        *([f"    theta0 of this side = {side['theta0']}"] if side.get("theta0") not in (None, cert["theta0"]) else []),
        f"    theta_{s} = {side['theta']}",
        f"    loss = {field_text(side.get('loss'))}, R = {field_text(side.get('R'), '')}, "
        f"measured solver error = {field_text(side.get('measured_error'))}",
    ]



