"""The results store: resume after a kill recomputes nothing, report re-renders, diff, progress."""
from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import STUDIES

from ibtest.api import load_results, resume_run, run_study
from ibtest.base.progress import Progress

SLOW_SOLVER = textwrap.dedent('''
    """A solver plugin that wraps 'exact', sleeps per call and logs each call to a file."""
    import os, time
    import ibtest
    from ibtest.solve.solvers.exact_spec import SPEC

    def solve(model, X, y, mask, theta0, **opts):
        with open(os.environ["IBTEST_CALL_LOG"], "a") as f:
            f.write(f"{X.shape[0]}\\n")
        time.sleep(float(os.environ.get("IBTEST_SLEEP", "0")))
        return SPEC.solve(model, X, y, mask, theta0, **opts)

    @ibtest.hookimpl
    def ibtest_solvers():
        return [ibtest.replace(SPEC, name="slow_exact", solve=solve)]
    ''')

STUDY = textwrap.dedent("""\
    study: resumable
    chunk_size: 10
    seed: 5
    plugins: [slow_solver.py]
    model: {name: relu_neuron}
    init: {name: gaussian, scale: 0.1, count: 2}
    datasets: [{name: gaussian, n: 3, d: 4, count: 60}]
    solver: {name: slow_exact}
    constructions: [blocking_point]
    hypotheses: [{name: l2_norm}, {name: dist_to_init}]
    """)


@pytest.fixture
def resumable(tmp_path, monkeypatch):
    (tmp_path / "slow_solver.py").write_text(SLOW_SOLVER)
    (tmp_path / "study.yaml").write_text(STUDY)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("IBTEST_CALL_LOG", str(log))
    return tmp_path, log


def _calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _stored(run: Path) -> int:
    try:
        with sqlite3.connect(run / "results.sqlite") as db:
            return int(db.execute("SELECT COUNT(*) FROM solves").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_resume_after_kill_recomputes_nothing(resumable, monkeypatch):
    tmp, log = resumable
    # reference: the same study, uninterrupted
    monkeypatch.setenv("IBTEST_SLEEP", "0")
    ref = run_study(tmp / "study.yaml", out_dir=tmp / "ref")
    total_calls = _calls(log)
    assert total_calls == ref.solve_calls >= 14  # 12 chunks of the main solve + partners + re-solves
    log.unlink()

    # a run killed part-way through the main solve (SIGKILL: nothing gets to clean up)
    run = tmp / "run"
    env = dict(os.environ, IBTEST_SLEEP="0.15")
    exe = [sys.executable, "-m", "ibtest.cli", "run", str(tmp / "study.yaml"), "--out", str(run), "-q"]
    proc = subprocess.Popen(exe, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _stored(run) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = _stored(run)
    assert 4 <= stored < total_calls, "the kill must land mid-study"
    with pytest.raises(Exception, match="has no results yet"):
        load_results(run)
    log.unlink()

    monkeypatch.setenv("IBTEST_SLEEP", "0")
    # the store's plugin files are never loaded on its say-so: the user names them (--plugin)
    mine = [str(tmp / "slow_solver.py")]
    res = resume_run(run, plugins=mine)
    # every stored chunk was reused: only the missing ones were solved
    assert _calls(log) == res.solve_calls == total_calls - stored
    assert res.verdicts == ref.verdicts
    assert (res.triples.theta == ref.triples.theta).all()

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "certificate"} for r in rows]

    assert strip(load_results(run)["verdicts"]) == strip(load_results(tmp / "ref")["verdicts"])

    # resuming a finished run solves nothing at all
    log.unlink()
    again = resume_run(run, plugins=mine)
    assert again.solve_calls == 0 and _calls(log) == 0


def test_report_re_renders_identical_tables(cli, tmp_path):
    r = cli("run", STUDIES / "vardi_shamir_theorem3.yaml", "--out", tmp_path / "run")
    assert r.code == 0
    rep = cli("report", tmp_path / "run")
    assert rep.code == 0
    printed = r.out.split("\nrun directory:")[0].rstrip()
    assert rep.out.rstrip() == printed
    md = cli("report", tmp_path / "run", "--format", "markdown").out
    assert md.strip() == (tmp_path / "run" / "report.md").read_text().strip()
    html = cli("report", tmp_path / "run", "--format", "html").out
    assert html.startswith("<!doctype html>") and "l2_norm" in html
    js = cli("report", tmp_path / "run", "--format", "json").out
    assert '"verdict": "falsified"' in js


def test_report_on_a_non_run_is_a_clear_error(cli, tmp_path):
    r = cli("report", tmp_path)
    assert r.code == 2 and "not an ibtest run directory" in r.err


def test_diff_shows_changed_verdicts(cli, tmp_path):
    a = tmp_path / "a"
    assert cli("run", STUDIES / "vardi_shamir_theorem3.yaml", "--out", a, "-q").code == 0
    small = tmp_path / "small.yaml"
    small.write_text((STUDIES / "vardi_shamir_theorem3.yaml").read_text()
                     .replace("gamma: [0, 1, 2, 5, 20]", "gamma: [0]")
                     .replace("  - blocking_point\n", "").replace(", expect: falsified", ""))
    b = tmp_path / "b"
    assert cli("run", small, "--out", b, "-q").code == 0
    r = cli("diff", a, b)
    assert r.code == 1
    assert "l2_norm: verdict falsified -> " in r.out
    same = cli("diff", a, a)
    assert same.code == 0 and "no differences" in same.out


@pytest.mark.slow
def test_progress_is_silent_off_a_terminal(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ibtest.cli", "run", str(STUDIES / "linear_control.yaml"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_progress_draws_bars_and_phase_summaries_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    p = Progress(stream=s)
    assert p.enabled
    p.start("solve", 10)
    p.update(10)
    p.end("solve: 10 instances (converged 10), 0.01 s")
    out = s.getvalue()
    assert "solve:" in out and "0/10" in out and "inst/s" in out  # a tqdm bar with counts
    assert "solve: 10 instances (converged 10)" in out
    assert not Progress(enabled=None, stream=io.StringIO()).enabled
