"""``ibtest shrink CERT``: reduce a pair (or witness) certificate to its core, the way the paper states its own.

A pair certificate refutes a regularizer member R with two runs (D_a, θ0_a, θ_a), (D_b, θ0_b, θ_b)
whose solutions fit each other's dataset and whose R differ by more than the margin. Shrinking
searches, by deterministic passes, for a *simpler* pair that refutes the *same member*:

* drop a data point (a point the two datasets share is dropped from both; the construction's
  added point is simplified like the rest), project onto the span of the data or drop a
  coordinate;
* θ0 → 0 (unless the model's σ'(0) convention makes 0 a stationary point); when the construction's
  added point was built for the flow from the old θ0, it is rebuilt for the flow from 0 by the
  registered ``blocking_point`` construction; else θ0 with one or two significant digits;
* rescale and round X, y toward small integers (then halves, then tenths, point by point);
  zero or decrement integer entries, divide by a common factor.

Every candidate of a pass is judged in ONE batched solve (both sides of every candidate, at the
certificate's solver settings and at the tightened ones, capped as ``ibtest verify`` caps them), by
the rules the engine and ``verify`` judge by (:mod:`ibtest.solve.rules`, through
:mod:`ibtest.cert.shrink_judge`): both sides converged at both settings, each solution fits its own
dataset and the other side's, the pair is valid for the member's ``depends_on``, and the gap
exceeds SLACK × (margin + noise) (SLACK = 2 leaves room for the replay's own re-solve).
Candidates are tried in a fixed order and the first that holds is kept, so the result depends
only on the input file. The loop stops at a fixed point (a round of all passes keeps nothing) or
when the budget of solves is spent.

A witness certificate (one run (D, θ0, θ∞) and θ' ∈ Z(D)) is shrunk by the same passes (no
rebuild); a candidate is kept when θ∞ re-solved at both settings converges and
:func:`ibtest.judge.witness.search` on the candidate's Z(D) finds θ' that fits D with
R(θ∞) − R(θ') > SLACK · (margin + noise).

Sizes are measured, not claimed: n (points of the larger dataset), d, the largest |coordinate| of
X, y, θ0 and the significant digits needed to write them, before and after.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ibtest.base.errors import UserError
from ibtest.base.jsonio import to_jsonable
from ibtest.base.outpath import writing
from ibtest.base.textsafe import clean
from ibtest.cert import certificate as certmod
from ibtest.cert.schema import load
from ibtest.cert.shrink_judge import DEFAULT_BUDGET, Case, Judge, NotRefuted, Outcome, case_from_cert, judge, make_judge
from ibtest.cert.shrink_passes import PASSES, valid

Tensor = torch.Tensor
#: the claim kinds a certificate of which can be shrunk
SHRINKABLE = ("pair", "witness")


# ------------------------------------------------------------------------------------------
def sizes(c: Case) -> dict[str, Any]:
    """n (points of the larger dataset), d, the largest |coordinate| of X, y, θ0, and digits: the most
    significant decimal digits any of them needs (shortest round-trip form)."""
    vals = torch.cat([c.X.flatten(), c.y, c.theta0.flatten()]).tolist()
    return {"n": int(c.sides.sum(-1).max()), "d": c.d, "points": c.m,
            "max_abs": clean_num(max((abs(v) for v in vals), default=0.0)),
            "digits": max((_digits(v) for v in vals), default=0),
            "integer": all(float(v).is_integer() for v in vals),
            "theta0_zero": bool((c.theta0 == 0).all())}


def clean_num(v: float) -> float | int:
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else v


def _digits(v: float) -> int:
    if v == 0:
        return 1
    mant = repr(abs(float(v))).split("e")[0].replace(".", "").lstrip("0").rstrip("0")
    if float(v).is_integer():
        mant = str(int(abs(v))).rstrip("0") or "0"
    return max(1, len(mant))


@dataclass
class ShrinkResult:
    cert: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    steps: list[str] = field(default_factory=list)
    solves: int = 0
    budget: int = 0
    fixed_point: bool = False


def shrink_cert(cert: dict[str, Any], source: str, digest: str, budget: int = DEFAULT_BUDGET,
                plugins: Sequence[str] = ()) -> ShrinkResult:
    """Shrink a loaded pair certificate; raises :class:`NotRefuted` if it does not hold to begin with."""
    J = make_judge(cert, budget, plugins)
    cur = case_from_cert(cert)
    if cur.theta0.shape[1] != J.n_params(cur.d):
        raise UserError(f"theta0 has {cur.theta0.shape[1]} entries, the model has {J.n_params(cur.d)} parameters")
    (res,) = judge(J, [cur])
    if res is None:
        raise NotRefuted("the refutation does not hold at tight settings: nothing to shrink")
    before = sizes(cur)
    steps: list[str] = []
    fixed = False
    seen = {cur.key()}
    while J.used < J.budget:
        changed = False
        for _name, gen in PASSES:
            while J.used < J.budget:
                cands = [(desc, c) for desc, c in gen(cur, J) if valid(c) and c.key() not in seen]
                room = (J.budget - J.used) // 4
                if not cands or room <= 0:
                    break
                cands = cands[:room]
                outs = judge(J, [c for _, c in cands])
                for (_, c) in cands:
                    seen.add(c.key())
                hit = next(((k, o) for k, o in enumerate(outs) if o is not None), None)
                if hit is None:
                    break
                k, res = hit
                desc, cur = cands[k]
                steps.append(desc)
                changed = True
        if not changed:
            fixed = J.used < J.budget
            break
    after = sizes(cur)
    out = build_cert(cert, cur, res, J, source, digest, before, after, steps, fixed)
    return ShrinkResult(out, before, after, steps, J.used, J.budget, fixed)


def build_cert(cert: dict[str, Any], c: Case, o: Outcome, J: Judge, source: str, digest: str,
               before: dict, after: dict, steps: list[str], fixed: bool) -> dict[str, Any]:
    """An ordinary pair certificate for case ``c`` (judged as ``o``), plus ``shrunk_from`` and ``shrink``."""
    new = {k: v for k, v in cert.items() if k not in ("replay", "shrunk_from", "shrink") and v is not None}
    if J.witness:
        _witness_fields(new, cert, c, o, J)
    else:
        _pair_fields(new, cert, c, o)
    new["versions"] = certmod.versions()
    new["shrunk_from"] = {"path": source, "sha256": digest}
    new["shrink"] = {"passes": steps, "solves": J.used, "budget": J.budget, "solver_calls": J.calls,
                     "fixed_point": fixed, "before": before, "after": after}
    return new


def _label(cert: dict, name: str) -> str:
    label = str(cert[name].get("label", name))
    return label if label.endswith(" (shrunk)") else f"{label} (shrunk)"


def _witness_fields(new: dict, cert: dict, c: Case, o: Outcome, J: Judge) -> None:
    X, y = c.side(0)
    side = dict(cert["a"])
    side.update({"label": _label(cert, "a"), "theta0": c.theta0[0].tolist(), "X": X.tolist(), "y": y.tolist(),
                 "theta": o.theta[0].tolist(), "loss": float(o.loss[0]), "R": float(o.R[0]),
                 "measured_error": float(o.err[0]), "n": int(len(y))})
    new["a"] = side
    new["theta0"] = c.theta0[0].tolist()
    tw = o.theta[1:2]
    thr = float(J.rules.check_fit(J.model, tw, X[None], y[None], torch.ones_like(y)[None], c.theta0[:1]).threshold[0])
    new["witness"] = {"theta": tw[0].tolist(), "loss": float(o.loss[1]), "fit_threshold": thr, "R": float(o.R[1]),
                      "predictor": J.model.predictor(tw)[0].tolist()}
    new["gap"], new["margin"], new["noise"] = o.gap, o.margin, o.noise
    new["refutation"] = (f"theta' also fits every data point of D (loss {float(o.loss[1]):.3g} <= {thr:.3g}) and has a "
                         f"smaller R: R(theta_inf) - R(theta') = {o.gap:.6g} > margin {o.margin:.6g}, so theta_inf "
                         f"is not a minimizer of R on Z(D)")


def _pair_fields(new: dict, cert: dict, c: Case, o: Outcome) -> None:
    lo, hi = ("a", "b") if float(o.R[0]) < float(o.R[1]) else ("b", "a")
    for s, name in enumerate(("a", "b")):
        X, y = c.side(s)
        side = dict(cert[name])
        side.update({"label": _label(cert, name), "theta0": c.theta0[s].tolist(),
                     "X": X.tolist(), "y": y.tolist(), "theta": o.theta[s].tolist(), "loss": float(o.loss[s]),
                     "R": float(o.R[s]), "measured_error": float(o.err[s]), "n": int(len(y))})
        new[name] = side
    new["theta0"] = c.theta0[0].tolist()
    new["gap"], new["margin"], new["noise"] = o.gap, o.margin, o.noise
    new["cross_loss"] = {"theta_a_on_D_b": float(o.cross[0]), "theta_b_on_D_a": float(o.cross[1])}
    new["refutation"] = (f"theta_{lo} fits D_{hi} (cross-loss below fit_tol) and R(theta_{lo}) is lower than "
                         f"R(theta_{hi}) by {o.gap:.6g} > margin {o.margin:.6g}: theta_{hi} is not a minimizer on D_{hi}")


def shrink_file(path: str | Path, out: str | Path | None = None, budget: int = DEFAULT_BUDGET,
                plugins: Sequence[str] = (), check: bool = True) -> tuple[Path, ShrinkResult]:
    """Shrink the certificate at ``path``, write it to ``out`` (default: ``<stem>.shrunk.json`` next to
    it) and, with ``check``, confirm it with ``ibtest verify``'s replay (else keep the input's case)."""
    p = Path(path)
    if budget < 4:
        raise UserError(f"--budget {budget}: at least 4 solves are needed to re-judge one candidate")
    cert = load(p)
    witness = cert.get("kind") == "witness"
    if cert.get("kind") not in SHRINKABLE:
        return _shrink_by_kind(p, cert, out, budget, plugins, check)
    for s in (("a",) if witness else ("a", "b")):
        if s not in cert:
            raise UserError(f"certificate {clean(str(p))}: required field {s!r} is missing")
        for key in ("X", "y", "theta"):
            if key not in cert[s]:
                raise UserError(f"certificate {clean(str(p))}: required field {s}.{key!r} is missing")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    try:
        res = shrink_cert(cert, str(path), digest, budget, plugins)
    except (ValueError, TypeError, IndexError, KeyError, RuntimeError) as exc:
        raise UserError(f"certificate {clean(str(p))}: cannot be shrunk: {type(exc).__name__}: {exc}") from None
    dest = Path(out) if out else p.with_name(p.stem + ".shrunk.json")
    with writing(dest, "the shrunk certificate"):
        certmod.write(res.cert, dest)
    if check and not _verify(dest, plugins):
        raise NotRefuted(f"the shrunk certificate {dest} did not pass 'ibtest verify' (removed)")
    return dest, res


def _shrink_by_kind(p: Path, cert: dict[str, Any], out: str | Path | None, budget: int, plugins: Sequence[str],
                    check: bool) -> tuple[Path, ShrinkResult]:
    """A certificate of a claim kind that shrinks its own (``ClaimKind.shrink``, e.g. ``no_fit``)."""
    from ibtest.base.guard import plugin_call
    from ibtest.cert.replay import registered_kind
    from ibtest.plugin.manager import load_registry

    kind = registered_kind(load_registry(list(plugins)), cert, f"certificate {clean(str(p))}")
    if kind.shrink is None:
        raise UserError(f"certificate {clean(str(p))}: shrinking supports pair and witness certificates and claim "
                        f"kinds that shrink their own; this one is a {clean(str(cert.get('kind')))} certificate")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    res = plugin_call(kind.shrink, cert, str(p), digest, budget, list(plugins))
    dest = Path(out) if out else p.with_name(p.stem + ".shrunk.json")
    certmod.write(res.cert, dest)
    if check and not _verify(dest, plugins):
        raise NotRefuted(f"the shrunk certificate {dest} did not pass 'ibtest verify' (removed)")
    return dest, res


def _verify(path: Path, plugins) -> bool:
    from ibtest.cert.replay import verify

    ok = bool(verify(path, list(plugins)).holds)
    if not ok:
        path.unlink()
    return ok


def fraction_text(v: float, max_den: int = 1000) -> str:
    """v as an exact small rational p/q when the float is that rational within rounding
    (|v − p/q| ≤ 8 ε·max(1, |v|)), else v to 12 significant digits."""
    if not math.isfinite(v):
        return str(v)
    f = Fraction(v).limit_denominator(max_den)
    if abs(float(f) - v) <= 8 * 2.0**-52 * max(1.0, abs(v)):
        return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
    return f"{v:.12g}"


def dumps(cert: dict[str, Any]) -> str:
    return json.dumps(to_jsonable(cert), indent=1)


def _size_text(s: dict[str, Any]) -> str:
    return (f"n = {s['n']}, d = {s['d']}, max |coordinate| = {s['max_abs']}, digits = {s['digits']}"
            f"{', integer data' if s['integer'] else ''}{', theta0 = 0' if s['theta0_zero'] else ''}")


def summary(dest: Path, res: ShrinkResult) -> list[str]:
    """What ``ibtest shrink`` prints: sizes before and after, passes, budget used."""
    return [f"shrunk certificate written to {dest}",
            f"  before: {_size_text(res.before)}",
            f"  after:  {_size_text(res.after)}",
            f"  {len(res.steps)} step(s) kept: {'; '.join(res.steps) or 'none'}",
            f"  solves used: {res.solves} of a budget of {res.budget}"
            + (" (fixed point reached)" if res.fixed_point else " (budget spent before a fixed point)"),
            f"  confirmed by: ibtest verify {dest}"]
