"""The issue-3 studies end to end: depth 2 (with the ε sweep), diagonal nets, 2×2 completion."""
from __future__ import annotations

import pytest
from conftest import STUDIES, results_json, verdicts


@pytest.mark.slow
def test_depth2_sweep_balancedness_survives_norms_fall_and_u3_settles(cli, tmp_path):
    run = tmp_path / "run"
    r = cli("run", STUDIES / "vardi_shamir_depth2.yaml", "--out", run)
    assert r.code == 0, r
    assert "Sweep over init.eps" in r.out
    u3 = []
    for k, eps in enumerate([0.1, 0.01, 0.001]):
        res = results_json(run / f"sweep-{k:02d}")
        assert res["sweep_value"] == eps
        v = {x["label"]: x["verdict"] for x in res["verdicts"]}
        assert v.pop("balancedness") == "survives"
        assert set(v.values()) == {"falsified"}
        pred = {t["dataset"]: t["predictor"] for t in res["triples"]}
        assert pred["vardi_shamir_theorem3(gamma=0)"] == pytest.approx([5, -1, 0], abs=1e-6)
        u = pred["vardi_shamir_theorem3(gamma=5)"]
        assert u[:2] == pytest.approx([5, -1], abs=1e-6) and u[2] < 0
        u3.append(u[2])
    assert abs(u3[1] - u3[2]) < 1e-3  # the ε → 0 limit (paper: u3 ≈ -0.26)
    assert u3[2] == pytest.approx(-0.26, abs=0.01)
    rep = cli("report", run)
    assert rep.code == 0 and "Sweep over init.eps" in rep.out
    cert = run / "sweep-02" / "certificates" / "predictor_norm_p=2.json"
    v = cli("verify", cert)
    assert v.code == 0 and "CONFIRMED" in v.out, v


@pytest.mark.slow
def test_woodworth_diagonal(cli, tmp_path):
    r = cli("run", STUDIES / "woodworth_diagonal.yaml", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert verdicts(tmp_path / "run") == {"q_alpha[alpha=0]": "survives", "l1_norm": "falsified",
                                          "predictor_norm[p=2]": "falsified"}


@pytest.mark.slow
def test_razin_cohen_completion_is_reported_as_diverged_never_judged(cli, tmp_path):
    r = cli("run", STUDIES / "razin_cohen_completion.yaml", "--out", tmp_path / "run")
    assert r.code == 0, r
    res = results_json(tmp_path / "run")
    assert res["status_counts"] == {"diverged": 1}
    assert res["triples"][0]["growth"] > 10
    for v in res["verdicts"]:
        assert v["verdict"] == "inconclusive" and "diverged" in v["reason"]
    assert "diverged" in r.out and "|θ| growth" in r.out
