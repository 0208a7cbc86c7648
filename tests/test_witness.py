"""Refuting from a single solution: witness search inside Z(D), certified optimality (issue 11)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as hst

from ibtest.api import run_study
from ibtest.cert.replay import verify
from ibtest.judge import evaluation as ev, witness
from ibtest.judge.zeroset import neuron_zero_set
from ibtest.plugin.manager import load_registry
from ibtest.solve import fit
from ibtest.solve.rules import Rules, Tolerance

ROOT = Path(__file__).resolve().parents[1]
HYP = ROOT / "hypotheses"


def _study(name: str, **changes) -> dict:
    d = yaml.safe_load((HYP / name).read_text())
    d.update(changes)
    return d


def _by_label(res):
    return {m.label: m for m in res.members}


@pytest.fixture(scope="module")
def registry():
    return load_registry([])


# ------------------------------------------------------------------------------------------
def test_neuron_zero_set_rows():
    X = torch.tensor([[[1.0, 0], [0, 1], [1, 1], [2, 2]]], dtype=torch.float64)
    y = torch.tensor([[2.0, 0, -1, 5]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 1, 0]], dtype=torch.float64)
    relu = neuron_zero_set(1.0, 0.0, X, y, mask)
    assert not bool(relu.feasible[0])  # a ReLU neuron cannot fit a negative label
    assert relu.A_ub[0, 1].tolist() == [0.0, 1.0] and relu.A_eq[0, 1].abs().sum() == 0  # y = 0: one-sided
    assert relu.A_eq[0, 3].abs().sum() == 0 and relu.A_ub[0, 3].abs().sum() == 0  # padding ignored
    leaky = neuron_zero_set(1.0, 0.5, X, y, mask)
    assert bool(leaky.feasible[0]) and leaky.affine
    assert leaky.b_eq[0].tolist()[:3] == [2.0, 0.0, -2.0]  # y < 0: <w, x> = y / neg


def test_linear_zero_init_l2_certified_lp_falsified(tmp_path):
    res = run_study(_study("linear_zero_init.yaml", datasets=[
        {"name": "gaussian", "n": 3, "d": 6, "count": 3, "labels": "teacher_linear"}]), out_dir=tmp_path / "run")
    m = _by_label(res)
    assert res.expectations_held, res.table()
    for label in ("l2_norm", "dist_to_init"):
        assert m[label].verdict == "survives"
        assert m[label].search.certified == m[label].search.searched == 3
        assert m[label].search.worst <= 1e-9
    for p in ("1", "1.5", "3", "inf"):
        r = m[f"lp_norm[p={p}]"]
        assert r.verdict == "falsified" and r.evidence.kind == "witness", r.reason
        assert r.n_distinct == 0  # no pair could have done it
        assert verify(r.certificate).holds
    js = json.loads((tmp_path / "run" / "results.json").read_text())
    row = {v["label"]: v for v in js["verdicts"]}
    assert row["l2_norm"]["search"]["label"] == "certified"
    assert row["lp_norm[p=1]"]["evidence"]["kind"] == "witness"


def test_theorem3_from_gamma5_alone(tmp_path):
    res = run_study(_study("vardi_shamir_gamma5_witness.yaml"), out_dir=tmp_path / "run")
    assert res.expectations_held, res.table()
    assert res.tally.n_pairs == 0
    target = torch.tensor([5.0, -1.0, 0.0], dtype=torch.float64)
    m = _by_label(res)
    for label in ("l2_norm", "lp_norm[p=1]", "lp_norm[p=1.5]", "lp_norm[p=3]", "dist_to_init"):
        ev_ = m[label].evidence
        assert m[label].verdict == "falsified" and ev_.kind == "witness"
        assert float((ev_.theta_b - target).abs().max()) <= 1e-6, (label, ev_.theta_b)
        assert verify(m[label].certificate).holds
    assert m["lp_norm[p=inf]"].verdict == "survives" and m["lp_norm[p=inf]"].search.label == "certified"


def test_tampered_witness_certificate_is_withdrawn(tmp_path):
    res = run_study(_study("vardi_shamir_gamma5_witness.yaml", hypotheses=[{"name": "l2_norm"}]),
                    out_dir=tmp_path / "run")
    path = Path(_by_label(res)["l2_norm"].certificate)
    cert = json.loads(path.read_text())
    assert verify(path).holds
    off = dict(cert, witness=dict(cert["witness"], theta=[5.0, -0.9, 0.0]))  # θ' moved off Z(D)
    p1 = tmp_path / "off.json"
    p1.write_text(json.dumps(off))
    out = verify(p1)
    assert not out.holds and any("NO" in line for line in out.lines)
    close = dict(cert, witness=dict(cert["witness"], theta=[5.0, -1.0, cert["a"]["theta"][2] + 1e-9]))  # gap < margin
    p2 = tmp_path / "close.json"
    p2.write_text(json.dumps(close))
    assert not verify(p2).holds


def test_search_off_leaves_identical_pairs_inconclusive():
    d = _study("linear_zero_init.yaml", datasets=[{"name": "gaussian", "n": 3, "d": 6, "count": 2,
                                                   "labels": "teacher_linear"}],
               constructions=["consistent_augmentation"], verdict={"search": False},
               hypotheses=[{"name": "lp_norm", "params": {"p": 1}}])
    m = run_study(d, write=False).members[0]
    assert m.verdict == "inconclusive" and m.search is None and "identical" in m.reason


@pytest.mark.parametrize("alpha", [pytest.param(0.1, marks=pytest.mark.slow), 1.0, 3.0])
def test_diagonal_net_q_alpha_certified(alpha):
    d = _study("woodworth_diagonal_witness.yaml", init={"name": "scaled", "alpha": alpha},
               datasets=[{"name": "sparse_regression", "n": 4, "d": 8, "k": 2, "count": 2}])
    d.pop("sweep")
    res = run_study(d, write=False)
    m = _by_label(res)
    q = next(r for r in res.members if r.hypothesis == "q_alpha")
    assert q.verdict == "survives", q.reason
    assert q.search.certified == q.search.searched > 0 and q.search.worst <= 1e-8
    if alpha == 3.0:
        assert m["l1_norm"].verdict == "falsified" and m["l1_norm"].evidence.kind == "witness"
    if alpha == 0.1:
        assert m["predictor_norm[p=2]"].verdict == "falsified"


DATA_PLUGIN = '''
import torch, ibtest

def dist(theta, ctx):
    return (theta - ctx.init).norm(dim=-1)

def l1_to_minnorm(theta, ctx):
    w = torch.einsum("bpn,bn->bp", torch.linalg.pinv(ctx.X * ctx.mask[..., None]), ctx.y * ctx.mask)
    return (theta - w).abs().sum(-1)

def dist_cvx(x, ctx):
    import cvxpy as cp
    return cp.norm(x - ctx.init, 2)

@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="dist_data", fn=dist, depends_on="data", convex=True, cvx=dist_cvx,
                              doc="distance to theta0, declared data-dependent"),
            ibtest.Hypothesis(name="l1_to_minnorm", fn=l1_to_minnorm, depends_on="data", convex=True,
                              doc="l1 distance to the minimum-norm interpolant")]
'''


def test_data_dependent_hypotheses_are_testable(tmp_path):
    plug = tmp_path / "data_hyps.py"
    plug.write_text(DATA_PLUGIN)
    d = {"study": "data-dependent", "seed": 2, "model": {"name": "linear"},
         "init": {"name": "gaussian", "scale": 1.0},
         "datasets": [{"name": "gaussian", "n": 3, "d": 5, "count": 3, "labels": "teacher_linear"}],
         "solver": {"name": "exact", "fit_tol": 1e-20}, "constructions": [], "plugins": [str(plug)],
         "hypotheses": [{"name": "dist_data", "expect": "survives"}, {"name": "l1_to_minnorm", "expect": "falsified"}]}
    res = run_study(d, write=False)
    assert res.expectations_held, res.table()
    m = _by_label(res)
    assert m["dist_data"].search.label == "certified"
    assert m["l1_to_minnorm"].search.label == "lower bound"  # convex, no cvxpy form, Z affine: local/KKT


@pytest.mark.parametrize("name", ["linear_control.yaml", "leaky_relu_control.yaml"])
def test_controls_unchanged_with_certified_optimality(name):
    res = run_study(_study(name), write=False)
    assert res.expectations_held, res.table()
    m = _by_label(res)["dist_to_init"]
    assert m.verdict == "survives" and m.search is not None and m.search.label == "certified"
    assert m.search.worst <= 1e-9


# ------------------------------------------------------------------------------------------
@settings(max_examples=6, deadline=None)
@given(seed=hst.integers(0, 10_000), model=hst.sampled_from(["linear", "relu_neuron", "leaky_relu_neuron"]),
       hyp=hst.sampled_from([("lp_norm", {"p": 1.0}), ("lp_norm", {"p": 3.0}), ("l2_norm", {}),
                             ("lp_norm", {"p": float("inf")})]))
def test_property_any_witness_fits_and_beats_the_margin(registry, seed, model, hyp):
    g = torch.Generator().manual_seed(seed)
    T, n, d = 4, 2, 4
    X = torch.randn(T, n, d, generator=g, dtype=torch.float64)
    w_teacher = torch.randn(T, d, generator=g, dtype=torch.float64)
    mdl = registry.get("models", model).factory()
    y = mdl.predict(w_teacher, X)
    mask = torch.ones_like(y)
    theta0 = torch.zeros(T, d, dtype=torch.float64)
    # a point of Z(D) that is not the argmin: the teacher itself
    spec = registry.get("hypotheses", hyp[0])
    res = witness.search(mdl, spec, hyp[1], X, y, mask, theta0, w_teacher, Rules(), Tolerance(0.0, 1e-9), steps=30,
                         certify_limit=2)
    for k in res.found.nonzero().flatten().tolist():
        th = res.theta[k : k + 1]
        assert bool(fit.fits(mdl, th, X[k : k + 1], y[k : k + 1], mask[k : k + 1], theta0[k : k + 1], 1e-20)[0])
        two = torch.tensor([k, k])
        hctx = ev.context(mdl, spec, theta0=theta0[two], X=X[two], y=y[two], mask=mask[two])
        inf, w, pn = ev.compare(mdl, spec, hyp[1], torch.cat([w_teacher[k : k + 1], th]), hctx, [0.0, 0.0])
        j = Rules().judge_witness(Tolerance(spec.atol, spec.rtol), inf, w, pn)
        assert j.refutes, j
    assert bool((res.sub >= 0).all()) and bool(torch.isfinite(res.sub).all())


def test_default_gauss_newton_path_for_undeclared_variables(registry):
    """l2 of raw θ on a diagonal net: Z(D) is declared in β only, so the search follows r(θ) = 0
    by Gauss–Newton; whatever it returns must fit D and lower R."""
    g = torch.Generator().manual_seed(0)
    T, n, d = 3, 2, 4
    X = torch.randn(T, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(T, n, generator=g, dtype=torch.float64)
    mask = torch.ones_like(y)
    mdl = registry.get("models", "diagonal_linear").factory()
    beta = torch.einsum("bpn,bn->bp", torch.linalg.pinv(X), y)
    null = torch.randn(T, d, generator=g, dtype=torch.float64)
    null = null - torch.einsum("bpn,bn->bp", torch.linalg.pinv(X), torch.einsum("bnp,bp->bn", X, null))
    theta = (mdl.from_predictor(beta + 2.0 * null) ** 2 + 0.3).sqrt()  # u² and v² up by 0.3: same β
    spec = registry.get("hypotheses", "l2_norm")
    theta0 = torch.zeros_like(theta)
    res = witness.search(mdl, spec, {}, X, y, mask, theta0, theta, Rules(), Tolerance(0.0, 1e-9), steps=40)
    assert res.method.startswith("Gauss-Newton")
    assert bool(res.found.any())
    assert bool(res.fits[res.found].all()) and bool((res.R[res.found] < res.R_inf[res.found]).all())


def test_streamed_study_keeps_search_witnesses_per_block():
    d = _study("linear_zero_init.yaml", datasets=[{"name": "gaussian", "n": 3, "d": 6, "count": 4,
                                                   "labels": "teacher_linear"}],
               hypotheses=[{"name": "l2_norm", "expect": "survives"},
                           {"name": "lp_norm", "params": {"p": 1}, "expect": "falsified"}])
    one = run_study(d, write=False)
    streamed = run_study(dict(d, block_size=2), write=False)
    assert streamed.blocks == 2 and streamed.expectations_held, streamed.table()
    assert one.verdicts == streamed.verdicts
    for a, b in zip(one.members, streamed.members):
        assert a.search.searched == b.search.searched == 4
        assert a.search.certified == b.search.certified
    assert streamed.members[1].evidence.kind == "witness"
