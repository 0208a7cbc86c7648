"""Every triple and admissible pair of a study, in one table, split into a fit set and a held-out set.

The study runs block by block as ``ibtest run`` runs it (:func:`ibtest.pairs.constructions.run_block`:
solve, own pairs, constructions), but nothing is dropped: the fit needs every converged triple.
Each triple descends from one study instance (its *root*: itself, or the instance a construction
built it from); a seeded share ``holdout`` of the study's instances is held out, with every triple
descending from them. A pair is in the fit set (or the held-out set) when both its triples are;
pairs across the two sets are dropped, so the held-out judgement sees nothing the fit saw.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ibtest.pairs.constructions import run_block
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import InstancePlan, RunContext

Tensor = torch.Tensor


@dataclass
class Collected:
    """All triples and pairs of a study, the root instance of each triple, and the seconds it took."""

    t: Triples
    pairs: Pairs
    root: Tensor  # [len(t)] study instance each triple descends from
    seconds: float

    def split(self, holdout: float, seed: int, n_instances: int) -> tuple[Tensor, Tensor, Pairs, Pairs]:
        """(fit triples, held-out triples, fit pairs, held-out pairs re-indexed into the held-out
        triples); ``holdout`` of the instances held out (none when the study has a single instance)."""
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 26)
        perm = torch.randperm(n_instances, generator=g)
        k = int(round(holdout * n_instances)) if n_instances > 1 else 0
        held = torch.zeros(n_instances, dtype=torch.bool)
        held[perm[:k]] = True
        in_held = held[self.root]
        fit_idx, held_idx = (~in_held).nonzero().flatten(), in_held.nonzero().flatten()
        p = self.pairs
        both_fit = ~in_held[p.a] & ~in_held[p.b] if len(p) else torch.zeros(0, dtype=torch.bool)
        both_held = in_held[p.a] & in_held[p.b] if len(p) else torch.zeros(0, dtype=torch.bool)
        fit_pairs = p.select(both_fit.nonzero().flatten())
        held_pairs = p.select(both_held.nonzero().flatten())
        pos = torch.full((len(self.t),), -1, dtype=torch.int64)
        pos[held_idx] = torch.arange(held_idx.numel())
        held_pairs.a, held_pairs.b = pos[held_pairs.a], pos[held_pairs.b]
        return fit_idx, held_idx, fit_pairs, held_pairs


def collect(ctx: RunContext, plan: InstancePlan) -> Collected:
    """Run every block of the study and keep all its triples and pairs."""
    t0 = time.perf_counter()
    size = max(1, ctx.study.block_size)
    table: Triples | None = None
    pairs = Pairs.empty()
    roots = []
    for start in range(0, plan.n, size):
        stop = min(plan.n, start + size)
        bt, bp = run_block(ctx, plan.block(start, stop), start)
        roots.append(_roots(bt, start))
        if table is None:
            table = bt
            pairs.extend(bp)
        else:
            offset = int(table.append(bt)[0])
            pairs.extend(bp, offset=offset)
    assert table is not None, "a study has at least one instance"
    return Collected(table, pairs, torch.cat(roots), time.perf_counter() - t0)


def _roots(t: Triples, start: int) -> Tensor:
    """The study instance (global index) each triple of a block descends from."""
    root = torch.arange(len(t))
    parent = t.parent.clone()
    for _ in range(len(t)):  # constructions nest a few levels deep at most; stops when all are roots
        has = parent[root] >= 0
        if not bool(has.any()):
            break
        root = torch.where(has, parent[root], root)
    return root + start
