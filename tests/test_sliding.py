"""Filippov sliding in the adaptive solver (issue 12): no false kink labels, and `sliding: follow`
continues on the kink with the minimal-norm Clarke velocity."""
from __future__ import annotations

import pytest
import torch

from ibtest.base import status as st
from ibtest.solve.solvers.adaptive import solve_adaptive, tighten
from ibtest.solve.solvers.gd import solve_gd
from ibtest.solve.solvers.kinks import box_qp
from plugins.datasets.regression import orthogonal
from plugins.models.two_layer_relu import two_layer_relu

F64 = torch.float64


def _one_kink():
    """x1 (label −1) is pushed down while active, pulled up by x2 (label 2) while inactive."""
    X = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=F64)
    y = torch.tensor([[-1.0, 2.0]], dtype=F64)
    return X, y, torch.tensor([[0.3, 0.05, 1.0]], dtype=F64)


def _two_kinks():
    """x1 and x2 (labels −1) both slide on their kinks, held up by x3 (label 3): two kinks of
    one unit active at once."""
    X = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]], dtype=F64)
    y = torch.tensor([[-1.0, -1.0, 3.0]], dtype=F64)
    return X, y, torch.tensor([[0.3, 0.2, 0.05, 1.0]], dtype=F64)


CASES = [(_one_kink, False), (_one_kink, True), (_two_kinks, False), (_two_kinks, True)]


def test_box_qp_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    B, k = 64, 3
    R = torch.randn(B, 5, k, generator=g, dtype=F64)
    M = R.transpose(1, 2) @ R
    q = torch.randn(B, k, generator=g, dtype=F64) * 3
    lam = box_qp(M, q, torch.ones(B, k, dtype=torch.bool))
    obj = lambda L: 0.5 * (L.unsqueeze(-2) @ M @ L.unsqueeze(-1)).squeeze() + (q * L).sum(-1)  # noqa: E731
    grid = torch.linspace(0, 1, 41, dtype=F64)
    G = torch.cartesian_prod(grid, grid, grid)  # [N, 3]
    vals = 0.5 * torch.einsum("nk,bkl,nl->bn", G, M, G) + q @ G.T
    assert bool((lam >= 0).all() and (lam <= 1).all())
    assert bool((obj(lam) <= vals.min(-1).values + 1e-12).all())


def test_follow_ends_converged_or_stalled_with_slid_flag():
    for make, train in CASES:
        X, y, th0 = make()
        model = two_layer_relu(width=1, train_output=train)
        stop = solve_adaptive(model, X, y, torch.ones_like(y), th0, sliding="stop")
        assert stop.status.item() == st.SLIDING
        res = solve_adaptive(model, X, y, torch.ones_like(y), th0)
        assert res.status.item() in (st.CONVERGED, st.STALLED), (make.__name__, train, res.status)
        assert res.info["slid"].item() == 1 and res.info["sliding_episodes"].item() >= 1
        assert res.info["t_sliding"].item() > 0
        z = model.hidden_preactivations(res.theta, X)[0, :, 0]
        n_neg = int((y[0] < 0).sum())
        assert bool((z[:n_neg].abs() < 1e-12).all()), z  # held on the kinks


def test_two_kinks_held_at_once():
    X, y, th0 = _two_kinks()
    res = solve_adaptive(two_layer_relu(width=1, train_output=False), X, y, torch.ones_like(y), th0,
                         t_max=3.0)
    z = two_layer_relu(width=1).hidden_preactivations(res.theta, X)[0, :2, 0]
    assert bool((z.abs() < 1e-12).all()), z


@pytest.mark.slow
def test_balancedness_conserved_along_followed_sliding():
    for make, train in CASES:
        if not train:
            continue
        X, y, th0 = make()
        model = two_layer_relu(width=1, train_output=True)
        for T in (1.0, 3.0, 10.0):
            res = solve_adaptive(model, X, y, torch.ones_like(y), th0, t_max=T)
            assert res.info["t_sliding"].item() > 0 or T < 1.5
            drift = (model.balancedness(res.theta) - model.balancedness(th0)).abs().max().item()
            assert drift < 1e-9, (make.__name__, T, drift)


@pytest.mark.slow
def test_gd_approaches_the_follow_limit_as_the_step_shrinks():
    """At a fixed time T, GD with step η chatters around the kink at amplitude O(η); its error
    against the followed Clarke flow falls with η (3 instances with genuine sliding, one of them
    with two kinks held at once)."""
    T = 4.0
    for make, train in CASES[:3]:
        X, y, th0 = make()
        model = two_layer_relu(width=1, train_output=train)
        ref = solve_adaptive(model, X, y, torch.ones_like(y), th0, t_max=T)
        assert ref.info["t_sliding"].item() > 0.05, (make.__name__, train, ref.info["t_sliding"])
        errs = []
        for lr in (1e-2, 1e-3, 1e-4):
            gd = solve_gd(model, X, y, torch.ones_like(y), th0, lr=lr, steps=int(round(T / lr)),
                          fit_tol=0.0, grad_tol=0.0, check_every=1000)
            errs.append((gd.theta - ref.theta).norm().item())
        assert errs[0] > errs[1] > errs[2], (make.__name__, errs)
        assert errs[2] < 5e-3 and errs[2] < 0.2 * errs[0], (make.__name__, errs)


@pytest.mark.slow
def test_orthogonal_inputs_never_slide():
    """ż_ij = −v_j r_i σ'(z_ij)‖x_i‖² on orthogonal inputs: 0 on the inactive side, no sliding."""
    g = torch.Generator().manual_seed(3)
    D = orthogonal(g, n=3, d=5, count=12)
    B = D.X.shape[0]
    th0 = 0.5 * torch.randn(B, 4 * 5 + 4, generator=g, dtype=F64)
    model = two_layer_relu(width=4)
    res = solve_adaptive(model, D.X, D.y, D.mask, th0, sliding="stop")
    assert not bool((res.status == st.SLIDING).any()), res.status
    assert bool((res.status != st.BUDGET).all()), res.status
    fol = solve_adaptive(model, D.X, D.y, D.mask, th0)
    assert bool((fol.info["slid"] == 0).all())
    assert torch.equal(fol.status, res.status)


def _pad_d(model_m, X, th, extra):
    """The same flow with ``extra`` zero input coordinates (and zero weights on them)."""
    B, n, d = X.shape
    Xp = torch.cat([X, torch.zeros(B, n, extra, dtype=F64)], -1)
    W = th[:, : model_m * d].reshape(B, model_m, d)
    Wp = torch.cat([W, torch.zeros(B, model_m, extra, dtype=F64)], -1)
    return Xp, torch.cat([Wp.flatten(1), th[:, model_m * d:]], -1)


@pytest.mark.slow
def test_status_does_not_depend_on_batch_position_or_padding():
    """Property over random two-layer instances: alone, in a batch (any position) and with d
    padded by zeros, an instance gets the same status and the same limit."""
    g = torch.Generator().manual_seed(11)
    B, n, d, m = 6, 3, 3, 2
    X = torch.randn(B, n, d, generator=g, dtype=F64)
    y = torch.randn(B, n, generator=g, dtype=F64)
    th0 = 0.3 * torch.randn(B, m * d + m, generator=g, dtype=F64)
    model = two_layer_relu(width=m)
    mask = torch.ones_like(y)
    res = solve_adaptive(model, X, y, mask, th0, max_steps=20000)
    perm = torch.randperm(B, generator=g)
    rp = solve_adaptive(model, X[perm], y[perm], mask, th0[perm], max_steps=20000)
    Xp, thp = _pad_d(m, X, th0, 2)
    pad = solve_adaptive(model, Xp, y, mask, thp, max_steps=20000)
    for i in range(B):
        one = solve_adaptive(model, X[i:i + 1], y[i:i + 1], mask[i:i + 1], th0[i:i + 1], max_steps=20000)
        assert one.status.item() == res.status[i].item(), (i, one.status, res.status)
        assert torch.equal(one.theta[0], res.theta[i])
    inv = torch.argsort(perm)
    assert torch.equal(rp.status[inv], res.status)
    assert torch.allclose(rp.theta[inv], res.theta, atol=1e-12, rtol=0)
    assert torch.equal(pad.status, res.status), (pad.status, res.status)
    Xq, thq = _pad_d(m, X, res.theta, 2)
    conv = res.status == st.CONVERGED
    assert torch.allclose(pad.theta[conv], thq[conv], atol=1e-7, rtol=0)



def _leaky_instance(seed: int, d: int = 7):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1, d, d, generator=g, dtype=F64)
    y = torch.randn(1, d, generator=g, dtype=F64)
    w0 = 0.1 * torch.randn(1, d, generator=g, dtype=F64)
    return X, y, w0


@pytest.mark.slow
def test_ill_conditioned_leaky_status_alone_equals_batched():
    """Issue 12, item 5: an ill-conditioned leaky-ReLU neuron (slope 0.1, d = n = 7; found by a
    random search over seeds 0..39 with ‖X⁻¹y‖ ∈ (40, 800): seed 23, ‖w∞‖ ≈ 49, ~9000 steps)
    gets the same status and bit-identical θ alone and batched with three others of its shape
    (third in the batch). max_steps 10 000: the instance needs ~9 000, the others may run longer
    and would set the test's time."""
    from plugins.models import neurons

    model = neurons.leaky_relu_neuron(0.1)
    X, y, w0 = _leaky_instance(23)
    alone = solve_adaptive(model, X, y, torch.ones_like(y), w0, max_steps=10000)
    assert alone.status.item() == st.CONVERGED
    assert 40 < float(alone.theta.norm()) < 100
    others = [_leaky_instance(s) for s in (0, 1, 2)]
    for pos in (2,):
        parts = others[:pos] + [(X, y, w0)] + others[pos:]
        Xb, yb, wb = (torch.cat([p[k] for p in parts]) for k in range(3))
        res = solve_adaptive(model, Xb, yb, torch.ones_like(yb), wb, max_steps=10000)
        assert res.status[pos].item() == alone.status.item()
        assert torch.equal(res.theta[pos], alone.theta[0])


def test_frozen_output_weights_never_move():
    """``train_output=False`` freezes v: no projection onto a kink, Filippov field or stiff-tail
    step may change it (the projection used to rescale v for balancedness, and the stiff tail's
    symmetrized AD Hessian moved v by up to 2.8e-5)."""
    from benchmarks.w2_adaptive import make_w2

    X, y, mask, th0 = make_w2(40, 0)
    model = two_layer_relu(width=4, train_output=False)
    r = solve_adaptive(model, X, y, mask, th0, max_steps=20000)
    assert int(r.info["slid"].sum()) > 0 and int((r.info["stiff_steps"] > 0).sum()) > 0
    assert torch.equal(r.theta[:, -4:], th0[:, -4:])
    for make, _ in CASES:
        X1, y1, t1 = make()
        model1 = two_layer_relu(width=1, train_output=False)
        r1 = solve_adaptive(model1, X1, y1, torch.ones_like(y1), t1)
        assert r1.info["t_sliding"].item() > 0
        assert torch.equal(r1.theta[:, -1:], t1[:, -1:])


def test_kink_whose_lambda_tends_to_a_bound_is_left_cleanly():
    """W2 seed 0, instance 904: a held kink whose λ* decays to 0 (the one-sided field below ends
    tangent to it). Released at z_e = +rounding, the row read the field above, re-entered and
    chattered every few steps (20,000 steps, ``budget``, with the projected field); released on
    the side the flow leaves to (below, λ* = 0) it converges in a few hundred steps."""
    from benchmarks.w2_adaptive import make_w2

    X, y, mask, th0 = make_w2(1000, 0)
    i = slice(904, 905)
    r = solve_adaptive(two_layer_relu(width=4), X[i], y[i], mask[i], th0[i], max_steps=20000)
    assert r.status.item() == st.CONVERGED
    assert r.info["slid"].item() == 1 and int(r.info["steps"][0]) < 1000, r.info["steps"]


def test_released_kink_is_left_on_the_side_the_flow_leaves_to():
    """W2 seed 0, instance 952: a held kink is released with λ* = 0 (the field below points away)
    while the field above points away too. Left at z = +rounding, the row was integrated on the
    side above (σ'(0) = 1) and ended 0.026 from the gradient-descent limit at t = 20, whatever
    the GD step; put on the side below, it follows GD with an error O(step)."""
    from benchmarks.w2_adaptive import make_w2

    X, y, mask, th0 = make_w2(1000, 0)
    i = slice(952, 953)
    model = two_layer_relu(width=4)
    T = 20.0
    ref = solve_adaptive(model, X[i], y[i], mask[i], th0[i], t_max=T)
    assert ref.info["slid"].item() == 1
    errs = []
    for lr in (1e-2, 1e-3):
        gd = solve_gd(model, X[i], y[i], mask[i], th0[i], lr=lr, steps=int(round(T / lr)), fit_tol=0.0,
                      grad_tol=0.0, check_every=10_000)
        errs.append((gd.theta - ref.theta).norm().item())
    assert errs[1] < 1e-3 and errs[1] < 0.2 * errs[0], errs


def _w2_default_and_tight(i: int, T: float):
    """Instance i of ``make_w2(1000, seed=0)`` solved to t = T twice: at the default tolerances and
    at the tightened ones the verdicts re-solve with (:func:`tighten`: rtol, atol, drift_tol)."""
    from benchmarks.w2_adaptive import make_w2

    X, y, mask, th0 = (a[i:i + 1] for a in make_w2(1000, 0))
    model = two_layer_relu(width=4)
    o = tighten({})
    tight = {k: o[k] for k in ("rtol", "atol", "drift_tol")}
    return (solve_adaptive(model, X, y, mask, th0, t_max=T),
            solve_adaptive(model, X, y, mask, th0, t_max=T, **tight))


@pytest.mark.slow
def test_release_keeps_the_motion_off_the_kink_within_the_step():
    """W2 seed 0, instance 61: a box-QP'd step releases entry (2, 2) at t = 2.77 after λ* reached 0
    inside the step, with z = −2.5e-5 at its end. Put back at z = −1e-12·‖x‖‖w‖, θ jumped by
    1.2e-5 (4.2e-7 from the tight solve's limit); kept, the default and the tightened solve agree
    at t = 5 to the accuracy they agree before the release (1.4e-9 measured)."""
    for T in (2.5, 5.0):
        a, b = _w2_default_and_tight(61, T)
        assert a.info["slid"].item() == 1 and b.info["slid"].item() == 1
        assert (a.theta - b.theta).abs().max().item() < 1e-8, T


@pytest.mark.slow
def test_enter_keeps_the_held_set_when_only_the_candidate_is_inconsistent():
    """W2 seed 0, instance 22: at t = 32.9 entry (2, 2) reaches its kink while (0, 2) and (2, 3)
    are held. With it the set is inconsistent; without it, at θ projected onto the held kinks
    alone, the box QP read λ* at a bound (z_e at rounding), so ``enter`` dropped the held kinks
    too, at z_e = 0 instead of on the flow's side: a chatter of rejected steps, three sliding
    episodes where the tight solve has one, 1.6e-8 from it at t = 50. The held set now stays
    (the step's own leaving test releases it): two episodes, 7.9e-10."""
    a, b = _w2_default_and_tight(22, 50.0)
    assert a.info["slid"].item() == 1 and b.info["slid"].item() == 1
    assert (a.theta - b.theta).abs().max().item() < 5e-9


#: W2 instances (seed, index) whose solve once depended on details below the flow: a stiff tail
#: with a fitted point on its kink (1, 39), held kinks whose λ* reaches a bound (1, 382; 0, 904),
#: a held set lost with an inconsistent candidate (0, 924), a wrong-side release (0, 952), plus
#: the first 30 of seed 1 (with torch.pow and batched matvecs, 14 of the first 40 differed alone
#: and batched: by 4e-16 to 8e-6 in θ, by up to 54 steps)
_W2_CASES = ((1, 39), (1, 382), (1, 317), (1, 109), (0, 904), (0, 924), (0, 952)) + tuple(
    (1, i) for i in range(30))


@pytest.fixture(scope="module")
def w2_cases():
    from benchmarks.w2_adaptive import make_w2

    data = {s: make_w2(1000, s) for s in (0, 1)}
    X, y, mask, th0 = (torch.cat([data[s][k][i:i + 1] for s, i in _W2_CASES]) for k in range(4))
    model = two_layer_relu(width=4)
    alone = [solve_adaptive(model, X[k:k + 1], y[k:k + 1], mask[k:k + 1], th0[k:k + 1], max_steps=20000)
             for k in range(len(_W2_CASES))]
    return model, (X, y, mask, th0), alone


@pytest.mark.slow
def test_w2_hard_instances_finish_in_hundreds_of_steps(w2_cases):
    """Regression: seed 1 instance 39 took 7,773 steps (a rounding-level sign flip of a fitted
    point's pre-activation sent every Rosenbrock step back to the explicit method) and 15,006
    before; seed 0 instance 924 ended ``budget`` at 20,000 steps (its consistent held set was
    dropped with an inconsistent candidate at every step); seed 1 instance 382 took thousands
    with a tolerance in the leaving test. None ends ``budget`` or ``sliding`` (``ambiguous``:
    a repelling release whose two branches end apart, seed 1 instance 4, is a finished flow)."""
    _, _, alone = w2_cases
    for (s, i), r in zip(_W2_CASES, alone):
        assert r.status.item() in (st.CONVERGED, st.STALLED, st.AMBIGUOUS), (s, i, r.status)
        steps = int(r.info["steps"][0])
        if (s, i) in ((1, 39), (0, 924), (1, 382)):
            assert steps < 1000, (s, i, steps)


@pytest.mark.slow
def test_w2_instance_bits_do_not_depend_on_its_batch(w2_cases):
    """Alone or in a batch of 37 (sliding, stiff-tail and ordinary rows together), every instance
    gets bit-identical θ, the same status and the same number of steps. ``torch.pow`` and batched
    matrix–vector products round by position in the batch; W2 seed 1 instance 39 took 467 steps
    alone and 12,883 in a batch of 100 with them."""
    model, (X, y, mask, th0), alone = w2_cases
    res = solve_adaptive(model, X, y, mask, th0, max_steps=20000)
    for k, r in enumerate(alone):
        assert torch.equal(res.theta[k], r.theta[0]), _W2_CASES[k]
        assert res.status[k].item() == r.status.item(), _W2_CASES[k]
        assert int(res.info["steps"][k]) == int(r.info["steps"][0]), _W2_CASES[k]
