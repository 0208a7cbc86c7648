"""The held-kink bookkeeping of the ``adaptive`` solver that issue 24 made proportional to what
changes: the compact per-unit factors (:class:`UnitFactors`) give what the dense ones give, the
cache keeps a row's factors across events, the leave root refines one smooth condition at a
time, and a root finder's row does not wait for (or depend on) the other rows of its batch."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as hs

from ibtest.solve.solvers.adaptive_sliding import leave_root
from ibtest.solve.solvers.events import illinois
from ibtest.solve.solvers.kinks import UnitFactors, kink_field
from plugins.models.two_layer_relu import two_layer_relu

F64 = torch.float64


def _instances(seed: int, b: int, m: int, d: int, n: int):
    g = torch.Generator().manual_seed(seed)
    model = two_layer_relu(width=m)
    kf = kink_field(model)
    assert kf is not None
    X = torch.randn(b, n, d, generator=g, dtype=F64)
    y = torch.randn(b, n, generator=g, dtype=F64)
    mask = torch.ones(b, n, dtype=F64)
    th = torch.randn(b, m * d + m, generator=g, dtype=F64)
    S = torch.rand(b, n, m, generator=g) < 0.15  # some units hold several entries, some none
    S[0] = False  # a row that holds nothing
    th = kf.project(th, X, S)
    return model, kf, X, y, mask, th, S


@settings(max_examples=20, deadline=None)
@given(hs.integers(0, 10_000), hs.integers(1, 6), hs.integers(2, 5), hs.integers(2, 6))
def test_compact_unit_factors_give_what_the_dense_ones_give(seed, m, d, n):
    model, kf, X, y, mask, th, S = _instances(seed, 16, m, d, n)
    dense = kf.unit_pinv(X, S)
    compact = UnitFactors.of(X, S)
    # only the units that hold something are stored
    assert compact.row.numel() == int(S.transpose(1, 2).any(-1).sum())
    g = model.grad(th, X, y, mask)
    assert torch.equal(kf.project_field(compact, X, g), kf.project_field(dense, X, g))
    mu_c, mu_d = kf.multipliers(compact, g), kf.multipliers(dense, g)
    assert torch.allclose(mu_c, mu_d, rtol=1e-13, atol=1e-13 * float(mu_d.abs().max()) + 1e-300)
    pn_c, pn_d = kf.projected_norms(compact, X, m), kf.projected_norms(dense, X, m)
    assert torch.allclose(pn_c, pn_d, rtol=1e-12, atol=1e-14)
    # a subset of rows, renumbered in order, is the subset's own factors
    keep = torch.arange(16) % 3 != 1
    sub = compact.take(keep)
    assert torch.equal(kf.project_field(sub, X[keep], g[keep]), kf.project_field(dense[keep], X[keep], g[keep]))


def test_leave_root_finds_the_first_condition_to_fail_even_when_another_is_worse_at_the_end():
    """Row 0: entry A's condition 0.9 − x is the most violated at x = 1 (−0.1), but entry B's
    0.05 − 0.06x fails first (x = 5/6): a second round finds it. Row 1: one condition α − μ =
    0.7 − 1.1x (x = 7/11), with α = 1 − x and μ = 0.3 + 0.1x."""
    calls = []

    def margin_all(x: torch.Tensor):
        al = torch.full((2, 1, 2), 10.0, dtype=F64)
        mu = torch.full((2, 1, 2), 5.0, dtype=F64)
        # row 0: α_A = 10 fixed, μ_A = 0.9 − x; entry B: μ_B = 0.05 − 0.06x
        mu[0, 0, 0] = 0.9 - x[0]
        mu[0, 0, 1] = 0.05 - 0.06 * x[0]
        # row 1: one entry, α = 1 − x, μ = 0.3 + 0.1x
        al[1, 0, 0] = 1.0 - x[1]
        mu[1, 0, 0] = 0.3 + 0.1 * x[1]
        phi = torch.minimum(torch.minimum(al, mu), al - mu)
        return phi, al, mu

    def margin(x: torch.Tensor, rows: torch.Tensor):
        calls.append(rows.numel())
        full = torch.zeros(2, dtype=F64)
        full[rows] = x
        return tuple(t[rows] for t in margin_all(full))

    S = torch.tensor([[[True, True]], [[True, False]]])
    x0 = torch.zeros(2, dtype=F64)
    x1 = torch.ones(2, dtype=F64)
    root, at_root = leave_root(margin, S, margin_all(x0), x1, margin_all(x1))
    assert abs(float(root[0]) - 5.0 / 6.0) < 1e-14
    assert abs(float(root[1]) - 7.0 / 11.0) < 1e-14
    # past the root: the condition fails there (the event has happened)
    assert bool((margin_all(root)[0].flatten(1).min(-1).values <= 0).all())
    # and (φ, α, μ) at the root come back with it
    for got, want in zip(at_root, margin_all(root)):
        assert torch.equal(got, want)
    # two rounds of a few Illinois iterations on row 0, one on row 1; converged rows are not
    # evaluated again
    assert sum(calls) < 40, calls
    assert calls[-1] == 1


def test_a_root_finders_row_does_not_depend_on_the_rest_of_its_batch():
    """A row stops when its own bracket is at rounding: alone or beside a slow row, the same bits."""
    def g(x: torch.Tensor) -> torch.Tensor:
        # row 0: a simple root at 0.3; row 1: a root of high multiplicity (slow for Illinois)
        return torch.stack([0.3 - x[0], (0.7 - x[1]) ** 7]) if x.numel() == 2 else 0.3 - x

    a, b = torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)
    both = illinois(g, a, b, g(a), g(b), iters=60)
    alone = illinois(g, a[:1], b[:1], g(a[:1]), g(b[:1]), iters=60)
    assert torch.equal(both[:1], alone)
    assert abs(float(alone) - 0.3) < 1e-15
    assert float(g(both[:1])) <= 0


def test_the_cache_after_events_and_departures_equals_a_fresh_one():
    """:meth:`Sliding.setup` keeps the factors of unchanged units and recomputes the rest: after
    an event (one unit of one row changes, another row starts holding, a third lets go) and after
    a row leaves the working set, the cache equals one built from scratch."""
    from types import SimpleNamespace

    from ibtest.solve.solvers.adaptive_sliding import Sliding
    from ibtest.solve.solvers.events import DenseOutput

    model, kf, X, y, mask, th, S = _instances(3, 6, 5, 3, 4)
    S[1] = False
    S[2] = False
    S[2, 0, 1] = True

    def fresh(w):
        sl = Sliding(model, kf, True, DenseOutput(8))
        sl.setup(w)
        return sl

    def table(sl):
        key = sl.inst[sl.U.row] * 100 + sl.U.unit
        order = key.argsort()
        return key[order], sl.U.F[order]

    w = SimpleNamespace(S_hold=S.clone(), idx=torch.arange(6), Xa=X)
    sl = fresh(w)
    # an event: row 3 changes on one unit, row 1 starts holding, row 2 lets go
    S2 = S.clone()
    j = int(S2[3].any(0).nonzero()[0])
    S2[3, :, j] = ~S2[3, :, j]
    S2[1, 2, 4] = True
    S2[2] = False
    w.S_hold = S2
    sl.setup(w)
    for a, b in zip(table(sl), table(fresh(w))):
        assert torch.equal(a, b)
    # rows 0 and 4 leave the working set
    keep = torch.tensor([False, True, True, True, False, True])
    w = SimpleNamespace(S_hold=S2[keep], idx=torch.arange(6)[keep], Xa=X[keep])
    sl.setup(w)
    for a, b in zip(table(sl), table(fresh(w))):
        assert torch.equal(a, b)


@settings(max_examples=20, deadline=None)
@given(hs.integers(0, 10_000), hs.integers(1, 6), hs.integers(2, 5), hs.integers(2, 6))
def test_blockwise_projected_hessian_equals_the_dense_product(seed, m, d, n):
    # Π H Π with Π the full [P, P] block-diagonal projector (Π_j on w_j's block, I on v), built
    # here by hand, against the block-by-block product the Rosenbrock step uses
    model, kf, X, y, mask, th, S = _instances(seed, 6, m, d, n)
    P = m * d + m
    g = torch.Generator().manual_seed(seed + 1)
    H = torch.randn(6, P, P, generator=g, dtype=F64)
    H = H + H.transpose(1, 2)
    Pi_j = kf.tangent_projector(X, S)
    full = torch.eye(P, dtype=F64).repeat(6, 1, 1)
    for j in range(m):
        full[:, j * d:(j + 1) * d, j * d:(j + 1) * d] = Pi_j[:, j]
    out = kf.project_hessian(X, S, H)
    assert torch.allclose(out, full @ H @ full, rtol=0, atol=1e-12 * float(H.abs().max()))
    assert torch.equal(out[0], H[0])  # a row that holds nothing: H unchanged, bit for bit
    # the projected directions: Π H Π maps into the tangent space and kills its normal
    assert torch.allclose(full @ out, out, atol=1e-10 * float(H.abs().max()))
