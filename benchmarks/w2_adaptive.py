"""W2: the adaptive solver on 1000 one-hidden-layer ReLU nets against per-instance LSODA.

Workload: width m = 4, d = 4, n = 3, Gaussian inputs, labels of a random width-4 teacher net,
small init (‖θ0‖ ≈ 0.1). ``solve_adaptive`` runs all instances in one batch; the baseline is
``scipy.integrate.solve_ivp(method="LSODA", rtol=1e-10, atol=1e-12)`` per instance with a numpy
gradient, run on the first ``n_baseline`` instances up to the flow time the adaptive solver
stopped at, in the same process. Its time is extrapolated per instance. ``max_steps`` (default 20 000) caps the
stragglers (slow last pieces, slowly stalling instances), which end as ``budget``. LSODA gets
``lsoda_max_nfev`` right-hand-side evaluations per instance (default 10^6, about a minute): on an
instance whose flow hovers on a ReLU kink it can take far more; such an instance counts with the
time it used and is reported in ``lsoda_capped``, so the speedup printed is a lower bound.

``sliding`` is the adaptive solver's option (``follow``, the default, or ``stop``); the status
shares of both are reported by :func:`status_shares`. ``width``/``d``/``n`` give the larger
workloads of issue 12 (widths 16 and 64, d = 10, n = 20), where the baseline runs on a sample.
``per-instance ratio``: LSODA time of one instance over the adaptive solver's time per instance
(batch time / batch size); the median instance and the mean are reported.

Run: ``python benchmarks/w2_adaptive.py [n_instances] [n_baseline] [width] [d] [n]`` (one table;
``TORCHODE_N=k`` adds the torchode row on the first k instances), or
``python benchmarks/w2_adaptive.py all [n_w2 nb_w2 n_16 nb_16 n_64 nb_64 torchode_n]`` for every
table of issue 12 in one run (W2 with stop/follow shares and torchode, widths 16 and 64).
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

from ibtest.base import status as st  # noqa: E402
from ibtest.solve.solvers.adaptive import solve_adaptive  # noqa: E402
from plugins.models.two_layer_relu import two_layer_relu  # noqa: E402 - the source tree's plugins (ROOT on sys.path)


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


def status_shares(status: torch.Tensor) -> dict:
    """Share of converged / stalled / diverged / budget / sliding among the instances."""
    n = max(1, status.numel())
    return {st.name(k): round(int((status == k).sum()) / n, 4)
            for k in (st.CONVERGED, st.STALLED, st.DIVERGED, st.BUDGET, st.SLIDING)}


def _np_grad(th, X, y, m, d):
    W = th[: m * d].reshape(m, d)
    v = th[m * d:]
    z = X @ W.T
    a = np.maximum(z, 0.0)
    r = a @ v - y
    c = (r[:, None] * (z >= 0)) * v[None, :]
    return np.concatenate([(c.T @ X).ravel(), a.T @ r])


class _Cap(Exception):
    """LSODA exceeded its evaluation budget on one instance."""


def lsoda(X: np.ndarray, y: np.ndarray, theta0: np.ndarray, m: int, d: int, T: float, max_nfev: int,
          rtol: float = 1e-10, atol: float = 1e-12, t_eval=None):
    """Per-instance reference: ``scipy.integrate.solve_ivp(method="LSODA")`` of dθ/dt = −∇L(θ) for
    one width-m net (X [n, d], y [n], θ0 [m·d + m]) on [0, T], with at most ``max_nfev``
    right-hand-side evaluations. Returns (the solution, or None when the budget ran out; the
    evaluations used). ``t_eval`` defaults to [T]: the end point only, so memory stays flat
    however many steps LSODA takes."""
    from scipy.integrate import solve_ivp

    calls = [0]

    def rhs(_t, th):
        calls[0] += 1
        if calls[0] > max_nfev:
            raise _Cap
        return -_np_grad(th, X, y, m, d)

    try:
        sol = solve_ivp(rhs, (0.0, T), theta0, method="LSODA", rtol=rtol, atol=atol,
                        t_eval=[T] if t_eval is None else t_eval)
    except _Cap:
        return None, calls[0]
    return sol, calls[0]


def run(n_instances: int = 1000, n_baseline: int = 50, width: int = 4, d: int = 4, n: int = 3,
        seed: int = 0, order: int = 8, max_steps: int = 20_000, lsoda_max_nfev: int = 1_000_000,
        sliding: str = "follow", compare_stop: bool = True, torchode_n: int = 0) -> dict:
    m = width
    X, y, mask, th0 = make_w2(n_instances, seed, m=m, d=d, n=n)
    model = two_layer_relu(width=m)
    solve_adaptive(model, X[:8], y[:8], mask[:8], th0[:8], order=order, max_steps=200)  # warm-up
    t0 = time.perf_counter()
    res = solve_adaptive(model, X, y, mask, th0, order=order, max_steps=max_steps, sliding=sliding)
    t_adaptive = time.perf_counter() - t0
    before = None
    if compare_stop and sliding == "follow":
        t1 = time.perf_counter()
        res_stop = solve_adaptive(model, X, y, mask, th0, order=order, max_steps=max_steps, sliding="stop")
        before = {"shares": status_shares(res_stop.status), "seconds": time.perf_counter() - t1}

    nb = min(n_baseline, n_instances)
    Xn, yn, thn = X.numpy(), y.numpy(), th0.numpy()
    errs, lsoda_theta, lsoda_times, capped = [], [], [], []
    t0 = time.perf_counter()
    nfev = 0
    for i in range(nb):
        ti = time.perf_counter()
        sol, used = lsoda(Xn[i], yn[i], thn[i], m, d, float(res.info["t"][i]), lsoda_max_nfev)
        lsoda_theta.append(sol.y[:, -1] if sol is not None and sol.success else None)
        if sol is None:
            capped.append(i)
        lsoda_times.append(time.perf_counter() - ti)
        nfev += used
    t_lsoda = time.perf_counter() - t0
    conv = res.status[:nb] == st.CONVERGED
    for i in range(nb):
        if conv[i] and lsoda_theta[i] is not None:
            errs.append(float(np.abs(lsoda_theta[i] - res.theta[i].numpy()).max()))
    counts = {st.name(k): int((res.status == k).sum()) for k in torch.unique(res.status).tolist()}
    per_adaptive = t_adaptive / n_instances
    per_lsoda = t_lsoda / nb
    tode = _torchode_row(model, X, y, mask, th0, res, torchode_n) if torchode_n else None
    return {
        "workload": f"width {m}, d {d}, n {n}",
        "sliding": sliding,
        "status_shares": status_shares(res.status),
        "status_shares_stop": before["shares"] if before else None,
        "stop_seconds": before["seconds"] if before else None,
        "slid": int(res.info["slid"].sum()),
        "median_instance_speedup": 1e3 * float(np.median(lsoda_times)) / (1e3 * per_adaptive),
        "torchode": tode,
        "n_instances": n_instances,
        "n_baseline": nb,
        "order": order,
        "adaptive_seconds": t_adaptive,
        "adaptive_per_instance_ms": 1e3 * per_adaptive,
        "adaptive_triples_per_s": n_instances / t_adaptive,
        "lsoda_seconds": t_lsoda,
        "lsoda_per_instance_ms": 1e3 * per_lsoda,
        "lsoda_mean_nfev": nfev / nb,
        # the per-instance times are heavy-tailed (an instance hovering on a kink, a long stiff
        # tail): the median and the maximum show how much one instance weighs in the mean
        "lsoda_median_instance_ms": 1e3 * float(np.median(lsoda_times)),
        "lsoda_max_instance_ms": 1e3 * float(np.max(lsoda_times)),
        # instances where LSODA used up lsoda_max_nfev evaluations without reaching T (their
        # time so far is counted, so the LSODA mean and the speedup are lower bounds)
        "lsoda_max_nfev": lsoda_max_nfev,
        "lsoda_capped": len(capped),
        "lsoda_capped_instances": capped,
        "lsoda_capped_adaptive_status": [st.name(int(res.status[i])) for i in capped],
        "speedup": per_lsoda / per_adaptive,
        "speedup_without_capped": (
            1e3 * float(np.mean([x for k, x in enumerate(lsoda_times) if k not in capped])) / (1e3 * per_adaptive)
            if len(capped) < nb else float("nan")),
        "median_instance_speedup_without_capped": (
            1e3 * float(np.median([x for k, x in enumerate(lsoda_times) if k not in capped])) / (1e3 * per_adaptive)
            if len(capped) < nb else float("nan")),
        "stiff_instances": int((res.info["stiff_steps"] > 0).sum()),
        "max_stiff_steps": int(res.info["stiff_steps"].max()),
        "status_counts": counts,
        "max_steps": int(res.info["steps"].max()),
        "median_steps": float(res.info["steps"].double().median()),
        "max_t": float(res.info["t"].max()),
        "compared": len(errs),
        "max_abs_diff_vs_lsoda": max(errs) if errs else float("nan"),
        "median_abs_diff_vs_lsoda": float(np.median(errs)) if errs else float("nan"),
    }


def _torchode_row(model, X, y, mask, th0, res, k: int, max_steps: int = 20_000) -> dict | None:
    """torchode (batched, per-sample step sizes, Dopri5, rtol 1e-10/atol 1e-12, ``max_steps``)
    on the first k instances up to the adaptive solver's stop times; its statuses (torchode's
    codes: 0 success, 1 general error, 2 reached max_steps, 3 infinite norm, 4 reached dt_min),
    and its error against a tight reference: ``solve_adaptive`` at the tightened settings
    (rtol 1e-12, atol 1e-14) run to the same stop times, on the instances it converged."""
    try:
        import torchode as to
    except ImportError:
        return None
    k = min(k, X.shape[0])
    Xk, yk, mk, th = X[:k], y[:k], mask[:k], th0[:k]
    T = res.info["t"][:k].clamp_min(1e-6)

    def f(t, u):
        return -model.grad(u, Xk, yk, mk)

    term = to.ODETerm(f)
    step = to.Dopri5(term=term)
    ctrl = to.IntegralController(atol=1e-12, rtol=1e-10, term=term)
    solver = to.AutoDiffAdjoint(step, ctrl, max_steps=max_steps)
    t_eval = torch.stack([torch.zeros_like(T), T], -1)
    t0 = time.perf_counter()
    sol = solver.solve(to.InitialValueProblem(y0=th, t_eval=t_eval))
    sec = time.perf_counter() - t0
    end = sol.ys[:, -1]
    ref = solve_adaptive(model, Xk, yk, mk, th, **_tight(), t_max=float(T.max()))
    # the reference stops at its own convergence (t ≤ T) or at T; compare where it converged
    conv = (ref.status == st.CONVERGED) & (res.status[:k] == st.CONVERGED)
    err = (end[conv] - ref.theta[conv]).abs().amax(-1) if bool(conv.any()) else torch.zeros(0)
    err_a = (res.theta[:k][conv] - ref.theta[conv]).abs().amax(-1) if bool(conv.any()) else torch.zeros(0)
    ok = sol.status == 0
    return {"instances": k, "seconds": sec, "per_instance_ms": 1e3 * sec / k,
            "statuses": {str(int(c)): int((sol.status == c).sum()) for c in torch.unique(sol.status)},
            "compared": int(conv.sum()),
            "max_abs_err_vs_tight": float(err.max()) if err.numel() else float("nan"),
            "median_abs_err_vs_tight": float(err.median()) if err.numel() else float("nan"),
            "max_abs_err_vs_tight_where_torchode_ok": (float(err[ok[conv]].max()) if bool(ok[conv].any())
                                                       else float("nan")),
            "adaptive_max_abs_err_vs_tight": float(err_a.max()) if err_a.numel() else float("nan")}


def _tight() -> dict:
    from ibtest.solve.solvers.adaptive import tighten
    o = tighten({"max_steps": 20_000})
    return {k: o[k] for k in ("rtol", "atol", "drift_tol", "max_steps")}


def main(n_w2: int = 1000, nb_w2: int = 30, n_16: int = 20, nb_16: int = 3, n_64: int = 4, nb_64: int = 2,
         torchode_n: int = 100, seed: int = 0, report=None) -> list[dict]:
    """The tables of issue 12 in one run: W2 (follow, with the stop shares and a torchode row),
    then widths 16 and 64 at d = 10, n = 20 (``n_16``/``n_64`` instances, LSODA on the first
    ``nb_16``/``nb_64`` of them; torchode on all of them). ``report(row)`` is called as each row
    is done (the wide rows take long)."""
    rows = [run(n_w2, nb_w2, 4, 4, 3, seed=seed, torchode_n=torchode_n)]
    if report:
        report(rows[-1])
    for w, nw, nbw in ((16, n_16, nb_16), (64, n_64, nb_64)):
        if nw > 0:
            rows.append(run(nw, nbw, w, 10, 20, seed=seed, torchode_n=min(torchode_n, nw)))
            if report:
                report(rows[-1])
    return rows


def _print(out: dict) -> None:
    print("=" * 72)
    for k, v in out.items():
        print(f"{k:28s} {v}")
    sys.stdout.flush()


def _ints(argv: list[str], defaults: list[int]) -> list[int]:
    """Positional integers from the command line, the defaults for those not given."""
    return [int(a) for a in argv[: len(defaults)]] + defaults[len(argv):]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "all":  # ... all [n_w2 nb_w2 n_16 nb_16 n_64 nb_64 torchode_n]
        a = _ints(sys.argv[2:], [1000, 30, 20, 3, 4, 2, 100])
        main(a[0], a[1], a[2], a[3], a[4], a[5], a[6], report=_print)
    else:  # ... [n_instances n_baseline width d n]
        a = _ints(sys.argv[1:], [1000, 50, 4, 4, 3])
        _print(run(a[0], a[1], a[2], a[3], a[4], torchode_n=int(os.environ.get("TORCHODE_N", "0"))))
