"""Regression: the exact single-neuron solver never reports `sliding` for labels ≥ 0 (issue 12, item 4).

tests/data/exact_ties_w1.json holds the 55 instances of 10^6 W1 instances (``w1_batch(50_000,
seed)`` for seeds 0–19: d = 5, n = 4, teacher labels, ‖θ0‖ ≈ 0.1) on which the solver used to
report SLIDING: a point switched at a time where the flow had all but reached its limit, and the
consistency check of the next piece read derivatives at round-off level, flipping the point back
and forth until the cap. A single ReLU neuron with labels ≥ 0 cannot slide (DESIGN.md, Solvers).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ibtest.base import status as st
from ibtest.plugin.specs import PiecewiseLinearNeuron
from ibtest.solve.solvers.exact import solve_exact
from ibtest.solve.solvers.exact_reference import solve_exact_reference

F64 = torch.float64
RELU = PiecewiseLinearNeuron(pos=1.0, neg=0.0, at_zero=1.0)
DATA = os.path.join(os.path.dirname(__file__), "data", "exact_ties_w1.json")


def _load():
    with open(DATA) as fh:
        rows = json.load(fh)
    X = torch.tensor([r["X"] for r in rows], dtype=F64)
    y = torch.tensor([r["y"] for r in rows], dtype=F64)
    w0 = torch.tensor([r["w0"] for r in rows], dtype=F64)
    return X, y, w0


def test_no_sliding_for_nonnegative_labels_batched_and_alone():
    X, y, w0 = _load()
    assert X.shape == (55, 4, 5) and bool((y >= 0).all())
    res = solve_exact(X, y, torch.ones_like(y), w0, RELU)
    assert not bool((res.status == st.SLIDING).any()), res.status
    assert set(res.status.tolist()) <= {st.CONVERGED, st.STALLED}
    for i in range(0, 55, 6):  # alone: the same status, the same limit up to round-off
        one = solve_exact(X[i:i + 1], y[i:i + 1], torch.ones_like(y[i:i + 1]), w0[i:i + 1], RELU)
        assert one.status.item() == res.status[i].item()
        assert torch.allclose(one.theta[0], res.theta[i], atol=1e-12, rtol=0)


def test_tie_instances_agree_with_the_reference():
    X, y, w0 = _load()
    res = solve_exact(X, y, torch.ones_like(y), w0, RELU)
    for i in range(0, 55, 4):
        th, code = solve_exact_reference(X[i].numpy(), y[i].numpy(), w0[i].numpy())
        assert np.abs(np.asarray(th) - res.theta[i].numpy()).max() < 1e-10, i
        if code in (st.CONVERGED, st.STALLED):
            assert code == res.status[i].item(), (i, code, res.status[i])
