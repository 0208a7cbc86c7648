"""Issue 24: the ``adaptive`` solver at widths 16, 64 and 256 from small init, against batched GD.

Workload (``make_w2(N, seed, m=width, d=10, n=20)``): Gaussian inputs, labels of a random
teacher of the same width, ‖θ0‖ = 0.1. The solver runs every instance of a width in one batch at
its default options (default budget); reported: seconds per instance (batch time / N), statuses,
steps (max / median) and kink events.

Baselines, measured in the same run:

* **Batched float64 GD in torch** (``benchmarks.gd_approach.gd_to``), on the instances the solver
  calls converged, to each instance's stop time T_i (θ(T_i) is within the drift tolerance 1e-9 of
  the limit). It runs at lr 1e-3 and 5e-4; its distance to the limit is O(lr), so the lr that
  agrees with the limit to 1e-6 is lr₁ = 5e-4·1e-6/d(5e-4) (the linear model is checked: d(1e-3)/
  d(5e-4) is printed, ≈ 2 where it holds). GD's time per instance at lr₁ is T_i/lr₁ steps at the
  measured time per batched step divided by the batch size (GD at lr₁ itself would take hours:
  10^6–10^7 steps); the ratio is that time over the solver's time per instance, on the median
  instance.
* **Richardson on lr** (1e-3, 5e-4): θ_R = 2θ(5e-4) − θ(1e-3), with error estimate
  ‖θ(5e-4) − θ(1e-3)‖ (the size of the correction); reported: on how many converged instances
  ‖θ_R − θ_solver‖ is within it.
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

from benchmarks.gd_approach import gd_to  # noqa: E402
from benchmarks.w2_adaptive import make_w2  # noqa: E402
from ibtest.base import status as st  # noqa: E402
from ibtest.solve.solvers.adaptive import solve_adaptive  # noqa: E402
from ibtest.solve.solvers.adaptive_options import DEFAULTS, tighten  # noqa: E402
from plugins.models.two_layer_relu import two_layer_relu  # noqa: E402

LR1, LR2 = 1e-3, 5e-4
AGREE = 1e-6


def gd_row(model: Any, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, th0: torch.Tensor, theta: torch.Tensor,
           T: torch.Tensor, per_adaptive: float) -> dict:
    """GD at LR1 and LR2 to T [k] against the solver's θ [k, P] (module docstring)."""
    k = X.shape[0]
    t0 = time.perf_counter()
    g1 = gd_to(model, X, y, mask, th0, LR1, T)
    t1 = time.perf_counter()
    g2 = gd_to(model, X, y, mask, th0, LR2, T)
    t2 = time.perf_counter()
    step_s = (t2 - t1) / max(1, int(torch.round(T.max() / LR2)))  # one batched GD step
    d1 = (g1 - theta).norm(dim=-1)
    d2 = (g2 - theta).norm(dim=-1)
    rich = 2 * g2 - g1
    est = (g2 - g1).norm(dim=-1)
    d_r = (rich - theta).norm(dim=-1)
    lr_need = LR2 * AGREE / d2.clamp_min(1e-300)
    gd_s = (T / lr_need) * step_s / k  # per instance
    ratio = gd_s / per_adaptive
    return {
        "gd_instances": k,
        "gd_seconds_lr1_lr2": [round(t1 - t0, 2), round(t2 - t1, 2)],
        "gd_dist_lr1e-3": [float(f"{v:.3g}") for v in d1.tolist()],
        "gd_dist_lr5e-4": [float(f"{v:.3g}") for v in d2.tolist()],
        "gd_linear_check_d1/d2": [round(v, 2) for v in (d1 / d2.clamp_min(1e-300)).tolist()],
        "gd_lr_for_1e-6": [float(f"{v:.2g}") for v in lr_need.tolist()],
        "gd_seconds_per_instance_at_that_lr": [round(v, 1) for v in gd_s.tolist()],
        "speedup_vs_gd_median": round(float(ratio.median()), 2),
        "speedup_vs_gd_min": round(float(ratio.min()), 2),
        "richardson_within_estimate": f"{int((d_r <= est).sum())} of {k}",
        "richardson_dist_over_estimate": [round(v, 3) for v in (d_r / est.clamp_min(1e-300)).tolist()],
    }


def run(width: int, N: int, seed: int = 11, tight: bool = True) -> dict:
    X, y, mask, th0 = make_w2(N, seed, m=width, d=10, n=20)
    model = two_layer_relu(width=width)
    t0 = time.perf_counter()
    res = solve_adaptive(model, X, y, mask, th0)
    sec = time.perf_counter() - t0
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
    conv = (res.status == st.CONVERGED).nonzero().squeeze(-1)
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
    if conv.numel():
        out |= gd_row(model, X[conv], y[conv], mask[conv], th0[conv], res.theta[conv], res.info["t"][conv], per)
    return out


def main(argv: list[str]) -> list[dict]:
    seed = int(os.environ.get("SEED", "11"))
    tight = os.environ.get("TIGHT", "1") != "0"
    rows = []
    for spec in argv or ["16:8", "64:8", "256:2"]:
        w, n = (int(x) for x in spec.split(":"))
        r = run(w, n, seed, tight=tight and w < 256)
        rows.append(r)
        for k, v in r.items():
            print(f"{k:38s} {v}", flush=True)
        print(flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
