"""Issue 24: the ``adaptive`` solver at widths 16, 64 and 256 from small init, against batched GD.

Workload (``make_w2(N, seed, m=width, d=10, n=20)``): Gaussian inputs, labels of a random
teacher of the same width, ‖θ0‖ = 0.1. The solver runs every instance of a width in one batch at
its default options (default budget); reported: seconds per instance (batch time / N), statuses,
steps (max / median) and kink events.

Baselines, measured in the same run:

* **Batched float64 GD in torch**, the researchers' procedure run for real on the instances the
  solver calls converged (``benchmarks.gd_baseline``: GD to each instance's stop time T_i at
  lr = 1e-3, halved until it agrees with the limit to 1e-6, down to the floor lr a time budget
  affords, ``GD_BUDGET_S`` per width, default 900 s; runs cached under ``GD_CACHE``). An instance
  that agrees has its GD cost measured; one that does not is a lower bound (``> x``); the ratio on
  the median instance is marked the same way. With it: the d(lr) table, d(lr)/d(lr/2), and
  Richardson on lr for the pair (1e-3, 5e-4) and for the smallest pair in GD's linear regime,
  with the number of instances within its own estimate. (Before, the agreeing lr and its time
  were extrapolated from lr 1e-3 and 5e-4 with a linear error model that does not hold there.)
* **Tightened re-solve** (``tighten``: rtol, atol, drift_tol / 100): max |Δθ| over the instances
  converged in both (skipped at width 256: ``TIGHT=0``).

Run: ``python benchmarks/wide_flows.py [WIDTH:N ...]`` (default ``16:8 64:8 256:2``), seed 11
(``SEED``). The W2-vs-LSODA ratio is ``benchmarks/w2_adaptive.py``'s.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import gd_baseline  # noqa: E402
from benchmarks.w2_adaptive import make_w2  # noqa: E402
from ibtest.base import status as st  # noqa: E402
from ibtest.solve.solvers.adaptive import solve_adaptive  # noqa: E402
from ibtest.solve.solvers.adaptive_options import DEFAULTS, tighten  # noqa: E402
from plugins.models.two_layer_relu import two_layer_relu  # noqa: E402


def run(width: int, N: int, seed: int = 11, tight: bool = True) -> dict:
    X, y, mask, th0 = make_w2(N, seed, m=width, d=10, n=20)
    model = two_layer_relu(width=width)
    t0, c0 = time.perf_counter(), time.process_time()
    res = solve_adaptive(model, X, y, mask, th0)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    per = sec / N
    steps = res.info["steps"].double()
    out: dict[str, Any] = {
        "workload": f"width {width}, d 10, n 20, seed {seed}, {N} instances in one batch",
        "seconds": round(sec, 1), "seconds_per_instance": round(per, 2),
        "statuses": st.counts(res.status),
        "steps_max_median": [int(steps.max()), float(steps.median())],
        "kink_events_max": int(res.info["kink_events"].max()),
        "t_stop": [float(f"{v:.3g}") for v in res.info["t"].tolist()],
    }
    if tight:
        t1 = time.perf_counter()
        o = tighten(dict(DEFAULTS))
        o.pop("threads", None)
        ref = solve_adaptive(model, X, y, mask, th0, **o)
        both = (res.status == st.CONVERGED) & (ref.status == st.CONVERGED)
        err = (res.theta - ref.theta).abs().amax(-1)[both]
        out["tight_seconds"] = round(time.perf_counter() - t1, 1)
        out["tight_statuses"] = st.counts(ref.status)
        out["max_abs_diff_vs_tight"] = float(f"{float(err.max()):.3g}") if err.numel() else None
    budget = float(os.environ.get("GD_BUDGET_S", str(gd_baseline.DEFAULT_BUDGET_S)))
    b = gd_baseline.baseline(model, X, y, mask, th0, res, width=width, seed=seed, budget_s=budget)
    out["gd_baseline"] = gd_baseline.gd_report(b, per, cpu / N)
    return out


def main(argv: list[str]) -> list[dict]:
    torch.set_num_threads(1)  # GD on one core, as the solver (its ``threads`` option)
    seed = int(os.environ.get("SEED", "11"))
    tight = os.environ.get("TIGHT", "1") != "0"
    rows = []
    for spec in argv or ["16:8", "64:8", "256:2"]:
        w, n = (int(x) for x in spec.split(":"))
        r = run(w, n, seed, tight=tight and w < 256)
        rows.append(r)
        for k, v in r.items():
            if k != "gd_baseline":
                print(f"{k:38s} {v}", flush=True)
        print("\n".join(r["gd_baseline"]), flush=True)
        print(flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
