"""W2: the adaptive solver on 1000 one-hidden-layer ReLU nets against per-instance LSODA.

Workload: width m = 4, d = 4, n = 3, Gaussian inputs, labels of a random width-4 teacher net,
small init (‖θ0‖ ≈ 0.1). ``solve_adaptive`` runs all instances in one batch; the baseline is
``scipy.integrate.solve_ivp(method="LSODA", rtol=1e-10, atol=1e-12)`` per instance with a numpy
gradient, run on the first ``n_baseline`` instances up to the flow time the adaptive solver
stopped at, in the same process. Its time is extrapolated per instance. ``max_steps`` (default 20 000) caps the
stragglers (slow last pieces, slowly stalling instances), which end as ``budget``.

Run: ``python benchmarks/w2_adaptive.py [n_instances] [n_baseline]``.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ibtest import status as st  # noqa: E402
from ibtest.solvers.adaptive import solve_adaptive  # noqa: E402

try:  # installed package, or the source tree
    from ibtest_plugins.models.two_layer_relu import two_layer_relu
except ImportError:  # pragma: no cover
    from plugins.models.two_layer_relu import two_layer_relu


def make_w2(n_instances: int, seed: int = 0, m: int = 4, d: int = 4, n: int = 3, init_norm: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    B = n_instances
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    Wt = torch.randn(B, m, d, generator=g, dtype=torch.float64)
    vt = torch.randn(B, m, generator=g, dtype=torch.float64)
    y = torch.einsum("bnm,bm->bn", torch.einsum("bnd,bmd->bnm", X, Wt).clamp_min(0), vt)
    th0 = torch.randn(B, m * d + m, generator=g, dtype=torch.float64)
    th0 = init_norm * th0 / th0.norm(dim=-1, keepdim=True)
    return X, y, torch.ones_like(y), th0


def _np_grad(th, X, y, m, d):
    W = th[: m * d].reshape(m, d)
    v = th[m * d:]
    z = X @ W.T
    a = np.maximum(z, 0.0)
    r = a @ v - y
    c = (r[:, None] * (z >= 0)) * v[None, :]
    return np.concatenate([(c.T @ X).ravel(), a.T @ r])


def run(n_instances: int = 1000, n_baseline: int = 50, seed: int = 0, order: int = 8,
        max_steps: int = 20_000) -> dict:
    from scipy.integrate import solve_ivp

    m, d = 4, 4
    X, y, mask, th0 = make_w2(n_instances, seed)
    model = two_layer_relu(width=m)
    solve_adaptive(model, X[:8], y[:8], mask[:8], th0[:8], order=order, max_steps=200)  # warm-up
    t0 = time.perf_counter()
    res = solve_adaptive(model, X, y, mask, th0, order=order, max_steps=max_steps)
    t_adaptive = time.perf_counter() - t0

    nb = min(n_baseline, n_instances)
    Xn, yn, thn = X.numpy(), y.numpy(), th0.numpy()
    errs, lsoda_theta = [], []
    t0 = time.perf_counter()
    nfev = 0
    for i in range(nb):
        T = float(res.info["t"][i])
        sol = solve_ivp(lambda t, th, i=i: -_np_grad(th, Xn[i], yn[i], m, d), (0.0, T), thn[i],
                        method="LSODA", rtol=1e-10, atol=1e-12)
        nfev += sol.nfev
        lsoda_theta.append(sol.y[:, -1])
    t_lsoda = time.perf_counter() - t0
    conv = res.status[:nb] == st.CONVERGED
    for i in range(nb):
        if conv[i]:
            errs.append(float(np.abs(lsoda_theta[i] - res.theta[i].numpy()).max()))
    counts = {st.name(k): int((res.status == k).sum()) for k in torch.unique(res.status).tolist()}
    per_adaptive = t_adaptive / n_instances
    per_lsoda = t_lsoda / nb
    return {
        "n_instances": n_instances,
        "n_baseline": nb,
        "order": order,
        "adaptive_seconds": t_adaptive,
        "adaptive_per_instance_ms": 1e3 * per_adaptive,
        "adaptive_triples_per_s": n_instances / t_adaptive,
        "lsoda_seconds": t_lsoda,
        "lsoda_per_instance_ms": 1e3 * per_lsoda,
        "lsoda_mean_nfev": nfev / nb,
        "speedup": per_lsoda / per_adaptive,
        "status_counts": counts,
        "max_steps": int(res.info["steps"].max()),
        "median_steps": float(res.info["steps"].double().median()),
        "max_t": float(res.info["t"].max()),
        "compared": len(errs),
        "max_abs_diff_vs_lsoda": max(errs) if errs else float("nan"),
        "median_abs_diff_vs_lsoda": float(np.median(errs)) if errs else float("nan"),
    }


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    out = run(*args)
    for k, v in out.items():
        print(f"{k:28s} {v}")
