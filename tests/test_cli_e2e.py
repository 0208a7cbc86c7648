"""End to end: the three issue-2 studies through the CLI, certificates, verify, exit codes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import STUDIES, results_json, verdicts

MAIN_MEMBERS = ["l2_norm", "lp_norm[p=1]", "lp_norm[p=1.5]", "lp_norm[p=3]", "lp_norm[p=inf]", "dist_to_init"]
PAPER_S = {0: 0.0, 1: -0.04077, 2: -0.1107, 5: -0.20905, 20: -0.23011}


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """The README's main job, through the installed console script (a real subprocess)."""
    out = tmp_path_factory.mktemp("main") / "run"
    exe = shutil.which("ibtest") or str(Path(sys.executable).parent / "ibtest")
    proc = subprocess.run([exe, "run", str(STUDIES / "vardi_shamir_theorem3.yaml"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    return proc, out


@pytest.mark.slow
def test_main_job_falsifies_every_norm_with_a_certificate(main_run):
    proc, out = main_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    v = verdicts(out)
    assert v == {m: "falsified" for m in MAIN_MEMBERS}
    res = results_json(out)
    for row in res["verdicts"]:
        cert = Path(row["certificate"])
        assert cert.exists() and cert.parent == out / "certificates"
        assert str(cert) in proc.stdout  # the table names each certificate
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_main_job_prints_the_papers_table(main_run):
    proc, out = main_run
    triples = results_json(out)["triples"]
    assert len(triples) == 5
    for row in triples:
        gamma = float(row["dataset"].split("gamma=")[1].rstrip(")"))
        w = row["theta"]
        assert row["status"] == "converged"
        assert w[0] == pytest.approx(5.0, abs=1e-12) and w[1] == pytest.approx(-1.0, abs=1e-12)
        assert w[2] == pytest.approx(PAPER_S[int(gamma)], abs=1e-4)
    assert "(5, -1, -0.209049)" in proc.stdout  # γ = 5 in the printed triples table


@pytest.mark.slow
def test_certificates_are_self_contained_and_verify(main_run, cli, tmp_path):
    _, out = main_run
    for cert in sorted((out / "certificates").glob("*.json")):
        data = json.loads(cert.read_text())
        for key in ("hypothesis", "model", "solver", "theta0", "a", "b", "cross_loss", "gap", "margin", "versions", "replay"):
            assert key in data, (cert, key)
        assert data["gap"] > data["margin"] > 0
        assert max(data["cross_loss"].values()) <= data["fit_tol"]
        # replay from a copy elsewhere: the file alone suffices
        copy = tmp_path / cert.name
        copy.write_text(cert.read_text())
        r = cli("verify", copy)
        assert r.code == 0, r
        assert "refutation CONFIRMED" in r.out


@pytest.mark.slow
def test_verify_withdraws_a_tampered_certificate(main_run, cli, tmp_path):
    _, out = main_run
    data = json.loads((out / "certificates" / "l2_norm.json").read_text())
    # make side b's blocking point active at theta_a: the pair no longer cross-fits
    data["b"]["y"][-1] = 1.0
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(data))
    r = cli("verify", bad)
    assert r.code == 1, r
    assert "WITHDRAWN" in r.out


def test_verify_rejects_a_file_that_is_not_a_certificate(cli, tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{\"format\": \"something-else\"}")
    r = cli("verify", p)
    assert r.code == 2 and "field 'format'" in r.err


def test_linear_control(cli, tmp_path):
    r = cli("run", STUDIES / "linear_control.yaml", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert verdicts(tmp_path / "run") == {"dist_to_init": "survives", "l2_norm": "falsified"}
    res = results_json(tmp_path / "run")
    dist = next(v for v in res["verdicts"] if v["label"] == "dist_to_init")
    assert dist["pairs"] >= 50 and dist["max_rel_gap"] < 1e-10
    # l2 is refuted by two inits on one dataset: the certificate keeps each side's own θ0
    cert = tmp_path / "run" / "certificates" / "l2_norm.json"
    data = json.loads(cert.read_text())
    assert data["a"]["theta0"] != data["b"]["theta0"]
    v = cli("verify", cert)
    assert v.code == 0 and "CONFIRMED" in v.out, v
    assert cli("show", cert).code == 0


def test_leaky_relu_control(cli, tmp_path):
    r = cli("run", STUDIES / "leaky_relu_control.yaml", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    v = verdicts(tmp_path / "run")
    assert v["dist_to_init"] == "survives"


def test_an_expectation_that_does_not_hold_exits_1(cli, tmp_path):
    text = (STUDIES / "linear_control.yaml").read_text().replace(
        "{name: dist_to_init, expect: survives}", "{name: dist_to_init, expect: falsified}")
    p = tmp_path / "wrong.yaml"
    p.write_text(text)
    r = cli("run", p, "--out", tmp_path / "run", "-q")
    assert r.code == 1, r
    assert "dist_to_init (expected falsified, got survives)" in r.out


def test_default_study_is_the_embedded_theorem3(cli, tmp_path):
    r = cli("run", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert results_json(tmp_path / "run")["study"] == "vardi-shamir-theorem-3"


@pytest.mark.slow
def test_report_files_are_written(main_run):
    _, out = main_run
    md = (out / "report.md").read_text()
    assert "| l2_norm" in md and "FALSIFIED" in md
    assert results_json(out)["expectations_held"] is True


def test_data_dependent_hypothesis_is_judged_by_the_search(cli, tmp_path):
    """A data-dependent R cannot be refuted by pairs, only inside one Z(D): the witness search
    refutes this one (γ = 5: (5, -1, 0) fits and has a smaller norm); with the search off it is
    inconclusive (issue 11)."""
    plugin = tmp_path / "data_hyp.py"
    plugin.write_text(
        "import ibtest\n"
        "@ibtest.hookimpl\n"
        "def ibtest_hypotheses():\n"
        "    return [ibtest.Hypothesis(name='residual_weighted', depends_on='data',\n"
        "            fn=lambda th, ctx: (th.norm(dim=-1) * ctx.y.sum(-1)))]\n")
    study = tmp_path / "s.yaml"
    text = ("study: d\nmodel: {name: relu_neuron}\ndatasets: [{name: vardi_shamir_theorem3, gamma: [0, 5]}]\n"
            "solver: {name: exact}\nhypotheses: [{name: residual_weighted, expect: falsified}]\n")
    study.write_text(text)
    r = cli("run", study, "--plugin", plugin, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert "witness" in r.out  # the claim kind that refuted it (the source column)
    off = tmp_path / "off.yaml"
    off.write_text(text.replace("expect: falsified", "expect: inconclusive") + "verdict: {search: false}\n")
    r = cli("run", off, "--plugin", plugin, "--out", tmp_path / "run2", "-q")
    assert r.code == 0, r
    assert "not applicable" in r.out


@pytest.mark.slow
def test_console_script_exit_codes_and_output_survive_the_fast_exit(tmp_path):
    """The console script ends with os._exit after flushing: its output is complete, its exit
    code is main()'s, and a reader that stops early (a closed pipe) costs no traceback."""
    exe = shutil.which("ibtest") or str(Path(sys.executable).parent / "ibtest")
    listed = subprocess.run([exe, "list"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and listed.stderr == ""
    assert "relu_neuron" in listed.stdout and listed.stdout.rstrip().splitlines()[-1].strip()
    bad = subprocess.run([exe, "run", str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such file" in bad.stderr
    head = subprocess.run(f"'{exe}' list | head -n 1", shell=True, capture_output=True, text=True, timeout=120)
    assert head.returncode == 0 and len(head.stdout.splitlines()) == 1 and "Traceback" not in head.stderr
