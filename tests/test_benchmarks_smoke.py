"""The benchmark runner's quick versions run and agree with the exact flow (no timing asserted)."""
from __future__ import annotations

import math

import pytest

from benchmarks import growth, memory, w1
from benchmarks.__main__ import _table
from benchmarks.e2e import phases, summary


def test_w1_quick_numbers_are_finite_and_exact_agrees_with_reference():
    r = w1.run(n=24, n_ref=6, n_loop=1, n_gd_batched=6, n_lsoda=1, repeat=1, gd_max_steps=100)
    for k in ("exact_per_s", "loop_per_s", "gdb_per_s", "lsoda_per_s", "ref_per_s", "ratio_vs_loop",
              "loop_err_max", "gdb_err_max", "lsoda_err_max"):
        assert math.isfinite(r[k]) and r[k] >= 0, k
    assert r["exact_max_err"] < 1e-10
    assert r["exact_status_agree"] == r["ref_n"] == 6
    assert r["lsoda_err_max"] < 1e-6  # an accurate ODE solve of the same flow
    assert len(w1.table(r)) == 6
    assert r["workers_max_diff"] < 1e-12  # worker threads do not change the solutions
    assert "| method |" in _table(["method"], [["x"]])


def test_growth_quick_rates_are_positive():
    r = growth.run(quick=True)
    rows = r["batch"] + r["d"] + r["n"]
    assert rows and all(math.isfinite(x["per_s"]) and x["per_s"] > 0 for x in rows)


def test_phase_table_and_memory_study_parsing():
    out = ("x\nstudy s: 3 instances, 1.0 s\n\nphases:\nphase  instances\n-----  ---------\n"
           "solve  3\n\nrun directory: r\n")
    assert phases(out).splitlines()[-1] == "solve  3"
    assert summary(out).startswith("study s:")
    text = memory.study_text(1_000_000)
    assert "count: 1000000" in text and "bench-1000000" in text


@pytest.mark.slow
def test_ray_scaling_block_cost_and_markdown():
    """The Ray benchmark's per-block costs on a tiny study (no cluster), and its table."""
    from benchmarks import ray_scaling

    b = ray_scaling.block_cost(40, 8)
    assert b["block"] == 8 and b["triples"] >= 8 and b["bytes"] > 0
    assert all(math.isfinite(b[k]) and b[k] >= 0 for k in ("compute", "scoring", "pickle", "store", "score", "driver"))
    runs = [{"label": "local", "wall": 2.0, "per_s": 20.0, "solve_s": 1.0, "ray_start": None},
            {"label": "ray, 1 worker", "wall": 2.5, "per_s": 16.0, "solve_s": 1.1, "ray_start": 3.0}]
    md = ray_scaling.markdown({"count": 40, "block_size": 8, "machine": {"cpu": "x", "cores": 2,
                               "load_1min_at_start": 0.5, "torch": "t", "date": "d"}, "runs": runs,
                               "diffs": [[]], "block_cost": b})
    assert "| ray, 1 worker | 2.5 |" in md and "no differences" in md and "Ceiling" in md
