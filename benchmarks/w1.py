"""W1: single ReLU neuron (d = 5, n = 4, teacher labels, ‖θ0‖ ≈ 0.1), 10 000 instances.

``exact`` batched over all instances, next to (same process, same data):

* the per-instance exact reference in numpy (``exact_reference``; the error reference);
* a per-instance torch GD loop, lr 1e-2, autograd (what research code does);
* batched torch GD over [B, d] with a per-instance stop mask, lr 1e-2;
* scipy ``solve_ivp`` per instance, LSODA, rtol 1e-10, atol 1e-12, on [0, T_LSODA].

The slow baselines run on the first instances only (their sizes are in the result).  GD stops an
instance when ‖∇L‖ ≤ GD_GTOL or loss ≤ 1e-20, or after GD_MAX_STEPS steps (t = 200).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ibtest.base import status as st
from ibtest.plugin.specs import PiecewiseLinearNeuron
from ibtest.solve.solvers.exact import solve_exact
from ibtest.solve.solvers.exact_reference import solve_exact_reference
from ibtest.solve.solvers.exact_scale import workers_for

from ._common import timed, w1_batch

RELU = PiecewiseLinearNeuron(pos=1.0, neg=0.0, at_zero=1.0)
LR = 1e-2
GD_MAX_STEPS = 20_000
GD_GTOL = 1e-9
T_LSODA = 1e4


def gd_loop(X: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float = LR,
            max_steps: int = GD_MAX_STEPS, gtol: float = GD_GTOL) -> tuple[torch.Tensor, int]:
    """One instance, the research-code way: autograd, one step at a time."""
    w = w0.clone().requires_grad_(True)
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 (the count of steps taken is returned)
        loss = 0.5 * ((torch.relu(X @ w) - y) ** 2).sum()
        (g,) = torch.autograd.grad(loss, w)
        if float(loss.detach()) <= 1e-20 or float(g.norm()) <= gtol:
            break
        with torch.no_grad():
            w -= lr * g
    return w.detach(), steps


def gd_batched(X: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float = LR,
               max_steps: int = GD_MAX_STEPS, gtol: float = GD_GTOL) -> tuple[torch.Tensor, int]:
    """All instances at once, [B, d], each frozen once it meets the stop rule."""
    w = w0.clone()
    act = torch.ones(w.shape[0], dtype=torch.bool)
    Xt = X.transpose(1, 2)
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 (the count of steps taken is returned)
        z = (X @ w.unsqueeze(-1)).squeeze(-1)
        r = torch.relu(z) - y
        g = (Xt @ (r * (z > 0)).unsqueeze(-1)).squeeze(-1)
        stop = ((0.5 * (r * r).sum(-1) <= 1e-20) | (g.norm(dim=-1) <= gtol))
        act &= ~stop
        if not bool(act.any()):
            break
        w = torch.where(act.unsqueeze(-1), w - lr * g, w)
    return w, steps


def lsoda(X: np.ndarray, y: np.ndarray, w0: np.ndarray, T: float = T_LSODA) -> np.ndarray:
    from scipy.integrate import solve_ivp

    def rhs(_t, w):
        z = X @ w
        act = z >= 0.0  # σ'(0) = 1, as in the exact flow
        return -(X.T @ ((np.maximum(z, 0.0) - y) * act))

    sol = solve_ivp(rhs, (0.0, T), w0, method="LSODA", rtol=1e-10, atol=1e-12)
    return sol.y[:, -1]


def run(n: int = 10_000, n_ref: int = 200, n_loop: int = 10, n_gd_batched: int = 1000,
        n_lsoda: int = 20, repeat: int = 3, seed: int = 0, gd_max_steps: int = GD_MAX_STEPS) -> dict:
    X, y, m, w0 = w1_batch(n, seed=seed)
    solve_exact(X[:64], y[:64], m[:64], w0[:64], RELU)  # warm-up (lazy imports, allocator)

    walls, walls1 = [], []
    res = res1 = None
    workers = workers_for(0, n)  # what workers=0 (auto) picks here
    for _ in range(max(1, repeat)):  # the default (one worker) and `workers` threads, alternating
        t0 = time.perf_counter()
        res = solve_exact(X, y, m, w0, RELU)
        walls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res1 = solve_exact(X, y, m, w0, RELU, workers=workers)
        walls1.append(time.perf_counter() - t0)
    assert res is not None and res1 is not None  # repeat >= 1
    walls.sort()
    walls1.sort()
    exact_best, exact_med = walls[0], walls[len(walls) // 2]
    th = res.theta.numpy()
    out: dict = {
        "n": n, "repeat": repeat, "gd_max_steps": gd_max_steps, "workers": workers,
        "exact_seconds_best": exact_best, "exact_seconds_median": exact_med,
        "exact_per_s": n / exact_med, "exact_per_s_best": n / exact_best,
        "exact1_per_s": n / walls1[len(walls1) // 2], "exact1_per_s_best": n / walls1[0],
        "workers_max_diff": float((res.theta - res1.theta).abs().max()),
        "status_counts": {st.name(int(k)): int(v) for k, v in zip(*np.unique(res.status.numpy(), return_counts=True))},
        "max_pieces": int(res.info["pieces"].max()),
    }

    # -- per-instance exact reference (numpy): the error reference ---------------------------
    k = min(n_ref, n)
    t0 = time.perf_counter()
    ref = [solve_exact_reference(X[i].numpy(), y[i].numpy(), w0[i].numpy(), 1.0, 0.0, 1.0) for i in range(k)]
    t_ref = time.perf_counter() - t0
    wr = np.stack([w for w, _ in ref])
    sr = np.array([s for _, s in ref])
    out.update(ref_n=k, ref_per_s=k / t_ref,
               exact_max_err=float(np.abs(th[:k] - wr).max()),
               exact_status_agree=int((res.status.numpy()[:k] == sr).sum()))

    def err(w: np.ndarray, kk: int) -> tuple[float, float]:
        e = np.abs(w - wr[:kk]).max(-1)
        return float(e.max()), float(np.median(e))

    # -- per-instance GD loop, autograd ------------------------------------------------------
    k1 = min(n_loop, k)
    t0 = time.perf_counter()
    loop = [gd_loop(X[i], y[i], w0[i], max_steps=gd_max_steps) for i in range(k1)]
    t_loop = time.perf_counter() - t0
    e_max, e_med = err(torch.stack([w for w, _ in loop]).numpy(), k1)
    out.update(loop_n=k1, loop_per_s=k1 / t_loop, loop_err_max=e_max, loop_err_median=e_med,
               loop_steps_mean=float(np.mean([s for _, s in loop])))

    # -- batched GD ----------------------------------------------------------------------------
    k2 = min(n_gd_batched, n)
    (wb, steps), t_b, _ = timed(lambda: gd_batched(X[:k2], y[:k2], w0[:k2], max_steps=gd_max_steps))
    kk = min(k2, k)
    e_max, e_med = err(wb[:kk].numpy(), kk)
    out.update(gdb_n=k2, gdb_per_s=k2 / t_b, gdb_steps=steps, gdb_err_max=e_max, gdb_err_median=e_med)

    # -- scipy LSODA per instance --------------------------------------------------------------
    k3 = min(n_lsoda, k)
    t0 = time.perf_counter()
    wl = np.stack([lsoda(X[i].numpy(), y[i].numpy(), w0[i].numpy()) for i in range(k3)])
    t_l = time.perf_counter() - t0
    e_max, e_med = err(wl, k3)
    out.update(lsoda_n=k3, lsoda_per_s=k3 / t_l, lsoda_err_max=e_max, lsoda_err_median=e_med)

    out["ratio_vs_loop"] = out["exact_per_s"] / out["loop_per_s"]
    out["ratio_vs_gd_batched"] = out["exact_per_s"] / out["gdb_per_s"]
    out["ratio_vs_lsoda"] = out["exact_per_s"] / out["lsoda_per_s"]
    out["ratio_vs_reference"] = out["exact_per_s"] / out["ref_per_s"]
    return out


def table(r: dict) -> list[list]:
    """Rows: method, instances timed, triples/s, ratio exact/method, max (median) error vs exact."""
    rows = [
        [f"`exact`, batched (median of {r['repeat']} runs)", r["n"], r["exact_per_s"], 1.0,
         f"{r['exact_max_err']:.1e} (vs reference, {r['ref_n']} inst.; status agrees "
         f"{r['exact_status_agree']}/{r['ref_n']})"],
        [f"`exact`, batched, `workers={r['workers']}` threads sharing the batch (median of {r['repeat']} runs)",
         r["n"], r["exact1_per_s"], r["exact_per_s"] / r["exact1_per_s"],
         f"{r['workers_max_diff']:.1e} (vs the default's θ∞)"],
        ["per-instance GD loop, lr 1e-2, autograd", r["loop_n"], r["loop_per_s"], r["ratio_vs_loop"],
         f"{r['loop_err_max']:.2g} ({r['loop_err_median']:.2g})"],
        ["batched GD [B, d], masked, lr 1e-2", r["gdb_n"], r["gdb_per_s"], r["ratio_vs_gd_batched"],
         f"{r['gdb_err_max']:.2g} ({r['gdb_err_median']:.2g})"],
        ["scipy solve_ivp per instance, LSODA rtol 1e-10", r["lsoda_n"], r["lsoda_per_s"], r["ratio_vs_lsoda"],
         f"{r['lsoda_err_max']:.2g} ({r['lsoda_err_median']:.2g})"],
        ["exact reference, per instance, numpy", r["ref_n"], r["ref_per_s"], r["ratio_vs_reference"], "reference"],
    ]
    return rows
