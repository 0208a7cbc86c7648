"""Admissible pairs: which solved triples may be compared.

A pair (a, b) is *admissible* when both triples converged and each solution fits the other's
dataset by the fit rule of :mod:`ibtest.solve.fit` (``ctx.rules``): L(θa; Db) ≤ fit_tol·max(½‖y_b‖²,
L(θ0_b; Db)) with θa near Z(Db), and the same with a and b swapped. It is *distinct* when
‖θa − θb‖ > ``DISTINCT_RTOL``·max(‖θa‖, ‖θb‖).
The study's own pairs group triples with the same θ0 (two datasets) or the same dataset (two θ0),
capped per group.
"""
from __future__ import annotations

import torch

from ibtest.base import status as st
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext

Tensor = torch.Tensor

DISTINCT_RTOL = 1e-9  # two solutions are distinct when ‖θa − θb‖ > DISTINCT_RTOL · max(‖θa‖, ‖θb‖)


def distinct(ta: Tensor, tb: Tensor) -> Tensor:
    """Relative to the solutions' own size, so a study scaled by any factor pairs alike."""
    scale = torch.maximum(ta.norm(dim=-1), tb.norm(dim=-1))
    return (ta - tb).norm(dim=-1) > DISTINCT_RTOL * scale


def admissible(ctx: RunContext, t: Triples, a: Tensor, b: Tensor, source: str | tuple[Tensor, list[str]]) -> Pairs:
    """Keep the pairs (a, b) whose two sides converged and fit each other's dataset.

    ``source`` names where the pairs came from: one name for all, or (codes [k], names).
    """
    if a.numel() == 0:
        return Pairs.empty()
    m = ctx.model
    code, names = (torch.zeros(a.numel(), dtype=torch.int64), [source]) if isinstance(source, str) else source
    conv = (t.status[a] == st.CONVERGED) & (t.status[b] == st.CONVERGED)
    a, b, code = a[conv], b[conv], code[conv]
    fab = ctx.rules.check_fit(m, t.theta[a], t.X[b], t.y[b], t.mask[b], t.theta0[b])
    fba = ctx.rules.check_fit(m, t.theta[b], t.X[a], t.y[a], t.mask[a], t.theta0[a])
    cab, cba = fab.loss.detach().cpu(), fba.loss.detach().cpu()
    keep = (fab.ok & fba.ok).cpu().nonzero().flatten()
    a, b = a[keep], b[keep]
    same = (t.theta0[a] == t.theta0[b]).all(-1).cpu()
    return Pairs(a, b, code[keep], list(names), same, cab[keep], cba[keep], distinct(t.theta[a], t.theta[b]).cpu())


def group_pairs(keys: Tensor, cap: int) -> tuple[Tensor, Tensor]:
    """All pairs (i < j) of positions with equal ``keys``, at most ``cap`` per group.

    Vectorized: a Python loop runs over the distinct group *sizes* only, never over groups.
    """
    order = torch.argsort(keys, stable=True)
    _, counts = torch.unique_consecutive(keys[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    out_a, out_b = [], []
    for size in torch.unique(counts).tolist():
        if size < 2:
            continue
        first = starts[counts == size]
        # only the rows the cap can reach: O(cap + size) memory, not O(size²)
        rows = min(size - 1, cap // (size - 1) + 1)
        ia, ib = torch.triu_indices(rows, size, 1)
        ia, ib = ia[:cap], ib[:cap]
        out_a.append(order[(first[:, None] + ia[None]).flatten()])
        out_b.append(order[(first[:, None] + ib[None]).flatten()])
    if not out_a:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    return torch.cat(out_a), torch.cat(out_b)


def own_pairs(ctx: RunContext, t: Triples, idx: Tensor) -> Pairs:
    """Pairs among the study's own converged triples: same θ0 on two datasets, or two θ0 on one dataset.

    Quadratic in a group's size, so each group is capped at ``verdict.max_group_pairs`` pairs.
    """
    cap = ctx.study.verdict.max_group_pairs
    conv = idx[t.status[idx] == st.CONVERGED]
    a_all, b_all, codes = [], [], []
    for code, key in enumerate((t.init_id, t.dataset_id)):
        ia, ib = group_pairs(key[conv], cap)
        a_all.append(conv[ia])
        b_all.append(conv[ib])
        codes.append(torch.full((ia.numel(),), code, dtype=torch.int64))
    a, b = torch.cat(a_all), torch.cat(b_all)
    if a.numel() == 0:
        return Pairs.empty()
    return admissible(ctx, t, a, b, (torch.cat(codes), ["study (same init)", "study (same dataset)"]))
