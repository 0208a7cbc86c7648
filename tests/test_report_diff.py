"""``ibtest diff``: triples matched one to one, even when two init entries share labels; sweeps
compared value by value."""
from __future__ import annotations

import shutil

import pytest

from ibtest.out.report import diff


def _run(thetas, statuses, pairs=(3, 2)):
    rows = [{"dataset": "gaussian #0", "init": "gaussian#0", "theta": th, "status": s}
            for th, s in zip(thetas, statuses)]
    return {"verdicts": [], "triples": rows, "status_counts": {},
            "pairs": {"admissible": pairs[0], "distinct": pairs[1]}}


def test_duplicate_labels_are_matched_in_order():
    a = _run([[1.0, 0.0], [0.0, 2.0]], ["converged", "stalled"])
    assert diff(a, _run([[1.0, 0.0], [0.0, 2.0]], ["converged", "stalled"])) == []
    moved = diff(a, _run([[1.0, 0.0], [0.0, 2.5]], ["converged", "stalled"]))
    assert moved == ["triple gaussian #0 / gaussian#0 (#2 of that name): theta moved by 0.5"]


def test_moves_are_judged_relative_to_the_solution_size():
    a = _run([[1e-12, 0.0]], ["converged"])
    assert diff(a, _run([[1.5e-12, 0.0]], ["converged"])) == [
        "triple gaussian #0 / gaussian#0: theta moved by 5e-13"]


def test_pair_counts_are_compared():
    a = _run([[1.0]], ["converged"])
    assert diff(a, _run([[1.0]], ["converged"], pairs=(4, 2))) == ["admissible pairs: 3 -> 4"]


# ------------------------------------------------------------------------------------------
# sweeps: compared value by value
# ------------------------------------------------------------------------------------------
SWEEP_STUDY = """\
study: lin-sweep
model: {name: linear}
init: {name: gaussian, scale: 1.0, count: 2}
datasets:
  - {name: gaussian, n: 2, d: 3, count: 2, labels: teacher_linear}
solver: {name: exact}
hypotheses:
  - {name: dist_to_init}
sweep: {path: init.scale, values: [0.5, 2]}
"""


def _edit_results(run, edit):
    """Change a finished run's stored results in place (``edit`` gets and changes the JSON)."""
    from ibtest.run.store import Store

    s = Store(run)
    try:
        res = s.results()
        edit(res)
        s.write_results(res)
    finally:
        s.close()


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """A finished two-value sweep of a tiny linear study (about a second)."""
    from ibtest.api import run_study

    root = tmp_path_factory.mktemp("sweep")
    study = root / "study.yaml"
    study.write_text(SWEEP_STUDY)
    run_study(study, out_dir=root / "run")
    return root / "run"


def test_identical_sweeps_have_no_differences(cli, sweep_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep_run, copy)
    r = cli("diff", sweep_run, copy)
    assert r.code == 0 and "no differences" in r.out, r


def test_a_changed_number_is_reported_with_its_sweep_value(cli, sweep_run, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(sweep_run, b)

    def edit(res):
        assert [r["sweep_value"] for r in res["runs"]] == [0.5, 2.0]
        res["runs"][1]["triples"][0]["theta"][0] += 0.5
        res["runs"][1]["pairs"]["admissible"] += 1

    _edit_results(b, edit)
    r = cli("diff", sweep_run, b)
    assert r.code == 1, r
    lines = r.out.splitlines()[1:]
    assert len(lines) == 2 and all(line.startswith("  init.scale=2.0: ") for line in lines), r
    assert any("theta moved by" in line for line in lines) and any("admissible pairs:" in line for line in lines), r


def test_a_sweep_and_a_single_run_are_refused(cli, sweep_run, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(sweep_run, single)
    _edit_results(single, lambda res: (res.update(res["runs"][0]), res.pop("runs"), res.pop("sweep")))
    for a, b in ((sweep_run, single), (single, sweep_run)):
        r = cli("diff", a, b)
        assert r.code == 2 and "Traceback" not in r.err, r
        assert f"run {sweep_run} is a sweep over init.scale (2 values), run {single} is a single run" in r.err, r


def test_sweeps_over_other_values_or_options_are_refused(cli, sweep_run, tmp_path):
    values = tmp_path / "values"
    shutil.copytree(sweep_run, values)
    _edit_results(values, lambda res: res["runs"][1].update(sweep_value=3.0))
    r = cli("diff", sweep_run, values)
    assert r.code == 2 and "the sweeps over init.scale have different values: [0.5, 2.0]" in r.err, r
    option = tmp_path / "option"
    shutil.copytree(sweep_run, option)
    _edit_results(option, lambda res: res.update(sweep="solver.grid"))
    r = cli("diff", sweep_run, option)
    assert r.code == 2 and "the sweeps are over different options: init.scale" in r.err, r


def test_sweep_diff_of_results():
    from ibtest.out.report import diff_sweeps, sweep_mismatch

    def sweep(*runs):
        return {"sweep": "init.eps", "runs": [dict(r, sweep_value=v) for v, r in runs]}

    a = sweep((0.1, _run([[1.0]], ["converged"])), (0.01, _run([[2.0]], ["converged"])))
    b = sweep((0.1, _run([[1.0]], ["converged"])), (0.01, _run([[2.0]], ["stalled"])))
    assert sweep_mismatch(a, b) is None and diff_sweeps(a, a) == []
    assert diff_sweeps(a, b) == ["init.eps=0.01: triple gaussian #0 / gaussian#0: status converged -> stalled"]
    assert sweep_mismatch(a, _run([[1.0]], ["converged"])) == (
        "run A is a sweep over init.eps (2 values), run B is a single run")
