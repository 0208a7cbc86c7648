"""Constructions: partner datasets (stage ``triple``) and partner pairs (stage ``pair``).

A triple construction builds, from each converged study triple (D, θ0, θ∞), a partner dataset D'
run from the same θ0; a pair construction builds two new datasets from an admissible, distinct
pair (e.g. a rotation of both). The new instances are solved in the same batch and only their
admissible pairs (:mod:`ibtest.pairs.admissible`) are kept. :func:`run_block` is one block of a
study: solve, own pairs, triple constructions, pair constructions.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.base.guard import describe, plugin_call
from ibtest.pairs.admissible import admissible, own_pairs
from ibtest.pairs.checks import check_new_pairs, check_partners
from ibtest.plugin.specs import PairBatch, TripleBatch
from ibtest.solve.batch import Pairs, Triples, cat_padded
from ibtest.solve.engine import Phase, RunContext, construction_seed, solve_into

Tensor = torch.Tensor


def _triple_batch(t: Triples, idx: Tensor) -> TripleBatch:
    return TripleBatch(t.X[idx], t.y[idx], t.mask[idx], t.theta0[idx], t.theta[idx], [t.labels[i] for i in idx.tolist()])


def _new_triples(ctx: RunContext, X, y, mask, theta0, labels, origin, parent, init_id, dataset_base) -> Triples:
    k = theta0.shape[0]
    return Triples(
        X=X, y=y, mask=mask, theta0=theta0, theta=theta0.clone(),
        status=torch.full((k,), st.BUDGET, dtype=torch.int64),
        loss=torch.full((k,), float("nan"), dtype=torch.float64),
        dataset_id=torch.arange(dataset_base, dataset_base + k), init_id=init_id, parent=parent,
        labels=labels, init_labels=[f"θ0 of #{int(p)}" for p in parent.tolist()], origin=[origin] * k,
    )


def _built(ctx: RunContext, use: Any, check: Callable[..., Any], *shape: int, **kwargs: Any) -> Any:
    """``use.spec.build(**kwargs)`` guarded (raising, ``sys.exit``, its own KeyboardInterrupt, the
    deadline) and its result checked by ``check(out, *shape)``; a failure is reported in the run's
    errors and None returned: the study goes on without these partners."""
    try:
        out = plugin_call(use.spec.build, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the plugin's failure, reported in its row
        ctx.errors.append(f"construction {use.name!r} {describe(exc)}")
        return None
    try:
        return check(out, *shape)
    except ValueError as exc:
        ctx.errors.append(f"construction {use.name!r} returned {exc}")
        return None


def run_triple_constructions(ctx: RunContext, t: Triples, pairs: Pairs) -> None:
    """Partner datasets from every converged study triple; solve; keep admissible pairs."""
    src_idx = ((t.status == st.CONVERGED) & (t.parent < 0)).nonzero().flatten()
    for use in ctx.study.constructions:
        if use.spec.stage != "triple" or src_idx.numel() == 0:
            continue
        for opts in use.expand():
            out = _built(ctx, use, check_partners, src_idx.numel(), t.X.shape[-1], model=ctx.model,
                         triples=_triple_batch(t, src_idx), rng=construction_seed(ctx, 3, len(t)), **opts)
            if out is None:
                continue
            parent = src_idx[out.source]
            new = _new_triples(ctx, out.X.to(torch.float64), out.y.to(torch.float64), out.mask.to(torch.float64),
                               t.theta0[parent], list(out.labels), use.name, parent, t.init_id[parent],
                               int(t.dataset_id.max()) + 1)
            solve_into(ctx, new, f"solve partners ({use.name})")
            ids = t.append(new)
            pairs.extend(admissible(ctx, t, parent, ids, use.name))


def run_pair_constructions(ctx: RunContext, t: Triples, pairs: Pairs) -> None:
    """Constructions on admissible, distinct pairs (e.g. rotations); solve both new sides."""
    for use in ctx.study.constructions:
        if use.spec.stage != "pair":
            continue
        base = pairs.select(pairs.distinct.nonzero().flatten())
        if len(base) == 0:
            continue
        pb = PairBatch(t.X[base.a], t.y[base.a], t.mask[base.a], t.X[base.b], t.y[base.b], t.mask[base.b],
                       t.theta0[base.a], [f"{t.labels[i]} | {t.labels[j]}" for i, j in zip(base.a.tolist(), base.b.tolist())])
        for opts in use.expand():
            out = _built(ctx, use, check_new_pairs, len(base), t.X.shape[-1], t.theta0.shape[-1], model=ctx.model,
                         pairs=pb, rng=construction_seed(ctx, 4, len(t)), **opts)
            if out is None:
                continue
            p = out.pairs
            k = p.theta0.shape[0]
            parent = base.a[out.source]
            X, y, m = cat_padded([(p.Xa, p.ya, p.maska), (p.Xb, p.yb, p.maskb)])
            iid = torch.arange(int(t.init_id.max()) + 1, int(t.init_id.max()) + 1 + k)
            labels = [f"{use.name}: {l} (side a)" for l in p.labels] + [f"{use.name}: {l} (side b)" for l in p.labels]
            new = _new_triples(ctx, X, y, m, torch.cat([p.theta0, p.theta0]), labels, use.name,
                               torch.cat([parent, base.b[out.source]]), torch.cat([iid, iid]),
                               int(t.dataset_id.max()) + 1)
            solve_into(ctx, new, f"solve pairs ({use.name})")
            ids = t.append(new)
            pairs.extend(admissible(ctx, t, ids[:k], ids[k:], use.name))


def run_block(ctx: RunContext, t: Triples, start: int = 0) -> tuple[Triples, Pairs]:
    """Solve a block of study instances (the first is instance ``start``), pair them, build and
    solve partners; return all its triples and admissible pairs (indices local to the block)."""
    ctx.block_start = start
    solve_into(ctx, t, "solve")
    pairs = Pairs.empty()
    t0 = time.perf_counter()
    pairs.extend(own_pairs(ctx, t, torch.arange(len(t))))
    ctx.add_phase(Phase("own pairs", len(t), time.perf_counter() - t0))
    run_triple_constructions(ctx, t, pairs)
    run_pair_constructions(ctx, t, pairs)
    return t, pairs
