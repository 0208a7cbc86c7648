"""Hypothesis evaluation, witnesses, margins and verdicts.

For a regularizer R and an admissible pair (θa, θb) (each fits the other's dataset), a valid R
must rate them equal. The pair refutes R when |R(θa) − R(θb)| exceeds the margin of
:mod:`ibtest.judge.evaluation` (tolerance floor relative to |R| plus safety · ‖∇R‖ · err per side),
where err is the *measured* solver error of each side: ‖θ∞ − θ∞'‖ with θ∞' re-solved at the
solver's tightened settings (``Solver.tighten``). The pair is re-checked on the re-solved θ∞'
(both still converged, still cross-fitting) before it certifies anything. An invariant C is
refuted by one converged triple with ‖C(θ∞) − C(θ0)‖∞ beyond the same kind of margin.

Which pairs count: ``params`` hypotheses every admissible pair; ``init`` only pairs sharing θ0;
``data`` none (a cross-dataset comparison proves nothing for a data-dependent R) → inconclusive.
"survives" is earned: it needs ``min_pairs`` admissible pairs with *distinct* solutions (two
identical solutions rate every R alike and prove nothing). A hypothesis that returns NaN or ±inf
anywhere gets an ``error`` row, never a survival.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext, solve
from ibtest.judge import evaluation as ev_mod
from ibtest.solve import fit
from ibtest.plugin.specs import HypothesisContext as HypContext
from ibtest.study.schema import HypothesisUse

Tensor = torch.Tensor
RECHECK_TOP = 4  # candidate pairs re-solved per member


@dataclass
class Evidence:
    """The strongest pair (or triple) for one hypothesis member."""

    a: int
    b: int  # -1 for an invariant (one triple)
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
    search: "SearchTotals | None" = None  # witness search and optimality over Z(D)
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


def _eligible(spec: Any, pairs: Pairs) -> Tensor:
    return ev_mod.eligible(spec.depends_on, pairs.same_init)


@dataclass
class _Scored:
    """A regularizer member's pairs scored on the first solutions (before any re-solve)."""

    result: MemberResult
    p: Pairs | None = None
    Ra: Tensor | None = None
    Rb: Tensor | None = None
    gap: Tensor | None = None
    floor: Tensor | None = None
    rel: Tensor | None = None
    cand: list[int] = field(default_factory=list)
    sel: Tensor | None = None  # positions of ``p`` in the pairs it was scored on
    search: "_SearchScore | None" = None

    def keep(self) -> list[int]:
        """Positions (in the scored pairs) a verdict can rest on: the candidates and the closest call."""
        if self.p is None or self.sel is None:
            return []
        closest = int(torch.argmax(torch.nan_to_num(self.rel, nan=0.0)))
        return sorted({int(self.sel[k]) for k in self.cand} | {int(self.sel[closest])})

    def keep_triples(self) -> list[int]:
        """Triples the search's verdict can rest on: its candidates and its worst suboptimality."""
        return [] if self.search is None else self.search.keep()

    def triples_to_measure(self) -> list[int]:
        out = [] if self.search is None else self.search.candidates()
        if self.p is None:
            return out
        return out + [int(self.p.a[k]) for k in self.cand] + [int(self.p.b[k]) for k in self.cand]


def score_regularizer(ctx: RunContext, t: Triples, pairs: Pairs, use: HypothesisUse, params: dict) -> _Scored:
    """R on both sides of every eligible pair, and the candidate witnesses to re-check."""
    spec = use.spec
    r = MemberResult(use.name, params, spec.kind, spec.depends_on, "inconclusive", use.expect, spec=spec, use=use)
    sc = _Scored(r)

    def searched(sample: int | None = None) -> _Scored:
        sc.search = score_search(ctx, t, use, params, sample=sample)
        if sc.search is not None:
            r.search = sc.search.totals()
        return sc

    if spec.depends_on == "data":
        r.reason = ("not applicable: a data-dependent R cannot be refuted by comparing R across "
                    "datasets, only by a witness inside one Z(D)")
        return searched()
    sel = _eligible(spec, pairs).nonzero().flatten()
    p = pairs.select(sel)
    r.n_pairs, r.n_distinct = len(p), int(p.distinct.sum())
    if len(p) == 0:
        searched()
        r.reason = "no admissible pair" + (" sharing θ0" if spec.depends_on == "init" else "")
        if not bool((t.status == st.CONVERGED).any()):
            r.reason = _no_converged_reason(t)
        return sc
    hit = torch.zeros(len(t), dtype=torch.bool)
    hit[p.a] = True
    hit[p.b] = True
    used = hit.nonzero().flatten()
    R_all, _ = evaluate(ctx, spec, params, t.theta[used], hyp_context(ctx, t, used, spec), grad=False)
    pos = torch.zeros(len(t), dtype=torch.int64)
    pos[used] = torch.arange(used.numel())
    Ra, Rb = R_all[pos[p.a]], R_all[pos[p.b]]
    gap = (Ra - Rb).abs()
    scale = torch.maximum(Ra.abs(), Rb.abs())
    floor = ev_mod.floor(use.atol, use.rtol, Ra, Rb)
    rel = gap / scale.clamp_min(1e-300)
    r.max_rel_gap = float(rel.max()) if rel.numel() else 0.0
    order = torch.argsort(gap / floor.clamp_min(1e-300), descending=True)
    cand = [int(k) for k in order[:RECHECK_TOP] if bool(gap[k] > floor[k])]
    sc.p, sc.Ra, sc.Rb, sc.gap, sc.floor, sc.rel, sc.cand = p, Ra, Rb, gap, floor, rel, cand
    sc.sel = sel
    # a member this block's pairs already refute by far (a candidate gap ≥ SETTLED × its floor)
    # is searched on a bounded sample only: its suboptimality statistic, not its verdict
    settled = any(bool(gap[k] > SETTLED * floor[k]) for k in cand)
    return searched(SETTLED_SAMPLE if settled else None)


def finish_regularizer(ctx: RunContext, t: Triples, sc: _Scored, params: dict, meter: ErrorMeter) -> MemberResult:
    """Re-check the candidates on re-solved solutions; decide the verdict."""
    r, p = sc.result, sc.p
    if p is None:
        if _finish_search(ctx, t, sc, params, meter).verdict == "falsified":
            return r
        if r.search is not None and r.search.searched >= ctx.study.verdict.min_pairs:
            r.verdict, r.reason = "survives", r.search.describe()
        return r
    use, spec = r.use, r.spec
    best_ratio, best = -1.0, None
    for k in sc.cand:
        ev = _recheck_pair(ctx, t, spec, params, use, meter, int(p.a[k]), int(p.b[k]), p.source(k))
        if ev is None:
            continue
        ratio = ev.gap / ev.margin if ev.margin > 0 else math.inf
        if ratio > best_ratio:
            best_ratio, best = ratio, ev
    if best is not None and best.gap > best.margin:
        r.verdict, r.evidence = "falsified", best
        r.reason = f"certified witness from {best.source}: |ΔR| = {best.gap:.3g} > margin {best.margin:.3g}"
        return r
    if _finish_search(ctx, t, sc, params, meter).verdict == "falsified":
        return r
    # survives or inconclusive: report the closest call (largest relative gap)
    if best is None:
        k = int(torch.argmax(torch.nan_to_num(sc.rel, nan=0.0)))
        ab = torch.stack([p.a[k], p.b[k]])
        _, G = evaluate(ctx, spec, params, t.theta[ab], hyp_context(ctx, t, ab, spec))
        best = Evidence(int(p.a[k]), int(p.b[k]), float(sc.Ra[k]), float(sc.Rb[k]), float(sc.gap[k]),
                        float(sc.floor[k]), float("nan"), float("nan"), float(G[0]), float(G[1]), p.source(k))
    r.evidence = best
    need = ctx.study.verdict.min_pairs
    if r.n_distinct >= need:
        r.verdict = "survives"
        r.reason = f"{r.n_pairs} admissible pairs ({r.n_distinct} distinct), no witness beyond the margin"
        if r.search is not None and r.search.searched:
            r.reason += "; " + r.search.describe()
    elif r.search is not None and r.search.searched >= need:
        r.verdict = "survives"
        r.reason = r.search.describe() + (f" ({r.n_pairs} admissible pairs, {r.n_distinct} distinct)"
                                          if r.n_pairs else "")
    elif r.n_distinct == 0:
        r.reason = (f"no evidence: all {r.n_pairs} admissible pairs have identical solutions "
                    "(an identical pair rates every R alike)")
    else:
        r.reason = f"too few admissible pairs with distinct solutions ({r.n_distinct} < min_pairs {need})"
    return r


def _recheck_pair(ctx, t, spec, params, use, meter: ErrorMeter, a: int, b: int, source: str) -> Evidence | None:
    """Re-evaluate a candidate pair on its re-solved (tight) solutions; None if it no longer qualifies."""
    recheck = ctx.study.verdict.recheck
    if recheck:
        if meter.tight_status.get(a) != st.CONVERGED or meter.tight_status.get(b) != st.CONVERGED:
            return None
        tha, thb = meter.tight_theta[a], meter.tight_theta[b]
        ea, eb = meter.err[a], meter.err[b]
        # the re-solved pair must still be admissible
        ab = torch.tensor([b, a])
        cross = fit.fits(ctx.model, torch.stack([tha, thb]), t.X[ab], t.y[ab], t.mask[ab], t.theta0[ab], ctx.fit_tol)
        if not bool(cross.all()):
            return None
    else:
        tha, thb = t.theta[a], t.theta[b]
        ea = eb = float(t.info.get("drift", torch.zeros(len(t)))[a]) if "drift" in t.info else 0.0
    idx = torch.tensor([a, b])
    R, G = evaluate(ctx, spec, params, torch.stack([tha, thb]), hyp_context(ctx, t, idx, spec))
    Ra, Rb = float(R[0]), float(R[1])
    gap = abs(Ra - Rb)
    margin = float(ev_mod.margin(use.atol, use.rtol, ctx.study.verdict.safety, R[:1], R[1:], G[:1], G[1:],
                                 tha[None], thb[None], ea, eb)[0])
    return Evidence(a, b, Ra, Rb, gap, margin, ea, eb, float(G[0]), float(G[1]), source, tha, thb)


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

    def merge(self, o: "SearchTotals") -> "SearchTotals":
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


@dataclass
class _SearchScore:
    """The search of one member on the converged triples ``idx`` of one table."""

    idx: Tensor
    res: Any  # witness.SearchResult
    skipped: int = 0  # converged triples left out (a settled member's sample)

    def candidates(self) -> list[int]:
        """Triples (table positions) of the best candidate witnesses (gap / floor, beyond the floor)."""
        found = self.res.found
        if not bool(found.any()):
            return []
        ratio = torch.where(found, self.res.gap / self.res.floor.clamp_min(1e-300), torch.full_like(self.res.gap, -1.0))
        order = torch.argsort(ratio, descending=True)[:RECHECK_TOP]
        return [int(self.idx[k]) for k in order if bool(found[k])]

    def keep(self) -> list[int]:
        worst = int(torch.argmax(self.res.sub))
        return sorted(set(self.candidates()) | {int(self.idx[worst])})

    def totals(self) -> SearchTotals:
        r = self.res
        cert = r.certified
        sub = r.sub
        return SearchTotals(int(self.idx.numel()), int(cert.sum()), int(r.found.sum()),
                            float(sub[cert].max()) if bool(cert.any()) else 0.0,
                            float(sub[~cert].max()) if bool((~cert).any()) else 0.0, r.method, self.skipped)


SETTLED = 1e3  # a pair candidate's gap over its tolerance floor that makes a member "settled"
SETTLED_SAMPLE = 128  # triples per block searched for a settled member
SETTLED_CERTIFY = 0  # cvxpy optima per block for a settled member (its verdict needs none)


def score_search(ctx: RunContext, t: Triples, use: HypothesisUse, params: dict,
                 sample: int | None = None) -> _SearchScore | None:
    """Search Z(D) of every converged *study* triple of ``t`` for a witness against a regularizer
    member (batched; see :mod:`ibtest.judge.witness`). Constructed partners are judged through their
    pairs only (searching them too would cost ≈ 3× more on a study with two constructions).
    With ``sample`` (a member a pair of this block already refutes by far), only that many evenly
    spread triples are searched, with no cvxpy optimum; the totals count the rest as ``skipped``.
    None when the study switched the search off or nothing converged."""
    vs = ctx.study.verdict
    if not vs.search or use.spec.kind != "regularizer":
        return None
    study = torch.tensor([o == "study" for o in t.origin], dtype=torch.bool)
    idx = ((t.status == st.CONVERGED) & study).nonzero().flatten()
    if idx.numel() == 0:
        return None
    from ibtest.judge.witness import search

    n_all, certify = int(idx.numel()), vs.certify_max
    if sample is not None and n_all > sample:  # evenly spread over the block
        idx = idx[torch.linspace(0, n_all - 1, sample).round().long().unique()]
        certify = min(certify, SETTLED_CERTIFY)
    res = search(ctx.model, use.spec, params, t.X[idx], t.y[idx], t.mask[idx], t.theta0[idx], t.theta[idx],
                 ctx.fit_tol, atol=use.atol, rtol=use.rtol, steps=vs.search_steps, certify_limit=certify,
                 study={"seed": ctx.study.seed, **ctx.study.extra})
    return _SearchScore(idx, res, n_all - int(idx.numel()))


def recheck_witness(ctx: RunContext, t: Triples, use: HypothesisUse, params: dict, i: int, theta_w: Tensor,
                    meter: ErrorMeter, source: str) -> Evidence | None:
    """A search witness θ' at triple i re-judged on θ∞ re-solved at tighter settings: θ' must fit D
    and R(θ∞) − R(θ') must exceed the margin (with the measured error of θ∞; θ' is a given point).
    None when the re-solve did not converge."""
    spec = use.spec
    if ctx.study.verdict.recheck:
        if meter.tight_status.get(i) != st.CONVERGED:
            return None
        th, e = meter.tight_theta[i], meter.err[i]
    else:
        th = t.theta[i]
        e = float(t.info["drift"][i]) if "drift" in t.info else 0.0
    one = torch.tensor([i, i])
    if not bool(fit.fits(ctx.model, theta_w[None], t.X[i:i + 1], t.y[i:i + 1], t.mask[i:i + 1],
                         t.theta0[i:i + 1], ctx.fit_tol)[0]):
        return None
    R, G = evaluate(ctx, spec, params, torch.stack([th, theta_w]), hyp_context(ctx, t, one, spec))
    gap = float(R[0] - R[1])
    margin = float(ev_mod.margin(use.atol, use.rtol, ctx.study.verdict.safety, R[:1], R[1:], G[:1], G[1:],
                                 th[None], theta_w[None], e, 0.0)[0])
    return Evidence(i, i, float(R[0]), float(R[1]), gap, margin, e, 0.0, float(G[0]), float(G[1]), source,
                    th, theta_w, kind="witness")


def _finish_search(ctx: RunContext, t: Triples, sc: _Scored, params: dict, meter: ErrorMeter) -> MemberResult:
    """Falsify ``sc.result`` by the best re-checked search witness, if one beats its margin."""
    r, s = sc.result, sc.search
    if s is None:
        return r
    pos = {int(i): k for k, i in enumerate(s.idx.tolist())}
    best = None
    for i in s.candidates():
        k = pos[i]
        src = "search (convex optimum)" if bool(s.res.certified[k]) else "search (local, on Z(D))"
        ev = recheck_witness(ctx, t, r.use, params, i, s.res.theta[k], meter, src)
        if ev is not None and (best is None or ev.gap / max(ev.margin, 1e-300) > best.gap / max(best.margin, 1e-300)):
            best = ev
    if best is not None and best.gap > best.margin:
        r.verdict, r.evidence = "falsified", best
        r.reason = (f"witness inside one Z(D) from {best.source}: θ' fits D and R(θ∞) − R(θ') = {best.gap:.3g} "
                    f"> margin {best.margin:.3g}")
    return r


def _no_converged_reason(t: Triples) -> str:
    counts = st.counts(t.status)
    growth = None
    if "growth" in t.info and counts.get("diverged"):
        g = t.info["growth"][t.status == st.DIVERGED]
        g = g[torch.isfinite(g)]
        growth = float(g.max()) if g.numel() else None
    return no_converged_reason(counts, growth)


def no_converged_reason(counts: dict[str, int], growth: float | None = None) -> str:
    """Why nothing could be judged: the status counts (and how far diverged runs grew)."""
    text = "no converged triple (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
    if growth is not None:
        text += f"; diverged runs grew |θ| by up to {growth:.3g}x"
    return text


@dataclass
class Totals:
    """A member's counts over every block of a streamed study (its verdict is decided on the
    few triples kept from each block, its counts come from here)."""

    n: int = 0  # admissible pairs judged (regularizer) or converged triples (invariant, bound)
    distinct: int = 0
    max_rel_gap: float = -math.inf
    worst: float | None = None  # bounds: the largest value
    largest: float = -math.inf  # invariants and bounds: the largest change / excess
    error: str | None = None  # R not finite somewhere
    raised: str | None = None  # the hypothesis raised on a block: "Type: message"
    no_pairs_reason: str | None = None
    search: "SearchTotals | None" = None

    def add_scored(self, sc: "_Scored") -> None:
        r = sc.result
        self.n += r.n_pairs
        self.distinct += r.n_distinct
        self.max_rel_gap = max(self.max_rel_gap, r.max_rel_gap)
        self.error = self.error or r.error
        if r.search is not None:
            self.search = r.search if self.search is None else self.search.merge(r.search)

    def add_invariant(self, s: "_InvScore") -> None:
        if s.idx is None:
            return
        self.n += int(s.idx.numel())
        self.max_rel_gap = max(self.max_rel_gap, s.max_rel_gap)
        self.largest = max(self.largest, float(s.gap.max()))
        if s.worst is not None:
            self.worst = s.worst if self.worst is None else max(self.worst, s.worst)

    def apply(self, r: MemberResult) -> None:
        r.n_pairs, r.n_distinct = self.n, self.distinct
        r.max_rel_gap = self.max_rel_gap if self.n else 0.0
        r.error = r.error or self.error
        if self.search is not None:
            r.search = self.search
        if self.worst is not None:
            r.worst = self.worst


def _reference(ctx, spec, params, t, idx, hctx) -> Tensor:
    """What C(θ∞) is compared with: C(θ0) for an invariant, the bound for a bound."""
    if spec.kind == "bound":
        return torch.full((idx.numel(), 1), float(params.get("bound", spec.bound)), dtype=torch.float64)
    C0, _ = evaluate(ctx, spec, params, t.theta0[idx], hctx, grad=False)
    return C0.reshape(idx.numel(), -1)


def _excess(spec, C1: Tensor, C0: Tensor) -> Tensor:
    """How far the claim is broken: |C1 − C0| (invariant) or C1 − bound (bound), per triple."""
    if spec.kind == "bound":
        return (C1 - C0).amax(-1)
    return (C1 - C0).abs().amax(-1)


@dataclass
class _InvScore:
    """An invariant / bound member scored on the converged triples ``idx`` of one table."""

    idx: Tensor | None = None
    C0: Tensor | None = None
    C1: Tensor | None = None
    gap: Tensor | None = None
    floor: Tensor | None = None
    cand: list[int] = field(default_factory=list)
    worst: float | None = None
    max_rel_gap: float = 0.0

    def keep(self) -> list[int]:
        """Triples a verdict can rest on: the candidates and the closest call."""
        if self.idx is None:
            return []
        closest = int(torch.argmax(self.gap / self.floor.clamp_min(1e-300)))
        return sorted({int(self.idx[k]) for k in self.cand} | {int(self.idx[closest])})


def score_invariant(ctx: RunContext, t: Triples, use: HypothesisUse, params: dict) -> _InvScore:
    """C(θ∞) against its reference on every converged triple, and the candidates to re-check."""
    spec = use.spec
    fparams = {k: v for k, v in params.items() if not (spec.kind == "bound" and k == "bound")}
    idx = (t.status == st.CONVERGED).nonzero().flatten()
    if idx.numel() == 0:
        return _InvScore()
    hctx = hyp_context(ctx, t, idx, spec)
    C1, _ = evaluate(ctx, spec, fparams, t.theta[idx], hctx, grad=False)
    C1 = C1.reshape(idx.numel(), -1)
    C0 = _reference(ctx, spec, params, t, idx, hctx)
    gap = _excess(spec, C1, C0)
    scale = torch.maximum(C1.abs().amax(-1), C0.abs().amax(-1))
    floor = ev_mod.floor(use.atol, use.rtol, C1, C0)
    order = torch.argsort(gap / floor.clamp_min(1e-300), descending=True)
    return _InvScore(idx, C0, C1, gap, floor, [int(k) for k in order[:RECHECK_TOP] if bool(gap[k] > floor[k])],
                     float(C1.amax(-1).max()) if spec.kind == "bound" else None,
                     float((gap / scale.clamp_min(1e-300)).max()))


def judge_invariant(ctx: RunContext, t: Triples, use: HypothesisUse, params: dict, meter: ErrorMeter,
                    totals: Totals | None = None) -> MemberResult:
    """Invariants (C(θ∞) = C(θ0)) and bounds (B(θ∞) ≤ bound), judged on single converged triples.

    ``totals``: counts over a whole streamed study, of which ``t`` holds the retained triples.
    """
    spec = use.spec
    fparams = {k: v for k, v in params.items() if not (spec.kind == "bound" and k == "bound")}
    r = MemberResult(use.name, params, spec.kind, spec.depends_on, "inconclusive", use.expect, spec=spec, use=use)
    s = score_invariant(ctx, t, use, params)
    r.n_pairs, r.worst, r.max_rel_gap = (0, None, 0.0) if s.idx is None else (int(s.idx.numel()), s.worst, s.max_rel_gap)
    largest = 0.0 if s.idx is None else float(s.gap.max())
    if totals is not None:
        totals.apply(r)
        largest = totals.largest
    if s.idx is None or r.n_pairs == 0:
        r.reason = (totals.no_pairs_reason if totals is not None and totals.no_pairs_reason
                    else _no_converged_reason(t))
        return r
    idx, cand = s.idx, s.cand
    if cand and ctx.study.verdict.recheck:
        meter.measure([int(idx[k]) for k in cand])
    best = None
    for k in cand:
        i = int(idx[k])
        if ctx.study.verdict.recheck and meter.tight_status.get(i) != st.CONVERGED:
            continue
        th = meter.tight_theta[i] if ctx.study.verdict.recheck else t.theta[i]
        e = meter.err.get(i, 0.0)
        one = torch.tensor([i])
        hc = hyp_context(ctx, t, one, spec)
        c1, g1 = evaluate(ctx, spec, fparams, th[None], hc)
        c1 = c1.reshape(1, -1)
        c0 = _reference(ctx, spec, params, t, one, hc)
        g = float(_excess(spec, c1, c0)[0])
        margin = float(ev_mod.margin(use.atol, use.rtol, ctx.study.verdict.safety, c1, c0, g1, None,
                                     th[None], None, e)[0])
        ev = Evidence(i, -1, float(c1.flatten()[0]), float(c0.flatten()[0]), g, margin, e, 0.0, float(g1[0]), 0.0,
                      "study", th, t.theta0[i], kind="triple")
        if best is None or ev.gap / ev.margin > best.gap / best.margin:
            best = ev
    if best is not None and best.gap > best.margin:
        r.verdict, r.evidence = "falsified", best
        r.reason = (f"C(θ∞) ≠ C(θ0): |ΔC| = {best.gap:.3g} > margin {best.margin:.3g}" if spec.kind == "invariant"
                    else f"bound broken: value {best.Ra:.6g} exceeds {best.Rb:.6g} by {best.gap:.3g} > margin {best.margin:.3g}")
        return r
    if best is None:
        k = int(torch.argmax(s.gap / s.floor.clamp_min(1e-300)))
        one = idx[k : k + 1]
        _, g1 = evaluate(ctx, spec, fparams, t.theta[one], hyp_context(ctx, t, one, spec))
        best = Evidence(int(idx[k]), -1, float(s.C1[k, 0]), float(s.C0[k, 0]), float(s.gap[k]),
                        float(s.floor[k]), float("nan"), 0.0, float(g1[0]), 0.0, "study", kind="triple")
    r.evidence = best
    if r.n_pairs >= ctx.study.verdict.min_pairs:
        r.verdict = "survives"
        r.reason = (f"conserved on {r.n_pairs} converged triples (largest change {largest:.3g})"
                    if spec.kind == "invariant" else
                    f"holds on {r.n_pairs} converged triples (worst value {r.worst:.6g} <= {float(s.C0[0, 0]):.6g})")
    else:
        r.reason = f"too few converged triples ({r.n_pairs} < min_pairs)"
    return r


def judge_all(ctx: RunContext, t: Triples, pairs: Pairs, also_measure: list[int] = (),
              totals: dict[tuple[int, int], Totals] | None = None) -> tuple[list[MemberResult], ErrorMeter]:
    """Verdict of every member of every hypothesis; a raising hypothesis gets an error row.

    Two passes: score every member on the first solutions, re-solve the union of all candidate
    triples (plus ``also_measure``) at tighter settings in one batch, then decide. ``totals``
    (keyed by (hypothesis position, member position)): the counts of a streamed study, whose
    ``t`` and ``pairs`` hold only the retained triples and pairs.
    """
    meter = ErrorMeter(ctx, t)
    scored: list[Any] = []
    for i, use in enumerate(ctx.study.hypotheses):
        for j, params in enumerate(use.members):
            tot = None if totals is None else totals[(i, j)]
            try:
                if tot is not None and tot.raised:
                    raise _Raised(tot.raised)
                if use.spec.kind in ("invariant", "bound"):
                    scored.append(("inv", use, params, tot))
                else:
                    sc = score_regularizer(ctx, t, pairs, use, params)
                    if tot is not None:
                        tot.apply(sc.result)
                        if tot.n == 0 and tot.no_pairs_reason:
                            sc.result.reason = tot.no_pairs_reason
                    scored.append(("reg", use, params, sc))
            except Exception as exc:
                scored.append(("err", use, params, exc))
    if ctx.study.verdict.recheck:
        todo = list(also_measure)
        for kind, _, _, sc in scored:
            if kind == "reg":
                todo += sc.triples_to_measure()
        conv = (t.status == st.CONVERGED).nonzero().flatten()
        if any(k == "inv" for k, *_ in scored):
            todo += conv[:RECHECK_TOP * 4].tolist()
        meter.measure(todo)
    out: list[MemberResult] = []
    for kind, use, params, sc in scored:
        try:
            if kind == "err":
                raise sc
            if kind == "inv":
                out.append(judge_invariant(ctx, t, use, params, meter, totals=sc))
            else:
                out.append(finish_regularizer(ctx, t, sc, params, meter))
        except Exception as exc:
            r = MemberResult(use.name, params, use.spec.kind, use.spec.depends_on, "error", use.expect,
                             spec=use.spec, use=use)
            r.error = str(exc) if isinstance(exc, _Raised) else f"{type(exc).__name__}: {exc}"
            r.reason = f"hypothesis raised: {r.error}"
            out.append(r)
    return out, meter


class _Raised(Exception):
    """A hypothesis that raised on an earlier block of a streamed study (message kept as is)."""
