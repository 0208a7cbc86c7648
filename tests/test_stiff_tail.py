"""Stiff tails of the adaptive solver (issue 12): the Rosenbrock (Rodas3) tail integrator and the
W2 statuses (no instance runs out of the step budget)."""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.w2_adaptive import _np_grad, make_w2  # noqa: E402
from ibtest.base import status as st  # noqa: E402
from ibtest.solve.solvers.adaptive import solve_adaptive  # noqa: E402
from ibtest.solve.solvers.stiff import hessian, rodas3_order  # noqa: E402

try:
    from ibtest_plugins.models.two_layer_relu import two_layer_relu
except ImportError:  # pragma: no cover
    from plugins.models.two_layer_relu import two_layer_relu

F64 = torch.float64


def test_rodas3_is_third_order():
    e = rodas3_order()
    rates = [math.log2(e[i] / e[i + 1]) for i in range(len(e) - 1)]
    assert all(2.8 < r < 3.3 for r in rates), (e, rates)


def test_hessian_matches_finite_differences():
    X, y, m, th = make_w2(3, seed=1)
    model = two_layer_relu(width=4)
    H = hessian(model, th, X, y, m)
    eps = 1e-6
    P = th.shape[1]
    for k in range(P):
        e = torch.zeros(P, dtype=F64)
        e[k] = eps
        fd = (model.grad(th + e, X, y, m) - model.grad(th - e, X, y, m)) / (2 * eps)
        assert torch.allclose(H[:, :, k], fd, atol=1e-7, rtol=1e-6)


@pytest.mark.slow
def test_stiff_w2_instance_switches_and_matches_radau():
    """Instance 0 of make_w2(1000, seed=0) has a stiff tail (it ran the whole explicit budget):
    it switches to the Rosenbrock step, converges, and matches a tight per-instance Radau solve
    of the same flow up to the same time."""
    from scipy.integrate import solve_ivp

    X, y, m, th0 = (a[:1] for a in make_w2(1000, seed=0))
    model = two_layer_relu(width=4)
    res = solve_adaptive(model, X, y, m, th0, max_steps=20000)
    assert res.status.item() == st.CONVERGED
    assert res.info["stiff_steps"].item() > 0
    T = float(res.info["t"])
    sol = solve_ivp(lambda t, u: -_np_grad(u, X[0].numpy(), y[0].numpy(), 4, 4), (0.0, T), th0[0].numpy(),
                    method="Radau", rtol=1e-12, atol=1e-14, t_eval=[T])
    assert sol.success
    assert np.abs(sol.y[:, -1] - res.theta[0].numpy()).max() < 1e-7


@pytest.mark.slow
def test_w2_statuses_no_budget_and_sliding_only_with_stop():
    """W2 (width 4, d = 4, n = 3): the first 120 instances of make_w2(1000, seed=0), which hold
    several former stiff-tail and chattering-kink stragglers (indices 0, 44, 115, 117): no
    instance ends `budget` at the default W2 budget; `sliding` only under `sliding: stop`."""
    X, y, m, th0 = (a[:120] for a in make_w2(1000, seed=0))
    model = two_layer_relu(width=4)
    fol = solve_adaptive(model, X, y, m, th0, max_steps=20000)
    assert not bool((fol.status == st.BUDGET).any()), (fol.status == st.BUDGET).nonzero()
    assert not bool((fol.status == st.SLIDING).any())
    assert bool((fol.info["stiff_steps"] > 0).any())
    stop = solve_adaptive(model, X, y, m, th0, max_steps=20000, sliding="stop")
    assert not bool((stop.status == st.BUDGET).any()), (stop.status == st.BUDGET).nonzero()
    assert bool((stop.status == st.SLIDING).any())
    # where neither slid, both paths give the same statuses
    same = (fol.info["slid"] == 0) & (stop.status != st.SLIDING)
    assert torch.equal(fol.status[same], stop.status[same])
