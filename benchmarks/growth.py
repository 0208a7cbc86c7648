"""Growth: ``exact`` triples/s against the batch size B, the dimension d and the points n
(W1-type data: Gaussian inputs, ReLU-teacher labels, ‖θ0‖ ≈ 0.1)."""
from __future__ import annotations

import time

from ibtest.solve.solvers.exact import solve_exact

from ._common import w1_batch
from .w1 import RELU

BATCH = (10, 100, 1_000, 10_000, 100_000)
DIMS = (2, 4, 8, 16, 32, 64)
POINTS = (2, 4, 8, 16, 32)


def _rate(B: int, d: int, n: int, min_seconds: float = 0.3) -> dict:
    X, y, m, w0 = w1_batch(B, d=d, n=n, seed=B + 7 * d + 31 * n)
    solve_exact(X[:8], y[:8], m[:8], w0[:8], RELU)
    reps, t = 0, 0.0
    pieces = 0
    while t < min_seconds or reps == 0:
        t0 = time.perf_counter()
        r = solve_exact(X, y, m, w0, RELU)
        t += time.perf_counter() - t0
        reps += 1
        pieces = int(r.info["pieces"].max())
    return {"B": B, "d": d, "n": n, "per_s": B * reps / t, "seconds": t / reps, "max_pieces": pieces}


def run(quick: bool = False) -> dict:
    if quick:
        return {"batch": [_rate(B, 5, 4, 0.0) for B in (10, 100)],
                "d": [_rate(200, d, 4, 0.0) for d in (2, 8)],
                "n": [_rate(200, 5, n, 0.0) for n in (2, 8)]}
    return {"batch": [_rate(B, 5, 4) for B in BATCH],
            "d": [_rate(2000, d, 4) for d in DIMS],
            "n": [_rate(2000, 5, n) for n in POINTS]}
