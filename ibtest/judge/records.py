"""The records of judging: a member's verdict (:class:`MemberResult`), the pair or triple it rests
on (:class:`Evidence`), its run-wide counts (:class:`MemberCounts`), its witness-search totals
(:class:`SearchTotals`), and the solver-error meter (:class:`ErrorMeter`).

Shapes: a table of T triples holds θ [T, P]; R is [T] (a regularizer) or C [T, k] (an invariant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ibtest.judge import evaluation as ev_mod
from ibtest.plugin.specs import HypothesisContext as HypContext
from ibtest.solve.batch import Triples
from ibtest.solve.engine import RunContext, solve
from ibtest.study.schema import HypothesisUse

Tensor = torch.Tensor
RECHECK_TOP = 4  # candidate pairs (or triples) re-solved per member


@dataclass
class Evidence:
    """The strongest pair (or triple) for one hypothesis member."""

    a: int
    b: int | None  # None for an invariant or a bound (one triple); a search witness has b == a
    Ra: float
    Rb: float
    gap: float
    margin: float
    err_a: float
    err_b: float
    grad_a: float
    grad_b: float
    source: str
    theta_a: Tensor | None = None  # re-solved solutions the verdict rests on
    theta_b: Tensor | None = None
    kind: str = "pair"  # "pair", "triple" (invariant, bound) or "witness" (search: a == b, theta_b = θ')


@dataclass
class MemberResult:
    """Verdict of one hypothesis member (a hypothesis with one value per parameter)."""

    hypothesis: str
    params: dict[str, Any]
    kind: str
    depends_on: str
    verdict: str
    expect: str | None
    n_pairs: int = 0
    n_distinct: int = 0
    max_rel_gap: float = 0.0
    evidence: Evidence | None = None
    reason: str = ""
    worst: float | None = None  # bounds: the largest value over converged triples
    certificate: str | None = None
    error: str | None = None
    search: SearchTotals | None = None  # witness search and optimality over Z(D)
    spec: Any = None
    use: HypothesisUse | None = None

    @property
    def label(self) -> str:
        if not self.params:
            return self.hypothesis
        return f"{self.hypothesis}[{', '.join(f'{k}={_fmt(v)}' for k, v in self.params.items())}]"

    @property
    def held(self) -> bool | None:
        return None if self.expect is None else self.expect == self.verdict


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:g}"
    return str(v)


# ------------------------------------------------------------------------------------------
def hyp_context(ctx: RunContext, t: Triples, idx: Tensor, spec: Any, theta0: Tensor | None = None) -> HypContext:
    """What a hypothesis may see at triples ``idx`` (see :func:`ibtest.judge.evaluation.context`)."""
    data = spec.depends_on == "data"
    return ev_mod.context(ctx.model, spec, theta0=t.theta0[idx] if theta0 is None else theta0,
                          X=t.X[idx] if data else None, y=t.y[idx] if data else None,
                          mask=t.mask[idx] if data else None, study={"seed": ctx.study.seed, **ctx.study.extra})


def evaluate(ctx: RunContext, spec: Any, params: dict, theta: Tensor, hctx: HypContext,
             grad: bool = True) -> tuple[Tensor, Tensor | None]:
    """R [T] (or C [T, k]) and, with ``grad``, ‖∇R‖ [T] (see :func:`ibtest.judge.evaluation.evaluate`)."""
    return ev_mod.evaluate(ctx.model, spec, params, theta, hctx, grad=grad)


def evaluate_grad(ctx: RunContext, spec: Any, params: dict, theta: Tensor, hctx: HypContext) -> tuple[Tensor, Tensor]:
    """R [T] (or C [T, k]) and ‖∇R‖ [T] (see :func:`ibtest.judge.evaluation.evaluate`)."""
    R, G = ev_mod.evaluate(ctx.model, spec, params, theta, hctx, grad=True)
    assert G is not None
    return R, G


# ------------------------------------------------------------------------------------------
class ErrorMeter:
    """Measured solver error of triples: ‖θ∞ − θ∞'‖ with θ∞' solved at tightened settings."""

    def __init__(self, ctx: RunContext, t: Triples):
        self.ctx, self.t = ctx, t
        self.err: dict[int, float] = {}
        self.tight_theta: dict[int, Tensor] = {}
        self.tight_status: dict[int, int] = {}

    def measure(self, idx: list[int]) -> None:
        todo = sorted({i for i in idx if i not in self.err})
        if not todo:
            return
        t = self.t
        ix = torch.tensor(todo)
        opts = self.ctx.solver.tighten(dict(self.ctx.solver_options))
        res = solve(self.ctx, t.X[ix], t.y[ix], t.mask[ix], t.theta0[ix], options=opts, phase="re-solve (tight)")
        diff = (res.theta - t.theta[ix]).norm(dim=-1)
        for k, i in enumerate(todo):
            self.err[i] = float(diff[k])
            self.tight_theta[i] = res.theta[k]
            self.tight_status[i] = int(res.status[k])


# ------------------------------------------------------------------------------------------
# witness search inside one Z(D) (ibtest.judge.witness)
# ------------------------------------------------------------------------------------------
@dataclass
class SearchTotals:
    """A member's witness search over a study: triples searched, certified (global minimum of a
    convex R on a polyhedral Z), candidate witnesses, and the worst relative suboptimality
    (R(θ∞) − R_best)/|R(θ∞)| over certified triples and (a lower bound) over the others."""

    searched: int = 0
    certified: int = 0
    witnesses: int = 0
    worst_certified: float = 0.0
    worst_local: float = 0.0
    method: str = ""
    skipped: int = 0  # converged triples not searched: a sample sufficed (member settled by a pair)

    def merge(self, o: SearchTotals) -> SearchTotals:
        return SearchTotals(self.searched + o.searched, self.certified + o.certified, self.witnesses + o.witnesses,
                            max(self.worst_certified, o.worst_certified), max(self.worst_local, o.worst_local),
                            self.method or o.method, self.skipped + o.skipped)

    @property
    def worst(self) -> float:
        return max(self.worst_certified, self.worst_local)

    @property
    def label(self) -> str:
        """How the worst suboptimality was obtained: "certified" or "lower bound"."""
        if not self.searched:
            return ""
        how = "certified" if self.certified == self.searched else "lower bound"
        return how + (f", sample of {self.searched}" if self.skipped else "")

    def describe(self) -> str:
        text = self._describe()
        if self.skipped:
            text += (f" [a sample: {self.searched} of {self.searched + self.skipped} converged triples searched, "
                     "the member being already refuted by a pair]")
        return text

    def _describe(self) -> str:
        n, c = self.searched, self.certified
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
                "skipped": self.skipped}



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
    distinct: int = 0  # of those pairs, with distinct solutions
    max_rel_gap: float = -math.inf  # largest |R(θa) − R(θb)| / max(|R(θa)|, |R(θb)|)
    worst: float | None = None  # bounds: the largest value B(θ∞); None for other kinds
    largest: float = -math.inf  # invariants and bounds: the largest change / excess
    error: str | None = None  # R not finite somewhere
    raised: str | None = None  # the hypothesis raised on a block: "Type: message"
    no_pairs_reason: str = ""  # why nothing was judged (n == 0), decided over the whole run
    search: SearchTotals | None = None  # None: no witness search for this member

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
