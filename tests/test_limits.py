"""Verdicts about limits (issue 25): the trend rule, the studies that declare limit:, and their
certificates (limit and certified-survival) replayed by ibtest verify."""
from __future__ import annotations

import json
import math

import pytest
from conftest import STUDIES, results_json
from hypothesis import given, settings, strategies as st

from ibtest.judge.limits import CONSISTENT, INCONCLUSIVE, NOT_THE_LIMIT, LimitPoint, judge_limit, point_of


def _pts(pairs, refuted=True):
    return [LimitPoint(s, refuted, g) for s, g in pairs]


def test_a_power_law_decay_is_consistent_with_its_rate():
    v = judge_limit("l1", _pts([(1.0, 0.3), (0.1, 0.03), (0.01, 0.003), (0.001, 3e-4)]), 0.0)
    assert v.verdict == CONSISTENT and v.law == "power"
    assert v.rate == pytest.approx(1.0, abs=1e-9) and v.r2 == pytest.approx(1.0)


def test_a_logarithmic_decay_is_consistent_and_named_so():
    """g = 0.1/log(1/s): a power-law fit gives a rate of ~0.1, the logarithmic one q = 1."""
    pts = _pts([(s, 0.1 / math.log(1 / s)) for s in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)])
    v = judge_limit("var", pts, 0.0)
    assert v.verdict == CONSISTENT and v.law == "log" and v.log_rate == pytest.approx(1.0, abs=1e-9)
    assert v.rate is not None and v.rate < 0.25


def test_a_gap_bounded_away_is_not_the_limit():
    v = judge_limit("l2", _pts([(1e-2, 0.18), (1e-3, 0.19), (1e-4, 0.21), (1e-5, 0.23), (1e-6, 0.24)]), 0.0)
    assert v.verdict == NOT_THE_LIMIT


def test_the_direction_to_infinity_reads_the_other_end():
    pts = _pts([(0.01, 0.017), (0.1, 0.09), (1.0, 0.29), (10.0, 0.29), (100.0, 0.35)])
    assert judge_limit("l1", pts, 0.0).verdict == CONSISTENT
    assert judge_limit("l1", pts, math.inf).verdict == NOT_THE_LIMIT


def test_the_floor_is_never_fitted_and_ends_a_consistent_trend():
    pts = _pts([(1.0, 1e-3), (0.1, 1e-5)]) + [LimitPoint(0.01, False, 1e-9), LimitPoint(0.001, False, 1e-9)]
    v = judge_limit("r", pts, 0.0)
    assert v.verdict == CONSISTENT and v.floor_from == 0.01 and "floor" in v.reason


def test_refuted_near_the_limit_after_the_floor_is_not_the_limit():
    pts = [LimitPoint(1.0, False, 0.0), LimitPoint(0.1, False, 0.0)] + _pts([(0.01, 0.2), (0.001, 0.2)])
    assert judge_limit("r", pts, 0.0).verdict == NOT_THE_LIMIT


def test_too_few_values_and_a_zigzag_are_inconclusive():
    assert judge_limit("r", _pts([(1.0, 0.1), (0.1, 0.01)]), 0.0).verdict == INCONCLUSIVE
    zig = _pts([(1.0, 0.1), (0.1, 0.001), (0.01, 0.05), (0.001, 1e-4)])
    assert judge_limit("r", zig, 0.0).verdict == INCONCLUSIVE


def test_a_run_that_says_nothing_is_not_a_point():
    """A member inconclusive at some value (nothing converged there) is no evidence either way: it
    must not count as 'within the margin' (the floor), which would read as convergence."""
    class M:
        verdict, grade, evidence = "inconclusive", None, None
    assert point_of(M(), 0.1) is None


@given(st.floats(min_value=-30, max_value=30), st.sampled_from([0.5, 1.0, 2.0]))
@settings(max_examples=40, deadline=None)
def test_the_verdict_does_not_depend_on_the_unit_of_the_scale(k, rate):
    """Multiplying every swept value by 10^k (another unit for the scale) changes no verdict and
    no power-law rate."""
    base = [(10.0 ** -j, 0.5 * 10.0 ** (-rate * j)) for j in range(5)]
    a = judge_limit("r", _pts(base), 0.0)
    b = judge_limit("r", _pts([(s * 10.0 ** k, g) for s, g in base]), 0.0)
    assert a.verdict == b.verdict == CONSISTENT and b.rate == pytest.approx(a.rate, rel=1e-9)


# ------------------------------------------------------------------------------------------
# the studies and their certificates
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_woodworth_limits_study_and_its_limit_certificates(tmp_path, cli):
    r = cli("run", STUDIES / "woodworth_limits.yaml", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    limits = {(v["label"], v["to"]): v for v in results_json(tmp_path / "run")["limits"]}
    assert limits[("l1_norm", "0")]["verdict"] == "consistent"
    assert limits[("l1_norm", "inf")]["verdict"] == "not_the_limit"
    assert limits[("predictor_norm[p=2]", "inf")]["verdict"] == "consistent"
    assert limits[("predictor_norm[p=2]", "0")]["verdict"] == "not_the_limit"
    assert "Limits over init.alpha" in r.out
    cert = limits[("l1_norm", "0")]["certificate"]
    v = cli("verify", cert)
    assert v.code == 0 and "re-judged: consistent" in v.out and "limit verdict CONFIRMED" in v.out, v
    data = json.loads(open(cert).read())
    data["verdict"] = "not_the_limit"  # an edited claim is withdrawn, not confirmed
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    w = cli("verify", edited)
    assert w.code == 1 and "limit verdict WITHDRAWN" in w.out and "refutation" not in w.out, w
    p = cli("show", cert, "--plot", tmp_path / "limit.png")
    assert p.code == 0 and (tmp_path / "limit.png").stat().st_size > 10_000


def test_a_certified_survival_writes_a_certificate_that_verify_replays(tmp_path, cli):
    r = cli("run", STUDIES / "linear_zero_init.yaml", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    cert = tmp_path / "run" / "certificates" / "l2_norm.certified.json"
    assert json.loads(cert.read_text())["kind"] == "optimum"
    v = cli("verify", cert)
    assert v.code == 0 and "certified optimum CONFIRMED" in v.out, v
    s = cli("show", cert)
    assert s.code == 0 and "Certified survival:" in s.out


def _run_net_study(tmp_path, cli, text: str) -> dict:
    """Run a one-member network study (``text``, solved by ``adaptive``) that must exit 0: its verdict."""
    study = tmp_path / "s.yaml"
    study.write_text(text + "solver: {name: adaptive}\n")
    r = cli("run", study, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    (v,) = results_json(tmp_path / "run")["verdicts"]
    return v


@pytest.mark.slow
def test_a_network_refuted_by_its_certified_minimum_norm_net(tmp_path, cli):
    """A width-4 net on one orthogonal point: the variation norm's minimum over Z(D) is certified by
    the convex program (every pattern enumerated), its net is the witness, verify confirms it, and
    the figure shows both nets' neurons."""
    v = _run_net_study(tmp_path, cli, "study: net\nseed: 1\nmodel: {name: two_layer_relu, width: 4}\n"
                       "init: {name: gaussian, scale: 0.01}\n"
                       "datasets: [{name: orthogonal, n: 1, d: 3, count: 2, labels: teacher_linear}]\n"
                       "hypotheses: [{name: variation_norm, expect: falsified}]\n")
    assert v["search"]["label"] == "certified" and v["evidence"]["kind"] == "witness"
    cert = v["certificate"]
    assert cli("verify", cert).code == 0
    assert cli("show", cert, "--plot", tmp_path / "w.png").code == 0
    assert (tmp_path / "w.neurons.png").stat().st_size > 10_000


def test_a_certified_network_survival_replays(tmp_path, cli):
    """One hidden ReLU neuron from the paper's depth-2 init (w = 0, v = eps) on the Theorem 3 data
    with gamma = 0: gradient flow ends at the minimum variation-norm net, (5, -1, 0) in u = v w; the
    convex program certifies it (every activation pattern enumerated), and verify replays that."""
    v = _run_net_study(tmp_path, cli, "study: certified-net\nmodel: {name: two_layer_relu, width: 1}\n"
                       "init: {name: output_eps, eps: 0.001}\n"
                       "datasets: [{name: vardi_shamir_theorem3, gamma: 0}]\n"
                       "hypotheses: [{name: variation_norm, expect: survives}]\n")
    assert v["verdict"] == "survives" and v["grade"] == "certified", v
    cert = tmp_path / "run" / "certificates" / "variation_norm.certified.json"
    out = cli("verify", cert)
    assert out.code == 0 and "certified optimum CONFIRMED" in out.out, out
    assert "R(theta_inf) = 5.09901951359; minimum over Z(D) (model's certified optimum): 5.09901951359" in out.out


@pytest.mark.slow
def test_boursier_orthogonal_limits_as_derived(tmp_path, cli):
    """The study's expectations (variation_norm and l2 of theta consistent as the scale -> 0,
    predictor_norm p = 2 not the limit, balancedness conserved) hold, exit 0; the limit
    certificate of variation_norm replays."""
    r = cli("run", STUDIES / "boursier_orthogonal.yaml", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    limits = {v["label"]: v for v in results_json(tmp_path / "run")["limits"]}
    assert limits["variation_norm"]["verdict"] == "consistent"
    assert limits["l2_norm"]["verdict"] == "consistent"
    assert limits["predictor_norm[p=2]"]["verdict"] == "not_the_limit"
    gaps = [p["g"] for p in limits["variation_norm"]["points"]]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.02, gaps  # falls toward 0
    v = cli("verify", limits["variation_norm"]["certificate"])
    assert v.code == 0 and "limit verdict CONFIRMED" in v.out, v


@pytest.mark.slow
def test_min_norm_negative_control_is_not_the_limit(tmp_path, cli):
    """Theorem 3 data lifted to a net: u3 -> -0.26, not the minimum-norm 0, so variation_norm and
    l2 of theta are not the small-init limit (relative gap ~ 0.0013 = sqrt(1 + 0.26^2/26) - 1)."""
    r = cli("run", STUDIES / "min_norm_negative_control.yaml", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    limits = {v["label"]: v for v in results_json(tmp_path / "run")["limits"]}
    assert limits["variation_norm"]["verdict"] == "not_the_limit"
    assert limits["l2_norm"]["verdict"] == "not_the_limit"
    assert abs(limits["variation_norm"]["points"][-1]["g"] - 0.0013) < 2e-4
