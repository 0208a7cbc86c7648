"""Gradient-flow trajectories θ(t) for drawing (not for verdicts): the solve layer's dense output.

The engine's solvers return θ∞ only; a picture needs the path. :func:`flow_path` integrates
dθ/dt = −∇L(θ; D) from θ0 with a library dense-output Runge–Kutta method
(:func:`scipy.integrate.solve_ivp`, ``DOP853`` by default), window by window over log-spaced time
(t ∈ [0, 1e-4], [1e-4, 1e-3], ...), so early fast motion and a slow approach to the limit both get
steps of their own scale. It stops when θ reaches the given end point, when ∇L vanishes, when θ
blows up, when θ moves less than ``stop_tol`` (relative) over a whole window (a decade of time,
from t = 1 on: settled, for a picture), or at the time / step budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass
class FlowPath:
    """A gradient-flow trajectory: ``t`` [K] (t[0] = 0, increasing), ``theta`` [K, P] (float64
    numpy) at the integrator's accepted steps, and a dense interpolant :meth:`at`."""

    t: np.ndarray
    theta: np.ndarray
    segments: list[Any]  # scipy OdeSolution of each time window, in order
    reason: str  # why it stopped: "end point", "stationary", "settled", "blow-up", "t_max", "max_steps"

    def at(self, t_eval: np.ndarray) -> np.ndarray:
        """θ(t) [len(t_eval), P] by the integrator's dense output (t clipped to the path's span)."""
        t_eval = np.clip(np.asarray(t_eval, dtype=np.float64), self.t[0], self.t[-1])
        out = np.empty((t_eval.shape[0], self.theta.shape[1]))
        for k, tk in enumerate(t_eval):
            for seg in self.segments:
                if seg.t_min <= tk <= seg.t_max:
                    out[k] = seg(tk)
                    break
            else:
                out[k] = self.theta[0] if tk <= self.t[0] else self.theta[-1]
        return out


def flow_path(model: Any, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor, t_eval: np.ndarray | None = None,
              *, theta_end: Tensor | None = None, method: str = "DOP853", rtol: float = 1e-6, atol: float = 1e-9,
              t_max: float = 1e7, max_steps: int = 20_000, stop_tol: float = 1e-4) -> FlowPath:
    """The trajectory of dθ/dt = −∇L(θ; D) from θ0.

    ``X`` [n, d], ``y`` [n], ``mask`` [n], ``theta0`` [P]; ``model.grad`` gives ∇L. ``method``: a
    :func:`scipy.integrate.solve_ivp` method with dense output (``DOP853``, ``RK45``, ``LSODA`` for
    a stiff flow, ...), with its local error test ``rtol`` / ``atol``. Stops when
    ‖θ − θ_end‖ ≤ stop_tol·(1 + ‖θ_end‖) (``theta_end``: e.g. a certificate's solution), when
    ‖∇L‖ ≤ 1e-13·(1 + ‖θ‖), when ‖θ‖ exceeds 1e8 times its scale, when θ moves less than
    stop_tol·(1 + ‖θ‖) over a time window [10^k, 10^(k+1)], k ≥ 0, at ``t_max`` or after about
    ``max_steps`` accepted steps. ``t_eval`` given: the returned ``t`` / ``theta`` are θ on that
    grid (by dense output, clipped to where the path stopped); otherwise the accepted steps.
    """
    from scipy.integrate import solve_ivp

    Xb, yb, mb = X[None].to(torch.float64), y[None].to(torch.float64), mask[None]

    def grad(th: np.ndarray) -> np.ndarray:
        g = model.grad(torch.as_tensor(th, dtype=torch.float64)[None], Xb, yb, mb)[0]
        return g.detach().numpy()

    def fun(_t: float, th: np.ndarray) -> np.ndarray:
        return -grad(th)

    th = theta0.detach().to(torch.float64).numpy().copy()
    end = None if theta_end is None else theta_end.detach().to(torch.float64).numpy()
    end_norm = float(np.linalg.norm(end)) if end is not None else float(np.linalg.norm(th))
    scale = 1.0 + end_norm + float(np.linalg.norm(th))

    def reached(_t: float, x: np.ndarray) -> float:
        return float(np.linalg.norm(x - end)) - stop_tol * (1.0 + end_norm) if end is not None else 1.0

    def stationary(_t: float, x: np.ndarray) -> float:
        return float(np.linalg.norm(grad(x))) - 1e-13 * (1.0 + float(np.linalg.norm(x)))

    def blowup(_t: float, x: np.ndarray) -> float:
        return 1e8 * scale - float(np.linalg.norm(x)) if np.isfinite(x).all() else -1.0

    events = [reached, stationary, blowup]
    for e in events:
        e.terminal = True  # type: ignore[attr-defined]
    ts, path, segments = [np.zeros(1)], [th[None]], []
    reason, t0, steps = "t_max", 0.0, 0
    bounds = [b for b in 10.0 ** np.arange(-4, np.ceil(np.log10(t_max)) + 1) if b < t_max] + [t_max]
    for t1 in bounds:
        if t1 <= t0:
            continue
        if stationary(t0, th) <= 0:
            reason = "stationary"
            break
        start = th
        sol = solve_ivp(fun, (t0, t1), th, method=method, rtol=rtol, atol=atol, dense_output=True, events=events)
        segments.append(sol.sol)
        ts.append(sol.t[1:])
        path.append(sol.y.T[1:])
        steps += len(sol.t) - 1
        t0, th = float(sol.t[-1]), sol.y[:, -1].copy()
        if sol.status == 1:  # a terminal event
            reason = ("end point", "stationary", "blow-up")[next(k for k, ev in enumerate(sol.t_events) if len(ev))]
            break
        if sol.status < 0 or not np.isfinite(th).all():
            reason = "blow-up"
            break
        if steps >= max_steps:
            reason = "max_steps"
            break
        if t0 >= 1.0 and float(np.linalg.norm(th - start)) <= stop_tol * (1.0 + float(np.linalg.norm(th))):
            reason = "settled"  # θ moved less than stop_tol (relative) over a whole decade of time
            break
    fp = FlowPath(np.concatenate(ts), np.concatenate(path), segments, reason)
    if t_eval is not None:
        grid = np.clip(np.asarray(t_eval, dtype=np.float64), 0.0, fp.t[-1])
        fp = FlowPath(grid, fp.at(grid), segments, reason)
    return fp
