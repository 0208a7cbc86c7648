"""Known answers of shared/PAPER.md through the public plugins (model + dataset + solver)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ibtest.base import status
from ibtest.plugin.manager import load_registry

REG = load_registry()
S_EXACT = {1: -0.04077, 2: -0.1107, 5: -0.20905, 20: -0.23011}
S_INTERVAL = {1: (-0.045, -0.035), 2: (-0.12, -0.10), 5: (-0.22, -0.20)}


def theorem3(alpha: float, gamma: float):
    b = REG.get("datasets", "vardi_shamir_theorem3").generate(rng=torch.Generator(), alpha=alpha, gamma=gamma)
    return b.X, b.y, b.mask


def solve(model_name: str, X, y, mask, w0, solver="exact", **opts):
    model = REG.get("models", model_name).factory(**({"relu_grad_at_zero": 1} if model_name == "relu_neuron" else {}))
    return REG.get("solvers", solver).solve(model, X, y, mask, w0, **opts), model


@pytest.mark.parametrize("gamma", [1, 2, 5, 20])
def test_theorem3_s_values(gamma):
    X, y, m = theorem3(1.0, gamma)
    res, _ = solve("relu_neuron", X, y, m, torch.zeros(1, 3))
    assert int(res.status[0]) == status.CONVERGED
    w = res.theta[0]
    assert abs(float(w[0]) - 5) < 1e-12 and abs(float(w[1]) + 1) < 1e-12
    s = float(w[2])
    assert abs(s - S_EXACT[gamma]) < 1e-4
    if gamma in S_INTERVAL:
        lo, hi = S_INTERVAL[gamma]
        assert lo < s < hi


def test_theorem3_gamma0_and_alpha_scaling():
    for alpha in (0.25, 1.0, 4.0):
        X, y, m = theorem3(alpha, 0.0)
        res, _ = solve("relu_neuron", X, y, m, torch.zeros(1, 3))
        assert torch.allclose(res.theta[0], alpha * torch.tensor([5.0, -1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(alpha=st.floats(0.05, 20.0), gamma=st.sampled_from([1.0, 2.0, 5.0]))
def test_scaling_alpha_scales_w(alpha, gamma):
    """Scaling equivariance (Theorem 5's tool): y -> αy gives w -> αw from w(0) = 0."""
    X, y, m = theorem3(1.0, gamma)
    base, _ = solve("relu_neuron", X, y, m, torch.zeros(1, 3))
    Xa, ya, ma = theorem3(alpha, gamma)
    scaled, _ = solve("relu_neuron", Xa, ya, ma, torch.zeros(1, 3))
    assert torch.allclose(scaled.theta, alpha * base.theta, atol=1e-10 * max(1.0, alpha), rtol=0)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_rotation_equivariance_of_the_exact_flow(seed):
    """X -> X Mᵀ and w0 -> M w0 give w∞ -> M w∞ (checked, never assumed by the engine)."""
    from ibtest_plugins.constructions.rotate import haar_orthogonal

    g = torch.Generator().manual_seed(seed)
    X, y, m = theorem3(1.0, 5.0)
    M = haar_orthogonal(1, 3, g)
    res, _ = solve("relu_neuron", X, y, m, torch.zeros(1, 3))
    rot, _ = solve("relu_neuron", X @ M.transpose(1, 2), y, m, torch.zeros(1, 3))
    assert torch.allclose(rot.theta[0], M[0] @ res.theta[0], atol=1e-10)


@pytest.mark.slow
def test_exact_and_gd_agree_to_gd_accuracy_on_random_relu_neurons():
    g = torch.Generator().manual_seed(3)
    B, n, d = 40, 3, 4
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    teacher = torch.randn(B, d, generator=g, dtype=torch.float64)
    y = torch.einsum("bnd,bd->bn", X, teacher).clamp_min(0)
    w0 = 0.3 * torch.randn(B, d, generator=g, dtype=torch.float64)
    mask = torch.ones(B, n, dtype=torch.float64)
    ex, _ = solve("relu_neuron", X, y, mask, w0)
    errs = {}
    for lr in (4e-3, 1e-3):
        gd, _ = solve("relu_neuron", X, y, mask, w0, solver="gd", lr=lr, steps=400_000, fit_tol=1e-24)
        both = (ex.status == status.CONVERGED) & (gd.status == status.CONVERGED)
        assert int(both.sum()) >= 10
        errs[lr] = float((ex.theta[both] - gd.theta[both]).norm(dim=-1).max())
    # GD approaches the flow as the step shrinks: O(η) error, small at η = 1e-3
    assert errs[1e-3] < 0.05
    assert errs[1e-3] < errs[4e-3] or errs[4e-3] < 1e-6


def test_linear_model_is_min_distance_interpolation():
    g = torch.Generator().manual_seed(0)
    B, n, d = 30, 3, 7
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(B, n, generator=g, dtype=torch.float64)
    w0 = torch.randn(B, d, generator=g, dtype=torch.float64)
    res, _ = solve("linear", X, y, torch.ones(B, n, dtype=torch.float64), w0)
    expect = w0 + torch.einsum("bdn,bn->bd", torch.linalg.pinv(X), y - torch.einsum("bnd,bd->bn", X, w0))
    assert torch.allclose(res.theta, expect, atol=1e-12, rtol=0)
