"""Shared helpers of the benchmarks: machine description, timing, the W1 workload."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import sys
import time
from collections.abc import Callable

import torch

F64 = torch.float64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    import numpy
    import scipy

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_1min_at_start": load[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
    }


def timed(fn: Callable, repeat: int = 1):
    """(result of the last call, best wall seconds, best CPU seconds of this process)."""
    best_w = best_c = float("inf")
    out = None
    for _ in range(max(1, repeat)):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_w = min(best_w, time.perf_counter() - w)
        best_c = min(best_c, time.process_time() - c)
    return out, best_w, best_c


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def w1_batch(B: int, d: int = 5, n: int = 4, seed: int = 0, scale: float = 0.1):
    """W1: Gaussian x (n points in R^d), labels of a random ReLU teacher (about half are 0),
    θ0 ~ N(0, I_d)·scale/√d (‖θ0‖ ≈ scale).  Returns X [B, n, d], y [B, n], mask, θ0 [B, d]."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=F64)
    v = torch.randn(B, d, generator=g, dtype=F64)
    y = (X @ v.unsqueeze(-1)).squeeze(-1).clamp_min(0.0)
    w0 = torch.randn(B, d, generator=g, dtype=F64) * (scale / d**0.5)
    return X, y, torch.ones_like(y), w0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
