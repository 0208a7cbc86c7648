"""The ``ray`` executor (issue 14): a streamed study on a local Ray cluster gives the local
executor's run exactly; a worker killed mid-block is retried without counting anything twice; a
driver killed mid-run is finished on the local executor without solving any stored block again;
without Ray, asking for it is a one-line error, exit 2.

The Ray tests share one local cluster (``ray.init(num_cpus=2)``) and one local reference run.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import results_json

RAY_REQUIRED = os.environ.get("IBTEST_REQUIRE_RAY") == "1"

# A solver plugin: the exact solver, which can be told (through files in CONTROL) to be slow, or
# to kill the worker process running it once it has been called N times in the workers.
PLUGIN = '''
import os, time
from pathlib import Path
import ibtest
from ibtest.solvers import exact_spec

CONTROL = Path({control!r})
DRIVER = {driver}


def solve(model, X, y, mask, theta0, **options):
    if os.getpid() != DRIVER:
        with open(CONTROL / "calls", "a") as f:
            f.write("x\\n")
        die = CONTROL / "die"
        if die.exists() and len((CONTROL / "calls").read_text().split()) >= int(die.read_text()):
            try:
                die.unlink()
            except FileNotFoundError:
                pass
            else:
                (CONTROL / "died").write_text(str(os.getpid()))
                os._exit(1)
    if (CONTROL / "sleep").exists():
        time.sleep(float((CONTROL / "sleep").read_text()))
    return exact_spec.SPEC.solve(model, X, y, mask, theta0, **options)


@ibtest.hookimpl
def ibtest_solvers():
    return [ibtest.replace(exact_spec.SPEC, name="exact_test", solve=solve)]
'''

STUDY = """\
study: ray-streamed
seed: 5
plugins: [solver_plugin.py]
model: {{name: relu_neuron}}
init: {{name: gaussian, scale: 0.1}}
datasets:
  - {{name: gaussian, n: 4, d: 5, count: 48, labels: teacher_relu}}
solver: {{name: exact_test}}
constructions: [blocking_point]
hypotheses:
  - {{name: l2_norm, expect: falsified}}
  - {{name: lp_norm, params: {{p: [1, .inf]}}}}
  - {{name: theorem8_ratio}}
block_size: 8
report: {{json_triples: 30}}
{executor}
"""


def _write_study(d: Path, executor: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    control = d / "control"
    control.mkdir(exist_ok=True)
    (d / "solver_plugin.py").write_text(PLUGIN.format(control=str(control), driver=os.getpid()))
    p = d / "study.yaml"
    p.write_text(STUDY.format(executor=executor))
    return p


def _triples(run: Path) -> list[tuple]:
    db = sqlite3.connect(run / "results.sqlite")
    try:
        return db.execute("SELECT idx, origin, dataset, init, parent, status, theta, theta0 FROM triples "
                          "ORDER BY idx").fetchall()
    finally:
        db.close()


def _solve_rows(run: Path) -> dict[str, float]:
    db = sqlite3.connect(run / "results.sqlite")
    try:
        return dict(db.execute("SELECT key, created FROM solves").fetchall())
    finally:
        db.close()


def _same_as_reference(cli, ref: Path, run: Path) -> None:
    r = cli("diff", ref, run)
    assert r.code == 0 and "no differences" in r.out, r
    a, b = results_json(ref), results_json(run)
    def strip(vs):  # each run's certificates are in its own directory
        return [{k: v for k, v in x.items() if k != "certificate"} for x in vs]

    assert strip(a["verdicts"]) == strip(b["verdicts"])
    assert (a["status_counts"], a["solves"], a["pairs"]) == (b["status_counts"], b["solves"], b["pairs"])
    assert _triples(ref) == _triples(run)  # every stored triple, θ bit for bit


@pytest.fixture(scope="module")
def ray_cluster():
    if RAY_REQUIRED:
        import ray
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The study on the local executor: the run every Ray run must reproduce."""
    from ibtest.cli import main

    d = tmp_path_factory.mktemp("ref")
    study = _write_study(d)
    assert main(["run", str(study), "--out", str(d / "run"), "-q"]) == 0
    res = results_json(d / "run")
    assert res["blocks"] == 6 and res["executor"] == {"name": "local", "workers": 1}
    v = {m["label"]: m["verdict"] for m in res["verdicts"]}
    assert v["l2_norm"] == "falsified" and v["theorem8_ratio[bound=2]"] == "survives"  # not vacuous
    return d / "run"


@pytest.mark.ray
def test_ray_run_equals_local_run(ray_cluster, reference, tmp_path, cli):
    study = _write_study(tmp_path)
    r = cli("run", study, "--executor", "ray", "--out", tmp_path / "run")
    assert r.code == 0, r
    assert "phases (executor ray, 2 workers):" in r.out
    res = results_json(tmp_path / "run")
    assert res["executor"] == {"name": "ray", "workers": 2} and res["blocks"] == 6
    # the phases solved on the workers are in the table, with the driver's re-solves
    names = [p["name"] for p in res["phases"]]
    assert names[:3] == ["solve", "own pairs", "solve partners (blocking_point)"]
    assert sum(p["instances"] for p in res["phases"] if p["name"] == "solve") == 48
    assert len((tmp_path / "control" / "calls").read_text().split()) == 12  # 6 blocks × 2 solves, in workers
    _same_as_reference(cli, reference, tmp_path / "run")


@pytest.mark.ray
def test_worker_killed_mid_block_is_retried_and_nothing_counts_twice(ray_cluster, reference, tmp_path, cli):
    study = _write_study(tmp_path, "executor: {name: ray, max_in_flight: 2}")
    (tmp_path / "control" / "die").write_text("5")  # the worker making the 5th solver call dies
    r = cli("run", study, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    died = tmp_path / "control" / "died"
    assert died.exists() and int(died.read_text()) != os.getpid()  # a worker process, not the driver
    assert len((tmp_path / "control" / "calls").read_text().split()) > 12  # its block ran again
    _same_as_reference(cli, reference, tmp_path / "run")
    assert results_json(tmp_path / "run")["solver_calls"] == results_json(reference)["solver_calls"]


@pytest.mark.ray
def test_killed_driver_resumed_on_local_recomputes_nothing_stored(ray_cluster, reference, tmp_path, cli):
    address = ray_cluster.get_runtime_context().gcs_address
    study = _write_study(tmp_path, f"executor: {{name: ray, address: '{address}', max_in_flight: 2}}")
    (tmp_path / "control" / "sleep").write_text("0.3")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "ibtest.cli", "run", str(study), "--out", str(run), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "results.sqlite").exists() and len(_solve_rows(run)) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _solve_rows(run)
    assert 4 <= len(before) < results_json(reference)["solver_calls"]
    (tmp_path / "control" / "sleep").unlink()
    r = cli("run", "--resume", run, "--executor", "local", "-q")
    assert r.code == 0, r
    after = _solve_rows(run)
    assert all(after.get(k) == c for k, c in before.items())  # every stored solve kept as it was
    res = results_json(run)
    assert res["executor"]["name"] == "local"
    assert res["solver_calls"] == len(after) - len(before)  # a solver call only for what was missing
    _same_as_reference(cli, reference, run)


def test_ray_missing_is_a_clear_error_exit_2(tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    study = _write_study(tmp_path)
    r = cli("run", study, "--executor", "ray", "--out", tmp_path / "run")
    assert r.code == 2 and 'pip install "ibtest[ray]"' in r.err and len(r.err.strip().splitlines()) == 1, r
    assert not (tmp_path / "run").exists()  # refused before anything was written
    study.write_text(study.read_text() + "executor: {name: ray}\n")
    r = cli("run", study, "--out", tmp_path / "run")
    assert r.code == 2 and 'pip install "ibtest[ray]"' in r.err, r


def test_unknown_executor_and_bad_options_exit_2(tmp_path, cli):
    study = _write_study(tmp_path)
    r = cli("run", study, "--executor", "slurm", "--out", tmp_path / "run")
    assert r.code == 2 and "unknown executor" in r.err and "local" in r.err and "ray" in r.err, r
    study.write_text(study.read_text() + "executor: {name: local, workers: 3}\n")
    r = cli("run", study, "--out", tmp_path / "run")
    assert r.code == 2 and "executor.workers" in r.err and "unknown option" in r.err, r
