r"""The one set of rules every verdict is decided by: the engine, ``ibtest verify`` and ``ibtest
shrink`` all judge through this module, and nothing else computes a margin, a floor or a fit.

**Verdicts** (:class:`Verdict`) and what a survival rests on (:class:`Grade`):

* ``falsified``: at least one witness beyond the margin *and* beyond R's evaluation noise;
* ``survives``: positive evidence and no witness. Its grade says what it rests on: ``certified``
  (the global argmin of R over Z(D) computed, θ∞ attains it), ``pairs`` (admissible pairs with
  distinct solutions in the variable R reads, on which R agreed), ``triples`` (an invariant or a
  bound checked on converged triples) or ``vacuous`` (R is constant on every point seen);
* ``unrefuted``: only a local search on Z(D) that found nothing (a lower bound, not support);
* ``inconclusive``: no power (no converged triple, identical pairs only, Z(D) a single point in the
  variable R reads, a gap inside R's own evaluation noise);
* ``error``: the hypothesis raised or returned NaN/inf.

**Sides.** A claim compares values of R (or C, or a bound) at a few points; each point is a
:class:`Side`: θ [P], R(θ) [k], ‖∇R(θ)‖, the measured error of θ (‖θ∞ − θ∞'‖ with θ∞' re-solved
at tighter settings, plus θ's distance to Z(D); 0 for a given point such as a witness θ') and R's
evaluation noise at θ (:func:`ibtest.judge.evaluation.noise`).

**Margin.** Two sides a, b differ beyond doubt when their gap exceeds

    margin = floor + safety · (‖∇R(θa)‖·err_a + ‖∇R(θb)‖·err_b) + noise_a + noise_b
    floor  = max(atol, rtol · max(|R_a|, |R_b|), ROUNDING · (‖∇R(θa)‖·‖θa‖ + ‖∇R(θb)‖·‖θb‖))

Every term scales with the problem (rtol·|R| with R, the rounding term with ‖∇R‖·‖θ‖, the error
term with R's sensitivity, the noise with R's own float64 error), so the same study scaled by any
factor gets the same verdicts when atol = 0. A gap beyond the margin without the noise but not with
it is reported as "inside R's evaluation noise", never as a refutation. A value that is not finite
is an error, never a survival.

**Fits.** θ fits D = (X, y, mask) run from θ0 when L(θ; D) ≤ fit_tol · s(D, θ0)
(:mod:`ibtest.solve.fit`) *and* its distance to Z(D), estimated by a Gauss–Newton step
‖J⁺ r(θ)‖ (or exactly on a model's polyhedral Z(D)), is at most ``dist_tol`` · max(‖θ‖, ‖θ0‖):
a loss threshold alone cannot see an ill-conditioned direction.

**Pairs** (which admissible pairs may refute a regularizer), by ``depends_on``: ``params`` every
admissible pair; ``init`` only pairs whose two sides share θ0; ``data`` none.

:class:`Rules` is built from a study (:meth:`Rules.from_study`) or from a certificate
(:meth:`Rules.from_certificate`: the file may only tighten the registry's floors).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean
from ibtest.plugin.specs import DEFAULT_FIT_TOL
from ibtest.solve import fit
from ibtest.solve.fit import DEFAULT_DIST_TOL

Tensor = torch.Tensor

#: multiple of float64 round-off in the rounding term of the floor
ROUNDING = 64 * torch.finfo(torch.float64).eps
#: the tool's default factor on the solver-error term of the margin (a file may only raise it)
DEFAULT_SAFETY = 10.0
#: a certificate's numeric solver budgets are capped at this multiple of the registered default
BUDGET_FACTOR = 10.0


class _Named(str, Enum):
    """A ``str`` enum that compares equal to, serializes as, and prints as its value."""

    def __str__(self) -> str:
        return self.value


class Verdict(_Named):
    """A member's verdict (compares equal to, serializes and prints as its value)."""

    FALSIFIED = "falsified"
    SURVIVES = "survives"
    UNREFUTED = "unrefuted"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class Grade(_Named):
    """What a survival rests on (see the module docstring)."""

    CERTIFIED = "certified"
    PAIRS = "pairs"
    TRIPLES = "triples"
    VACUOUS = "vacuous"


#: the verdicts a study may expect (``expect: survives`` is not met by ``unrefuted``)
EXPECTABLE = tuple(v.value for v in Verdict if v is not Verdict.ERROR)


@dataclass(frozen=True)
class Tolerance:
    """A member's tolerance floors: ``atol`` (absolute, 0 keeps verdicts scale-free) and ``rtol``
    (relative to |R|)."""

    atol: float
    rtol: float


@dataclass(frozen=True)
class Side:
    """One point a claim compares: θ [P], R(θ) [k] (k = 1 for a regularizer), ‖∇R(θ)‖, the measured
    error of θ (solver error plus distance to Z(D); 0 for a given point) and R's evaluation noise."""

    theta: Tensor
    R: Tensor
    grad: float
    err: float = 0.0
    noise: float = 0.0

    @property
    def value(self) -> float:
        """R(θ) as a float (the first component of an invariant)."""
        return float(self.R.reshape(-1)[0])


@dataclass(frozen=True)
class Judgement:
    """A gap against its margin: ``refutes`` when gap > margin + noise (and everything is finite);
    ``in_noise`` when the gap clears the margin but not R's evaluation noise."""

    gap: float
    margin: float
    noise: float
    scale: float = math.nan  # max |R| of the values compared: the gap relative to it is ``relative``

    @property
    def relative(self) -> float:
        """gap / max |R| (NaN without a scale)."""
        return self.gap / self.scale if self.scale > 0 else math.nan

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.gap, self.margin, self.noise))

    @property
    def refutes(self) -> bool:
        return self.finite and self.gap > self.margin + self.noise

    @property
    def in_noise(self) -> bool:
        return self.finite and self.margin < self.gap <= self.margin + self.noise

    @property
    def strength(self) -> float:
        """gap / (margin + noise): > 1 refutes; the closest call is the largest."""
        den = self.margin + self.noise
        if not self.finite:
            return -math.inf
        return self.gap / den if den > 0 else (math.inf if self.gap > 0 else 0.0)


@dataclass(frozen=True)
class SolverSettings:
    """The solver options of the first solve and of the re-solve that measures its error."""

    options: Mapping[str, Any]
    tightened: Mapping[str, Any]


@dataclass(frozen=True)
class Rules:
    """Tolerances, safety, the fit rule and the evidence needed for a survival (see the module
    docstring); ``notes`` say what a certificate asked for that the rules overrode."""

    safety: float = DEFAULT_SAFETY
    fit_tol: float = DEFAULT_FIT_TOL
    dist_tol: float = DEFAULT_DIST_TOL
    min_pairs: int = 1
    recheck: bool = True
    notes: tuple[str, ...] = field(default=())

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_study(cls, study: Any, fit_tol: float) -> Rules:
        """The rules of a validated study (``fit_tol``: the study's relative fit tolerance)."""
        v = study.verdict
        return cls(safety=float(v.safety), fit_tol=float(fit_tol), min_pairs=int(v.min_pairs), recheck=bool(v.recheck))

    @classmethod
    def from_certificate(cls, cert: Mapping[str, Any], default_fit_tol: float, where: str) -> Rules:
        """The rules a replay judges a certificate by: ``safety`` max(file, default), ``fit_tol``
        min(file, default); negative or non-finite values are bad input (:class:`UserError`)."""
        notes: list[str] = []
        safety = _nonneg(cert.get("safety"), "safety", where)
        if safety is not None and safety < DEFAULT_SAFETY:
            notes.append(f"safety {safety:.3g} in the file is below the tool's floor {DEFAULT_SAFETY:.3g}: "
                         f"using {DEFAULT_SAFETY:.3g}")
        fit_tol = _nonneg(cert.get("fit_tol"), "fit_tol", where)
        if fit_tol is not None and fit_tol > default_fit_tol:
            notes.append(f"fit_tol {fit_tol:.3g} in the file is looser than the tool's {default_fit_tol:.3g}: "
                         f"using {default_fit_tol:.3g}")
        return cls(safety=DEFAULT_SAFETY if safety is None else max(safety, DEFAULT_SAFETY),
                   fit_tol=default_fit_tol if fit_tol is None else min(fit_tol, default_fit_tol),
                   notes=tuple(notes))

    def tolerance_from_file(self, given: Mapping[str, Any], spec: Any, where: str) -> tuple[Tolerance, list[str]]:
        """A member's tolerance from a certificate's ``hypothesis`` block: max(file, registered)."""
        notes: list[str] = []
        out = {}
        for name in ("atol", "rtol"):
            default = float(getattr(spec, name))
            v = _nonneg(given.get(name), f"hypothesis.{name}", where)
            if v is not None and v < default:
                notes.append(f"{name} {v:.3g} in the file is below the tool's floor {default:.3g}: using {default:.3g}")
            out[name] = default if v is None else max(v, default)
        return Tolerance(**out), notes

    # -- fits ----------------------------------------------------------------------------------
    def check_fit(self, model: Any, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor) -> fit.FitCheck:
        """The fit rule (loss and distance to Z(D), :mod:`ibtest.solve.fit`) with its numbers."""
        return fit.check(model, theta, X, y, mask, theta0, self.fit_tol, self.dist_tol)

    def fits(self, model: Any, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor) -> Tensor:
        """bool [B]: θ [B, P] fits its dataset by the fit rule."""
        return self.check_fit(model, theta, X, y, mask, theta0).ok

    # -- judging -------------------------------------------------------------------------------
    def judge_pair(self, tol: Tolerance, a: Side, b: Side, path_noise: float = 0.0) -> Judgement:
        """A regularizer on an admissible pair: gap |R(θa) − R(θb)|; ``path_noise``: the error of
        that difference beyond the sides' own noise (:func:`ibtest.judge.evaluation.path_noise`)."""
        gap = abs(a.value - b.value)
        return Judgement(gap, self._margin(tol, a.R, b.R, a, b), a.noise + b.noise + path_noise,
                         max(abs(a.value), abs(b.value)))

    def judge_witness(self, tol: Tolerance, inf: Side, w: Side, path_noise: float = 0.0) -> Judgement:
        """A regularizer at θ∞ against a point θ' of its Z(D): gap R(θ∞) − R(θ') (signed)."""
        gap = inf.value - w.value
        return Judgement(gap, self._margin(tol, inf.R, w.R, inf, w), inf.noise + w.noise + path_noise,
                         max(abs(inf.value), abs(w.value)))

    def judge_triple(self, tol: Tolerance, s: Side, ref: Tensor, one_sided: bool, ref_noise: float = 0.0) -> Judgement:
        """An invariant (C(θ∞) against C(θ0) = ``ref``: max |ΔC|) or a bound (``one_sided``:
        max (B(θ∞) − bound)); the reference carries no solver error; ``ref_noise``: the noise of
        the reference and of the difference (path noise from θ0)."""
        diff = s.R.reshape(-1) - ref.reshape(-1).to(s.R.dtype)
        gap = float(diff.max() if one_sided else diff.abs().max())
        scale = max(float(s.R.abs().max()), float(ref.abs().max()))
        return Judgement(gap, self._margin(tol, s.R, ref, s, None), s.noise + ref_noise, scale)

    def _margin(self, tol: Tolerance, Ra: Tensor, Rb: Tensor, a: Side, b: Side | None) -> float:
        fl = floor(tol, Ra.reshape(1, -1), Rb.reshape(1, -1), torch.tensor([a.grad]), None if b is None else
                   torch.tensor([b.grad]), a.theta.reshape(1, -1), None if b is None else b.theta.reshape(1, -1))
        m = float(fl[0]) + self.safety * a.grad * a.err + (0.0 if b is None else self.safety * b.grad * b.err)
        return m if math.isfinite(m) else math.inf


def floor(tol: Tolerance, Ra: Tensor, Rb: Tensor, ga: Tensor | None = None, gb: Tensor | None = None,
          tha: Tensor | None = None, thb: Tensor | None = None) -> Tensor:
    """The tolerance floor of a gap between R_a and R_b, batched ([B] or [B, k] values, reduced over
    k): max(atol, rtol·max|R|, ROUNDING·(‖∇R_a‖‖θ_a‖ + ‖∇R_b‖‖θ_b‖)) [B]."""
    Ra2, Rb2 = _rows(Ra), _rows(Rb)
    scale = torch.maximum(Ra2.abs().amax(-1), Rb2.abs().amax(-1))
    out = torch.clamp(tol.rtol * scale, min=float(tol.atol))
    if ga is not None and tha is not None:
        rnd = ga * tha.norm(dim=-1)
        if gb is not None and thb is not None:
            rnd = rnd + gb * thb.norm(dim=-1)
        out = torch.maximum(out, ROUNDING * rnd)
    return out


def _rows(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1) if v.dim() else v.reshape(1, 1)


def _nonneg(value: Any, name: str, where: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: field {name}: expected a number, got {clean(repr(value))[:40]}") from None
    if not math.isfinite(v) or v < 0:
        raise UserError(f"{where}: field {name}: expected a finite number >= 0, got {v}")
    return v


# ------------------------------------------------------------------------------------------
# which admissible pairs may refute a regularizer
# ------------------------------------------------------------------------------------------
def eligible(depends_on: str, same_init: Tensor) -> Tensor:
    """Which admissible pairs may refute a regularizer with this dependence: bool like ``same_init``.

    ``params``: all; ``init``: those whose sides share θ0 (two inits give two different R);
    ``data``: none (R may differ across datasets; only a witness inside one Z(D) refutes it).
    """
    if depends_on == "params":
        return torch.ones_like(same_init, dtype=torch.bool)
    if depends_on == "init":
        return same_init.to(torch.bool).clone()
    return torch.zeros_like(same_init, dtype=torch.bool)


def pair_rule(depends_on: str) -> str:
    """The pair-validity rule in words (for reasons and ``verify``)."""
    return {"params": "any admissible pair", "init": "only admissible pairs that share θ0",
            "data": "no cross-dataset pair (a data-dependent R is refuted only inside one Z(D))"}[depends_on]


def pair_invalid(depends_on: str, theta0_a: Tensor, theta0_b: Tensor) -> str | None:
    """Why a pair is not valid evidence against a regularizer of this dependence (None: valid)."""
    same = torch.tensor([bool(torch.equal(theta0_a, theta0_b))])
    if bool(eligible(depends_on, same)[0]):
        return None
    if depends_on == "init":
        return ("the hypothesis depends on the init, and the two sides start from different theta0: "
                f"it may be refuted by {pair_rule(depends_on)}")
    return f"the hypothesis depends on the data: it may be refuted by {pair_rule(depends_on)}"


# ------------------------------------------------------------------------------------------
# solver settings from a certificate, capped by the registry
# ------------------------------------------------------------------------------------------
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def capped_solver_options(spec: Any, opts: dict[str, Any], where: str, path: str, notes: list[str]) -> dict[str, Any]:
    """A certificate's (already type-checked) solver options with the registry's floors: every
    ``*tol`` at most its default, every other positive numeric default (budgets, step sizes) at
    most ``BUDGET_FACTOR`` × it. What was changed is appended to ``notes``."""
    out = dict(opts)
    for key, opt in spec.options.items():
        d, v = opt.default, out.get(key)
        if not _is_num(d) or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if key.endswith("tol"):
            if not math.isfinite(v) or v < 0:
                raise UserError(f"{where}: field {path}.{key}: expected a finite number >= 0, got {v}")
            if v > d:
                notes.append(f"solver {key} {v:.3g} in the file is looser than the tool's {d:.3g}: using {d:.3g}")
                out[key] = d
        elif d > 0 and not v <= BUDGET_FACTOR * d:
            cap = type(d)(BUDGET_FACTOR * d)
            notes.append(f"solver {key} {v:.3g} in the file is beyond {BUDGET_FACTOR:g}x the default: using {cap:.3g}")
            out[key] = cap
    return out
