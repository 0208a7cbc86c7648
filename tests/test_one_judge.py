"""One judge (issue 23): the held-out cases that got wrong verdicts, each a regression test.

Every verdict here is decided by :mod:`ibtest.solve.rules` (through the claim kinds), the same rules
``ibtest verify`` and ``ibtest shrink`` judge by.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import STUDIES, results_json

from ibtest.api import run_study
from ibtest.judge import evaluation as ev
from ibtest.plugin.manager import load_registry
from ibtest.solve.rules import Rules, Tolerance, Verdict


def _run(study: dict, tmp_path: Path, plugins=()):
    return run_study(study, plugins=[str(p) for p in plugins], out_dir=tmp_path / "run")


def _by_label(res) -> dict:
    return {m.label: m for m in res.members}


def _plugin(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# ------------------------------------------------------------------------------------------
# 1. R's own evaluation noise
# ------------------------------------------------------------------------------------------
WOODWORTH = {"study": "q-alpha-large", "seed": 0, "model": {"name": "diagonal_linear"},
             "init": {"name": "scaled", "alpha": 30.0},
             "datasets": [{"name": "sparse_regression", "n": 4, "d": 8, "k": 2, "count": 8}],
             "solver": {"name": "adaptive"}, "constructions": [],
             "hypotheses": [{"name": "q_alpha", "expect": "survives"}], "report": {"triples": False}}


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [15.0, 30.0])
def test_q_alpha_at_a_large_init_scale_survives_certified(tmp_path, alpha):
    """At α = 30 the textbook q(z) = 2 − √(4+z²) + z·asinh(z/2) lost 8 digits (z ≈ 1e-4) and a
    rounding offset of 8e-13 was certified as a refutation; the built-in form has no cancellation."""
    study = dict(WOODWORTH, init={"name": "scaled", "alpha": alpha})
    m = _by_label(_run(study, tmp_path))["q_alpha[alpha=0]"]
    assert m.verdict == Verdict.SURVIVES and str(m.grade) == "certified", m.reason


CANCELLING = '''
import torch
import ibtest

def q_textbook(beta, ctx):
    a2 = ctx.init.pow(2).mean(-1, keepdim=True)
    z = beta / a2
    return (a2 * (2 - torch.sqrt(4 + z * z) + z * torch.asinh(z / 2))).sum(-1)

@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="q_textbook", fn=q_textbook, on="predictor", depends_on="init",
                              doc="Q_alpha in the cancelling textbook form")]
'''


@pytest.mark.slow
def test_a_badly_conditioned_user_r_is_inconclusive_never_falsified(tmp_path):
    plugin = _plugin(tmp_path, "qtext.py", CANCELLING)
    study = dict(WOODWORTH, hypotheses=[{"name": "q_textbook"}])
    m = _by_label(_run(study, tmp_path, [plugin]))["q_textbook"]
    assert m.verdict != Verdict.FALSIFIED
    assert m.verdict == Verdict.INCONCLUSIVE and "evaluation noise" in m.reason, m.reason


def test_the_path_integral_exposes_a_rounding_offset_that_input_jitter_cannot():
    """q's cancellation gives R a systematic offset of ~1e-13 at β ≈ 0.1, α = 30: re-evaluating at
    θ moved by ulps sees nothing (4 + z² does not change), the path integral of ∇R does."""
    reg = load_registry([])
    model = reg.get("models", "diagonal_linear").factory()
    spec = reg.get("hypotheses", "q_alpha")
    import ibtest_hypotheses.nets as nets  # the built-in module, to compare with its textbook form

    def textbook(beta, ctx, alpha):
        a2 = ctx.init.pow(2).mean(-1, keepdim=True)
        z = beta / a2
        return (a2 * (2 - torch.sqrt(4 + z * z) + z * torch.asinh(z / 2))).sum(-1)

    bad = type(spec)(**{**spec.__dict__, "fn": textbook, "cvx": None})
    th0 = torch.full((2, 8), 30.0, dtype=torch.float64)
    th = th0.clone()
    th[0, :4] += torch.tensor([1e-3, 2e-3, -1e-3, 5e-4])
    th[1, :4] += torch.tensor([1.1e-3, 2e-3, -1e-3, 4e-4])
    hctx = ev.context(model, bad, theta0=th0)
    a, b, pn = ev.compare(model, bad, {"alpha": 0.0}, th, hctx, [0.0, 0.0])
    exact = float((nets.q_alpha(model.predictor(th[:1]), hctx, 0.0)
                   - nets.q_alpha(model.predictor(th[1:]), hctx, 0.0))[0])
    direct = a.value - b.value
    assert abs(direct - exact) > 1e-14  # the textbook form is off by rounding
    assert pn >= abs(direct - exact)  # and the path noise covers it
    j = Rules().judge_pair(Tolerance(0.0, 1e-12), a, b, pn)
    assert not (j.gap > j.margin + pn) or abs(exact) > j.margin


# ------------------------------------------------------------------------------------------
# 2. no power where Z(D) is a single point in the variable R reads
# ------------------------------------------------------------------------------------------
def test_linear_model_with_n_at_least_d_is_inconclusive_for_every_member(tmp_path):
    study = {"study": "linear-point", "seed": 0, "model": {"name": "linear"},
             "init": {"name": "gaussian", "scale": 1.0, "count": 2},
             "datasets": [{"name": "gaussian", "n": 6, "d": 4, "count": 4, "labels": "teacher_linear"}],
             "solver": {"name": "exact"}, "constructions": [],
             "hypotheses": [{"name": "lp_norm", "params": {"p": [1, float("inf")]}}, {"name": "l2_norm"}]}
    res = _run(study, tmp_path)
    for m in res.members:
        assert m.verdict == Verdict.INCONCLUSIVE, (m.label, m.verdict, m.reason)
        assert "single point" in m.reason


@pytest.mark.slow
def test_diagonal_net_with_n_at_least_d_no_power_in_beta_but_not_in_theta(tmp_path):
    study = {"study": "diag-point", "seed": 1, "model": {"name": "diagonal_linear"},
             "init": {"name": "scaled", "alpha": 1.0},
             "datasets": [{"name": "sparse_regression", "n": 6, "d": 4, "k": 2, "count": 3}],
             "solver": {"name": "adaptive"}, "constructions": [],
             "hypotheses": [{"name": "q_alpha"}, {"name": "l1_norm"}, {"name": "l2_norm", "expect": "falsified"}]}
    ms = _by_label(_run(study, tmp_path))
    for label in ("q_alpha[alpha=0]", "l1_norm"):
        assert ms[label].verdict == Verdict.INCONCLUSIVE and "single point" in ms[label].reason, ms[label].reason
    assert ms["l2_norm"].verdict == Verdict.FALSIFIED


# ------------------------------------------------------------------------------------------
# 3. a local search that found nothing is not support: unrefuted
# ------------------------------------------------------------------------------------------
TWO_WELLS = '''
import torch
import ibtest

def two_wells(theta, ctx):
    """−exp(−|θ − p1|²) − 2·max(0, 1 − |θ − p2|²)²: p1 = X⁺y (the flow's limit from θ0 = 0), p2 =
    p1 + 6·n (n a unit null direction of X): θ∞ sits at the bottom of the shallow well, the deep one
    (flat zero outside radius 1) is far along Z(D), where no local step from θ∞ leads."""
    X, y = ctx.X, ctx.y
    p1 = (torch.linalg.pinv(X) @ y[..., None])[..., 0]
    _, _, Vh = torch.linalg.svd(X)
    p2 = p1 + 6.0 * Vh[:, -1, :]
    deep = (1 - (theta - p2).pow(2).sum(-1)).clamp_min(0) ** 2
    return -torch.exp(-(theta - p1).pow(2).sum(-1)) - 2 * deep

@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="two_wells", fn=two_wells, depends_on="data")]
'''


def test_survival_on_a_local_search_alone_is_unrefuted_and_fails_expect_survives(tmp_path, cli):
    plugin = _plugin(tmp_path, "wells.py", TWO_WELLS)
    study = {"study": "two-wells", "seed": 0, "model": {"name": "linear"}, "init": {"name": "zeros"},
             "datasets": [{"name": "gaussian", "n": 3, "d": 6, "count": 2, "labels": "teacher_linear"}],
             "solver": {"name": "exact"}, "constructions": [],
             "hypotheses": [{"name": "two_wells", "expect": "survives"}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    r = cli("run", path, "--plugin", plugin, "--out", tmp_path / "run", "-q")
    assert r.code == 1, r  # `expect: survives` is not met by unrefuted
    v = results_json(tmp_path / "run")["verdicts"][0]
    assert v["verdict"] == "unrefuted" and v["grade"] is None
    assert "unrefuted" in r.out and "local search" in v["reason"]


# ------------------------------------------------------------------------------------------
# 4. a constant R is legal: it survives vacuously
# ------------------------------------------------------------------------------------------
CONSTANT = '''
import torch
import ibtest

@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="zero", fn=lambda theta, ctx: torch.zeros(theta.shape[0], dtype=theta.dtype))]
'''


def test_a_constant_hypothesis_survives_vacuously(tmp_path):
    plugin = _plugin(tmp_path, "const.py", CONSTANT)
    study = yaml.safe_load((STUDIES / "vardi_shamir_theorem3.yaml").read_text())
    study["hypotheses"] = [{"name": "zero", "expect": "survives"}]
    m = _run(study, tmp_path, [plugin]).members[0]
    assert m.verdict == Verdict.SURVIVES and str(m.grade) == "vacuous", m.reason
    assert "constant on every Z(D) seen" in m.reason and m.error is None


# ------------------------------------------------------------------------------------------
# 5. each side carries its own measured error
# ------------------------------------------------------------------------------------------
def test_without_a_recheck_each_side_keeps_its_own_error(tmp_path):
    study = yaml.safe_load((STUDIES / "vardi_shamir_theorem3.yaml").read_text())
    study.update(solver={"name": "adaptive"}, verdict={"recheck": False},
                 hypotheses=[{"name": "l2_norm", "expect": "falsified"}])
    res = _run(study, tmp_path)
    m = res.members[0]
    assert m.verdict == Verdict.FALSIFIED and m.evidence is not None
    est = res.triples.info["drift_estimate"]
    assert m.evidence.err_a == pytest.approx(float(est[m.evidence.a]))
    assert m.evidence.err_b == pytest.approx(float(est[m.evidence.b]))


# ------------------------------------------------------------------------------------------
# 6. evidence strings that do not read round-off as evidence
# ------------------------------------------------------------------------------------------
def test_suboptimality_at_round_off_is_zero():
    """R(θ∞) ≈ 1e-30 (θ∞ = θ0 to rounding): the search's relative suboptimality was 0.997."""
    from ibtest.judge import witness

    reg = load_registry([])
    model = reg.get("models", "linear").factory()
    spec = reg.get("hypotheses", "dist_to_init")
    sq = type(spec)(**{**spec.__dict__, "fn": lambda th, ctx: (th - ctx.init).pow(2).sum(-1), "cvx": None})
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    th0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = (X * th0[:, None, :]).sum(-1)  # θ0 fits: the flow stays, R(θ∞) is 0 up to rounding
    th = th0 + 1e-15 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    r = witness.search(model, sq, {}, X, y, torch.ones_like(y), th0, th, Rules(), Tolerance(0.0, 1e-9), steps=20)
    assert bool((r.sub == 0).all()), r.sub
    assert not bool(r.found.any())


@pytest.mark.slow
def test_the_closest_call_of_an_invariant_is_in_units_of_its_margin(tmp_path):
    res = run_study(STUDIES / "vardi_shamir_depth2.yaml", out_dir=tmp_path / "run")
    runs = res if isinstance(res, list) else [res]
    text = "\n".join(r.render("table", width=None) for r in runs)  # one line per member
    rows = [line for line in text.splitlines() if line.startswith("balancedness")]
    assert rows and all("of the margin" in row and "rel gap" not in row for row in rows), rows


# ------------------------------------------------------------------------------------------
# 7. shrink judges by the rules verify judges by (capped solver options)
# ------------------------------------------------------------------------------------------
def test_shrink_caps_the_certificates_solver_options_as_verify_does(tmp_path):
    from ibtest.cert.shrink_judge import make_judge

    study = yaml.safe_load((STUDIES / "vardi_shamir_theorem3.yaml").read_text())
    study["hypotheses"] = [{"name": "l2_norm"}]
    _run(study, tmp_path)
    cert = json.loads((tmp_path / "run" / "certificates" / "l2_norm.json").read_text())
    cert["solver"]["tightened"].update(fit_tol=0.5, max_pieces=10**9)
    cert["solver"]["options"].update(max_pieces=10**9)
    J = make_judge(cert, 100)
    assert J.settings.tightened["max_pieces"] <= 10 * 64 and J.settings.options["max_pieces"] <= 10 * 64
    assert "fit_tol" not in J.settings.tightened and J.rules.fit_tol <= 1e-20
    assert any("solver.tightened.fit_tol is not a solver option" in n for n in J.rules.notes), J.rules.notes


@pytest.mark.parametrize("key, value, needle", [
    ("order", 7, "solver.order: Input should be 5 or 8"),
    ("max_steps", 0, "solver.max_steps: Input should be greater than or equal to 1"),
    ("fit_tol", 1.5, "solver.fit_tol: fit_tol is the study's fit rule"),
])
def test_solver_options_are_bounded_by_their_one_declaration(tmp_path, cli, key, value, needle):
    """Item 7 of the issue: adaptive took order 7 (a FAILED row, exit 1), max_steps 0 and fit_tol 1.5."""
    study = yaml.safe_load((STUDIES / "linear_control.yaml").read_text())
    study["solver"] = {"name": "adaptive", key: value}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    r = cli("run", path, "--out", tmp_path / "run")
    assert r.code == 2 and needle in r.err, r
    assert not (tmp_path / "run").exists()
    study["solver"] = {"name": "adaptive"}
    study["fit_tol"] = 1.5  # the fit rule, where it lives, is bounded too
    path.write_text(yaml.safe_dump(study))
    r = cli("run", path, "--out", tmp_path / "run")
    assert r.code == 2 and "fit_tol: Input should be less than 1" in r.err, r


# ------------------------------------------------------------------------------------------
# 8. the witness path is scale-free too; beyond float64 nothing survives
# ------------------------------------------------------------------------------------------
def _gamma5(alpha: float) -> dict:
    s = yaml.safe_load((STUDIES / "vardi_shamir_gamma5_witness.yaml").read_text())
    s["datasets"][0]["alpha"] = alpha
    s["report"] = {"triples": False}
    return s


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1e-100, 1e-30, 1e-8, 1e8, 1e30, 1e100])
def test_witness_and_certified_optimum_verdicts_do_not_depend_on_the_label_scale(tmp_path, alpha):
    ref = {m.label: (m.verdict, m.grade) for m in _run(_gamma5(1.0), tmp_path / "one").members}
    got = {m.label: (m.verdict, m.grade) for m in _run(_gamma5(alpha), tmp_path / "scaled").members}
    assert got == ref
    assert ref["lp_norm[p=inf]"] == (Verdict.SURVIVES, "certified") and ref["l2_norm"][0] == Verdict.FALSIFIED


@pytest.mark.parametrize("alpha", [1e-200, 1e200])
def test_beyond_float64_nothing_survives_and_nothing_is_refuted(tmp_path, alpha):
    for m in _run(_gamma5(alpha), tmp_path).members:
        assert m.verdict in (Verdict.INCONCLUSIVE, Verdict.ERROR), (m.label, m.verdict)


SCALED_GAUSSIAN = '''
import torch
import ibtest

def gen(rng, n=3, d=6, count=6, label_scale=1.0):
    X = torch.randn(count, n, d, generator=rng, dtype=torch.float64)
    w = torch.randn(count, d, generator=rng, dtype=torch.float64)
    return ibtest.DataBatch(X, label_scale * (X * w[:, None, :]).sum(-1), [str(k) for k in range(count)])

@ibtest.hookimpl
def ibtest_datasets():
    return [ibtest.Dataset(name="scaled_linear", generate=gen,
                           options={"label_scale": ibtest.Option(1.0, float, "label scale")})]
'''


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_linear_zero_init_witnesses_do_not_depend_on_the_label_scale(tmp_path, scale):
    plugin = _plugin(tmp_path, "scaled.py", SCALED_GAUSSIAN)
    study = {"study": "lz", "seed": 0, "model": {"name": "linear"}, "init": {"name": "zeros"},
             "datasets": [{"name": "scaled_linear", "label_scale": 1.0}], "solver": {"name": "exact"},
             "constructions": [], "hypotheses": [{"name": "l2_norm"}, {"name": "lp_norm", "params": {"p": [1, 3]}}]}
    ref = {m.label: m.verdict for m in _run(study, tmp_path / "a", [plugin]).members}
    study["datasets"][0]["label_scale"] = scale
    got = {m.label: m.verdict for m in _run(study, tmp_path / "b", [plugin]).members}
    assert got == ref and ref["lp_norm[p=1]"] == Verdict.FALSIFIED and ref["l2_norm"] == Verdict.SURVIVES


# ------------------------------------------------------------------------------------------
# 9. ill-conditioned data: a fit is near Z(D), and the exact solver returns the exact limit
# ------------------------------------------------------------------------------------------
ILL = '''
import torch
import ibtest

def gen(rng):
    X = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1e-10, 0.0]]], dtype=torch.float64)
    return ibtest.DataBatch(X, torch.tensor([[1.0, 1.0 + 1e-10]], dtype=torch.float64), ["ill"])

def init(model, d, count, rng):
    return torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64).repeat(count, 1)

@ibtest.hookimpl
def ibtest_datasets():
    return [ibtest.Dataset(name="ill", generate=gen)]

@ibtest.hookimpl
def ibtest_inits():
    return [ibtest.Init(name="ill_init", sample=init)]
'''


def test_ill_conditioned_data_the_exact_limit_and_no_refutation(tmp_path):
    plugin = _plugin(tmp_path, "ill.py", ILL)
    study = {"study": "ill", "model": {"name": "linear"}, "init": {"name": "ill_init"},
             "datasets": [{"name": "ill"}], "solver": {"name": "exact"},
             "hypotheses": [{"name": "l2_norm"}, {"name": "dist_to_init"}]}
    res = _run(study, tmp_path, [plugin])
    assert torch.allclose(res.triples.theta[0], torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    for m in res.members:
        assert m.verdict != Verdict.FALSIFIED, (m.label, m.reason)


def test_a_point_near_zero_loss_but_far_from_z_does_not_fit():
    """(1, 2, 0) has loss 5e-21 ≤ fit_tol·s on X = [[1,0,0],[1,1e-10,0]], y = (1, 1+1e-10), yet Z(D)
    is θ1 = θ2 = 1: it is at distance 1. The fit rule sees the distance."""
    reg = load_registry([])
    model = reg.get("models", "linear").factory()
    X = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1e-10, 0.0]]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1.0 + 1e-10]], dtype=torch.float64)
    th0 = torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64)
    far = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)
    fc = Rules().check_fit(model, far, X, y, torch.ones_like(y), th0)
    assert float(fc.loss[0]) <= float(fc.threshold[0])  # the loss test alone passes
    assert not bool(fc.ok[0]) and float(fc.dist[0]) == pytest.approx(1.0, rel=1e-6)
    on = torch.tensor([[1.0, 1.0, 5.0]], dtype=torch.float64)
    assert bool(Rules().fits(model, on, X, y, torch.ones_like(y), th0)[0])


def test_verify_withdraws_a_forged_witness_off_the_zero_loss_set(tmp_path, cli):
    plugin = _plugin(tmp_path, "ill.py", ILL)
    study = {"study": "ill", "model": {"name": "linear"}, "init": {"name": "ill_init"},
             "datasets": [{"name": "ill"}], "solver": {"name": "exact"}, "hypotheses": [{"name": "l2_norm"}]}
    res = _run(study, tmp_path, [plugin])
    from ibtest.cert.schema import FORMAT

    t = res.triples
    cert = {"format": FORMAT, "kind": "witness", "hypothesis": {"name": "l2_norm", "params": {}},
            "model": {"name": "linear", "options": {}}, "solver": {"name": "exact", "options": {}},
            "theta0": t.theta0[0].tolist(),
            "a": {"X": t.X[0].tolist(), "y": t.y[0].tolist(), "theta": t.theta[0].tolist(),
                  "theta0": t.theta0[0].tolist(), "loss": 0.0, "R": 10.0, "measured_error": 0.0},
            "witness": {"theta": [1.0, 0.0, 0.0], "loss": 0.0, "fit_threshold": 1e-12, "R": 0.5},
            "gap": 9.5, "margin": 1e-9}  # every field a witness certificate has, the claim forged
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(cert))
    r = cli("verify", path)
    assert r.code == 1, r
    assert "theta' in Z(D)" in r.out and ": NO" in r.out and "WITHDRAWN" in r.out


# ------------------------------------------------------------------------------------------
# 10. the engine does not take a solver's word for "converged"
# ------------------------------------------------------------------------------------------
LIAR = '''
import torch
import ibtest

def solve(model, X, y, mask, theta0, fit_tol=1e-20):
    B = theta0.shape[0]
    return ibtest.SolveResult(theta0.clone(), torch.zeros(B, dtype=torch.int64),
                              torch.zeros(B, dtype=torch.float64), {})

@ibtest.hookimpl
def ibtest_solvers():
    return [ibtest.Solver(name="liar", solve=solve, options={})]
'''


def test_a_solver_claiming_convergence_at_theta0_is_not_believed(tmp_path):
    plugin = _plugin(tmp_path, "liar.py", LIAR)
    study = yaml.safe_load((STUDIES / "linear_control.yaml").read_text())
    study.update(solver={"name": "liar"}, hypotheses=[{"name": "l2_norm"}, {"name": "dist_to_init"}])
    res = _run(study, tmp_path, [plugin])
    for m in res.members:
        assert m.verdict == Verdict.INCONCLUSIVE, (m.label, m.verdict, m.reason)
    assert any("does not fit its data by the engine's rule" in e for e in res.errors)


# ------------------------------------------------------------------------------------------
# 11. plugins cannot write into what other members see
# ------------------------------------------------------------------------------------------
WRITER = '''
import torch
import ibtest

def vandal(theta, ctx):
    ctx.X.mul_(0.0)
    ctx.y.add_(1.0)
    return theta.norm(dim=-1)

@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="vandal", fn=vandal, depends_on="data")]
'''


def test_a_hypothesis_writing_into_its_context_is_an_error_and_changes_nothing_else(tmp_path):
    plugin = _plugin(tmp_path, "vandal.py", WRITER)
    study = yaml.safe_load((STUDIES / "vardi_shamir_gamma5_witness.yaml").read_text())
    base = {m.label: m.verdict for m in _run(study, tmp_path / "a").members}
    study["hypotheses"] = [{"name": "vandal"}] + study["hypotheses"]
    res = _run(study, tmp_path / "b", [plugin])
    ms = {m.label: m for m in res.members}
    assert ms["vandal"].verdict == Verdict.ERROR and "ctx.X" in (ms["vandal"].error or "")
    assert {k: m.verdict for k, m in ms.items() if k != "vandal"} == base


MUTANT_MODEL = '''
import torch
import ibtest

class Mutant(ibtest.ModelBase):
    def n_params(self, d):
        return d

    def predict(self, theta, X):
        X.mul_(1.0 + 1e-3)  # writes into its input
        return (X * theta[:, None, :]).sum(-1)

@ibtest.hookimpl
def ibtest_models():
    return [ibtest.Model(name="mutant", factory=Mutant)]
'''


def test_a_model_writing_into_its_inputs_is_reported_and_the_triples_are_unchanged(tmp_path):
    plugin = _plugin(tmp_path, "mutant.py", MUTANT_MODEL)
    study = {"study": "m", "model": {"name": "mutant"}, "init": {"name": "zeros"},
             "datasets": [{"name": "gaussian", "n": 2, "d": 3, "count": 2, "labels": "teacher_linear"}],
             "solver": {"name": "gd", "steps": 10}, "hypotheses": [{"name": "l2_norm"}]}
    res = _run(study, tmp_path, [plugin])
    assert any("wrote into its inputs" in e for e in res.errors), res.errors
    assert all(m.verdict != Verdict.SURVIVES for m in res.members)
