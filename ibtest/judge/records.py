"""The records of judging: a member's verdict (:class:`MemberResult`), the evidence it rests on
(:class:`Evidence`), what one claim kind found (:class:`Finding`), a member's run-wide counts
(:class:`MemberCounts`), its witness-search totals (:class:`SearchTotals`), and the solver-error
meter (:class:`ErrorMeter`).

Shapes: a table of T triples holds θ [T, P]; R is [T] (a regularizer) or C [T, k] (an invariant).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ibtest.judge import evaluation as ev_mod
from ibtest.plugin.specs import Hypothesis, HypothesisContext
from ibtest.solve.batch import Triples
from ibtest.solve.engine import RunContext, solve
from ibtest.solve.rules import Grade, Judgement, Side, Tolerance, Verdict
from ibtest.study.typed import HypothesisUse

Tensor = torch.Tensor
RECHECK_TOP = 4  # candidate pairs (or triples) re-solved per member and claim kind


@dataclass
class Evidence:
    """What a verdict rests on: the strongest re-checked candidate of one claim kind (refuting, or
    the closest call). ``a``/``b``: table positions of the triples (``b`` None for one triple; a
    witness has ``b == a`` and ``side_b`` the point θ' of Z(D)). ``ref``: an invariant's C(θ0) or
    a bound's value. ``rechecked``: the sides are the tight re-solves (else the first solutions)."""

    kind: str
    a: int
    b: int | None
    side_a: Side
    side_b: Side | None
    judgement: Judgement
    source: str
    ref: Tensor | None = None
    rechecked: bool = True
    label: str = "gap"  # how a report names the gap (its claim kind's label)

    @property
    def gap(self) -> float:
        return self.judgement.gap

    @property
    def margin(self) -> float:
        return self.judgement.margin

    @property
    def noise(self) -> float:
        return self.judgement.noise

    @property
    def Ra(self) -> float:
        return self.side_a.value

    @property
    def Rb(self) -> float:
        """R at side b (a pair or witness), else the reference (C(θ0) or the bound)."""
        if self.side_b is not None:
            return self.side_b.value
        return float(self.ref.reshape(-1)[0]) if self.ref is not None else math.nan

    @property
    def err_a(self) -> float:
        return self.side_a.err

    @property
    def err_b(self) -> float:
        return self.side_b.err if self.side_b is not None else 0.0

    @property
    def theta_a(self) -> Tensor:
        return self.side_a.theta

    @property
    def theta_b(self) -> Tensor | None:
        return None if self.side_b is None else self.side_b.theta

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "gap": self.gap, "margin": self.margin, "noise": self.noise, "R_a": self.Ra,
                "R_b": self.Rb, "err_a": self.err_a, "err_b": self.err_b, "source": self.source,
                "strength": self.judgement.strength, "label": self.label, "rechecked": self.rechecked}


@dataclass
class MemberResult:
    """Verdict of one hypothesis member (a hypothesis with one value per parameter)."""

    hypothesis: str
    params: dict[str, Any]
    kind: str
    depends_on: str
    verdict: Verdict
    expect: str | None
    grade: Grade | None = None  # what a survival rests on
    n_pairs: int = 0
    n_distinct: int = 0
    max_rel_gap: float = 0.0
    evidence: Evidence | None = None
    reason: str = ""
    worst: float | None = None  # bounds: the largest value over converged triples
    certificate: str | None = None
    error: str | None = None
    search: SearchTotals | None = None  # witness search and optimality over Z(D)
    support: Evidence | None = None  # a certified survival: a triple whose optimality was certified
    spec: Hypothesis | None = None
    use: HypothesisUse | None = None

    @property
    def label(self) -> str:
        return member_label(self.hypothesis, self.params)

    @property
    def held(self) -> bool | None:
        return None if self.expect is None else self.expect == self.verdict


def member_label(name: str, params: dict[str, Any]) -> str:
    """``lp_norm[p=1]``: a member's name with its parameter values."""
    if not params:
        return name
    return f"{name}[{', '.join(f'{k}={_fmt(v)}' for k, v in params.items())}]"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:g}"
    return str(v)


@dataclass
class Finding:
    """What one claim kind found for a member on the retained triples: its strongest re-checked
    evidence (refuting or the closest call), the support it gives a survival (``support``: a
    grade with its count, e.g. ``(Grade.PAIRS, 12)``), a local-only count (``local``, triples a
    search found nothing on: never support), and why it gives none (``reason``). ``noisy``: a
    candidate cleared the margin but not R's evaluation noise."""

    evidence: Evidence | None = None
    support: tuple[Grade, int] | None = None
    support_text: str = ""
    local: int = 0
    local_text: str = ""
    reason: str = ""
    noisy: Evidence | None = None
    #: a triple the survival rests on, certifiable on its own (an ``optimum`` certificate)
    support_evidence: Evidence | None = None


def settle(found: Finding, candidates: Iterable[Evidence | None]) -> Evidence | None:
    """A kind's verdict on its re-checked candidates. Of those that refute, the one with the
    largest *relative* gap (gap / max |R|: the size of the refutation, the statistic a limit
    verdict follows from run to run) becomes ``found.evidence``; with none refuting, the strongest
    (largest gap / (margin + noise), the closest call) is returned, and recorded as
    ``found.noisy`` when it clears the margin but not the noise. Returns it (None: no candidate)."""
    evs = [e for e in candidates if e is not None]
    refuting = [e for e in evs if e.judgement.refutes]
    if refuting:
        found.evidence = max(refuting, key=lambda e: (_finite_or(e.judgement.relative), e.judgement.strength))
        return found.evidence
    best = max(evs, key=lambda e: e.judgement.strength, default=None)
    if best is not None and best.judgement.in_noise:
        found.noisy = best
    return best


def _finite_or(x: float, default: float = -math.inf) -> float:
    return x if math.isfinite(x) else default


class TableScore:
    """The parts of a score every claim kind shares: its part of the run's counts, and no kept
    pairs or triples unless it says otherwise."""

    part: MemberCounts

    def counts(self) -> MemberCounts:
        return self.part

    def keep_triples(self) -> list[int]:
        return []

    def keep_pairs(self) -> list[int]:
        return []


class Score(Protocol):
    """A claim kind's scores of one member on one table of triples (a block, or the retained
    triples): counts for the run, and the triples and pairs a verdict can rest on."""

    def counts(self) -> MemberCounts: ...
    def keep_triples(self) -> list[int]: ...
    def keep_pairs(self) -> list[int]: ...
    def triples_to_measure(self) -> list[int]: ...


# ------------------------------------------------------------------------------------------
def hyp_context(ctx: RunContext, t: Triples, idx: Tensor, spec: Hypothesis, theta0: Tensor | None = None
                ) -> HypothesisContext:
    """What a hypothesis may see at triples ``idx`` (see :func:`ibtest.judge.evaluation.context`)."""
    data = spec.depends_on == "data"
    return ev_mod.context(ctx.model, spec, theta0=t.theta0[idx] if theta0 is None else theta0,
                          X=t.X[idx] if data else None, y=t.y[idx] if data else None,
                          mask=t.mask[idx] if data else None, study=study_values(ctx))


def study_values(ctx: RunContext) -> dict[str, Any]:
    """The study-level values a hypothesis context carries (the seed and any extra keys)."""
    return {"seed": ctx.study.seed, **ctx.study.extra}


def tolerance(use: HypothesisUse) -> Tolerance:
    """A study member's tolerance floors."""
    return Tolerance(float(use.atol), float(use.rtol))


def sides_at(ctx: RunContext, t: Triples, spec: Hypothesis, params: dict, idx: list[int], theta: Tensor,
             err: list[float]) -> tuple[Side, Side, float]:
    """The two sides (R, ‖∇R‖, error, noise) of a comparison of R at θ [2, P], judged in the
    contexts of triples ``idx``, and the path noise of their difference
    (:func:`ibtest.judge.evaluation.compare`)."""
    return ev_mod.compare(ctx.model, spec, params, theta, hyp_context(ctx, t, torch.tensor(idx), spec), err)


# ------------------------------------------------------------------------------------------
class ErrorMeter:
    """Measured error of triples: ‖θ∞ − θ∞'‖ with θ∞' solved at tightened settings, plus θ∞''s
    distance to Z(D) (the fit rule's estimate): what θ∞ may be off by."""

    def __init__(self, ctx: RunContext, t: Triples):
        self.ctx, self.t = ctx, t
        self.err: dict[int, float] = {}
        self.tight_theta: dict[int, Tensor] = {}
        self.tight_status: dict[int, int] = {}
        self.tight_fits: dict[int, bool] = {}

    def measure(self, idx: list[int]) -> None:
        todo = sorted({i for i in idx if i not in self.err})
        if not todo:
            return
        t, rules = self.t, self.ctx.rules
        ix = torch.tensor(todo)
        res = solve(self.ctx, t.X[ix], t.y[ix], t.mask[ix], t.theta0[ix], options=dict(self.ctx.settings.tightened),
                    phase="re-solve (tight)")
        fc = rules.check_fit(self.ctx.model, res.theta, t.X[ix], t.y[ix], t.mask[ix], t.theta0[ix])
        diff = (res.theta - t.theta[ix]).norm(dim=-1) + torch.nan_to_num(fc.dist, nan=0.0)
        for k, i in enumerate(todo):
            self.err[i] = float(diff[k])
            self.tight_theta[i] = res.theta[k]
            self.tight_status[i] = int(res.status[k])
            self.tight_fits[i] = bool(fc.ok[k])

    def usable(self, i: int) -> bool:
        """Triple i may carry evidence: re-solved, converged and fitting (or no re-check asked)."""
        from ibtest.base import status as st

        if not self.ctx.rules.recheck:
            return True
        return self.tight_status.get(i) == st.CONVERGED and self.tight_fits.get(i, False)

    def theta_err(self, i: int) -> tuple[Tensor, float]:
        """(θ, its measured error) that evidence at triple i rests on: the tight re-solve and its
        distance to the first one, or (without a re-check) the first solution and its drift
        estimate."""
        if self.ctx.rules.recheck:
            return self.tight_theta[i], self.err[i]
        t = self.t
        est = t.info.get("drift_estimate")
        return t.theta[i], 0.0 if est is None else float(torch.nan_to_num(est[i], nan=0.0))


# ------------------------------------------------------------------------------------------
# witness search inside one Z(D) (ibtest.judge.witness)
# ------------------------------------------------------------------------------------------
@dataclass
class SearchTotals:
    """A member's witness search over a study: triples searched, certified (global minimum of a
    convex R on a polyhedral Z), vacuous (Z(D) a single point in the variable R reads: no power),
    candidate witnesses, and the worst relative suboptimality (R(θ∞) − R_best)/|R(θ∞)| beyond the
    floor and R's noise, over certified triples and (a lower bound) over the others."""

    searched: int = 0
    certified: int = 0
    witnesses: int = 0
    worst_certified: float = 0.0
    worst_local: float = 0.0
    method: str = ""
    skipped: int = 0  # converged triples not searched: a sample sufficed (member settled by a pair)
    vacuous: int = 0  # searched triples whose Z(D) is a single point in R's variable

    def merge(self, o: SearchTotals) -> SearchTotals:
        return SearchTotals(self.searched + o.searched, self.certified + o.certified, self.witnesses + o.witnesses,
                            max(self.worst_certified, o.worst_certified), max(self.worst_local, o.worst_local),
                            self.method or o.method, self.skipped + o.skipped, self.vacuous + o.vacuous)

    @property
    def worst(self) -> float:
        return max(self.worst_certified, self.worst_local)

    @property
    def powered(self) -> int:
        """Searched triples whose Z(D) is more than a point in R's variable."""
        return self.searched - self.vacuous

    @property
    def local(self) -> int:
        """Triples with power searched locally only (no certificate)."""
        return self.powered - self.certified

    @property
    def label(self) -> str:
        """How the worst suboptimality was obtained: "certified" or "lower bound"."""
        if not self.searched:
            return ""
        how = "certified" if self.local == 0 else "lower bound"
        return how + (f", sample of {self.searched}" if self.skipped else "")

    def describe(self) -> str:
        text = self._describe()
        if self.vacuous:
            text += f"; {self.vacuous} triple(s) with Z(D) a single point in R's variable (no power) not counted"
        if self.skipped:
            text += (f" [a sample: {self.searched} of {self.searched + self.skipped} converged triples searched, "
                     "the member being already refuted by a pair]")
        return text

    def _describe(self) -> str:
        n, c = self.powered, self.certified
        if n == 0:
            return f"Z(D) is a single point in the variable R reads on all {self.searched} searched triples"
        if c == n:
            return (f"global argmin on all {n} converged triples (certified), worst suboptimality "
                    f"{self.worst_certified:.3g}")
        if c:
            return (f"certified argmin on {c} of {n} converged triples (worst suboptimality "
                    f"{self.worst_certified:.3g}); local search on Z(D) found no witness on the rest "
                    f"(worst {self.worst_local:.3g}, a lower bound)")
        return (f"local search on Z(D) of {n} converged triples found no witness (worst suboptimality "
                f"{self.worst_local:.3g}, a lower bound)")

    def to_json(self) -> dict[str, Any]:
        return {"searched": self.searched, "certified": self.certified, "witnesses": self.witnesses,
                "worst_suboptimality": self.worst, "worst_certified": self.worst_certified,
                "worst_local": self.worst_local, "label": self.label, "method": self.method,
                "skipped": self.skipped, "vacuous": self.vacuous}


def no_converged_reason(counts: dict[str, int], growth: float | None = None) -> str:
    """Why nothing could be judged: the status counts (and how far diverged runs grew)."""
    text = "no converged triple (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
    if growth is not None:
        text += f"; diverged runs grew |θ| by up to {growth:.3g}x"
    return text


@dataclass
class MemberCounts:
    """A member's counts over every block of a run (its verdict is decided on the few triples the
    run retains from each block; its counts come from here)."""

    n: int = 0  # admissible pairs judged (regularizer) or converged triples (invariant, bound)
    distinct: int = 0  # of those pairs, with distinct solutions in the variable R reads
    max_rel_gap: float = -math.inf  # largest |R(θa) − R(θb)| / max(|R(θa)|, |R(θb)|)
    worst: float | None = None  # bounds: the largest value B(θ∞); None for other kinds
    largest: float = -math.inf  # invariants and bounds: the largest change / excess
    error: str | None = None  # R not finite somewhere
    raised: str | None = None  # the hypothesis raised on a block: "Type: message"
    no_pairs_reason: str = ""  # why nothing was judged (n == 0), decided over the whole run
    search: SearchTotals | None = None  # None: no witness search for this member
    constant: bool | None = None  # R did not depend on θ wherever it was probed (None: not probed)
    r_value: float = math.nan  # the constant value R took (when ``constant``)

    def merge(self, part: MemberCounts) -> None:
        """Add one block's counts (sums, maxima, the first error)."""
        self.n += part.n
        self.distinct += part.distinct
        self.max_rel_gap = max(self.max_rel_gap, part.max_rel_gap)
        self.largest = max(self.largest, part.largest)
        if part.worst is not None:
            self.worst = part.worst if self.worst is None else max(self.worst, part.worst)
        self.error = self.error or part.error
        if part.search is not None:
            self.search = part.search if self.search is None else self.search.merge(part.search)
        if part.constant is not None:
            same = self.constant is None or (self.constant and (part.r_value == self.r_value))
            self.constant = bool(part.constant and same)
            self.r_value = part.r_value

    def probe(self, ctx: RunContext, t: Triples, spec: Hypothesis, params: dict, idx: Tensor) -> None:
        """Record whether R is constant at (and around) the solutions of triples ``idx``
        (:func:`ibtest.judge.evaluation.constant_value`, on at most 4 of them)."""
        if idx.numel() == 0:
            return
        k = idx[:4]
        v = ev_mod.constant_value(ctx.model, spec, params, t.theta[k], hyp_context(ctx, t, k, spec))
        self.constant, self.r_value = v is not None, (math.nan if v is None else v)

    def apply(self, r: MemberResult) -> None:
        """Put the run-wide counts on a verdict judged on the retained triples."""
        r.n_pairs, r.n_distinct = self.n, self.distinct
        r.max_rel_gap = self.max_rel_gap if self.n else 0.0
        r.error = r.error or self.error
        if self.search is not None:
            r.search = self.search
        if self.worst is not None:
            r.worst = self.worst


def no_pair_reason(depends_on: str) -> str:
    """Why a regularizer with converged triples was judged on nothing."""
    return "no admissible pair" + (" sharing θ0" if depends_on == "init" else "")

