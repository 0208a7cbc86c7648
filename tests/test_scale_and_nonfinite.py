"""Verdicts do not depend on the problem's scale; NaN / inf from a hypothesis is an error, never a
survival; a "survives" needs evidence (distinct pairs); a plugin's sys.exit does not end the run."""
from __future__ import annotations

import math
import textwrap

import pytest
import torch
import yaml
from conftest import STUDIES
from hypothesis import HealthCheck, example, given, settings, strategies as stz

from ibtest.api import run_study
from ibtest.solve import fit

THEOREM3 = yaml.safe_load((STUDIES / "vardi_shamir_theorem3.yaml").read_text())
ALL_FALSIFIED = {m: "falsified" for m in
                 ["l2_norm", "lp_norm[p=1]", "lp_norm[p=1.5]", "lp_norm[p=3]", "lp_norm[p=inf]", "dist_to_init"]}


def _theorem3(**dataset_options):
    study = dict(THEOREM3)
    study["datasets"] = [dict(THEOREM3["datasets"][0], **dataset_options)]
    return run_study(study, write=False)


@pytest.fixture(scope="module")
def unit_run():
    return _theorem3()


# ------------------------------------------------------------------------------------------
# scale
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stz.integers(-100, 100))
@example(-100)
@example(100)
@example(-12)
def test_theorem3_verdicts_do_not_depend_on_the_label_scale(unit_run, k):
    """α = 10^k scales y (and the solutions): every tolerance is relative, so the verdicts hold."""
    res = _theorem3(alpha=10.0 ** k)
    assert res.verdicts == ALL_FALSIFIED
    assert res.tally.counts == {"converged": 5}
    assert res.tally.n_distinct == unit_run.tally.n_distinct
    assert not res.errors
    w = torch.tensor([r["theta"] for r in res.tally.rows], dtype=torch.float64) / 10.0 ** k
    w1 = torch.tensor([r["theta"] for r in unit_run.tally.rows], dtype=torch.float64)
    assert torch.allclose(w, w1, rtol=1e-12, atol=1e-12 * float(w1.abs().max()))


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stz.integers(-60, 60))
@example(-60)
@example(60)
def test_theorem3_verdicts_survive_a_common_rescaling_of_x_and_y(unit_run, k):
    """X → cX, y → cy keeps the flow's limit (time runs c² faster): same verdicts, same solutions."""
    c = 10.0 ** k
    res = _theorem3(alpha=c, x_scale=c)
    assert res.verdicts == ALL_FALSIFIED
    assert res.tally.counts == {"converged": 5}
    w = torch.tensor([r["theta"] for r in res.tally.rows], dtype=torch.float64)
    w1 = torch.tensor([r["theta"] for r in unit_run.tally.rows], dtype=torch.float64)
    assert torch.allclose(w, w1, rtol=1e-12, atol=1e-12 * float(w1.abs().max()))


@pytest.mark.parametrize("j", [-200, 150])
def test_power_of_two_rescaling_is_exact(unit_run, j):
    """Scaling by 2^j is exact in float64, and the solver and constructions work on the data's own
    scale: the whole run is the same, pair for pair."""
    c = 2.0 ** j
    res = _theorem3(alpha=c, x_scale=c)
    assert res.verdicts == ALL_FALSIFIED
    assert (res.tally.n_pairs, res.tally.n_distinct) == (unit_run.tally.n_pairs, unit_run.tally.n_distinct)
    assert [m.max_rel_gap for m in res.members] == pytest.approx([m.max_rel_gap for m in unit_run.members], rel=1e-9)


def test_tiny_data_is_not_converged_at_zero():
    """Data ×1e-150: θ = 0 has loss ½‖y‖² ≈ 3e-298, far *above* the relative fit tolerance."""
    X = torch.tensor([[[3.0, -1.0, 0.0], [4.0, 2.0, 0.0]]], dtype=torch.float64) * 1e-150
    y = torch.tensor([[16.0, 18.0]], dtype=torch.float64) * 1e-150
    from ibtest.plugin.manager import load_registry

    model = load_registry().get("models", "relu_neuron").factory(relu_grad_at_zero=1)
    zero = torch.zeros(1, 3, dtype=torch.float64)
    assert not bool(fit.fits(model, zero, X, y, torch.ones_like(y), zero, 1e-20)[0])
    assert bool(fit.fits(model, torch.tensor([[5.0, -1.0, 0.0]], dtype=torch.float64), X, y,
                         torch.ones_like(y), zero, 1e-20)[0])


def test_a_scale_float64_cannot_hold_is_reported():
    res = _theorem3(alpha=1e150, x_scale=1e150)
    assert any(e.startswith("scale:") and "not meaningful in float64" in e for e in res.errors)
    assert fit.range_warning(torch.ones(1, 2, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64),
                             torch.zeros(1, 2)) is None


@given(stz.floats(min_value=-100, max_value=100))
@settings(max_examples=60, deadline=None)
def test_the_margin_scales_with_r(k):
    """margin(c·R) = c·margin(R) when θ, R, the solver error and the noise scale with c (atol 0):
    every term of the one rule (rules.Rules.judge_pair) is relative to the problem's scale."""
    from ibtest.solve.rules import Rules, Side, Tolerance

    c = 10.0 ** k
    th = torch.tensor([5.0, -1.0, 0.0], dtype=torch.float64)
    rules, tol = Rules(), Tolerance(0.0, 1e-9)

    def judged(c: float):
        a = Side(c * th, torch.tensor([5.1 * c], dtype=torch.float64), 1.0, 1e-12 * c, 1e-15 * c)
        b = Side(c * th, torch.tensor([5.0 * c], dtype=torch.float64), 1.0, 2e-12 * c, 3e-15 * c)
        return rules.judge_pair(tol, a, b)

    one, scaled = judged(1.0), judged(c)
    assert scaled.margin / one.margin == pytest.approx(c, rel=1e-12)
    assert scaled.noise / one.noise == pytest.approx(c, rel=1e-12)
    assert scaled.refutes == one.refutes


# ------------------------------------------------------------------------------------------
# non-finite values, sys.exit, unearned survivals
# ------------------------------------------------------------------------------------------
PLUGIN = '''
import torch
import ibtest

def nan_all(theta, ctx):
    return torch.full((theta.shape[0],), float("nan"), dtype=theta.dtype)

def inf_some(theta, ctx):
    r = theta.norm(dim=-1)
    return torch.where(theta[:, 2] < -0.1, torch.full_like(r, float("inf")), r)

def exits(theta, ctx):
    import sys
    sys.exit(3)

@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="nan_all", fn=nan_all),
            ibtest.Hypothesis(name="inf_some", fn=inf_some),
            ibtest.Hypothesis(name="exits", fn=exits)]
'''


@pytest.fixture
def bad_plugin(tmp_path):
    p = tmp_path / "bad_hypotheses.py"
    p.write_text(textwrap.dedent(PLUGIN))
    return p


def _study_with(tmp_path, plugin, hypotheses, **extra):
    study = dict(THEOREM3, plugins=[str(plugin)], hypotheses=hypotheses, **extra)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_nan_and_inf_from_a_hypothesis_are_error_rows_with_a_failing_exit(tmp_path, bad_plugin, cli):
    path = _study_with(tmp_path, bad_plugin, [
        {"name": "nan_all", "expect": "survives"},
        {"name": "inf_some", "expect": "survives"},
        {"name": "l2_norm", "expect": "falsified"},
    ])
    r = cli("run", path, "--out", tmp_path / "run", "-q")
    assert r.code == 1, r
    from conftest import results_json

    rows = {v["label"]: v for v in results_json(tmp_path / "run")["verdicts"]}
    assert rows["nan_all"]["verdict"] == "error" and "not finite (nan)" in rows["nan_all"]["error"]
    assert rows["inf_some"]["verdict"] == "error" and "not finite (inf)" in rows["inf_some"]["error"]
    assert rows["l2_norm"]["verdict"] == "falsified"  # the rest of the study goes on
    assert "Traceback" not in r.err


def test_a_nan_parameter_never_survives(tmp_path, cli):
    study = dict(THEOREM3, hypotheses=[{"name": "lp_norm", "params": {"p": float("nan")}, "expect": "survives"}])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    r = cli("run", path, "--out", tmp_path / "run", "-q")
    assert r.code in (1, 2), r  # an error row (1) or refused as input (2), never a pass
    assert "Traceback" not in r.err
    if r.code == 1:
        from conftest import verdicts

        assert verdicts(tmp_path / "run") == {"lp_norm[p=nan]": "error"}


def test_a_hypothesis_calling_sys_exit_gets_an_error_row_and_the_run_finishes(tmp_path, bad_plugin, cli):
    path = _study_with(tmp_path, bad_plugin, [{"name": "exits"}, {"name": "l2_norm", "expect": "falsified"}])
    r = cli("run", path, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r  # no expectation on the raising member; l2 held
    from conftest import results_json

    from ibtest.run.store import open_run

    rows = {v["label"]: v for v in results_json(tmp_path / "run")["verdicts"]}
    assert rows["exits"]["verdict"] == "error" and "sys.exit(3)" in rows["exits"]["error"]
    store = open_run(tmp_path / "run")
    try:
        assert store.meta()["state"] == "finished"
    finally:
        store.close()


def test_identical_pairs_alone_are_no_evidence():
    """Linear model from θ0 = 0: GF ends at X⁺y on every dataset, every admissible pair is
    identical, so no R can be told apart: inconclusive, never "survives"."""
    study = {
        "study": "linear-zero-init", "seed": 0, "model": {"name": "linear"}, "init": {"name": "zeros"},
        "datasets": [{"name": "gaussian", "n": 3, "d": 6, "count": 4, "labels": "teacher_linear"}],
        "solver": {"name": "exact"}, "constructions": ["consistent_augmentation"],
        "hypotheses": [{"name": "lp_norm", "params": {"p": [1, math.inf]}}],
        "verdict": {"search": False},  # pairs alone (the witness search refutes both: test_witness.py)
    }
    res = run_study(study, write=False)
    for m in res.members:
        assert m.n_pairs > 0 and m.n_distinct == 0
        assert m.verdict == "inconclusive" and "identical" in m.reason


# ------------------------------------------------------------------------------------------
# one hypothesis context for the engine and the plugin-author kit
# ------------------------------------------------------------------------------------------
CTX_PLUGIN = '''
import torch
import ibtest

def raw_init_only(beta, ctx):
    # on="predictor": beta is [B, d]; ctx.init must be raw theta0 = (u, v), [B, 2d]
    if ctx.init.shape[-1] != 2 * beta.shape[-1]:
        raise AssertionError(f"ctx.init has {ctx.init.shape[-1]} columns, expected raw theta0 with "
                             f"{2 * beta.shape[-1]}")
    return (beta - ctx.init_predictor).norm(dim=-1)

@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="raw_init_only", fn=raw_init_only, depends_on="init", on="predictor")]
'''


def test_the_kit_and_the_engine_pass_the_same_context(tmp_path):
    """ctx.init is raw θ0 for an on="predictor", depends_on="init" hypothesis in the engine and in
    ibtest.testing.check_hypothesis alike (a diagonal net: θ0 = (u, v) has 2d entries, β has d)."""
    from ibtest.testing import check_hypothesis

    plugin = tmp_path / "ctx_plugin.py"
    plugin.write_text(textwrap.dedent(CTX_PLUGIN))
    R = check_hypothesis(plugin, "raw_init_only", model="diagonal_linear", d=3)
    assert R.shape == (4,) and bool(torch.isfinite(R).all())
    study = {
        "study": "ctx", "seed": 0, "plugins": [str(plugin)], "model": {"name": "diagonal_linear"},
        "init": {"name": "scaled", "alpha": 0.5},
        "datasets": [{"name": "sparse_regression", "n": 2, "d": 3, "k": 1, "count": 2}],
        "solver": {"name": "adaptive"}, "hypotheses": [{"name": "raw_init_only"}],
    }
    res = run_study(study, write=False)
    (member,) = res.members
    assert member.verdict != "error", member.error


@pytest.mark.parametrize("option, needle", [
    ("fit_tol: 1.5", "solver.fit_tol: Input should be less than 1"),
    ("fit_tol: -1.0e-20", "solver.fit_tol: Input should be greater than or equal to 0"),
    ("grid: 0", "solver.grid: Input should be greater than or equal to 2"),
    ("max_pieces: 0", "solver.max_pieces: Input should be greater than or equal to 1"),
])
def test_a_relative_fit_tol_of_one_or_more_and_empty_budgets_are_refused(tmp_path, cli, option, needle):
    """fit_tol is relative: 1 or more would call θ0 itself a fit."""
    path = tmp_path / "study.yaml"
    path.write_text("study: x\nmodel: {name: relu_neuron}\ndatasets: [{name: vardi_shamir_theorem3}]\n"
                    f"solver: {{name: exact, {option}}}\n")
    r = cli("run", path, "--out", tmp_path / "run")
    assert r.code == 2 and needle in r.err, r
