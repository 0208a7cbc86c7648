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


def _stored(run: Path, tries: int = 1) -> int:
    """Solves stored in the run's database; 0 while it cannot be read (not there yet, or locked
    by the writer), after ``tries`` attempts 0.1 s apart."""
    for k in range(tries):
        try:
            with sqlite3.connect(run / "results.sqlite") as db:
                return int(db.execute("SELECT COUNT(*) FROM solves").fetchone()[0])
        except sqlite3.Error:
            if k + 1 < tries:
                time.sleep(0.1)
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
    err = tmp / "run.stderr"
    with open(err, "wb") as fe:
        proc = subprocess.Popen(exe, env=env, stdout=subprocess.DEVNULL, stderr=fe)
        deadline = time.time() + 120
        while _stored(run) < 4 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        ended = proc.poll()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the database after the kill: read until it opens (a reader can meet the dead writer's journal)
    stored = _stored(run, tries=50)
    assert 4 <= stored < total_calls, (
        f"the kill must land mid-study: {stored} of {total_calls} solves stored; the run had "
        f"{'ended with ' + str(ended) if ended is not None else 'not ended'} before the kill; "
        f"stderr: {err.read_text()[-2000:]!r}")
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


# ------------------------------------------------------------------------------------------
# issue 27: a store from someone else's hands, read-only that means it, checksums, one writer
# ------------------------------------------------------------------------------------------
SMALL = textwrap.dedent("""\
    study: small
    model: {name: relu_neuron}
    init: {name: zeros}
    datasets: [{name: vardi_shamir_theorem3, gamma: [0, 5]}]
    solver: {name: exact}
    constructions: [blocking_point]
    hypotheses: [{name: l2_norm}, {name: dist_to_init}]
    report: {triples: true}
    """)


@pytest.fixture(scope="module")
def finished_small(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("small27")
    (d / "small.yaml").write_text(SMALL)
    run_study(d / "small.yaml", out_dir=d / "run")
    return d / "run"


@pytest.fixture
def small_copy(finished_small, tmp_path):
    import shutil

    def make(name: str = "copy") -> Path:
        shutil.copytree(finished_small, tmp_path / name)
        return tmp_path / name
    return make


def _listing(d: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a directory with its mtime and bytes (what 'changes no file' compares)."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.iterdir()) if p.is_file()}


def test_resume_refuses_a_foreign_database_before_writing_to_it(cli, tmp_path):
    run = tmp_path / "foreign"
    run.mkdir()
    con = sqlite3.connect(run / "results.sqlite")
    with con:
        con.execute("CREATE TABLE accounts (id INTEGER, owner TEXT)")
        con.execute("INSERT INTO accounts VALUES (1, 'someone')")
    con.close()
    before, dir_mtime = _listing(run), run.stat().st_mtime_ns
    r = cli("run", "--resume", run, "-q")
    assert r.code == 2 and "is not an ibtest results store" in r.err, r
    assert _listing(run) == before and run.stat().st_mtime_ns >= dir_mtime
    assert sorted(p.name for p in run.iterdir()) == ["results.sqlite"]


@pytest.mark.parametrize("state", ["truncated", "garbage-wal", "running"])
def test_report_and_diff_create_or_change_no_file(cli, small_copy, finished_small, state):
    from ibtest.run.store import Store

    run = small_copy()
    db = run / "results.sqlite"
    writer = None
    if state == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    elif state == "garbage-wal":
        (run / "results.sqlite-wal").write_bytes(bytes(range(256)) * 40)
    else:  # another process is writing this run right now (WAL mode, its -wal beside the file, its lock)
        writer = Store(run)
        writer.set_meta(state="running")
    try:
        before = _listing(run)
        codes = {cli("report", run).code, cli("report", run, "--format", "json").code, cli("diff", finished_small, run).code}
        assert codes <= ({2} if state == "truncated" else {0, 1, 2}), codes
        assert _listing(run) == before, f"report/diff changed the run directory ({state})"
    finally:
        if writer is not None:
            writer.close()
    assert not (run / "results.sqlite-shm").exists() or state == "running"


def _tamper_one_solve(run: Path) -> None:
    """Alter the θ bytes of one stored solve, leaving a payload that still parses."""
    con = sqlite3.connect(run / "results.sqlite")
    key, payload = con.execute("SELECT key, payload FROM solves ORDER BY created LIMIT 1").fetchone()
    payload = bytearray(payload)
    payload[-1] ^= 0x01  # the last byte of the body: a float's low bit (the payload still unpacks)
    with con:
        con.execute("UPDATE solves SET payload = ? WHERE key = ?", (bytes(payload), key))
    con.close()


def test_a_tampered_stored_solve_is_solved_again_and_the_run_says_so(small_copy, finished_small):
    run = small_copy()
    _tamper_one_solve(run)
    res = resume_run(run)
    assert res.solve_calls >= 1
    assert [e for e in res.errors if "1 stored solve(s) failed their checksum" in e], res.errors
    ref = load_results(finished_small)
    got = load_results(run)
    assert [(v["label"], v["verdict"]) for v in got["verdicts"]] == [(v["label"], v["verdict"]) for v in ref["verdicts"]]
    assert [t["theta"] for t in got["triples"]] == [t["theta"] for t in ref["triples"]]
    again = resume_run(run)  # the re-solved chunk was stored with its checksum
    assert again.solve_calls == 0 and not again.errors


def test_edited_results_are_refused_by_report(cli, small_copy):
    run = small_copy()
    con = sqlite3.connect(run / "results.sqlite")
    with con:
        con.execute("UPDATE results SET json = replace(json, 'falsified', 'survives') WHERE id = 1")
    con.close()
    r = cli("report", run)
    assert r.code == 2 and "fail their checksum" in r.err, r
    assert cli("run", "--resume", run, "-q").code == 0  # re-rendered from the stored solves
    assert cli("report", run).code == 0


def test_two_runs_into_one_directory(cli, tmp_path, small_copy):
    from ibtest.run.lock import RunLock, holder

    study = tmp_path / "small.yaml"
    study.write_text(SMALL)
    out = tmp_path / "busy"
    out.mkdir()
    other = RunLock(out).acquire()  # another ibtest run writes into it
    try:
        assert holder(out) is not None
        for argv in (("run", study, "-q", "--out", out), ("run", "--resume", out, "-q")):
            r = cli(*argv)
            assert r.code == 2 and f"run directory {out} is in use by another ibtest run (pid {os.getpid()}" in r.err, r
        assert sorted(p.name for p in out.iterdir()) == ["results.sqlite.lock"]
    finally:
        other.release()
    assert holder(out) is None
    assert cli("run", study, "-q", "--out", out).code == 0
    assert "results.sqlite.lock" not in [p.name for p in out.iterdir()]  # let go when the run ended
    run = small_copy("finished")  # a run that is being resumed cannot be resumed twice
    lock = RunLock(run).acquire()
    try:
        r = cli("report", run)
        assert r.code == 0, r  # reading takes no lock
        r = cli("run", "--resume", run, "-q")
        assert r.code == 2 and "is in use" in r.err, r
    finally:
        lock.release()
