"""Limit certificates (``kind: limit``): a member's trend toward a limit of a swept scale.

The file holds the member, the swept path and the direction (``to``: "0" or "inf"), the verdict
(consistent or not the limit) with its fitted rate, and every judged value of the sweep: its
scale, whether it was refuted there, its relative gap, and (where refuted) the run's own
certificate, embedded whole. The top-level model, solver, θ0 and run ``a`` are those of the
embedded certificate nearest the limit (what the file's schema and ``ibtest show`` read first).

``ibtest verify`` replays every embedded certificate with its own claim kind (re-solving its runs
at tighter settings, :mod:`ibtest.cert.replay`), takes the re-solved relative gap (or the floor,
where a replay withdraws), and judges the trend again by :func:`ibtest.judge.limits.judge_limit`:
confirmed when it gives the file's verdict.
"""
from __future__ import annotations

import copy
import math
from typing import Any

from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean
from ibtest.cert.certificate import header_lines
from ibtest.cert.replay import Replay, VerifyResult, claim_kind, replay_context
from ibtest.cert.schema import FORMAT
from ibtest.judge.limits import CONSISTENT, NOT_THE_LIMIT, LimitPoint, LimitVerdict, judge_limit

KIND = "limit"


def _direction(to: str) -> float:
    return 0.0 if str(to) == "0" else math.inf


def build(verdict: LimitVerdict, path: str, certs: dict[float, dict[str, Any]]) -> dict[str, Any]:
    """The limit certificate of ``verdict`` (consistent or not the limit); ``certs``: the runs'
    own certificates (loaded dicts) by scale, for the refuted values."""
    refuted = [p for p in verdict.points if p.refuted and p.s in certs]
    if not refuted:
        raise ValueError(f"{verdict.label}: no refuted value with a certificate to embed")
    top = certs[refuted[-1].s]  # the refuted value nearest the limit
    arrow = "0" if verdict.direction == 0 else "inf"
    claim = (f"{verdict.label} is the limit of gradient flow's implicit bias as {path} -> {arrow}"
             if verdict.verdict == CONSISTENT else
             f"{verdict.label} is not the limit of gradient flow's implicit bias as {path} -> {arrow}")
    out: dict[str, Any] = {k: copy.deepcopy(top[k]) for k in ("hypothesis", "model", "solver", "theta0", "a", "fit_tol", "safety",
                                              "plugins", "versions") if k in top}
    out.update({
        "format": FORMAT, "kind": KIND, "claim": claim, "refutation": verdict.reason,
        "limit": {"path": path, "to": arrow}, "verdict": verdict.verdict, "rate": verdict.rate, "r2": verdict.r2,
        "floor_from": verdict.floor_from,
        "points": [{"s": p.s, "refuted": p.refuted, "g": p.g,
                    "certificate": certs.get(p.s) if p.refuted else None} for p in verdict.points],
    })
    return out


def replay(cert: dict[str, Any], rp: Replay) -> VerifyResult:
    """Re-solve every embedded run certificate and judge the trend again."""
    lim, points = cert.get("limit"), cert.get("points")
    if not isinstance(lim, dict) or not isinstance(points, list) or cert.get("verdict") not in (CONSISTENT, NOT_THE_LIMIT):
        raise UserError(f"{rp.where}: a limit certificate needs 'limit', 'points' and a verdict "
                        f"({CONSISTENT} or {NOT_THE_LIMIT})")
    direction = _direction(lim.get("to", "0"))
    rp.lines.append(f"  claimed: {clean(cert['verdict'])} as {clean(str(lim.get('path')))} -> {clean(str(lim.get('to')))}")
    new: list[LimitPoint] = []
    for k, p in enumerate(points):
        try:
            s, emb = float(p["s"]), p.get("certificate")
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{rp.where}: field points[{k}]: expected {{s, refuted, g, certificate}}") from None
        if not isinstance(emb, dict):
            new.append(LimitPoint(s, False, 0.0))
            rp.lines.append(f"  {s:g}: not refuted in the file (within the margin): kept at the floor")
            continue
        res = _replay_one(rp, emb, f"{rp.where}: points[{k}].certificate")
        j = res.judgement
        g = j.relative if j is not None and math.isfinite(j.relative) else 0.0
        new.append(LimitPoint(s, res.holds, g if res.holds else 0.0))
        rp.lines.append(f"  {s:g}: re-solved relative gap {g:.3g}, "
                        + ("refuted (CONFIRMED)" if res.holds else "withdrawn (at the floor)"))
    v = judge_limit(rp.spec.name, new, direction, select=False)
    rp.lines.append(f"  re-judged: {v.verdict}: {v.reason}")
    ok = v.verdict == cert["verdict"]  # a limit verdict may be "consistent": it is no refutation
    rp.lines.append("  limit verdict CONFIRMED" if ok else "  limit verdict WITHDRAWN")
    return rp.result(ok)


def _replay_one(rp: Replay, emb: dict[str, Any], where: str) -> VerifyResult:
    from ibtest.cert.schema import validate

    emb = validate(emb, where)
    if emb.get("kind") == KIND:
        raise UserError(f"{where}: a limit certificate cannot embed another one")
    if rp.registry is None:
        raise UserError(f"{where}: no registry to replay an embedded certificate")
    kind = claim_kind(rp.registry, rp.spec, emb, where)
    sub = replay_context(rp.registry, emb, where)
    return kind.replay(emb, sub)


def describe(cert: dict[str, Any]) -> list[str]:
    """``ibtest show`` of a limit certificate: the trend, value by value."""
    lim = cert.get("limit") or {}
    lines = header_lines(cert, "Limit verdict:") + [
        f"  limit: {lim.get('path')} -> {lim.get('to')}: {cert.get('verdict')}",
        f"  {cert.get('refutation', '')}",
        "  value          relative gap   refuted",
    ]
    for p in cert.get("points") or []:
        lines.append(f"  {p.get('s'):<13g}  {p.get('g'):<13.4g}  {'yes' if p.get('refuted') else 'no (within the margin)'}")
    if cert.get("rate") is not None:
        lines.append(f"  fitted rate: relative gap ~ scale^{cert['rate']:.3g} (R² {cert.get('r2') or 0:.3g})")
    lines.append(f"  replay: {cert.get('replay', '')}")
    return lines
