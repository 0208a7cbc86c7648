"""The tangent projection that the ``adaptive`` solver uses as the Filippov field of held kinks
(issue 12): with every held λ* interior it is the minimal-norm Clarke velocity of
:meth:`KinkField.field_leave` (KKT), and a held kink is left exactly when λ* reaches a bound."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as hs

from ibtest.solve.solvers.adaptive_sliding import entries
from ibtest.solve.solvers.kinks import kink_field
from plugins.models.two_layer_relu import two_layer_relu

F64 = torch.float64


def _held_instances(seed: int, b: int, m: int, d: int, n: int, train: bool):
    """b random nets with a random set S of entries moved exactly onto their kinks."""
    g = torch.Generator().manual_seed(seed)
    model = two_layer_relu(width=m, train_output=train)
    kf = kink_field(model)
    assert kf is not None
    X = torch.randn(b, n, d, generator=g, dtype=F64)
    y = torch.randn(b, n, generator=g, dtype=F64)
    mask = torch.ones(b, n, dtype=F64)
    th = torch.randn(b, m * d + m, generator=g, dtype=F64)
    # one held entry per row, a second (another point) on half of the rows
    S = torch.zeros(b, n, m, dtype=torch.bool)
    r = torch.arange(b)
    i1 = torch.randint(n, (b,), generator=g)
    S[r, i1, torch.randint(m, (b,), generator=g)] = True
    two = torch.rand(b, generator=g) < 0.5
    S[r[two], ((i1 + 1) % n)[two], torch.randint(m, (b,), generator=g)[two]] = True
    th = kf.project(th, X, S)
    return model, kf, X, y, mask, th, S


@settings(max_examples=25, deadline=None)
@given(hs.integers(0, 10_000), hs.integers(1, 4), hs.integers(2, 5), hs.integers(2, 5), hs.booleans())
def test_tangent_projection_is_the_filippov_velocity_when_lambda_is_interior(seed, m, d, n, train):
    model, kf, X, y, mask, th, S = _held_instances(seed, 1024, m, d, n, train)
    ent, ok = entries(S)
    vel, lam, leave = kf.field_leave(th, X, y, mask, S, ent, ok)
    interior = (~ok | ((lam > 1e-6) & (lam < 1 - 1e-6))).all(-1)
    assert bool(interior.any())
    proj = kf.project_field(kf.unit_pinv(X, S), X, -model.grad(th, X, y, mask))
    scale = model.grad(th, X, y, mask).abs().amax(-1) + 1e-300
    gap = (proj - vel).abs().amax(-1) / scale
    assert bool((gap[interior] < 1e-10).all()), gap[interior].max()
    assert not bool((leave & ok)[interior].any())
    # the projected velocity is tangent to every held kink (z stays 0)
    zd = model.hidden_preactivations(proj, X)
    zs = model.hidden_preactivations(model.grad(th, X, y, mask).abs(), X.abs())
    assert bool((zd.abs() <= 1e-12 * zs + 1e-300)[S].all())


def test_a_kink_is_left_exactly_when_lambda_is_at_a_bound():
    """The leaving test is λ*_e ∈ {0, 1}: a one-sided field tangent to the kink or pointing away
    from it lets the flow leave; an interior λ* (both one-sided fields point at the kink) holds."""
    X = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=F64)
    model = two_layer_relu(width=1, train_output=False)
    kf = kink_field(model)
    assert kf is not None
    S = torch.tensor([[[True], [False]]])
    ent, ok = entries(S)
    th = torch.tensor([[0.0, 0.7, 1.0]], dtype=F64)  # z_0 = 0 (held), z_1 = 0.7 (active)
    # y_1 = 0.7: point 1 is fitted, its residual is 0, so nothing moves w: the one-sided field
    # below the kink is tangent (λ* = 0): the flow may leave; y_1 = 0.2: point 1 pulls w_1
    # down, the field below points away (λ* = 0): it leaves; y_1 = 1.7: point 1 pulls w_1 up
    # against point 0's push down: λ* interior, attracting
    for y1, want, lam_want in ((0.7, True, 0.0), (0.2, True, 0.0), (1.7, False, None)):
        y = torch.tensor([[-1.0, y1]], dtype=F64)
        _, lam, leave = kf.field_leave(th, X, y, torch.ones_like(y), S, ent, ok)
        assert bool(leave[0, 0]) is want, (y1, lam, leave)
        if lam_want is None:
            assert 0.0 < float(lam[0, 0]) < 1.0, (y1, lam)
        else:
            assert float(lam[0, 0]) == lam_want, (y1, lam)
