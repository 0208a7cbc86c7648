"""Depth-2 models: gradients, balancedness, the paper's depth-2 case, diagonal nets and Q_α."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ibtest
from ibtest.base import status as st
from ibtest.solve.solvers.adaptive import solve_adaptive
from plugins.models.diagonal_linear import diagonal_linear
from plugins.models.matrix_factorization import matrix_factorization
from plugins.models.two_layer_relu import two_layer_relu

F64 = torch.float64


@pytest.mark.parametrize("make,d", [(lambda: two_layer_relu(width=3), 4),
                                    (lambda: two_layer_relu(width=2, train_output=False), 3),
                                    (diagonal_linear, 5),
                                    (lambda: matrix_factorization(depth=3, size=2), 4)])
def test_hand_written_grad_matches_autograd(make, d):
    model = make()
    g = torch.Generator().manual_seed(3)
    X = torch.randn(6, 4, d, generator=g, dtype=F64)
    y = torch.randn(6, 4, generator=g, dtype=F64)
    mask = (torch.rand(6, 4, generator=g) > 0.2).to(F64)
    th = torch.randn(6, model.n_params(d), generator=g, dtype=F64)
    ga = ibtest.ModelBase.grad(model, th, X, y, mask)
    if getattr(model, "train_output", True) is False:
        ga[:, -model.m:] = 0.0
    assert (model.grad(th, X, y, mask) - ga).abs().max() < 1e-12


def test_two_layer_relu_structure_and_sigma_prime_zero():
    m1 = two_layer_relu(width=2, relu_grad_at_zero=1)
    m0 = two_layer_relu(width=2, relu_grad_at_zero=0)
    d = 3
    assert m1.n_params(d) == 8 and m1.blocks(d) == {"w": slice(0, 6), "v": slice(6, 8)}
    th = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 2.0, -1.0]], dtype=F64)
    X = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=F64)
    y = torch.tensor([[1.0]], dtype=F64)
    one = torch.ones_like(y)
    # unit 0 has z = 0: σ'(0) = 1 moves it, σ'(0) = 0 leaves it
    assert m1.grad(th, X, y, one)[0, :3].abs().sum() > 0
    assert m0.grad(th, X, y, one)[0, :3].abs().sum() == 0
    u = m1.predictor(th)
    assert torch.allclose(u, torch.tensor([[0.0, 0.0, 0.0, -1.0, -2.0, -3.0]], dtype=F64))
    M = torch.linalg.qr(torch.randn(1, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(0)))[0]
    X2 = torch.randn(1, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(m1.predict(m1.rotate(th, M), X2 @ M.transpose(1, 2)), m1.predict(th, X2))
    assert m1.first_layer(th).shape == (1, 2, 3)
    assert m1.hidden_preactivations(th, X2).shape == (1, 5, 2)


def _balanced_problem():
    g = torch.Generator().manual_seed(5)
    B, n, d, m = 6, 4, 3, 3
    X = torch.randn(B, n, d, generator=g, dtype=F64)
    y = torch.randn(B, n, generator=g, dtype=F64)
    th0 = 0.3 * torch.randn(B, m * d + m, generator=g, dtype=F64)
    return two_layer_relu(width=m), X, y, torch.ones_like(y), th0


@pytest.mark.slow
def test_balancedness_conserved_by_adaptive_and_drifts_under_gd():
    model, X, y, mask, th0 = _balanced_problem()
    c0 = model.balancedness(th0)
    res = solve_adaptive(model, X, y, mask, th0, t_max=5.0)
    assert (res.info["t"] > 0).all()
    drift_gf = (model.balancedness(res.theta) - c0).abs().max()
    assert drift_gf < 1e-9, drift_gf

    def gd(eta, T=5.0):
        th = th0.clone()
        for _ in range(int(round(T / eta))):
            th = th - eta * model.grad(th, X, y, mask)
        return (model.balancedness(th) - c0).abs().max().item()

    d1, d2 = gd(0.02), gd(0.01)
    assert d1 > 1e-6  # GD does not conserve it
    assert 1.5 < d1 / d2 < 2.6, (d1, d2)  # ... and the drift is O(η)


def _theorem3(gamma):
    X = torch.tensor([[[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, gamma, gamma]]], dtype=F64)
    y = torch.tensor([[16.0, 18.0, 0.0]], dtype=F64)
    return X, y, torch.ones_like(y)


def _depth2_u(gamma, eps):
    X, y, mask = _theorem3(gamma)
    model = two_layer_relu(width=1)
    th0 = torch.tensor([[0.0, 0.0, 0.0, eps]], dtype=F64)
    res = solve_adaptive(model, X, y, mask, th0)
    return res, model.predictor(res.theta)[0]


def test_depth2_paper_case():
    res0, u0 = _depth2_u(0.0, 0.01)
    assert res0.status.item() == st.CONVERGED
    assert torch.allclose(u0, torch.tensor([5.0, -1.0, 0.0], dtype=F64), atol=1e-8)
    u3 = {}
    for eps in (0.01, 0.001):
        res, u = _depth2_u(5.0, eps)
        assert res.status.item() == st.CONVERGED, (eps, res.status)
        assert abs(u[0] - 5.0) < 1e-8 and abs(u[1] + 1.0) < 1e-8
        assert u[2] < -0.1
        u3[eps] = float(u[2])
        # balancedness v² − ‖w‖² = ε² along the way
        model = two_layer_relu(width=1)
        assert abs(float(model.balancedness(res.theta)) - eps * eps) < 1e-9
    assert abs(u3[0.01] - u3[0.001]) < 1e-3, u3
    assert -0.3 < u3[0.001] < -0.2, u3  # an independent run: ≈ −0.26


def _q_alpha_argmin(X, y, alpha):
    """argmin α² Σ q(β_i/α²) s.t. Xβ = y via its smooth dual: β = 2α² sinh(Xᵀλ),
    λ = argmin 2α² Σ cosh((Xᵀλ)_i) − λᵀy (Newton's method, strictly convex)."""
    from scipy.optimize import minimize

    a2 = alpha * alpha
    Xn, yn = X.numpy(), y.numpy()

    def fun(lam):
        s = Xn.T @ lam
        return 2 * a2 * np.cosh(s).sum() - lam @ yn, Xn @ (2 * a2 * np.sinh(s)) - yn

    def hess(lam):
        s = Xn.T @ lam
        return (Xn * (2 * a2 * np.cosh(s))) @ Xn.T

    out = minimize(fun, np.zeros(len(yn)), jac=True, hess=hess, method="trust-exact",
                   options={"gtol": 1e-13, "maxiter": 500})
    beta = 2 * a2 * np.sinh(Xn.T @ out.x)
    assert np.abs(Xn @ beta - yn).max() < 1e-10
    return torch.tensor(beta, dtype=F64)


def _q(beta, alpha):
    z = beta / alpha ** 2
    return alpha ** 2 * (2 - torch.sqrt(4 + z * z) + z * torch.asinh(z / 2)).sum()


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_diagonal_net_reaches_q_alpha_minimizer(alpha):
    g = torch.Generator().manual_seed(7)
    n, d = 3, 6
    X = torch.randn(n, d, generator=g, dtype=F64)
    beta_star = torch.zeros(d, dtype=F64)
    beta_star[0], beta_star[3] = 1.0, -0.5  # sparse regression instance
    y = X @ beta_star
    model = diagonal_linear()
    th0 = alpha * torch.ones(1, 2 * d, dtype=F64)
    res = solve_adaptive(model, X.unsqueeze(0), y.unsqueeze(0), torch.ones(1, n, dtype=F64), th0)
    assert res.status.item() == st.CONVERGED
    beta = model.predictor(res.theta)[0]
    ref = _q_alpha_argmin(X, y, alpha)
    assert (beta - ref).abs().max() < 1e-6, (beta, ref)
    # the minimizer is a minimizer: feasible perturbations along ker X raise Q_α
    N = torch.linalg.svd(X)[2][n:]
    for k in range(N.shape[0]):
        for s in (1e-3, -1e-3):
            assert _q(ref + s * N[k], alpha) > _q(ref, alpha)
    # the other scaling (α instead of α²) is not the GF limit: conventions differ measurably
    if alpha == 0.1:
        ref_wrong = _q_alpha_argmin(X, y, math.sqrt(alpha))  # Q with α in place of α²
        assert (beta - ref_wrong).abs().max() > 1e-3
