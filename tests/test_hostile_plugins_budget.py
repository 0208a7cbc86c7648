"""Issue 27, classes 3 and 4: plugins of every kind that misbehave, and hangs a budget catches.

* every plugin call is guarded the way hypothesis calls are: a solver, construction or hypothesis
  that raises, exits, raises KeyboardInterrupt itself, returns the wrong thing or runs past the
  study's deadline is reported in its row and the study goes on; a plugin that misbehaves while it
  loads or registers (import, hooks, specs, model factory) is exit 2 naming its file;
* a study whose work or memory is hopeless is refused before it runs; a certificate cannot ask
  ``verify`` for unbounded work; an unreachable Ray cluster and a FIFO fail within seconds.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from benchmarks.hostile_round2 import MISBEHAVE
from ibtest.base import deadline, guard
from ibtest.base.errors import UserError
from ibtest.pairs.checks import check_new_pairs, check_partners
from ibtest.plugin.spec_checks import spec_problems
from ibtest.plugin.specs import Construction, Hypothesis, NewPairs, Option, PairBatch, Partners, Solver, SolveResult
from ibtest.study import work
from ibtest.study.checks import check_solve_result

T3 = """\
study: t3
model: {name: relu_neuron}
init: {name: zeros}
datasets:
  - {name: vardi_shamir_theorem3, gamma: [0, 5]}
solver: {name: exact}
hypotheses:
  - {name: l2_norm, expect: falsified}
report: {triples: true}
"""

@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("plugins27") / "misbehave.py"
    p.write_text(MISBEHAVE)  # the corpus's plugins that misbehave, each in one way
    return p


def _study(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p


def _run(cli, tmp_path, text: str, plugin: Path | None = None):
    extra = ("--plugin", plugin) if plugin else ()
    return cli("run", _study(tmp_path, text), "-q", "--wide", "--out", tmp_path / "run", *extra)  # reasons unwrapped


def _one_line(r) -> None:
    assert r.code == 2, r
    assert r.err.startswith("ibtest: error: ") and len(r.err.strip().splitlines()) == 1, r
    assert "Traceback" not in r.err + r.out


# ------------------------------------------------------------------------------------------
# class 3: plugins that misbehave while a study runs: reported in their row, the study goes on
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, needle", [
    ("none", "solver 'none_solver' returned NoneType, expected ibtest.SolveResult"),
    ("shape", "returned theta of shape [2, 1], expected [B, P] = [2, 3]"),
    ("status", "returned status code 9, not one of"),
    ("exit0", "solver 'exit0_solver' called sys.exit(0)"),
    ("interrupt", "solver 'interrupt_solver' raised KeyboardInterrupt"),
])
def test_a_solver_that_misbehaves_fails_its_rows(cli, tmp_path, plugin, kind, needle):
    r = _run(cli, tmp_path, T3.replace("{name: exact}", f"{{name: {kind}_solver}}"), plugin)
    assert r.code == 1, r  # the study ran to its end: the expectation could not hold, nothing crashed
    assert needle in r.err and "solve: instances 0..1: " in r.err, r
    assert "failed 2" in r.out or "(failed 2)" in r.out, r
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.parametrize("kind, needle", [
    ("source", "returned source index 7 out of range"),
    ("shape", "returned X of shape [2, 3, 1], expected [2, n, 3]"),
    ("labels", "returned labels of type int, expected a list of 2 strings"),
    ("mask", "returned a dataset whose mask has no real point"),
    ("exit3", "construction 'exit3_construction' called sys.exit(3)"),
])
def test_a_construction_that_misbehaves_is_reported_and_the_study_goes_on(cli, tmp_path, plugin, kind, needle):
    text = T3 + f"constructions: [{kind}_construction, blocking_point]\n"
    r = _run(cli, tmp_path, text, plugin)
    assert r.code == 0, r  # blocking_point's pairs still refute l2_norm
    assert needle in r.err, r
    assert "FALSIFIED" in r.out


def test_a_hypothesis_raising_keyboard_interrupt_is_an_error_row(cli, tmp_path, plugin):
    text = T3.replace("  - {name: l2_norm, expect: falsified}\n",
                      "  - {name: interrupt_R, expect: falsified}\n  - {name: l2_norm, expect: falsified}\n")
    r = _run(cli, tmp_path, text, plugin)
    assert r.code == 1, r  # not 130: the run finished, interrupt_R's expectation did not hold
    assert "raised KeyboardInterrupt" in r.out and "FALSIFIED" in r.out, r


def test_a_users_ctrl_c_still_interrupts():
    def plugin():
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers while a plugin runs
        time.sleep(1)

    with guard.user_interrupts(), pytest.raises(KeyboardInterrupt):
        guard.plugin_call(plugin)
    with pytest.raises(KeyboardInterrupt):  # ibtest as a library: every KeyboardInterrupt is the user's
        guard.plugin_call(lambda: (_ for _ in ()).throw(KeyboardInterrupt))


@pytest.mark.parametrize("body, needle", [
    ("import sys\nsys.exit(0)\n", "called sys.exit(0) on import"),
    ("import sys\nsys.exit(3)\n", "called sys.exit(3) on import"),
    ("raise KeyboardInterrupt\n", "raised KeyboardInterrupt on import"),
    ("import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n    import sys; sys.exit(0)\n",
     "ibtest_hypotheses() called sys.exit(0)"),
    ("import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n    return [ibtest.Hypothesis(name='h', "
     "fn=lambda t, c: t, kind='regularizor')]\n", "has kind 'regularizor', which no registered claim kind judges"),
    ("import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n    return [ibtest.Hypothesis(name='h', "
     "fn=lambda t, c: t, params=[1, 2])]\n", "params: expected a mapping of parameter names to defaults"),
    ("import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n    return [ibtest.Hypothesis(name='h', "
     "fn=lambda t, c: t, rtol=float('nan'))]\n", "rtol: expected a finite number >= 0, got nan"),
    ("import ibtest\nfrom ibtest.solve.solvers.exact_spec import SPEC\n@ibtest.hookimpl\ndef ibtest_solvers():\n"
     "    return [ibtest.replace(SPEC, name='s', options={**SPEC.options, 'root_tol': ibtest.Option(float('inf'), "
     "float)})]\n", "default inf is infinite"),
    ("import ibtest\nfrom ibtest.solve.solvers.exact_spec import SPEC\n@ibtest.hookimpl\ndef ibtest_solvers():\n"
     "    return [ibtest.replace(SPEC, name='s', options={**SPEC.options, 'fit_tol': ibtest.Option(1e-20, "
     "float)})]\n", "fit_tol is the study's fit rule"),
])
def test_a_plugin_that_misbehaves_while_loading_is_exit_2_naming_its_file(cli, tmp_path, body, needle):
    p = tmp_path / "bad_plugin.py"
    p.write_text(body)
    for argv in (("run", _study(tmp_path, T3), "-q", "--out", tmp_path / "run"), ("list",)):
        r = cli(*argv, "--plugin", p)
        _one_line(r)
        assert needle in r.err and "bad_plugin.py" in r.err, r
    assert not (tmp_path / "run").exists()


def test_a_model_factory_calling_sys_exit_is_exit_2(cli, tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import sys, ibtest\n@ibtest.hookimpl\ndef ibtest_models():\n"
                 "    return [ibtest.Model(name='quits', factory=lambda **kw: sys.exit(0))]\n")
    r = _run(cli, tmp_path, T3.replace("{name: relu_neuron}", "{name: quits}").replace("{name: exact}",
                                                                                          "{name: gd, steps: 10}"), p)
    assert r.code == 2 and "model: 'quits' called sys.exit(0)" in r.err, r


def test_spec_problems_unit():
    h = Hypothesis(name="h", fn=lambda t, c: t)
    assert spec_problems("hypotheses", h) == []
    bad = Hypothesis(name="h", fn=None, kind=3, depends_on="weather", params=[1],  # type: ignore[arg-type]
                     atol=-1.0, rtol=math.inf, bound=math.nan, optimum=1)  # type: ignore[arg-type]
    got = " ".join(spec_problems("hypotheses", bad))
    for needle in ("fn: expected a function", "kind: expected a string", "optimum: expected None or a string",
                   "depends_on: 'weather'", "params: expected a mapping",
                   "atol: expected a finite number >= 0, got -1.0", "rtol: expected", "bound: expected"):
        assert needle in got, got
    c = Construction(name="c", build=lambda **k: None, stage="both")  # type: ignore[arg-type]
    assert "stage: 'both' is not one of triple, pair" in spec_problems("constructions", c)
    s = Solver(name="s", solve=lambda *a, **k: None, options={"tol": Option(math.nan, float), "n": 3,
                                                              "t": Option(1, 5)})  # type: ignore[dict-item]
    got = " ".join(spec_problems("solvers", s))
    assert "default nan holds NaN" in got and "expected ibtest.Option, got int" in got and "cannot be validated" in got


def _res(theta, status, loss):
    return SolveResult(torch.as_tensor(theta, dtype=torch.float64), torch.as_tensor(status),
                       torch.as_tensor(loss, dtype=torch.float64))


def test_check_solve_result_unit():
    th0 = torch.zeros(2, 3, dtype=torch.float64)
    ok = check_solve_result(_res(torch.ones(2, 3), [0, 1], [0.0, 1.0]), th0, "s")
    assert ok.status.dtype == torch.int64
    for res, needle in [
        (None, "returned NoneType"), (_res(torch.ones(3, 3), [0, 0, 0], [0.0] * 3), "theta of shape [3, 3]"),
        (_res(torch.ones(2, 3), [0, 7], [0.0, 0.0]), "status code 7"),
        (_res(torch.ones(2, 3), [0.5, 0.0], [0.0, 0.0]), "not integers"),
        (_res(torch.ones(2, 3), [0, 0], [0.0]), "loss of shape [1]"),
        (_res(torch.full((2, 3), math.nan), [0, 0], [0.0, 0.0]), "converged for instance 0 with a non-finite"),
    ]:
        with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            check_solve_result(res, th0, "s")


def test_check_construction_output_unit():
    X, y, m = torch.ones(2, 4, 3), torch.ones(2, 4), torch.ones(2, 4)
    assert check_partners(Partners(X, y, m, torch.tensor([0, 1]), ["a", "b"]), 2, 3) is not None
    assert check_partners(None, 2, 3) is None
    for out, needle in [
        (Partners(X, y, m, torch.tensor([0, 2]), ["a", "b"]), "source index 2 out of range"),
        (Partners(X, y, m, torch.tensor([0, -1]), ["a", "b"]), "source index -1 out of range"),
        (Partners(X, y[:, :3], m, torch.tensor([0, 1]), ["a", "b"]), "y of shape [2, 3]"),
        (Partners(X.to(torch.complex128), y, m, torch.tensor([0, 1]), ["a", "b"]), "dtype"),
        (Partners(X * math.inf, y, m, torch.tensor([0, 1]), ["a", "b"]), "non-finite"),
        (Partners(X, y, m * 0, torch.tensor([0, 1]), ["a", "b"]), "no real point"),
        (Partners(X, y, m, torch.tensor([0, 1]), ["a", 3]), "labels"),
        ("partners", "str, expected ibtest.Partners"),
    ]:
        with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            check_partners(out, 2, 3)
    pb = PairBatch(X, y, m, X, y, m, torch.zeros(2, 3), ["p", "q"])
    assert check_new_pairs(NewPairs(pb, torch.tensor([0, 0])), 1, 3, 3) is not None
    with pytest.raises(ValueError, match="theta0 of shape"):
        check_new_pairs(NewPairs(pb, torch.tensor([0, 0])), 1, 3, 4)
    with pytest.raises(ValueError, match="out of range"):
        check_new_pairs(NewPairs(pb, torch.tensor([0, 1])), 1, 3, 3)


# ------------------------------------------------------------------------------------------
# class 4: deadlines
# ------------------------------------------------------------------------------------------
def _spin() -> None:
    while True:
        time.sleep(0.001)


def test_deadline_stops_a_call_and_nothing_else(monkeypatch):
    monkeypatch.setattr(deadline, "RETRY", 0.1)
    t0 = time.perf_counter()
    with deadline.policy(0.3), pytest.raises(guard.PluginFailure, match="ran past the deadline of 0.3 s") as exc:
        guard.plugin_call(_spin)
    assert exc.value.timed_out and time.perf_counter() - t0 < 5

    def swallows() -> None:  # catches BaseException: the deadline is delivered again
        for _ in range(3):
            try:
                _spin()
            except BaseException:  # noqa: BLE001
                pass
        _spin()

    with deadline.policy(0.2), pytest.raises(guard.PluginFailure):
        guard.plugin_call(swallows)
    with deadline.policy(0.2):  # many quick calls, then time passes: no late delivery anywhere
        for i in range(2000):
            assert guard.plugin_call(lambda i=i: i) == i
        time.sleep(0.5)
    with deadline.policy(None):
        assert deadline.start() is None and guard.plugin_call(lambda: 7) == 7


def test_nested_deadlines_report_the_call_that_ran_past_its_own():
    def outer() -> None:
        with deadline.policy(10):
            guard.plugin_call(_spin)

    with deadline.policy(0.3), pytest.raises(guard.PluginFailure) as exc:
        guard.plugin_call(outer)  # the inner call (10 s) is not the one that timed out
    assert "0.3 s" in str(exc.value)


@pytest.mark.parametrize("where", ["solver", "construction", "hypothesis", "nan-gradient", "gd", "wide"])
def test_a_call_past_the_studys_deadline_is_an_error_row(cli, tmp_path, plugin, where):
    text = T3 + "budget: {deadline: 1}\n"
    if where == "solver":
        text = text.replace("{name: exact}", "{name: spin_solver}")
    elif where == "construction":
        text += "constructions: [spin_construction, blocking_point]\n"
    elif where == "hypothesis":
        text = text.replace("  - {name: l2_norm, expect: falsified}\n", "  - {name: spin_R}\n  - {name: l2_norm}\n")
    elif where == "nan-gradient":
        text = text.replace("{name: relu_neuron}", "{name: nan_grad}").replace("{name: exact}", "{name: adaptive}")
    elif where == "gd":
        text = text.replace("{name: exact}", "{name: gd, lr: 1.0e-300, steps: 1000000}")
    else:
        text = text.replace("{name: relu_neuron}", "{name: two_layer_relu, width: 200000}").replace(
            "{name: zeros}", "{name: gaussian, scale: 0.1}").replace("{name: exact}", "{name: adaptive}").replace(
            "report: {triples: true}", "report: {json_triples: 0, triples: false}")
    t0 = time.perf_counter()
    r = _run(cli, tmp_path, text, plugin)
    assert time.perf_counter() - t0 < 45, "each call stops at its deadline"
    assert r.code in (0, 1), r
    assert "ran past the deadline of 1 s per plugin call" in r.out + r.err, r
    assert (tmp_path / "run" / "results.json").is_file()
    if where in ("construction", "hypothesis"):
        assert "FALSIFIED" in r.out  # the rest of the study went on


# ------------------------------------------------------------------------------------------
# class 4: work and memory estimates; certificates; Ray; a FIFO
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, extra, needle", [
    (("{name: exact}", "{name: adaptive, rtol: 0, atol: 0}"), "", "solver.rtol: Input should be greater than 0"),
    (("gamma: [0, 5]", "gamma: [0, 1, 2, 5, 20]"), "constructions: [{name: rotate, count: 1000000}]\n",
     "constructions"),
    (None, "constructions: [{name: consistent_augmentation, points: 100000}]\n", "witness search"),
    (None, "budget: {max_hours: 1.0e-6}\n", "more than budget.max_hours"),
])
def test_hopeless_work_or_memory_is_refused_before_it_runs(cli, tmp_path, monkeypatch, change, extra, needle):
    from ibtest.study import budget

    monkeypatch.setattr(budget, "physical_memory", lambda: 16 * 2**30)  # the same answer on any machine
    t0 = time.perf_counter()
    r = _run(cli, tmp_path, (T3.replace(*change) if change else T3) + extra)
    assert r.code == 2 and needle in r.err, r
    assert time.perf_counter() - t0 < 20 and not (tmp_path / "run").exists()


def test_work_estimate_unit():
    assert work.expected_steps("adaptive", {"rtol": 0.0, "atol": 0.0}, 4)[0] == math.inf
    base = work.expected_steps("adaptive", {}, 4)[0]
    assert base < work.expected_steps("adaptive", {"rtol": 1e-14}, 4)[0] < 4 * base
    assert work.expected_steps("gd", {"lr": 1e-300, "steps": 10**6}, 4)[0] == 10**6
    assert work.expected_steps("gd", {"lr": 1e-2, "steps": 10**6}, 4)[0] == 1e4  # stops near flow time 100
    assert work.expected_steps("gd", {"lr": 1e-2, "steps": 10**6, "fit_tol": 0, "grad_tol": 0}, 4)[0] == 10**6
    assert work.expected_steps("exact", {"max_pieces": 64}, 4)[0] == 5
    small = work.call_seconds("adaptive", {}, 2, 3, 3)[0]
    wide = work.call_seconds("adaptive", {}, 2, 3, 800_001)[0]
    assert wide > 100 * small


def test_verify_refuses_a_certificate_that_asks_for_unbounded_work(cli, tmp_path):
    from ibtest.api import run_study

    res = run_study(_study(tmp_path, T3), out_dir=tmp_path / "t3")  # a genuine Theorem 3 certificate
    cert = json.loads(Path(res.certificates[0]).read_text())
    cert["solver"] = {"name": "gd", "options": {"lr": 1e-300, "steps": 1000000, "grad_tol": 0}}
    cert["fit_tol"] = 0  # the fit rule (a file may tighten it): 0 means no instance stops by fitting
    for tightened in (False, True):
        if tightened:
            cert["solver"]["tightened"] = dict(cert["solver"]["options"])
        p = tmp_path / "hostile.json"
        p.write_text(json.dumps(cert))
        t0 = time.perf_counter()
        for argv in (("verify", p), ("shrink", p, "--budget", "8")):
            r = cli(*argv)
            _one_line(r)
            assert "times the work of the tool's default settings" in r.err, r
        assert time.perf_counter() - t0 < 20


def test_an_unreachable_ray_cluster_fails_within_seconds(cli, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a port nobody listens on
    t0 = time.perf_counter()
    r = cli("run", _study(tmp_path, T3), "-q", "--out", tmp_path / "run", "--executor", "ray")
    _one_line(r)
    assert "cannot reach the cluster at 127.0.0.1:1 (from RAY_ADDRESS)" in r.err, r
    assert time.perf_counter() - t0 < 20 and not (tmp_path / "run").exists()


def test_joining_a_cluster_that_never_answers_is_bounded(monkeypatch):
    from ibtest.run import ray_executor

    class Silent:  # a cluster that accepts the connection and never answers: ray.init retries for minutes
        def is_initialized(self):
            return False

        def init(self, **kw):
            _spin()

        def shutdown(self):
            pass

    monkeypatch.setattr(ray_executor, "JOIN_TIMEOUT", 0.5)
    monkeypatch.setattr(ray_executor, "check_reachable", lambda address: None)
    ex = ray_executor.RayExecutor.__new__(ray_executor.RayExecutor)
    ex.ray, ex.address = Silent(), "10.0.0.9:6379"
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot join the cluster at 10.0.0.9:6379 \(from executor.address\): no answer"):
        ex.check()
    assert time.perf_counter() - t0 < 10


def test_a_fifo_nobody_writes_to_is_not_a_hang(cli, tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    r = cli("run", fifo, "-q", "--out", tmp_path / "run")
    assert r.code == 2 and str(fifo) in r.err, r
    for argv in (("verify", fifo), ("show", fifo), ("run", _study(tmp_path, T3), "--plugin", fifo)):
        r = cli(*argv)
        _one_line(r)
        assert "not a regular file" in r.err, r
    assert time.perf_counter() - t0 < 10


def test_read_input_unit(tmp_path):
    from ibtest.base.inputs import read_input

    (tmp_path / "f.yaml").write_text("x: 1\n")
    assert read_input(tmp_path / "f.yaml") == b"x: 1\n"
    with pytest.raises(OSError, match="more than 1000 bytes"):
        read_input("/dev/zero", max_bytes=1000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_input(fifo) == b""  # no writer: its end at once
