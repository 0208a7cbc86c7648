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
from ibtest.solve.solvers import exact_spec

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
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")  # never a running one
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    r = cli("run", "--resume", run, "--executor", "local", "--plugin", tmp_path / "solver_plugin.py", "-q")
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


# -- the executor machinery without a cluster (fast) -------------------------------------------
def _loaded(study_path: Path):
    from ibtest.study.schema import load_study

    return load_study(study_path)[0]


def test_block_rebuilt_from_shipped_plugin_text_equals_the_drivers_block(tmp_path):
    """A worker on another machine has no copy of a --plugin file: the recipe carries its text,
    the worker loads a copy, and the block it computes is the driver's, bit for bit."""
    import torch

    from ibtest.pairs.constructions import run_block
    from ibtest.run.executors import Recipe, run_recipe_block
    from ibtest.solve.engine import build_context, plan_instances

    study = _loaded(_write_study(tmp_path))
    recipe = Recipe.of(study)
    (path, text), = recipe.plugins
    elsewhere = Recipe(recipe.raw, recipe.source, ((str(tmp_path / "gone" / "solver_plugin.py"), text),))
    res = run_recipe_block(elsewhere, 8, 16)
    ctx = build_context(study)
    t, pairs = run_block(ctx, plan_instances(ctx).block(8, 16), 8)
    assert torch.equal(res.triples.theta, t.theta) and torch.equal(res.triples.status, t.status)
    assert res.triples.labels == t.labels and torch.equal(res.pairs.a, pairs.a) and torch.equal(res.pairs.b, pairs.b)
    assert res.solve_calls == 2 and [k for k, *_ in res.solves] and not res.errors  # its solves come back to be stored
    assert [p.name for p in res.phases][:2] == ["solve", "own pairs"]
    # the member scores are computed with the block, and are those the driver would compute
    from ibtest.run.streaming import score_block

    here = score_block(ctx, t, pairs)
    assert len(res.scores) == 4 and res.scores.keys() == here.keys()
    assert all(res.scores[k] == here[k] for k in here) and res.scores[(0, 0)].counts.n > 0


@pytest.mark.slow
def test_stored_blocks_are_known_before_solving(tmp_path):
    """On a resumed run a stored block is recognised from the driver's plan alone (the executor
    then runs it on the driver, from the store, instead of sending it to a worker)."""
    from ibtest.api import run_study
    from ibtest.run.executors import BlockJob
    from ibtest.run.store import Store
    from ibtest.solve.engine import build_context, plan_instances

    study_path = _write_study(tmp_path)
    run_study(study_path, out_dir=tmp_path / "run")
    study = _loaded(study_path)
    store = Store(tmp_path / "run")
    try:
        ctx = build_context(study, store=store)
        job = BlockJob(ctx, plan_instances(ctx), study.block_size, None)
        assert job.starts == [0, 8, 16, 24, 32, 40] and all(job.stored(s) for s in job.starts)
    finally:
        store.close()
    fresh = Store(tmp_path / "fresh")
    try:
        ctx = build_context(study, store=fresh)
        assert not any(BlockJob(ctx, plan_instances(ctx), 8, None).stored(s) for s in range(0, 48, 8))
    finally:
        fresh.close()


def test_recipe_of_a_sweep_value_rebuilds_that_value(tmp_path):
    from ibtest.run.executors import Recipe, rebuild
    from ibtest.study.sweep import apply_sweep

    p = _write_study(tmp_path)
    p.write_text(p.read_text() + "sweep: {path: init.scale, values: [0.1, 0.3]}\n")
    study = _loaded(p)
    ctx, plan = rebuild(Recipe.of(apply_sweep(study, 0.3), 0.3))
    assert ctx.study.inits[0].options["scale"] == 0.3 and plan.n == 48


BACKWARDS = '''
import ibtest
from ibtest.run.executors import ExecutorBase, run_recipe_block


class Backwards(ExecutorBase):
    """Computes the blocks as a remote executor would, last block first, in this process."""

    name = "backwards"
    remote = True

    def run(self, job):
        done = {}
        for s in reversed(job.starts):
            if not job.stored(s):
                done[s] = run_recipe_block(job.recipe, s, job.stop(s))
                job.received(done[s])
        for s in job.starts:
            yield done.pop(s) if s in done else job.run_here(s, quiet=True)


@ibtest.hookimpl
def ibtest_executors():
    return [ibtest.Executor(name="backwards", factory=Backwards, doc="last block first")]
'''


@pytest.mark.slow
def test_an_executor_is_one_plugin_file_and_arrival_order_does_not_matter(reference, tmp_path, cli):
    """A plugin executor that computes the blocks elsewhere (a fresh context per block, scores
    included) in reverse order gives the local run, bit for bit."""
    study = _write_study(tmp_path)
    plugin = tmp_path / "backwards.py"
    plugin.write_text(BACKWARDS)
    r = cli("run", study, "--plugin", plugin, "--executor", "backwards", "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert results_json(tmp_path / "run")["executor"] == {"name": "backwards", "workers": 1}
    _same_as_reference(cli, reference, tmp_path / "run")
