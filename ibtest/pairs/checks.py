"""Checks on what a construction plugin returns, before the engine solves it.

A triple construction returns :class:`~ibtest.plugin.specs.Partners` (or None: nothing to add), a
pair construction :class:`~ibtest.plugin.specs.NewPairs`. Anything the engine cannot use is a
:class:`ValueError` whose message says what was wrong; the engine reports it in the run's errors
(``construction 'x' returned ...``) and goes on without that construction's partners:

* the right type; tensors of real numbers, finite;
* shapes that agree: X [k, n, d] with the study's d, y and mask [k, n], θ0 [k, P] with the
  model's P (pairs: both sides' X, y, mask and one θ0 per pair);
* mask entries 0 or 1 with at least one real point per dataset;
* ``source`` [k] integers indexing the batch the construction was given (0 ≤ s < sources);
* ``labels`` a list of k strings.
"""
from __future__ import annotations

from typing import Any

import torch

from ibtest.plugin.specs import NewPairs, PairBatch, Partners

Tensor = torch.Tensor


def _tensor(t: Any, what: str) -> Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what} of type {type(t).__name__}, expected a torch.Tensor")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{what} of dtype {t.dtype}, expected real numbers")
    t = t.detach().to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} with non-finite entries")
    return t


def _dataset(X: Any, y: Any, mask: Any, k: int, d: int, side: str = "") -> tuple[Tensor, Tensor, Tensor]:
    X, y, mask = _tensor(X, f"X{side}"), _tensor(y, f"y{side}"), _tensor(mask, f"mask{side}")
    if X.dim() != 3 or X.shape[0] != k or X.shape[2] != d or X.shape[1] < 1:
        raise ValueError(f"X{side} of shape {list(X.shape)}, expected [{k}, n, {d}] with n >= 1")
    n = X.shape[1]
    for what, t in ((f"y{side}", y), (f"mask{side}", mask)):
        if list(t.shape) != [k, n]:
            raise ValueError(f"{what} of shape {list(t.shape)}, expected [{k}, {n}] to match X{side}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"mask{side} with entries other than 0 and 1")
    if not bool((mask.sum(-1) > 0).all()):
        raise ValueError(f"a dataset{side} whose mask has no real point")
    return X, y, mask


def _source(src: Any, k: int, sources: int) -> Tensor:
    if not isinstance(src, torch.Tensor) or src.is_complex() or src.dtype == torch.bool:
        raise ValueError(f"source of type {type(src).__name__}, expected an integer tensor [{k}]")
    if src.is_floating_point():
        if not bool(torch.isfinite(src).all()) or not bool((src == src.round()).all()):
            raise ValueError("source indices that are not integers")
    src = src.to(torch.int64)
    if list(src.shape) != [k]:
        raise ValueError(f"source of shape {list(src.shape)}, expected [{k}]")
    bad = (src < 0) | (src >= sources)
    if bool(bad.any()):
        raise ValueError(f"source index {int(src[bad][0])} out of range: it was given {sources} "
                         f"{'triple' if sources == 1 else 'triples or pairs'} (0 .. {sources - 1})")
    return src


def _labels(labels: Any, k: int) -> list[str]:
    if not isinstance(labels, (list, tuple)) or not all(isinstance(s, str) for s in labels):
        raise ValueError(f"labels of type {type(labels).__name__}, expected a list of {k} strings")
    if len(labels) != k:
        raise ValueError(f"{len(labels)} labels for {k} datasets")
    return list(labels)


def check_partners(out: Any, sources: int, d: int) -> Partners | None:
    """A triple construction's result, checked (None or no dataset: nothing to add)."""
    if out is None:
        return None
    if not isinstance(out, Partners):
        raise ValueError(f"{type(out).__name__}, expected ibtest.Partners(X, y, mask, source, labels)")
    X = out.X
    k = X.shape[0] if isinstance(X, torch.Tensor) and X.dim() >= 1 else -1
    if k == 0:
        return None
    if k < 0:
        _tensor(X, "X")
        raise ValueError(f"X of shape {list(X.shape)}, expected [k, n, {d}]")
    X, y, mask = _dataset(X, out.y, out.mask, k, d)
    return Partners(X, y, mask, _source(out.source, k, sources), _labels(out.labels, k))


def check_new_pairs(out: Any, sources: int, d: int, P: int) -> NewPairs | None:
    """A pair construction's result, checked (None or no pair: nothing to add)."""
    if out is None:
        return None
    if not isinstance(out, NewPairs) or not isinstance(out.pairs, PairBatch):
        raise ValueError(f"{type(out).__name__}, expected ibtest.NewPairs(ibtest.PairBatch(...), source)")
    p = out.pairs
    theta0 = _tensor(p.theta0, "theta0")
    if theta0.dim() != 2 or theta0.shape[1] != P:
        raise ValueError(f"theta0 of shape {list(theta0.shape)}, expected [k, {P}]")
    k = theta0.shape[0]
    if k == 0:
        return None
    Xa, ya, ma = _dataset(p.Xa, p.ya, p.maska, k, d, " (side a)")
    Xb, yb, mb = _dataset(p.Xb, p.yb, p.maskb, k, d, " (side b)")
    batch = PairBatch(Xa, ya, ma, Xb, yb, mb, theta0, _labels(p.labels, k))
    return NewPairs(batch, _source(out.source, k, sources))
