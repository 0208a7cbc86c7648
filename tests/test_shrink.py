"""``ibtest shrink`` (issue 13): random refutations of l2_norm shrink to the paper's kind of core,
shrinking is deterministic, never returns a certificate verify withdraws, and its exit codes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as hs

from benchmarks.shrink import random_study, refutations
from ibtest.cert.shrink import fraction_text, shrink_file
from ibtest.cli import main

BUDGET = 3000  # solves per shrink in these tests (the default is 6000)


@pytest.fixture(scope="module")
def random_refutations(tmp_path_factory) -> list[Path]:
    """10 refutations of l2_norm on random data (ReLU neuron, σ'(0) = 1, Gaussian data n = 4, d = 5,
    Gaussian init, blocking_point / consistent_augmentation), each with a positive label."""
    certs = refutations(10, tmp_path_factory.mktemp("refutations"))
    assert len(certs) == 10
    return certs


def _core(after: dict) -> bool:
    return after["n"] <= 3 and after["d"] <= 3 and after["integer"] and after["max_abs"] <= 10 and after["theta0_zero"]


@pytest.mark.slow
def test_random_refutations_shrink_to_small_integer_cores_that_verify(random_refutations, tmp_path, capsys):
    core = 0
    for k, p in enumerate(random_refutations):
        out = tmp_path / f"s{k}.json"
        dest, res = shrink_file(p, out, BUDGET)
        assert dest == out and res.solves <= BUDGET
        assert main(["verify", str(out)]) == 0, capsys.readouterr().out
        orig, new = json.loads(p.read_text()), json.loads(out.read_text())
        assert new["hypothesis"] == orig["hypothesis"]  # the same member
        assert new["model"] == orig["model"] and new["solver"] == orig["solver"]
        assert new["shrunk_from"]["path"] == str(p) and len(new["shrunk_from"]["sha256"]) == 64
        sh = new["shrink"]
        assert sh["solves"] == res.solves and sh["passes"] == res.steps
        assert sh["before"]["n"] == 5 and sh["before"]["d"] == 5
        after = sh["after"]
        # the stored sizes describe the stored data
        d = len(new["a"]["X"][0])
        assert after["d"] == d and after["n"] == max(len(new["a"]["y"]), len(new["b"]["y"]))
        vals = [abs(v) for s in "ab" for v in sum(new[s]["X"], []) + new[s]["y"] + new[s]["theta0"]]
        assert after["max_abs"] == max(vals)
        assert after["n"] <= sh["before"]["n"] and after["d"] <= sh["before"]["d"]
        core += _core(after)
    assert core >= 8, f"only {core} of 10 shrank to n <= 3, d <= 3, integers <= 10, theta0 = 0"


@pytest.mark.slow
def test_shrinking_is_deterministic(random_refutations, tmp_path):
    out = tmp_path / "s.json"
    shrink_file(random_refutations[0], out, BUDGET)
    first = out.read_bytes()
    shrink_file(random_refutations[0], out, BUDGET)
    assert out.read_bytes() == first


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=hs.integers(0, 9), budget=hs.integers(4, 600))
def test_shrinking_never_returns_a_certificate_verify_withdraws(random_refutations, tmp_path, k, budget):
    # small budgets stop part-way: whatever state the shrink returns must still verify
    out = tmp_path / f"p{k}-{budget}.json"
    dest, res = shrink_file(random_refutations[k], out, budget, check=False)
    assert res.solves <= max(budget, 4)
    assert main(["verify", str(dest)]) == 0


@pytest.mark.slow
def test_show_prints_a_shrunk_case_compactly(random_refutations, tmp_path, capsys):
    out = tmp_path / "s.json"
    shrink_file(random_refutations[1], out, BUDGET)
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Shrunk counterexample: l2_norm")
    assert "x1 = (" in text and "theta0 = (" in text and "R(theta_a) = " in text and "R(theta_b) = " in text
    assert "in D_a and D_b" in text and "in D_b" in text


def test_fraction_text_is_exact_only_within_rounding():
    assert fraction_text(0.5) == "1/2"
    assert fraction_text(-1 / 3) == "-1/3"
    assert fraction_text(4.999999999999999) == "5"
    assert fraction_text(2.7755575615628914e-16) == "0"
    assert fraction_text(math.sqrt(2)) == "1.41421356237"
    assert fraction_text(0.5 + 1e-9) == "0.500000001"


@pytest.mark.slow
def test_cli_shrink_exit_codes(random_refutations, tmp_path, capsys):
    out = tmp_path / "ok.json"
    assert main(["shrink", str(random_refutations[2]), "-o", str(out), "--budget", "200"]) == 0
    text = capsys.readouterr().out
    assert "before: n = 5, d = 5" in text and "solves used:" in text and out.exists()
    # the refutation does not hold: both sides made the same run -> exit 1, and it says so
    cert = json.loads(random_refutations[2].read_text())
    cert["b"] = dict(cert["a"])
    bad = tmp_path / "same.json"
    bad.write_text(json.dumps(cert))
    assert main(["shrink", str(bad), "-o", str(tmp_path / "x.json")]) == 1
    assert "does not hold" in capsys.readouterr().out
    assert not (tmp_path / "x.json").exists()
    # bad files -> exit 2 with one line
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    for args in (["shrink", str(junk)], ["shrink", str(tmp_path / "missing.json")],
                 ["shrink", str(random_refutations[2]), "--budget", "1"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("ibtest: error:") and err.count("\n") == 1
    one = dict(cert)
    del one["b"]
    single = tmp_path / "single.json"
    single.write_text(json.dumps(one))
    assert main(["shrink", str(single)]) == 2


def test_study_verdict_shrink_writes_a_verified_shrunk_certificate(tmp_path):
    from ibtest.api import run_study

    study = random_study(5)
    study["verdict"] = {"shrink": True, "shrink_budget": 400}
    res = run_study(study, out_dir=tmp_path / "run")
    shrunk = [c for c in res.certificates if c.endswith(".shrunk.json")]
    assert len(shrunk) == 1 and not res.errors
    assert main(["verify", shrunk[0]]) == 0
    assert json.loads(Path(shrunk[0]).read_text())["shrink"]["budget"] == 400


@pytest.mark.slow
def test_witness_certificate_of_linear_zero_init_l1_shrinks_to_a_small_integer_instance(tmp_path, capsys):
    root = Path(__file__).resolve().parent.parent / "hypotheses"
    assert main(["run", str(root / "linear_zero_init.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 0
    cert = tmp_path / "run" / "certificates" / "lp_norm_p=1.json"
    assert json.loads(cert.read_text())["kind"] == "witness"
    out = tmp_path / "w.json"
    dest, res = shrink_file(cert, out, BUDGET)
    assert main(["verify", str(out)]) == 0, capsys.readouterr().out
    new = json.loads(out.read_text())
    assert new["kind"] == "witness" and new["hypothesis"]["name"] == "lp_norm" and "b" not in new
    after = new["shrink"]["after"]
    assert after["integer"] and after["max_abs"] <= 10 and after["theta0_zero"]
    assert after["n"] < new["shrink"]["before"]["n"] and after["d"] < new["shrink"]["before"]["d"]
