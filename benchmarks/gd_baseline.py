"""Issue 24: the researchers' GD baseline, measured (not extrapolated).

Baseline procedure, per instance the ``adaptive`` solver calls converged: run batched float64 GD
(θ ← θ − lr·∇L, the model's closed-form ``grad``, ``torch.no_grad()``; ``gd_approach.gd_timed``)
to the instance's stop time T_i at lr = 1e-3, and halve lr until ‖θ_GD(lr, T_i) − θ_limit‖ ≤ 1e-6.
This module runs that procedure for real, batched over the converged instances of a width (an
instance that agrees leaves the batch), down to the smallest lr the time budget affords
(``GD_BUDGET_S`` per width, default 900 s: the next run is started only if its predicted time,
the last measured time per step × its steps, fits in what is left).

* An instance that agrees at some lr has its baseline cost **measured**: the sum of the runs the
  procedure made for it (lr = 1e-3, 5e-4, …, the lr that agrees).
* An instance that does not agree down to the floor lr costs **more than** the sum of the runs
  made (a lower bound, printed ``> x``): the procedure must halve lr again, and every further run
  costs about twice the last (T_i/lr steps).

Seconds per instance: GD runs in phases (rows sorted by T_i, the ones still moving a prefix of
the batch); each phase's time is split equally among the rows it moved, so an instance is charged
in proportion to its own steps and the charges add up to the batch time. Wall (``perf_counter``)
and CPU (``process_time``) seconds are both kept; the ratio is printed for both. The solver is
timed in the same process on the whole batch (``solve_adaptive`` at its default options), its
seconds per instance = batch time / N, as in ``wide_flows``.

The limit: θ_limit is the solver's returned θ, and GD runs to T̂_i = T_i rounded *up* to 3
significant digits (≤ 1% later; the rounding keeps a cache entry valid when a faster solver stops
at a slightly different T_i). The solver calls an instance converged when its drift estimate
‖θ(T_i) − θ(∞)‖ ≤ drift_tol/1.5 (drift_tol = 1e-9) and returns the Gauss–Newton end point,
within 1.5 × that estimate of θ(∞) (``info["drift_estimate"]``, printed); the flow past T_i moves
by no more, so ‖θ(T̂_i) − θ_limit‖ ≲ 2e-9, far below the 1e-6 asked: comparing GD at T̂_i with the
returned limit is right up to an estimate (not a bound: issue 12). GD is charged for round(T_i/lr)
steps: its measured seconds × round(T_i/lr)/round(T̂_i/lr).

Richardson on lr: θ_R = 2θ(lr/2) − θ(lr), its own error estimate ‖θ(lr/2) − θ(lr)‖; reported for the
issue's pair (1e-3, 5e-4) and for the smallest measured pair with d(lr)/d(lr/2) in [1.8, 2.2] (GD's
linear regime, where Richardson's premise holds), with the number of instances within the estimate.

Cache (``GD_CACHE``, default ``/work/runs/gd_cache``, one file per width/seed/N): every GD run of
one instance at one lr, keyed by width, seed, N, the instance, lr, T̂_i and a hash of its data and
θ0; a re-run (after the solver got faster) re-times the solver and reuses every run whose key is
unchanged (GD depends only on data, θ0, lr and T̂_i). The report marks cached numbers (``*``) and
their dates; cached runs do not count against the budget, so a re-run goes deeper.

Run: ``python benchmarks/gd_baseline.py [WIDTH:N ...]`` (default ``16:8 64:8``), seed 11 (``SEED``).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.gd_approach import gd_timed  # noqa: E402
from benchmarks.w2_adaptive import make_w2  # noqa: E402
from ibtest.base import status as st  # noqa: E402
from ibtest.solve.solvers.adaptive import solve_adaptive  # noqa: E402
from plugins.models.two_layer_relu import two_layer_relu  # noqa: E402

LR0 = 1e-3
AGREE = 1e-6
LINEAR = (1.8, 2.2)
DEFAULT_BUDGET_S = 900.0
CACHE_DIR = "/work/runs/gd_cache"


# -- pure logic ------------------------------------------------------------------------------
def lr_sequence(n: int, lr0: float = LR0) -> list[float]:
    """The procedure's learning rates: lr0, lr0/2, lr0/4, … (n of them)."""
    return [lr0 / 2.0 ** j for j in range(n)]


def t_grid(T: float, digits: int = 3) -> float:
    """T rounded up to ``digits`` significant digits (GD's target time; ≥ T up to rounding)."""
    if not (T > 0 and math.isfinite(T)):
        return T
    q = 10.0 ** (math.floor(math.log10(T)) - digits + 1)
    return float(f"{math.ceil(T / q * (1 - 1e-12)) * q:.{digits}g}")


def instance_hash(*tensors: torch.Tensor) -> str:
    """sha256 (16 hex digits) of the tensors' bytes: one instance's θ0, X, y, mask."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(width: int, seed: int, N: int, index: int, lr: float, T_hat: float, inst: str) -> str:
    """Key of one GD run of one instance (``inst``: :func:`instance_hash` of its θ0 and data)."""
    h = hashlib.sha256(f"{inst}|{T_hat!r}".encode()).hexdigest()[:16]
    return f"w{width}_s{seed}_N{N}_i{index}_lr{lr:.6e}_T{T_hat!r}_{h}"


@dataclass
class Run:
    """One GD run of one instance at one lr: its distance to the limit and the seconds charged."""

    lr: float
    d: float
    wall: float
    cpu: float
    cached: str | None = None  # the date of the cached run, None when run here


@dataclass
class Cost:
    """The baseline procedure's cost for one instance (:func:`procedure_cost`)."""

    wall: float
    cpu: float
    exact: bool  # True: it agreed, the cost is measured; False: a lower bound (> wall)
    lr_agree: float | None
    runs: int

    def show(self, cpu: bool = False) -> str:
        v = self.cpu if cpu else self.wall
        return f"{v:.2f}" if self.exact else f"> {v:.2f}"


def procedure_cost(runs: list[Run], agree: float = AGREE) -> Cost:
    """Cost of "halve lr until d ≤ agree" from the runs made, in order of decreasing lr: the sum up
    to and including the first that agrees (exact), or the sum of all when none does (a lower
    bound: the procedure has not stopped)."""
    wall = cpu = 0.0
    for k, r in enumerate(runs):
        wall += r.wall
        cpu += r.cpu
        if r.d <= agree:
            return Cost(wall, cpu, True, r.lr, k + 1)
    return Cost(wall, cpu, False, None, len(runs))


def median_bound(values: list[float], exact: list[bool]) -> tuple[float, bool]:
    """The median of per-instance values, and whether it is only a lower bound (True when any
    value is one: raising those can only raise the median)."""
    return float(statistics.median(values)), not all(exact)


def step_ratios(d: list[float]) -> list[float]:
    """d(lr)/d(lr/2) along the lr sequence (2 where GD's error is linear in lr)."""
    return [a / b if b > 0 else math.inf for a, b in zip(d, d[1:])]


def linear_pair(d: list[float], band: tuple[float, float] = LINEAR) -> int | None:
    """Index j of the smallest-lr pair (lr_j, lr_j+1) with d_j/d_j+1 in ``band``; None if none."""
    ok = [j for j, r in enumerate(step_ratios(d)) if band[0] <= r <= band[1]]
    return ok[-1] if ok else None


def richardson(th_lr: torch.Tensor, th_half: torch.Tensor, limit: torch.Tensor) -> tuple[float, float]:
    """(‖θ_R − limit‖, ‖θ(lr/2) − θ(lr)‖) with θ_R = 2θ(lr/2) − θ(lr): the extrapolation's error
    and its own estimate."""
    return float((2 * th_half - th_lr - limit).norm()), float((th_half - th_lr).norm())


# -- the cache -------------------------------------------------------------------------------
class GDCache:
    """GD runs of single instances on disk (``torch.save`` of a dict key → entry)."""

    def __init__(self, path: str | None):
        self.path = path
        self.data: dict[str, dict] = {}
        if path and os.path.exists(path):
            self.data = torch.load(path)

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, key: str, entry: dict) -> None:
        self.data[key] = entry

    def save(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        torch.save(self.data, tmp)
        os.replace(tmp, self.path)


def cache_path(width: int, seed: int, N: int, root: str | None = None) -> str:
    return os.path.join(root or os.environ.get("GD_CACHE", CACHE_DIR), f"w{width}_seed{seed}_N{N}.pt")


# -- the measurement -------------------------------------------------------------------------
@dataclass
class Measured:
    """The procedure's record for the converged instances of one width."""

    index: list[int]
    T: list[float]
    T_hat: list[float]
    runs: list[list[Run]] = field(default_factory=list)
    thetas: list[list[torch.Tensor]] = field(default_factory=list)
    limits: list[torch.Tensor] = field(default_factory=list)
    floor_lr: float | None = None
    stop: str = ""
    spent_wall: float = 0.0
    spent_cpu: float = 0.0
    from_cache: int = 0
    cache_dates: set[str] = field(default_factory=set)


def _step_time(model: Any, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, th0: torch.Tensor,
               steps: int = 300, reps: int = 3) -> tuple[float, float]:
    """Best-of-``reps`` (wall, CPU) seconds of one batched GD step from θ0."""
    T = torch.full((th0.shape[0],), steps * LR0, dtype=th0.dtype)
    best_w = best_c = math.inf
    for _ in range(reps):
        g = gd_timed(model, X, y, mask, th0, LR0, T)
        best_w = min(best_w, sum(g.wall) / steps)
        best_c = min(best_c, sum(g.cpu) / steps)
    return best_w, best_c


def measure(model: Any, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, th0: torch.Tensor,
            limit: torch.Tensor, T: torch.Tensor, index: list[int], *, width: int, seed: int, N: int,
            budget_s: float, cache: GDCache, min_lr: float = 0.0, max_runs: int = 40) -> Measured:
    """Run the baseline procedure on k converged instances (X … T [k, …], ``index`` their numbers
    in the workload) against their limits [k, P] (module docstring)."""
    k = len(index)
    Tl = [float(t) for t in T.tolist()]
    m = Measured(index=list(index), T=Tl, T_hat=[t_grid(t) for t in Tl])
    m.runs = [[] for _ in range(k)]
    m.thetas = [[] for _ in range(k)]
    m.limits = [limit[i] for i in range(k)]
    inst = [instance_hash(th0[i], X[i], y[i], mask[i]) for i in range(k)]
    T_hat = torch.tensor(m.T_hat, dtype=T.dtype)
    per_step = _step_time(model, X, y, mask, th0)[0]
    active = list(range(k))
    for lr in lr_sequence(max_runs):
        if not active:
            m.stop = "every instance agreed"
            break
        if lr < min_lr:
            m.stop = f"GD_MIN_LR {min_lr:g} reached"
            break
        keys = {i: cache_key(width, seed, N, index[i], lr, m.T_hat[i], inst[i]) for i in active}
        hit = {i: cache.get(keys[i]) for i in active}
        todo = [i for i in active if hit[i] is None]
        got: dict[int, dict] = {i: e for i, e in hit.items() if e is not None}
        if todo:
            k_max = max(round(m.T_hat[i] / lr) for i in todo)
            pred = per_step * k_max
            if m.spent_wall + pred > budget_s:
                m.stop = (f"budget: the run at lr {lr:.3g} ({k_max:,} steps, {len(todo)} rows) would take "
                          f"~{pred:.0f} s, {budget_s - m.spent_wall:.0f} s of {budget_s:.0f} s left")
                break
            sel = torch.tensor(todo)
            g = gd_timed(model, X[sel], y[sel], mask[sel], th0[sel], lr, T_hat[sel])
            wall, cpu = sum(g.wall), sum(g.cpu)
            m.spent_wall += wall
            m.spent_cpu += cpu
            per_step = wall / max(1, max(g.steps))
            date = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
            for r, i in enumerate(todo):
                e: dict[str, Any] = {"theta": g.theta[r].clone(), "wall": g.wall[r], "cpu": g.cpu[r],
                                     "steps": g.steps[r], "T_hat": m.T_hat[i], "lr": lr, "rows": len(todo),
                                     "date": date}
                cache.put(keys[i], e)
                got[i] = e | {"fresh": True}
            cache.save()
        for i in active:
            e = got[i]
            scale = round(Tl[i] / lr) / max(1, round(m.T_hat[i] / lr))  # charge round(T_i/lr) steps
            th = e["theta"]
            cached = None if e.get("fresh") else str(e["date"])
            if cached is not None:
                m.from_cache += 1
                m.cache_dates.add(cached)
            m.runs[i].append(Run(lr, float((th - limit[i]).norm()), e["wall"] * scale, e["cpu"] * scale, cached))
            m.thetas[i].append(th)
        m.floor_lr = lr
        active = [i for i in active if m.runs[i][-1].d > AGREE]
    else:
        m.stop = f"{max_runs} learning rates run"
    return m


# -- the run and its report ------------------------------------------------------------------
def _g(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}"


def run(width: int, N: int, seed: int = 11, budget_s: float = DEFAULT_BUDGET_S, cache_root: str | None = None,
        min_lr: float = 0.0) -> dict:
    """Solve the workload (timed), then run the baseline procedure on its converged instances."""
    torch.set_num_threads(1)
    X, y, mask, th0 = make_w2(N, seed, m=width, d=10, n=20)
    model = two_layer_relu(width=width)
    t0, c0 = time.perf_counter(), time.process_time()
    res = solve_adaptive(model, X, y, mask, th0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out: dict[str, Any] = {"width": width, "N": N, "seed": seed, "solver_wall": wall, "solver_cpu": cpu,
                           "statuses": st.counts(res.status)}
    return out | baseline(model, X, y, mask, th0, res, width=width, seed=seed, budget_s=budget_s,
                          cache_root=cache_root, min_lr=min_lr)


def baseline(model: Any, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, th0: torch.Tensor, res: Any, *,
             width: int, seed: int, budget_s: float = DEFAULT_BUDGET_S, cache_root: str | None = None,
             min_lr: float = 0.0) -> dict:
    """The baseline procedure on the converged instances of a solve ``res`` of the workload
    (X … θ0 [N, …]); the fields :func:`gd_report` reads."""
    N = X.shape[0]
    conv = (res.status == st.CONVERGED).nonzero().squeeze(-1)
    index = conv.tolist()
    path = cache_path(width, seed, N, cache_root)
    out: dict[str, Any] = {"converged": index, "budget_s": budget_s, "cache_path": path, "batch": N,
                           "drift_estimate": [float(v) for v in res.info["drift_estimate"][conv].tolist()]}
    if not index:
        return out
    Xc, yc, mc, tc = X[conv], y[conv], mask[conv], th0[conv]
    out["measured"] = measure(model, Xc, yc, mc, tc, res.theta[conv], res.info["t"][conv], index, width=width,
                              seed=seed, N=N, budget_s=budget_s, cache=GDCache(path), min_lr=min_lr)
    # batch-size effect: GD's time per step is mostly per-call overhead, nearly flat in the rows
    out["step_k"] = _step_time(model, Xc, yc, mc, tc)
    out["step_N"] = _step_time(model, X, y, mask, th0)
    return out


def report(r: dict) -> list[str]:
    """The lines printed for one width (:func:`run`'s result)."""
    w, N = r["width"], r["N"]
    L = [f"== width {w}: make_w2({N}, seed={r['seed']}, m={w}, d=10, n=20), two_layer_relu(width={w}) ==",
         f"solver (solve_adaptive, defaults, one batch of {N}): {r['solver_wall']:.1f} s wall, {r['solver_cpu']:.1f} s "
         f"cpu; per instance {r['solver_wall'] / N:.2f} s wall, {r['solver_cpu'] / N:.2f} s cpu",
         f"statuses {r['statuses']}; converged instances {r['converged']}"]
    return L + gd_report(r, r["solver_wall"] / N, r["solver_cpu"] / N)


def _dates(dates: set[str]) -> str:
    """The cached runs' dates: none, one, or the first to the last."""
    d = sorted(dates)
    return "none" if not d else d[0] if len(d) == 1 else f"run {d[0]} to {d[-1]}"


def gd_report(r: dict, per_w: float, per_c: float) -> list[str]:
    """The baseline's lines (:func:`baseline`'s fields; the solver's seconds per instance)."""
    N = r["batch"]
    m: Measured | None = r.get("measured")
    if m is None:
        return ["no converged instance: no GD baseline"]
    L: list[str] = []
    k = len(m.index)
    L.append(f"T_i {[_g(t, 6) for t in m.T]}; GD target T^_i {m.T_hat}; solver drift estimate "
             f"{[_g(v, 2) for v in r['drift_estimate']]} (<= 1e-9: |theta(T_i) - limit| ~ 1e-9 << 1e-6)")
    lrs = [x.lr for x in max(m.runs, key=len)]
    head = "  lr        " + "".join(f"| inst {i:<9d}" for i in m.index)
    L += ["d(lr) = |theta_GD(lr, T_i) - theta_limit| (* = from the cache; blank: agreed earlier / not run):", head]
    for j, lr in enumerate(lrs):
        cells = []
        for i in range(k):
            rr = m.runs[i]
            cells.append(f"| {_g(rr[j].d) + ('*' if rr[j].cached else ''):<14s}" if j < len(rr) else "| " + " " * 14)
        L.append(f"  {lr:<10.4g}" + "".join(cells))
    L += ["d(lr)/d(lr/2) (2: GD in its linear regime):", head]
    rat = [step_ratios([x.d for x in rr]) for rr in m.runs]
    for j, lr in enumerate(lrs[:-1]):
        L.append(f"  {lr:<10.4g}" + "".join(f"| {_g(q[j]):<14s}" if j < len(q) else "| " + " " * 14 for q in rat))
    L += ["GD seconds per run charged to the instance (wall):", head]
    for j, lr in enumerate(lrs):
        L.append(f"  {lr:<10.4g}" + "".join(
            f"| {f'{rr[j].wall:.2f}' + ('*' if rr[j].cached else ''):<14s}" if j < len(rr) else "| " + " " * 14
            for rr in m.runs))
    costs = [procedure_cost(rr) for rr in m.runs]
    L.append("per instance: baseline cost (s, '>' = lower bound: never agreed down to the floor lr), agreeing lr")
    for i, c in zip(m.index, costs):
        L.append(f"  inst {i}: wall {c.show()}, cpu {c.show(cpu=True)}, runs {c.runs}, "
                 f"agrees at lr {_g(c.lr_agree) if c.lr_agree else 'none (floor ' + _g(m.floor_lr or 0) + ')'}")
    med_w, lb = median_bound([c.wall for c in costs], [c.exact for c in costs])
    med_c, _ = median_bound([c.cpu for c in costs], [c.exact for c in costs])
    tag = "LOWER BOUND" if lb else "measured"
    gt = ">= " if lb else ""
    L += [f"GD s/instance, median of {k}: wall {gt}{med_w:.2f}, cpu {gt}{med_c:.2f} ({tag})",
          f"solver s/instance: wall {per_w:.2f}, cpu {per_c:.2f}",
          f"RATIO GD/solver on the median instance: wall {gt}{med_w / per_w:.2f}, cpu {gt}{med_c / per_c:.2f} "
          f"({tag}; target >= 10)"]
    # Richardson
    rich = [richardson(m.thetas[i][0], m.thetas[i][1], m.limits[i]) for i in range(k) if len(m.thetas[i]) >= 2]
    n_in = sum(e <= s for e, s in rich)
    L.append(f"Richardson (1e-3, 5e-4): within its own estimate on {n_in} of {len(rich)}; error/estimate "
             f"{[_g(e / s if s > 0 else math.inf) for e, s in rich]}")
    lin: list[str] = []
    n_pairs = n_lin = 0
    for i in range(k):
        jp = linear_pair([x.d for x in m.runs[i]])
        if jp is None:
            lin.append(f"inst {m.index[i]}: no pair in [1.8, 2.2]")
            continue
        e, s = richardson(m.thetas[i][jp], m.thetas[i][jp + 1], m.limits[i])
        n_pairs += 1
        n_lin += int(e <= s)
        lin.append(f"inst {m.index[i]}: lr ({_g(m.runs[i][jp].lr)}, {_g(m.runs[i][jp + 1].lr)}) error {_g(e)} "
                   f"estimate {_g(s)} {'within' if e <= s else 'NOT within'}")
    L.append(f"Richardson (smallest linear pair): within on {n_lin} of {n_pairs} with a pair ({k} instances): "
             + "; ".join(lin))
    proj = []
    for i in range(k):
        jp = linear_pair([x.d for x in m.runs[i]])
        if jp is None or costs[i].exact:
            continue
        b = m.runs[i][jp + 1]
        lr_need = b.lr * AGREE / b.d
        proj.append(f"inst {m.index[i]}: lr ~{_g(lr_need, 2)}, one run ~{b.wall * b.lr / lr_need:.3g} s")
    if proj:
        L.append("projection from the linear regime (NOT measured; d ~ lr below the pair): " + "; ".join(proj))
    L.append(f"floor lr {_g(m.floor_lr or 0)}; stop: {m.stop}")
    L.append(f"GD run here: {m.spent_wall:.1f} s wall, {m.spent_cpu:.1f} s cpu (budget {r['budget_s']:.0f} s); "
             f"runs from the cache: {m.from_cache} ({_dates(m.cache_dates)}); "
             f"cache {r['cache_path']}")
    sk, sn = r["step_k"], r["step_N"]
    f = (sn[0] / N) / (sk[0] / k)
    L.append(f"GD step (wall, best of 3x300 from theta0): batch of {k} {sk[0] * 1e6:.0f} us, batch of all {N} "
             f"{sn[0] * 1e6:.0f} us. GD's step is mostly per-call overhead: batched over all {N} instances "
             f"(as the solver is), GD per instance would cost x{f:.2f} of the above, the median ratio wall "
             f"{gt}{f * med_w / per_w:.2f} (an adjustment by measured step times, not a run)")
    return L


def main(argv: list[str]) -> list[dict]:
    torch.set_num_threads(1)  # GD on one core, as the solver (its ``threads`` option)
    seed = int(os.environ.get("SEED", "11"))
    budget = float(os.environ.get("GD_BUDGET_S", str(DEFAULT_BUDGET_S)))
    min_lr = float(os.environ.get("GD_MIN_LR", "0"))
    rows = []
    for spec in argv or ["16:8", "64:8"]:
        w, n = (int(x) for x in spec.split(":"))
        r = run(w, n, seed, budget, min_lr=min_lr)
        rows.append(r)
        print("\n".join(report(r)), flush=True)
        print(flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
