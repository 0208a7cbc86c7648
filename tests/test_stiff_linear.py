"""The Rosenbrock step's linear systems in parts (issue 24, wide networks): the Woodbury solve on
the Gauss–Newton factor and the block-diagonal residual term gives the dense LU's answer, the
projection of held kinks commutes with assembling the parts, a row it cannot solve accurately
falls back to the dense LU, and a width-256 stiff step no longer factors a [P, P] matrix."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as hs

import ibtest
from ibtest.solve.solvers import stiff_linear
from ibtest.solve.solvers.kinks import kink_field
from ibtest.solve.solvers.rosenbrock import RODAS5P, rosenbrock_step
from ibtest.solve.solvers.stiff import step_hessian
from ibtest.solve.solvers.stiff_linear import DenseSystem, PartsSystem, shifted_system
from plugins.models.two_layer_relu import two_layer_relu

F64 = torch.float64


def _problem(seed: int, b: int, m: int, d: int, n: int, scale: float = 1.0, train_output: bool = True):
    g = torch.Generator().manual_seed(seed)
    model = two_layer_relu(width=m, train_output=train_output)
    X = torch.randn(b, n, d, generator=g, dtype=F64)
    y = scale * torch.randn(b, n, generator=g, dtype=F64)
    mask = (torch.rand(b, n, generator=g) > 0.2).to(F64)
    th = torch.randn(b, m * d + m, generator=g, dtype=F64)
    return model, X, y, mask, th, g


def test_two_layer_relu_declares_its_hessian_in_parts_and_they_assemble_to_it():
    for to in (True, False):
        model, X, y, mask, th, _ = _problem(0, 3, 5, 4, 7, train_output=to)
        assert isinstance(model, ibtest.LossHessianParts)
        parts = model.loss_hessian_parts(th, X, y, mask)
        H = model.loss_hessian(th, X, y, mask)
        assert torch.allclose(parts.dense(), H, rtol=0, atol=1e-12 * float(H.abs().max()))


@settings(max_examples=25, deadline=None)
@given(hs.integers(0, 10_000), hs.integers(1, 8), hs.integers(2, 6), hs.integers(2, 9),
       hs.sampled_from([1e-3, 1.0, 1e3]))
def test_the_woodbury_solve_gives_the_dense_lu_answer(seed, m, d, n, c0):
    model, X, y, mask, th, g = _problem(seed, 4, m, d, n)
    parts = model.loss_hessian_parts(th, X, y, mask)
    c = c0 * (0.5 + torch.rand(4, generator=g, dtype=F64))
    rhs = torch.randn(4, th.shape[1], generator=g, dtype=F64)
    ps = PartsSystem(parts, c)
    ds = DenseSystem(parts.dense(), c)
    x, xd = ps.solve(rhs), ds.solve(rhs)
    # the same solution to within the dense LU's own accuracy (both backward-stable: compared
    # through the residual of the assembled system, then in x where the system is well posed)
    M = parts.dense() + torch.diag_embed(c.unsqueeze(-1).expand_as(rhs))
    res = (rhs - (M @ x.unsqueeze(-1)).squeeze(-1)).abs().amax(-1)
    scale = M.abs().sum(-1).amax(-1) * x.abs().amax(-1) + rhs.abs().amax(-1)
    assert bool((res <= 1e-13 * scale).all())
    cond = torch.linalg.cond(M)
    ok = cond < 1e8
    assert torch.allclose(x[ok], xd[ok], rtol=0, atol=float(1e-15 * cond[ok].max() * xd.abs().max()) if bool(ok.any()) else 0)


def test_a_row_the_woodbury_solve_misses_is_solved_by_the_dense_lu(monkeypatch):
    model, X, y, mask, th, g = _problem(3, 3, 4, 3, 5, scale=30.0)
    parts = model.loss_hessian_parts(th, X, y, mask)
    c = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    rhs = torch.randn(3, th.shape[1], generator=g, dtype=F64)
    exact = DenseSystem(parts.dense(), c).solve(rhs)
    # a backward tolerance no solve reaches: every row goes dense, and gets the LU's answer bit for bit
    monkeypatch.setattr(stiff_linear, "BACKWARD_TOL", -1.0)
    ps = PartsSystem(parts, c)
    x = ps.solve(rhs)
    assert bool(ps.fallback.all())
    assert torch.equal(x, exact)
    # a block singular to rounding (c = −the smallest eigenvalue of a residual block: D is
    # singular, c·I + H is not): Woodbury fails on that row only, which the dense LU then solves
    monkeypatch.setattr(stiff_linear, "BACKWARD_TOL", 1e-13)
    ev = torch.linalg.eigvalsh(parts.R[1, 0])
    c2 = torch.tensor([1.0, float(-ev[0]), 1.0], dtype=F64)
    ps2 = PartsSystem(parts, c2)
    x2 = ps2.solve(rhs)
    assert ps2.fallback.tolist() == [False, True, False]
    M = parts.dense() + torch.diag_embed(c2.unsqueeze(-1).expand_as(rhs))
    assert torch.equal(x2[1], DenseSystem(M[1:2] - torch.diag_embed(c2[1:2].expand(1, M.shape[-1])), c2[1:2]).solve(rhs[1:2])[0])
    res = (rhs - (M @ x2.unsqueeze(-1)).squeeze(-1)).abs().amax(-1)
    assert float(res.max()) <= 1e-12 * float(rhs.abs().max() + M.abs().max() * x2.abs().max())


@settings(max_examples=15, deadline=None)
@given(hs.integers(0, 10_000), hs.integers(1, 6), hs.integers(2, 5), hs.integers(2, 6))
def test_projecting_the_parts_gives_the_projected_hessian(seed, m, d, n):
    model, X, y, mask, th, g = _problem(seed, 5, m, d, n)
    kf = kink_field(model)
    assert kf is not None
    S = torch.rand(5, n, m, generator=g) < 0.2
    S[0] = False
    parts = model.loss_hessian_parts(th, X, y, mask)
    proj = kf.project_parts(X, S, parts)
    assert proj is not None
    ref = kf.project_hessian(X, S, parts.dense())
    assert torch.allclose(proj.dense(), ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
    # blocks that do not start with w_j's positions: no projection in parts (the caller goes dense)
    bad = ibtest.HessianParts(parts.J, parts.R, parts.idx.flip(-1))
    assert kf.project_parts(X, S, bad) is None


def test_a_wide_stiff_step_in_parts_matches_the_dense_step_and_factors_no_full_matrix(monkeypatch):
    # width 24 (P = 264 ≥ PARTS_MIN_P) with held kinks on some rows: the Rodas5P step from the
    # projected Hessian in parts equals the step from the projected dense Hessian
    m, d, n = 24, 10, 20
    model, X, y, mask, th, g = _problem(7, 3, m, d, n)
    th = 0.3 * th
    kf = kink_field(model)
    assert kf is not None
    held = torch.zeros(3, n, m, dtype=torch.bool)
    held[1, 0, 2] = held[1, 3, 2] = held[2, 5, 7] = True
    th = kf.project(th, X, held)
    slope = torch.where(held, torch.zeros(()), (kf.preact(th, X) >= 0).to(F64)).to(F64)
    Ap = kf.unit_pinv(X, held)

    def F(u):
        return -kf.project_field(Ap, X, kf.grad(u, X, y, mask, slope))

    has = held.flatten(1).any(-1)
    Hp = step_hessian(model, kf, th, X, y, mask, held, has)
    assert isinstance(Hp, ibtest.HessianParts)
    Hd = kf.project_hessian(X, held, model.loss_hessian(th, X, y, mask))
    Hd[0] = model.loss_hessian(th, X, y, mask)[0]
    h = torch.tensor([0.002, 0.01, 0.03], dtype=F64)
    f0 = F(th)
    calls = []
    real = torch.linalg.lu_factor_ex

    def spy(A, *a, **k):
        calls.append(tuple(A.shape))
        return real(A, *a, **k)

    monkeypatch.setattr(torch.linalg, "lu_factor_ex", spy)
    out_p = rosenbrock_step(RODAS5P, F, th, f0, h, Hp)
    assert all(s[-1] < th.shape[1] for s in calls), calls  # only [k, k] blocks and [n, n]
    assert bool(torch.isfinite(out_p[0]).all()) and float(out_p[0].sub(th).abs().max()) > 1e-3
    out_d = rosenbrock_step(RODAS5P, F, th, f0, h, Hd)
    assert torch.allclose(out_p[0], out_d[0], rtol=0, atol=1e-12 * float(th.abs().max()))
    assert torch.allclose(out_p[2], out_d[2], rtol=0, atol=1e-12 * float(out_d[2].abs().max()) + 1e-300)
    # below PARTS_MIN_P the parts are assembled and solved densely
    small, Xs, ys, ms, ths, _ = _problem(8, 2, 4, 3, 5)
    assert isinstance(shifted_system(small.loss_hessian_parts(ths, Xs, ys, ms), h[:2]), DenseSystem)
    assert isinstance(step_hessian(small, kink_field(small), ths, Xs, ys, ms, None, None), torch.Tensor)


def test_check_model_checks_the_parts_against_the_hessian(monkeypatch):
    import pytest

    from ibtest.testing import check_model

    TwoLayerReLU = type(check_model(None, "two_layer_relu", {"width": 5}))  # the registry's class
    real = TwoLayerReLU.loss_hessian_parts

    def off(self, theta, X, y, mask):
        p = real(self, theta, X, y, mask)
        return p._replace(R=2.0 * p.R)  # the residual term counted twice

    monkeypatch.setattr(TwoLayerReLU, "loss_hessian_parts", off)
    with pytest.raises(AssertionError, match="loss_hessian_parts assembles to a Hessian"):
        check_model(None, "two_layer_relu", {"width": 5})


def test_a_rows_structured_solve_does_not_depend_on_its_batch():
    model, X, y, mask, th, g = _problem(11, 5, 64, 10, 20)
    parts = model.loss_hessian_parts(0.1 * th, X, y, mask)
    c = torch.tensor([3.0, 0.5, 40.0, 1.0, 7.0], dtype=F64)
    rhs = torch.randn(5, th.shape[1], generator=g, dtype=F64)
    x = PartsSystem(parts, c).solve(rhs)
    for k in range(5):
        one = ibtest.HessianParts(parts.J[k:k + 1], parts.R[k:k + 1], parts.idx)
        assert torch.equal(PartsSystem(one, c[k:k + 1]).solve(rhs[k:k + 1])[0], x[k]), k
