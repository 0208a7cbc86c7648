"""Theorem 8: the exact distance to Z(D) and the ratio bound on converged single-neuron triples."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import STUDIES, results_json
from scipy.optimize import minimize

from ibtest_hypotheses.theorem8 import distance_to_zero_loss_set


def _slsqp_distance(w0, X, y):
    cons = []
    for x, t in zip(X, y):
        if t > 0:
            cons.append({"type": "eq", "fun": lambda w, x=x, t=t: w @ x - t, "jac": lambda w, x=x: x})
        else:
            cons.append({"type": "ineq", "fun": lambda w, x=x: -(w @ x), "jac": lambda w, x=x: -x})
    best = np.inf
    for start in (w0, w0 + 1.0, np.linalg.lstsq(X, np.maximum(y, 0), rcond=None)[0]):
        r = minimize(lambda w: 0.5 * np.sum((w - w0) ** 2), start, jac=lambda w: w - w0, constraints=cons,
                     method="SLSQP", options={"ftol": 1e-15, "maxiter": 500})
        if r.success:
            best = min(best, np.linalg.norm(r.x - w0))
    return best


def test_exact_distance_matches_a_generic_qp_solver():
    g = torch.Generator().manual_seed(0)
    B, n, d = 25, 4, 5
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    y = torch.einsum("bnd,bd->bn", X, torch.randn(B, d, generator=g, dtype=torch.float64)).clamp_min(0)
    w0 = torch.randn(B, d, generator=g, dtype=torch.float64)
    dist = distance_to_zero_loss_set(w0, X, y, torch.ones(B, n, dtype=torch.float64))
    for b in range(B):
        ref = _slsqp_distance(w0[b].numpy(), X[b].numpy(), y[b].numpy())
        assert float(dist[b]) == pytest.approx(ref, rel=1e-6, abs=1e-9), b
        assert float(dist[b]) <= ref + 1e-9  # exact enumeration is never worse than the QP


def test_distance_is_zero_on_z_and_infinite_when_empty():
    X = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    y = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    m = torch.ones(1, 2, dtype=torch.float64)
    assert float(distance_to_zero_loss_set(torch.tensor([[2.0, -3.0]]).double(), X, y, m)[0]) == 0.0
    # w0 = (0, 1): project onto {w1 = 2, w2 <= 0}: (2, 0), distance sqrt(5)
    assert float(distance_to_zero_loss_set(torch.tensor([[0.0, 1.0]]).double(), X, y, m)[0]) == pytest.approx(5 ** 0.5)
    yneg = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    assert torch.isinf(distance_to_zero_loss_set(torch.zeros(1, 2).double(), X, yneg, m)).all()


def test_theorem8_study_ratio_never_exceeds_two(cli, tmp_path):
    r = cli("run", STUDIES / "theorem8_bound.yaml", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    row = results_json(tmp_path / "run")["verdicts"][0]
    assert row["verdict"] == "survives"
    assert 1.0 <= row["worst"] <= 2.0
    assert row["pairs"] >= 300  # converged triples judged


@pytest.mark.slow
def test_a_tighter_bound_is_falsified_with_a_verifiable_certificate(cli, tmp_path):
    text = (STUDIES / "theorem8_bound.yaml").read_text().replace(
        "{name: theorem8_ratio, expect: survives}", "{name: theorem8_ratio, params: {bound: 1.0001}, expect: falsified}")
    p = tmp_path / "tight.yaml"
    p.write_text(text)
    r = cli("run", p, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    cert = next((tmp_path / "run" / "certificates").glob("*.json"))
    v = cli("verify", cert)
    assert v.code == 0 and "CONFIRMED" in v.out
