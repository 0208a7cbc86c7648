"""Witness search inside one Z(D) as a verdict (see :mod:`ibtest.judge.witness` for the search).

For a regularizer R and a converged triple (D, θ0, θ∞), a point θ' that fits D with
R(θ∞) − R(θ') beyond the margin refutes "gradient flow converges to argmin R over Z(D)".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.judge import evaluation as ev_mod
from ibtest.judge.records import RECHECK_TOP, ErrorMeter, Evidence, MemberResult, SearchTotals, evaluate_grad, hyp_context
from ibtest.solve import fit
from ibtest.solve.batch import Triples
from ibtest.solve.engine import RunContext
from ibtest.study.schema import HypothesisUse

Tensor = torch.Tensor


@dataclass
class SearchScore:
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
                 sample: int | None = None) -> SearchScore | None:
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
    return SearchScore(idx, res, n_all - int(idx.numel()))


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
    R, G = evaluate_grad(ctx, spec, params, torch.stack([th, theta_w]), hyp_context(ctx, t, one, spec))
    gap = float(R[0] - R[1])
    margin = float(ev_mod.margin(use.atol, use.rtol, ctx.study.verdict.safety, R[:1], R[1:], G[:1], G[1:],
                                 th[None], theta_w[None], e, 0.0)[0])
    return Evidence(i, i, float(R[0]), float(R[1]), gap, margin, e, 0.0, float(G[0]), float(G[1]), source,
                    th, theta_w, kind="witness")


def finish_search(ctx: RunContext, t: Triples, r: MemberResult, s: SearchScore | None, params: dict,
                  meter: ErrorMeter) -> MemberResult:
    """Falsify ``r`` by the best re-checked search witness of ``s``, if one beats its margin."""
    if s is None:
        return r
    assert r.use is not None
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
