"""Stiff tails of the adaptive solver (issue 12): the Rosenbrock (Rodas5 / Rodas3) tail integrator,
former stragglers of W2, and the W2 statuses (no instance runs out of the step budget)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.w2_adaptive import _np_grad, make_w2
from ibtest.base import status as st
from ibtest.solve.solvers.adaptive import solve_adaptive
from ibtest.solve.solvers.rosenbrock import RODAS3, RODAS5, RODAS5P, observed_errors
from ibtest.solve.solvers.stiff import hessian
from plugins.models.two_layer_relu import two_layer_relu

F64 = torch.float64


@pytest.mark.parametrize("tab, lo, hi, steps", [(RODAS3, 2.8, 3.3, (0.2, 0.1, 0.05, 0.025)),
                                                (RODAS5, 4.8, 5.4, (0.2, 0.1, 0.05, 0.025)),
                                                (RODAS5P, 4.6, 5.4, (0.05, 0.025, 0.0125))],
                         ids=["rodas3", "rodas5", "rodas5p"])
def test_rosenbrock_methods_have_their_order(tab, lo, hi, steps):
    """The published coefficients, as typed in: the observed global order on a smooth nonlinear
    gradient flow is the method's order (3 for Rodas3, 5 for Rodas5 and Rodas5P; Rodas5P reaches
    its asymptotic rate at smaller steps: 3.4, 4.4, 4.8, 4.9 from h = 0.2 halved)."""
    e = observed_errors(tab, steps)
    rates = [math.log2(e[i] / e[i + 1]) for i in range(len(e) - 1)]
    assert all(lo < r < hi for r in rates), (e, rates)


def _radau(X, y, th0, T, m=4, d=4):
    from scipy.integrate import solve_ivp
    sol = solve_ivp(lambda t, u: -_np_grad(u, X[0].numpy(), y[0].numpy(), m, d), (0.0, T), th0[0].numpy(),
                    method="Radau", rtol=1e-12, atol=1e-14, t_eval=[T])
    assert sol.success
    return sol.y[:, -1]


def test_pending_kink_does_not_keep_a_stiff_tail_explicit():
    """make_w2(1000, seed=0) instance 233: a pre-activation with sliding evidence tends to 0 only
    as t → ∞ (the kink stays pending) while the tail is stiff. When a pending kink blocked the
    switch to the Rosenbrock step the instance ran 17,744 explicit steps at the stability limit;
    now it converges in a few hundred."""
    X, y, m, th0 = (a[233:234] for a in make_w2(1000, seed=0))
    res = solve_adaptive(two_layer_relu(width=4), X, y, m, th0, max_steps=20000)
    assert res.status.item() == st.CONVERGED
    assert res.info["stiff_steps"].item() > 0
    assert res.info["steps"].item() < 1000, res.info["steps"]


def test_tail_that_crosses_kinks_converges_and_matches_radau():
    """make_w2(1000, seed=1) instance 925: its Rosenbrock steps change the activation pattern
    several times. When each such exit blocked the switch for ``stiff_after`` (then 1000) steps it
    ended `budget` (20,000 steps); now it converges, to the limit a tight Radau solve reaches."""
    X, y, m, th0 = (a[925:926] for a in make_w2(1000, seed=1))
    res = solve_adaptive(two_layer_relu(width=4), X, y, m, th0, max_steps=20000)
    assert res.status.item() == st.CONVERGED
    assert res.info["stiff_steps"].item() > 0
    assert res.info["steps"].item() < 2000, res.info["steps"]
    ref = _radau(X, y, th0, float(res.info["t"]))
    assert np.abs(ref - res.theta[0].numpy()).max() < 1e-7


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
@pytest.mark.parametrize("method", ["rodas5p", "rodas5", "rodas3"])
def test_stiff_w2_instance_switches_and_matches_radau(method):
    """Instance 0 of make_w2(1000, seed=0) has a stiff tail (it ran the whole explicit budget
    before the Rosenbrock step existed): it switches to the Rosenbrock step, converges, and
    matches a tight per-instance Radau solve of the same flow up to the same time, with either
    method."""
    X, y, m, th0 = (a[:1] for a in make_w2(1000, seed=0))
    model = two_layer_relu(width=4)
    res = solve_adaptive(model, X, y, m, th0, max_steps=20000, stiff_method=method)
    assert res.status.item() == st.CONVERGED
    assert res.info["stiff_steps"].item() > 0
    ref = _radau(X, y, th0, float(res.info["t"]))
    assert np.abs(ref - res.theta[0].numpy()).max() < 1e-7


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


def test_unknown_stiff_method_is_refused_with_the_choices():
    X, y, m, th0 = (a[:1] for a in make_w2(1, seed=0))
    with pytest.raises(ValueError, match=r"stiff_method must be one of \['rodas3', 'rodas5', 'rodas5p'\], got 'rodas4'"):
        solve_adaptive(two_layer_relu(width=4), X, y, m, th0, max_steps=10, stiff_method="rodas4")
