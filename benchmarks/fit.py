"""Cost of ``ibtest fit`` (issue 26): fitting a family to 10^4 triples, against the time it took to
produce them (solving the instances, own pairs), in one process and on one machine state.

Two workloads of ``count × inits`` instances, both with the ``quadratic`` family (an SDP when its
cone is active):

* ``linear``: a linear model from Gaussian inits (d = 6, n = 3): the family fits (M ∝ I), the
  decision rests on least squares and the measured solver error;
* ``relu``: a single ReLU neuron from small Gaussian inits, ReLU-teacher data (d = 5, n = 4): no
  member fits, so the minimax program runs on a working set, its core is reduced and confirmed.

The fit's time is everything :func:`ibtest.propose.engine.fit_table` does (KKT rows, the tight
re-solves of the error sample, the programs, the core); cvxpy is imported once before both timings
(a one-time import of 1 to 3 s). Target: fit ≤ 2 × produce.

    python -m benchmarks.fit [COUNT]
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import torch

STUDIES = {
    "linear": {"model": {"name": "linear"}, "init": {"name": "gaussian", "scale": 1.0, "count": 4},
               "datasets": [{"name": "gaussian", "n": 3, "d": 6, "labels": "teacher_linear"}]},
    "relu": {"model": {"name": "relu_neuron"}, "init": {"name": "gaussian", "scale": 0.1, "count": 4},
             "datasets": [{"name": "gaussian", "n": 4, "d": 5, "labels": "teacher_relu"}]},
}


def one(name: str, count: int) -> dict[str, Any]:
    from ibtest.plugin.manager import load_registry
    from ibtest.propose import engine
    from ibtest.propose.collect import collect
    from ibtest.solve.engine import build_context, plan_instances
    from ibtest.study.schema import validate

    raw: dict[str, Any] = {"study": f"fit-bench-{name}", "seed": 1, "solver": {"name": "exact", "fit_tol": 1e-20},
                           **STUDIES[name]}
    raw["datasets"] = [dict(raw["datasets"][0], count=int(count))]
    reg = load_registry()
    study = validate(raw, reg)
    ctx = build_context(study)
    plan = plan_instances(ctx)
    col = collect(ctx, plan)
    fam = reg.get("families", "quadratic")
    t0 = time.perf_counter()
    out = engine.fit_table(ctx, col.t, col.pairs, fam, fam.settings(), None, torch.arange(len(col.t)))
    fit_s = time.perf_counter() - t0
    return {"workload": name, "triples": len(col.t), "converged": len(out.rows), "produce_s": col.seconds,
            "fit_s": fit_s, "ratio": fit_s / col.seconds, "status": out.status, "core": len(out.core),
            "measured": out.measured, "reason": out.reason}


def run(count: int = 2500, repeat: int = 3) -> dict[str, Any]:
    import cvxpy  # noqa: F401  (one-time import, outside the timings)

    res: dict[str, Any] = {"count": count, "repeat": repeat, "runs": {}}
    for name in STUDIES:
        runs = [one(name, count) for _ in range(repeat)]
        med = statistics.median(r["ratio"] for r in runs)
        res["runs"][name] = {"all": runs, "median_ratio": med,
                             "median_produce_s": statistics.median(r["produce_s"] for r in runs),
                             "median_fit_s": statistics.median(r["fit_s"] for r in runs)}
    return res


def rows(r: dict[str, Any]) -> list[list[Any]]:
    out = []
    for name, x in r["runs"].items():
        last = x["all"][-1]
        out.append([name, last["triples"], last["converged"], x["median_produce_s"], x["median_fit_s"],
                    x["median_ratio"], ", ".join(f"{y['ratio']:.2f}" for y in x["all"]),
                    f"{last['status']}" + (f" ({last['core']} triples)" if last["core"] else "")])
    return out


HEAD = ["workload", "triples", "converged", "produce s (median)", "fit s (median)", "fit ÷ produce (median)",
        "every run", "outcome"]


if __name__ == "__main__":
    r = run(int(sys.argv[1]) if len(sys.argv) > 1 else 2500)
    from benchmarks.__main__ import _table

    print(_table(HEAD, rows(r)))
