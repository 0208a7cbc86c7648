r"""Verdicts about limits: is a member's gap going to 0 as the swept scale goes to its limit?

Theorists' statements about small initialization are limits ("ℓ1 as α → 0", "the minimum
variation norm as the init scale → 0"); at any fixed scale such an R is, strictly, refuted by a
small gap. A study that sweeps a scale s (``sweep: {path: init.scale, values: [...]}``) can declare
``limit: {path: init.scale, to: 0}`` (or ``.inf``, or both); for each member and direction this
module judges the trend of its relative gap

    g(s) = gap / max(|R_a|, |R_b|)          (the refuting evidence of the run at scale s)

on the values nearest the limit (the half of the sweep on that side, at least 3 values):

* a value where the member is not refuted is at the **floor**: its gap is within the margin (the
  solver error and the tolerances), and only bounds g (it is never fitted);
* the refuted values are fitted by least squares, log g = k·log s + c (a power law: the rate
  toward the limit is r = k for s → 0, −k for s → ∞), and log g = −q·log|log s| + c (a
  logarithmic law, g ~ 1/|log s|^q: small-init flows often converge this slowly, their alignment
  phase lasting a time ~ log(1/s)).

The verdict (:class:`LimitVerdict`):

* **consistent** in the limit: g decreases monotonically toward the limit at a power rate
  r ≥ RATE_MIN, or at a logarithmic rate q ≥ LOG_RATE_MIN with a fit of R² ≥ LOG_R2 (with its
  fit), or falls to the floor (refuted far from the limit, not near it), or the member is not
  refuted at any value near the limit;
* **not the limit**: g is refuted near the limit and does not fall (g nearest the limit at least
  BOUNDED × g farthest from it, r < RATE_MIN), or the member is refuted near the limit after being
  at the floor farther from it;
* **inconclusive**: too few values, or a trend that is neither (non-monotone).

The same rule judges the replay of a limit certificate (:mod:`ibtest.cert.limit_cert`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: the fewest values a trend is judged on
MIN_POINTS = 3
#: the least rate r (g ~ s^r toward the limit) called convergence
RATE_MIN = 0.25
#: g nearest the limit at least this fraction of g farthest from it: bounded away from 0
BOUNDED = 0.5
#: the least logarithmic rate q (g ~ 1/|log s|^q) called convergence, and the fit it needs
LOG_RATE_MIN, LOG_R2 = 0.5, 0.9

CONSISTENT, NOT_THE_LIMIT, INCONCLUSIVE = "consistent", "not_the_limit", "inconclusive"


@dataclass(frozen=True)
class LimitPoint:
    """One run of the sweep for one member: the scale ``s``, whether the member was refuted there
    (``refuted``), and g: the relative gap when refuted, else its upper bound at the floor
    ((margin + noise) / |R|, or 0 for a certified survival)."""

    s: float
    refuted: bool
    g: float
    verdict: str = ""


@dataclass
class LimitVerdict:
    """A member's verdict about one limit of the sweep."""

    label: str
    direction: float  # 0.0 or inf
    verdict: str
    reason: str
    points: list[LimitPoint] = field(default_factory=list)  # the values judged, farthest from the limit first
    rate: float | None = None  # r: g ~ s^r toward the limit (fitted on the refuted values)
    r2: float | None = None  # the fit's R²
    log_rate: float | None = None  # q: g ~ 1/|log s|^q toward the limit
    log_r2: float | None = None
    law: str | None = None  # the law a convergence was judged by: "power" or "log"
    floor_from: float | None = None  # the scale from which on the gap is within the margin
    expect: str | None = None
    certificate: str | None = None

    @property
    def held(self) -> bool | None:
        return None if self.expect is None else self.expect == self.verdict

    @property
    def toward(self) -> str:
        return "0" if self.direction == 0 else "inf"

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "to": self.toward, "verdict": self.verdict, "reason": self.reason,
                "rate": self.rate, "r2": self.r2, "log_rate": self.log_rate, "log_r2": self.log_r2, "law": self.law,
                "floor_from": self.floor_from, "expect": self.expect,
                "held": self.held, "certificate": self.certificate,
                "points": [{"s": p.s, "refuted": p.refuted, "g": p.g, "verdict": p.verdict} for p in self.points]}


def nearest(points: Sequence[LimitPoint], direction: float) -> list[LimitPoint]:
    """The values a trend toward ``direction`` is judged on, farthest from the limit first: the half
    of the sweep on that side (at least MIN_POINTS)."""
    ordered = sorted(points, key=lambda p: p.s, reverse=direction == 0)  # toward the limit
    k = max(MIN_POINTS, math.ceil(len(ordered) / 2))
    return ordered[-k:]


def fit_rate(points: Sequence[LimitPoint], direction: float) -> tuple[float, float]:
    """(r, R²) of log g = k·log s + c by least squares (r = k toward 0, −k toward ∞)."""
    return _fit([math.log(p.s) for p in points], [math.log(p.g) for p in points], direction == 0)


def fit_log_rate(points: Sequence[LimitPoint]) -> tuple[float, float] | None:
    """(q, R²) of log g = −q·log|log s| + c (g ~ 1/|log s|^q), or None when some s is within a
    factor e of 1 (|log s| ≤ 1: no logarithmic scale there)."""
    if any(abs(math.log(p.s)) <= 1 for p in points):
        return None
    return _fit([math.log(abs(math.log(p.s))) for p in points], [math.log(p.g) for p in points], False)


def _fit(xs: list[float], ys: list[float], positive: bool) -> tuple[float, float]:
    """(k or −k, R²) of the least-squares line y = k·x + c."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    k = sxy / sxx if sxx > 0 else 0.0
    ss = sum((y - my) ** 2 for y in ys)
    res = sum((y - (my + k * (x - mx))) ** 2 for x, y in zip(xs, ys))
    r2 = 1.0 - res / ss if ss > 0 else 1.0
    return (k if positive else -k), r2


def judge_limit(label: str, points: Sequence[LimitPoint], direction: float, select: bool = True) -> LimitVerdict:
    """The verdict about ``label``'s trend toward ``direction`` (0 or inf) (see the module docstring).
    ``select``: judge the values nearest the limit (a sweep's); False: exactly ``points`` (a
    certificate's, already selected), ordered toward the limit."""
    arrow = "0" if direction == 0 else "∞"
    finite = [p for p in points if p.s > 0 and math.isfinite(p.s)]
    use = nearest(finite, direction) if select else sorted(finite, key=lambda p: p.s, reverse=direction == 0)
    out = LimitVerdict(label, direction, INCONCLUSIVE, "", use)
    if len(use) < MIN_POINTS:
        out.reason = f"too few swept values toward {arrow} ({len(use)} < {MIN_POINTS})"
        return out
    refuted = [p for p in use if p.refuted and p.g > 0]
    at_floor = [p for p in use if not p.refuted]
    if not refuted:
        out.verdict = CONSISTENT
        out.floor_from = use[0].s
        out.reason = (f"not refuted at any of the {len(use)} values nearest {arrow} (the gap is within the margin: "
                      f"the solver-error and tolerance floor)")
        return out
    # the refuted values must come first (farther from the limit), the floor after
    first_floor = next((i for i, p in enumerate(use) if not p.refuted), None)
    if first_floor is not None and any(p.refuted for p in use[first_floor:]):
        out.verdict = NOT_THE_LIMIT
        near = [p for p in use[first_floor:] if p.refuted][-1]
        out.reason = (f"refuted near the limit (relative gap {near.g:.3g} at {near.s:g}) after being within the "
                      f"margin farther from it: the gap does not go to 0")
        return out
    if at_floor:
        out.floor_from = at_floor[0].s
    if len(refuted) >= 2:
        out.rate, out.r2 = fit_rate(refuted, direction)
        lq = fit_log_rate(refuted)
        if lq is not None:
            out.log_rate, out.log_r2 = lq
    gs = [p.g for p in refuted]
    monotone = all(b < a for a, b in zip(gs, gs[1:]))
    floor_text = (f"; from {out.floor_from:g} on the gap is within the margin (the solver-error floor: not fitted)"
                  if out.floor_from is not None else "")
    if at_floor and monotone:
        out.verdict = CONSISTENT
        rate = f" at rate ~ scale^{out.rate:.2f} (R² {out.r2:.2f})" if out.rate is not None else ""
        out.reason = f"relative gap falls from {gs[0]:.3g} to the margin toward {arrow}{rate}{floor_text}"
    elif monotone and out.rate is not None and out.rate >= RATE_MIN:
        out.verdict, out.law = CONSISTENT, "power"
        out.reason = (f"relative gap → 0 toward {arrow} at rate ~ scale^{out.rate:.2f} (R² {out.r2:.2f}), from "
                      f"{gs[0]:.3g} to {gs[-1]:.3g}")
    elif (monotone and len(refuted) >= MIN_POINTS and out.log_rate is not None and out.log_rate >= LOG_RATE_MIN
          and out.log_r2 is not None and out.log_r2 >= LOG_R2):
        out.verdict, out.law = CONSISTENT, "log"
        out.reason = (f"relative gap → 0 toward {arrow} at a logarithmic rate ~ 1/|log scale|^{out.log_rate:.2f} "
                      f"(R² {out.log_r2:.2f}; power-law rate only {out.rate:.2f}), from {gs[0]:.3g} to {gs[-1]:.3g}")
    elif gs[-1] >= BOUNDED * gs[0] and (out.rate is None or out.rate < RATE_MIN):
        out.verdict = NOT_THE_LIMIT
        rate = f" (rate {out.rate:.2f}, R² {out.r2:.2f})" if out.rate is not None else ""
        out.reason = (f"relative gap bounded away from 0 toward {arrow}: {gs[0]:.3g} to {gs[-1]:.3g}{rate}"
                      f"{floor_text}")
    else:
        out.reason = (f"the relative gap neither falls steadily nor stays bounded toward {arrow} "
                      f"({', '.join(f'{g:.3g}' for g in gs)})")
    return out


def point_of(member: Any, s: float) -> LimitPoint | None:
    """The :class:`LimitPoint` of a run's :class:`~ibtest.judge.records.MemberResult` at scale s:
    refuted (falsified), or at the floor (it survived: certified, on pairs or triples, or a local
    search found nothing); None where the run says nothing (inconclusive, error: no converged
    triple, no power), which is no evidence either way."""
    ev = member.evidence
    scale = max(abs(ev.Ra), abs(ev.Rb)) if ev is not None else 0.0
    if member.verdict == "falsified":
        return LimitPoint(s, True, ev.gap / scale, str(member.verdict)) if ev is not None and scale > 0 else None
    if member.verdict not in ("survives", "unrefuted"):
        return None
    if ev is not None and scale > 0 and member.grade != "certified":
        return LimitPoint(s, False, min(abs(ev.gap), ev.margin + ev.noise) / scale, str(member.verdict))
    return LimitPoint(s, False, 0.0, str(member.verdict))
