"""The certified minimum-norm interpolant of a two-layer ReLU net (plugins.models.two_layer_convex,
Pilanci & Ergen's convex program) against brute force on tiny nets, closed forms and its own
certificate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as hs
from scipy.optimize import linprog, minimize

from plugins.models import two_layer_convex as tc
from plugins.models.two_layer_relu import two_layer_relu

EPS = np.finfo(np.float64).eps


# ------------------------------------------------------------------------------------------
# brute force
# ------------------------------------------------------------------------------------------
def grid_min_path_norm(X: np.ndarray, y: np.ndarray, N: int) -> tuple[float, np.ndarray, float]:
    """min Σ|c_a| s.t. Σ_a c_a σ(X w_a) = y over unit directions w_a on a grid of N angles plus
    every angle where some ⟨x_k, w⟩ = 0 (scipy HiGHS LP, no patterns involved).

    Returns (value, the grid net's outputs, h = the largest angular spacing). Every grid net is a
    real net, so value ≥ the true minimum; and within one closed cell σ(X w) is linear in w, so a
    neuron r·(cos φ, sin φ) between two grid angles of its cell is a nonnegative combination of
    the two grid neurons costing at most r / cos(h/2): value ≤ minimum / cos(h/2)."""
    phi = np.arctan2(X[:, 1], X[:, 0])
    ang = np.unique(np.mod(np.concatenate([np.linspace(0, 2 * np.pi, N, endpoint=False),
                                           phi + np.pi / 2, phi - np.pi / 2]), 2 * np.pi))
    h = float(np.diff(np.append(ang, ang[0] + 2 * np.pi)).max())
    F = np.maximum(X @ np.stack([np.cos(ang), np.sin(ang)]), 0.0)  # [n, K]
    tight = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
    res = linprog(np.ones(2 * F.shape[1]), A_eq=np.concatenate([F, -F], 1), b_eq=y, bounds=(0, None),
                  method="highs", options=tight)
    assert res.status == 0
    c = res.x[: F.shape[1]] - res.x[F.shape[1]:]
    return float(np.abs(c).sum()), F @ c, h


def slsqp_min_half_sq_norm(X: np.ndarray, y: np.ndarray, m: int, seeds: range) -> list[tuple[float, np.ndarray]]:
    """Local minima of ½‖θ‖² s.t. f_θ(X) = y over width-m nets (SLSQP with the exact Jacobian on
    the active pattern), one per seed that reached the constraint: (½‖θ‖², f_θ(X))."""
    n, d = X.shape

    def out(th):
        return np.maximum(X @ th[: m * d].reshape(m, d).T, 0.0) @ th[m * d:]

    def jac(th):
        W, v = th[: m * d].reshape(m, d), th[m * d:]
        Z = X @ W.T
        JW = ((Z > 0) * v[None])[:, :, None] * X[:, None, :]
        return np.concatenate([JW.reshape(n, -1), np.maximum(Z, 0.0)], 1)

    found = []
    for s in seeds:
        th0 = np.random.default_rng(s).standard_normal(m * (d + 1))
        r = minimize(lambda t: 0.5 * t @ t, th0, jac=lambda t: t, method="SLSQP",
                     constraints=[{"type": "eq", "fun": lambda t: out(t) - y, "jac": jac}],
                     options={"maxiter": 500, "ftol": 1e-12})
        if r.success and np.abs(out(r.x) - y).max() <= 1e-8 * np.abs(y).max():
            found.append((float(r.fun), out(r.x)))
    return found


def tiny_instances():
    """d = 2, n ≤ 4: Gaussian data and a degenerate integer one (two points on one ray, so
    f(2x) = 2f(x) forces y₂ = 2y₁)."""
    out = []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        n = 2 + seed % 3
        out.append((f"gauss{seed}", rng.standard_normal((n, 2)), rng.standard_normal(n)))
    out.append(("ray", np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]), np.array([1.0, 2.0, -1.0, 0.5])))
    return out


# ------------------------------------------------------------------------------------------
# agreement with brute force
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,X,y", tiny_instances(), ids=[t[0] for t in tiny_instances()])
def test_agrees_with_the_direction_grid_in_2d(name, X, y):
    r = tc.min_norm_interpolant(X, y)
    assert r.exact and r.ok and r.patterns.method == "arrangement"
    grid, grid_out, h = grid_min_path_norm(X, y, 4096)
    # the grid net is a real net: its norm is at least the certified bound for its own outputs
    assert grid >= float(grid_out @ r.dual) * (1 - 1e-12)
    # and the grid is at most min / cos(h/2) (LP tolerance 1e-10 on unit-size data)
    assert grid <= r.value / np.cos(h / 2) + 1e-9 * max(1.0, r.value)
    rel = (grid - r.value) / r.value
    print(f"{name}: n={len(y)} convex {r.value:.12g} (gap {r.gap:.1e}) grid {grid:.12g} "
          f"rel {rel:.2e} bound {1 / np.cos(h / 2) - 1:.2e}")


def test_agrees_with_multistart_nonconvex_half_sq_norm():
    """½‖θ‖² minimized directly over width n + 1 (SLSQP, 20 seeds): no local solution goes below
    the certified bound, and the best one reaches the optimum. Instances where SLSQP reaches zero
    loss from these seeds (on near-degenerate ones it does not: the grid test covers those)."""
    for seed in (0, 1, 2, 4):
        rng = np.random.default_rng(100 + seed)
        n = 3 + seed % 2
        X, y = rng.standard_normal((n, 2)), rng.standard_normal(n)
        r = tc.min_norm_interpolant(X, y)
        found = slsqp_min_half_sq_norm(X, y, n + 1, range(20))
        assert found
        for val, out in found:
            assert val >= float(out @ r.dual) * (1 - 1e-12)
        best = min(v for v, _ in found)
        print(f"slsqp seed {seed}: n={n} convex {r.value:.12g} best of {len(found)} {best:.12g} "
              f"rel {(best - r.value) / r.value:.2e}")
        assert abs(best - r.value) <= 1e-8 * r.value


# ------------------------------------------------------------------------------------------
# patterns
# ------------------------------------------------------------------------------------------
def pattern_datasets():
    rng = np.random.default_rng(7)
    ray = np.array([[1.0, 2, 0], [2, 4, 0], [-1, -2, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]])
    concurrent = np.array([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [1, -1, 0], [0, 0, 1], [1, 1, 1], [2, -1, 3]])
    grid = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (0, 1)], dtype=float)[[1, 4, 7, 9, 12, 15, 17]]
    low_rank = rng.standard_normal((9, 3)) @ rng.standard_normal((3, 5))
    return [("gauss2", rng.standard_normal((7, 2))), ("collinear2", np.array([[1.0, 1], [2, 2], [-3, -3], [1, 0], [0, 0]])),
            ("gauss3", rng.standard_normal((9, 3))), ("ray3", ray), ("concurrent3", concurrent), ("grid3", grid),
            ("rank3_in_R5", low_rank)]


@pytest.mark.parametrize("name,X", pattern_datasets(), ids=[t[0] for t in pattern_datasets()])
def test_enumeration_finds_every_pattern(name, X):
    P = tc.activation_patterns(X)
    assert P.exact and P.method == "arrangement" and P.rank <= 3
    enumerated = {tuple(row) for row in P.D}
    assert len(enumerated) == P.count
    # every sampled direction's pattern is listed (the all-inactive one is dropped on purpose)
    U = np.random.default_rng(1).standard_normal((60000, X.shape[1]))
    sampled = {tuple(row) for row in (U @ X.T >= 0) if (row & X.any(1)).any()}
    assert sampled <= enumerated
    # every listed pattern is a real open cell: its witness realizes it strictly
    Zw = P.witnesses @ X.T
    nz = X.any(1)
    assert bool((np.abs(Zw[:, nz]) > 0).all())
    assert np.array_equal(Zw >= 0, P.D)
    # the geometric enumeration agrees with the LP-based incremental one (independent code)
    r, V = tc._row_space(X)
    H, group, orient = tc._lines(X @ V)
    signs, _ = tc._cells_incremental(H)
    D2, _ = tc._signs_to_patterns(signs, group, orient)
    assert {tuple(row) for row in D2} == enumerated


def test_generic_counts_and_higher_rank_methods():
    rng = np.random.default_rng(3)
    for L in (3, 6, 9):  # L planes in general position through 0 in R³: L² − L + 2 cells
        X = rng.standard_normal((L, 3))
        P = tc.activation_patterns(X)
        all_off = int(((P.witnesses @ X.T) < 0).all(1).any() or ((-P.witnesses @ X.T) < 0).all(1).any())
        assert P.count + all_off == L * L - L + 2
    X = np.linalg.qr(rng.standard_normal((6, 6)))[0][:4] * np.array([[1.0], [2.0], [0.5], [3.0]])
    P = tc.activation_patterns(X)  # orthogonal inputs: independent hyperplanes, all 2^4 − 1 nonzero patterns
    assert P.exact and P.method == "independent" and P.count == 15
    X = rng.standard_normal((6, 4))  # 6 hyperplanes in R⁴: 2(1 + 5 + 10 + 10) = 52 cells
    P = tc.activation_patterns(X)
    assert P.exact and P.method == "incremental" and P.count in (51, 52)
    assert np.array_equal(P.witnesses @ X.T >= 0, P.D)
    P = tc.activation_patterns(rng.standard_normal((20, 10)))
    assert not P.exact and P.method == "sampled"
    with pytest.raises(ValueError, match="max_patterns"):
        tc.activation_patterns(rng.standard_normal((20, 10)), method="exact")


# ------------------------------------------------------------------------------------------
# the program and its certificate
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d,n", [(2, 4), (3, 6), (3, 10)])
def test_recovered_net_interpolates_and_attains_the_optimum(d, n):
    rng = np.random.default_rng(10 * d + n)
    X, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    r = tc.min_norm_interpolant(X, y)
    assert r.exact and r.ok
    assert 0 <= r.lower_bound <= r.value and r.gap <= 1e-7 * r.value
    assert abs(r.program_value - r.value) <= 1e-7 * r.value
    assert 1 <= r.m_star <= n
    model = two_layer_relu(width=r.m_star + 2)
    th = r.theta(r.m_star + 2)
    pred = model.predict(th[None], torch.from_numpy(X)[None])[0].numpy()
    assert np.abs(pred - y).max() <= 1e-12 * np.abs(y).max()
    W, v = model.split(th[None])
    assert float((v.abs() * W.norm(dim=-1)).sum()) == pytest.approx(r.value, rel=1e-14)
    assert 0.5 * float(th @ th) == pytest.approx(r.value, rel=1e-14)
    # the dual is feasible: |dualᵀσ(Xu)| ≤ ‖u‖ on random directions
    U = rng.standard_normal((20000, d))
    assert (np.abs(np.maximum(U @ X.T, 0.0) @ r.dual) <= np.linalg.norm(U, axis=1) * (1 + 1e-12)).all()


def test_sampled_program_is_an_upper_bound():
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((9, 3)), rng.standard_normal(9)
    exact = tc.min_norm_interpolant(X, y)
    for k in (8, 30, 2000):
        s = tc.min_norm_interpolant(X, y, method="sample", n_samples=k, seed=k)
        assert not s.exact and s.patterns.method == "sampled"
        if s.ok:  # few patterns may not fit y at all
            assert s.value >= exact.lower_bound * (1 - 1e-12)
            assert s.residual <= 1e-12


def orthogonal(d, radii, seed):
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]
    return Q[: len(radii)] * np.asarray(radii)[:, None]


@pytest.mark.parametrize("d,radii,y", [(3, [1.0, 1.0, 1.0], [1.0, 2.0, 0.5]),
                                       (3, [2.0, 0.5, 1.0], [1.0, -2.0, 0.5]),
                                       (6, [1.0, 3.0, 0.5, 2.0], [0.7, 1.5, 2.0, 0.3]),
                                       (6, [1.0, 3.0, 0.5, 2.0], [0.7, -1.5, 2.0, -0.3])])
def test_orthogonal_inputs_closed_form(d, radii, y):
    """x_i orthogonal, ‖x_i‖ = r_i: min Σ|v_j|‖w_j‖ = ‖(y_i/r_i)_{y_i>0}‖₂ + ‖(y_i/r_i)_{y_i<0}‖₂.

    Upper: u₊ = Σ_{y_i>0} (y_i/r_i²) x_i has ⟨u₊, x_k⟩ = y_k on positive labels, 0 elsewhere,
    norm ‖(y/r)₊‖; likewise u₋ with v = −√‖u₋‖. Lower: λ_i = (y_i/r_i²)/‖(y/r)₊‖ on positive
    labels and (y_i/r_i²)/‖(y/r)₋‖ on negative ones has λᵀσ(Xu) = Σ_{y_i>0} (y_i/r_i)/‖(y/r)₊‖ ·
    ⟨u, x_i/r_i⟩₊ ≤ ‖u‖ (Cauchy–Schwarz, the x_i/r_i orthonormal) and −λᵀσ(Xu) ≤ ‖u‖ alike, so
    every interpolant has path norm ≥ λᵀy = ‖(y/r)₊‖ + ‖(y/r)₋‖."""
    X, y = orthogonal(d, radii, seed=d), np.asarray(y)
    q = y / np.asarray(radii)
    closed = float(np.linalg.norm(q[q > 0]) + np.linalg.norm(q[q < 0]))
    r = tc.min_norm_interpolant(X, y)
    assert r.exact
    assert r.lower_bound * (1 - 1e-12) <= closed <= r.value * (1 + 1e-12)
    assert r.value - closed <= r.gap + 1e-12 * closed
    assert r.m_star == int((q > 0).any()) + int((q < 0).any())


def test_refuses_a_width_below_m_star_and_pads_above():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]])
    y = np.array([1.0, -1.0, 1.0])
    r = tc.min_norm_interpolant(X, y)
    assert r.m_star >= 2
    with pytest.raises(tc.WidthError, match="m\\* = "):
        r.theta(r.m_star - 1)
    th = r.theta(r.m_star + 3)
    m, d = r.m_star + 3, 2
    assert th.shape == (m * (d + 1),)
    assert bool((th[r.m_star * d: m * d] == 0).all()) and bool((th[m * d + r.m_star:] == 0).all())
    pred = two_layer_relu(width=m).predict(th[None], torch.from_numpy(X)[None])[0].numpy()
    assert np.abs(pred - y).max() <= 1e-12


_SCALE_X = np.random.default_rng(11).standard_normal((4, 2))
_SCALE_Y = np.random.default_rng(12).standard_normal(4)
_SCALE_P = tc.activation_patterns(_SCALE_X)
_SCALE_BASE = tc.min_norm_interpolant(_SCALE_X, _SCALE_Y, patterns=_SCALE_P)


@settings(max_examples=12, deadline=None)
@given(hs.floats(-6, 6), hs.booleans(), hs.floats(-3, 3))
def test_scaling_labels_scales_the_optimum(log_alpha, negative, log_beta):
    """y → αy multiplies the minimum by |α| (α < 0 swaps the positive and negative neurons);
    X → βX (β > 0) divides it by β. Both certified brackets must contain the scaled minimum."""
    alpha = (-1.0 if negative else 1.0) * 10.0 ** log_alpha
    beta = 10.0 ** log_beta
    r = tc.min_norm_interpolant(beta * _SCALE_X, alpha * _SCALE_Y, patterns=_SCALE_P)
    base = _SCALE_BASE
    k = abs(alpha) / beta
    assert r.lower_bound <= k * base.value * (1 + 1e-12)
    assert k * base.lower_bound <= r.value * (1 + 1e-12)
    assert abs(r.value - k * base.value) <= r.gap + k * base.gap + 1e-12 * r.value


def test_mask_drops_points():
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((5, 3)), rng.standard_normal(5)
    Xp = np.concatenate([X, rng.standard_normal((2, 3))])
    yp = np.concatenate([y, [5.0, -7.0]])
    mask = np.array([1, 1, 1, 1, 1, 0, 0])
    a, b = tc.min_norm_interpolant(X, y), tc.min_norm_interpolant(Xp, yp, mask)
    assert b.value == pytest.approx(a.value, rel=1e-8) and b.patterns.count == a.patterns.count
    assert abs(b.net.predict(X) - y).max() <= 1e-12  # type: ignore[union-attr]


def test_infeasible_data_has_no_net():
    X = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    y = np.array([1.0, 1.0, 0.0])  # f(2x) = 2 f(x) cannot hold
    r = tc.min_norm_interpolant(X, y)
    assert r.status == "infeasible" and not r.ok and r.lower_bound == np.inf
    with pytest.raises(ValueError, match="no certified net"):
        r.theta(3)
    c = tc.check_theta(np.zeros(9), X, y)
    assert c.path_norm.status == "uncertified" and c.witness is None
    zero = tc.min_norm_interpolant(X, np.zeros(3))
    assert zero.ok and zero.value == 0.0 and zero.m_star == 0


# ------------------------------------------------------------------------------------------
# checking a net
# ------------------------------------------------------------------------------------------
def _net_theta(W, v):
    return np.concatenate([np.asarray(W).reshape(-1), np.asarray(v)])


def test_check_certifies_the_minimum_and_beats_others():
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((5, 2)), rng.standard_normal(5)
    opt = tc.min_norm_interpolant(X, y)
    m = opt.m_star + 2
    # the minimum itself
    c = tc.check_theta(opt.theta(m), X, y, optimum=opt)
    assert c.half_sq_norm.status == "certified" and c.path_norm.status == "certified" and c.witness is None
    assert c.path_norm.excess <= c.path_norm.tol + 1e-12 * c.path_norm.value
    # unbalanced (w·2, v/2): same function and path norm, larger ½‖θ‖²
    W, v = opt.net.W, opt.net.v  # type: ignore[union-attr]
    c = tc.check_theta(_net_theta(2 * W, v / 2), X, y, optimum=opt)
    assert c.path_norm.status == "certified" and c.half_sq_norm.status == "beaten"
    assert c.half_sq_norm.value - opt.value > c.half_sq_norm.tol
    # a canceling pair of neurons: same function, larger norm on both counts
    w = rng.standard_normal(2)
    th = _net_theta(np.vstack([W, w, w]), np.concatenate([v, [0.7, -0.7]]))
    c = tc.check_theta(th, X, y, optimum=opt)
    assert c.path_norm.status == "beaten" and c.half_sq_norm.status == "beaten"
    assert c.witness is not None and c.witness.shape == th.shape
    wit = c.witness.numpy()
    k = len(v) + 2
    assert np.abs(np.maximum(X @ wit[: 2 * k].reshape(k, 2).T, 0) @ wit[2 * k:] - y).max() <= 1e-12
    assert 0.5 * wit @ wit < c.half_sq_norm.value - c.half_sq_norm.tol
    # the tolerance is the certificate's gap plus what the caller adds
    assert tc.check_theta(opt.theta(m), X, y, optimum=opt, rtol=1e-3).path_norm.tol == pytest.approx(opt.gap + 1e-3 * opt.value)


def test_check_narrow_net_and_sampled_patterns():
    # two positive labels at an obtuse angle: one neuron fits them, two fit them cheaper
    X = np.array([[1.0, 0.0], [np.cos(2.5), np.sin(2.5)]])
    y = np.array([1.0, 1.0])
    w = np.linalg.solve(X, y)  # v = 1: ⟨w, x_i⟩ = 1 > 0
    s = np.sqrt(np.linalg.norm(w))
    c = tc.check_theta(_net_theta(w[None] / s, [s]), X, y)
    assert c.optimum.m_star == 2 and c.optimum.value < c.path_norm.value - c.path_norm.tol
    assert c.path_norm.status == "inconclusive" and "m* = 2 > 1" in c.path_norm.reason
    # sampled patterns (forced): the minimum is found (θ's own patterns are in the program) but not certified
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((6, 3)), rng.standard_normal(6)
    opt = tc.min_norm_interpolant(X, y)
    c = tc.check_theta(opt.theta(opt.m_star), X, y, method="sample", n_samples=50)
    assert not c.optimum.exact and c.path_norm.status == "uncertified"
    assert c.optimum.value <= c.path_norm.value + c.path_norm.tol


def test_model_method_checks_a_batch():
    rng = np.random.default_rng(9)
    X = torch.from_numpy(rng.standard_normal((2, 4, 3)))
    y = torch.from_numpy(rng.standard_normal((2, 4)))
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])
    opts = [tc.min_norm_interpolant(X[b], y[b], mask[b]) for b in range(2)]
    m = max(o.m_star for o in opts) + 1
    model = two_layer_relu(width=m)
    theta = torch.stack([opts[0].theta(m), torch.zeros(4 * m)])
    checks = model.certified_min_norm(theta, X, y, mask)
    assert checks[0].path_norm.status == "certified" and checks[0].witness is None
    # θ = 0 is the cheapest net with its own outputs (0) but does not fit y: no certificate
    assert checks[1].path_norm.status == "uncertified" and "fits y only" in checks[1].path_norm.reason
    assert checks[1].optimum.value == pytest.approx(opts[1].value, rel=1e-8)
    with pytest.raises(ValueError, match="train_output"):
        two_layer_relu(width=m, train_output=False).certified_min_norm(theta, X, y, mask)
