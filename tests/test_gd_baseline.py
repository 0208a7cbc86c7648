"""The GD baseline's bookkeeping (benchmarks/gd_baseline.py, issue 24): the lr sequence, the exact
cost of an instance that agrees and the lower bound of one that never does, the cache key, and
the procedure itself on a tiny workload, with its cache replayed. No timing is asserted."""
from __future__ import annotations

import math

import torch

from benchmarks import gd_baseline as gb
from benchmarks.gd_approach import gd_timed
from benchmarks.w2_adaptive import make_w2
from plugins.models.two_layer_relu import two_layer_relu


def test_lr_sequence_halves_from_1e_3():
    lrs = gb.lr_sequence(6)
    assert lrs[0] == 1e-3 and len(lrs) == 6
    assert all(b == a / 2 for a, b in zip(lrs, lrs[1:]))


def test_cost_is_exact_when_an_lr_agrees_and_a_lower_bound_otherwise():
    runs = [gb.Run(1e-3, 0.1, 1.0, 0.9), gb.Run(5e-4, 1e-5, 2.0, 1.8), gb.Run(2.5e-4, 5e-7, 4.0, 3.6),
            gb.Run(1.25e-4, 2e-7, 8.0, 7.2)]
    c = gb.procedure_cost(runs)
    assert c.exact and c.lr_agree == 2.5e-4 and c.runs == 3
    assert c.wall == 7.0 and math.isclose(c.cpu, 6.3) and c.show() == "7.00"
    never = gb.procedure_cost(runs[:2])
    assert not never.exact and never.lr_agree is None and never.wall == 3.0 and never.show() == "> 3.00"
    assert gb.median_bound([1.0, 5.0, 3.0], [True, True, True]) == (3.0, False)
    assert gb.median_bound([1.0, 5.0, 3.0], [True, False, True]) == (3.0, True)


def test_cache_key_changes_with_t_lr_and_instance_and_t_grid_rounds_up():
    X, y, mask, th0 = make_w2(2, seed=1)
    h0 = gb.instance_hash(th0[0], X[0], y[0], mask[0])
    h1 = gb.instance_hash(th0[1], X[1], y[1], mask[1])
    k = gb.cache_key(4, 1, 2, 0, 1e-3, 5.66, h0)
    assert k == gb.cache_key(4, 1, 2, 0, 1e-3, 5.66, h0)
    assert k != gb.cache_key(4, 1, 2, 0, 1e-3, 5.67, h0)
    assert k != gb.cache_key(4, 1, 2, 0, 5e-4, 5.66, h0)
    assert k != gb.cache_key(4, 1, 2, 0, 1e-3, 5.66, h1)
    assert gb.t_grid(5.651346) == 5.66 and gb.t_grid(10.7787) == 10.8 and gb.t_grid(0.0123401) == 0.0124
    assert gb.t_grid(5.66) == 5.66 and gb.t_grid(5.6600001) == 5.67
    for t in (0.3, 2.278881635915363, 28.571747062649763, 1234.5):
        assert t <= gb.t_grid(t) <= t * 1.01


def test_linear_pair_and_richardson():
    assert gb.step_ratios([4.0, 2.0, 1.5]) == [2.0, 4.0 / 3.0]
    assert gb.linear_pair([1.0, 0.2, 0.1, 0.05, 0.049]) == 2  # (lr_2, lr_3): the smallest pair in band
    assert gb.linear_pair([1.0, 0.9, 0.8]) is None
    lim = torch.tensor([1.0, -2.0], dtype=torch.float64)
    c = torch.tensor([3.0, 4.0], dtype=torch.float64)
    e, s = gb.richardson(lim + 1e-3 * c, lim + 5e-4 * c, lim)  # θ(lr) = θ* + c·lr: exact
    assert e < 1e-15 and math.isclose(s, 5e-4 * 5.0)


def test_phased_gd_equals_the_masked_loop_and_charges_add_up():
    X, y, mask, th0 = make_w2(3, seed=2)
    model = two_layer_relu(width=4)
    T = torch.tensor([0.05, 0.2, 0.0], dtype=torch.float64)
    lr = 1e-3
    th, k_stop = th0.clone(), torch.round(T / lr).long()
    with torch.no_grad():
        for k in range(int(k_stop.max())):
            th = torch.where((k < k_stop).unsqueeze(-1), th - lr * model.grad(th, X, y, mask), th)
    g = gd_timed(model, X, y, mask, th0, lr, T)
    assert torch.allclose(g.theta, th, rtol=0, atol=1e-14) and torch.equal(g.theta[2], th0[2])
    assert g.steps == [50, 200, 0] and g.wall[2] == 0.0 and g.wall[1] > g.wall[0] > 0


def test_procedure_on_a_tiny_workload_and_its_cache(tmp_path):
    """Instance 0's 'limit' is GD's own θ at lr 2.5e-4: it agrees at the third lr (exact cost);
    instance 1's is far away: it runs down to the floor lr (a lower bound). The replay takes every
    run from the cache and gives the same distances."""
    X, y, mask, th0 = make_w2(2, seed=3, init_norm=1.0)
    model = two_layer_relu(width=4)
    T = torch.tensor([0.2, 0.1], dtype=torch.float64)
    lim = torch.stack([gd_timed(model, X, y, mask, th0, 2.5e-4, T).theta[0], th0[1] + 1.0])
    path = str(tmp_path / "c.pt")
    kw = dict(width=4, seed=3, N=2, budget_s=1e9, min_lr=1.2e-4)
    m = gb.measure(model, X, y, mask, th0, lim, T, [0, 1], cache=gb.GDCache(path), **kw)
    assert [r.lr for r in m.runs[0]] == gb.lr_sequence(3) and m.runs[0][-1].d == 0.0
    assert [r.lr for r in m.runs[1]] == gb.lr_sequence(4) and m.floor_lr == 1.25e-4
    c0, c1 = gb.procedure_cost(m.runs[0]), gb.procedure_cost(m.runs[1])
    assert c0.exact and c0.lr_agree == 2.5e-4 and not c1.exact
    assert m.from_cache == 0 and "GD_MIN_LR" in m.stop
    again = gb.measure(model, X, y, mask, th0, lim, T, [0, 1], cache=gb.GDCache(path), **kw)
    assert again.from_cache == 7 and again.spent_wall == 0.0
    assert [r.d for r in again.runs[1]] == [r.d for r in m.runs[1]]
    assert all(r.cached for rr in again.runs for r in rr)
    lines = gb.gd_report({"batch": 2, "measured": again, "drift_estimate": [0.0, 0.0], "budget_s": 1e9,
                          "cache_path": path, "step_k": (1e-4, 1e-4), "step_N": (1e-4, 1e-4)}, 1.0, 1.0)
    assert any("LOWER BOUND" in x for x in lines) and any("runs from the cache: 7" in x for x in lines)
