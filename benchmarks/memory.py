"""Memory: peak RSS of a study streamed through the engine, as a subprocess.

The study is ``benchmarks/study_10k.yaml`` with ``count`` set to N (single ReLU neuron, exact
solver, blocking_point + consistent_augmentation, 10 hypothesis members); the child's peak RSS
comes from ``getrusage(RUSAGE_CHILDREN)`` in a fresh wrapper process.  ``run(N)`` for
N = 10^6 takes long (see RESULTS.md), so ``python -m benchmarks`` runs it only with --memory.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

from ._common import ROOT
from .e2e import STUDY_10K, _cli

_WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": p.returncode, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": ru.ru_maxrss / 1024.0, "out": (p.stdout + p.stderr)[-6000:]}))
"""


def study_text(count: int) -> str:
    text = open(STUDY_10K).read()
    text = re.sub(r"count: 10000", f"count: {int(count)}", text)
    return re.sub(r"study: bench-10k", f"study: bench-{int(count)}", text)


def run(count: int = 1_000_000, timeout: float | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="ibtest-mem-") as tmp:
        path = os.path.join(tmp, "study.yaml")
        with open(path, "w") as fh:
            fh.write(study_text(count))
        cmd = [sys.executable, "-c", _WRAPPER, *_cli("run", path, "--out", os.path.join(tmp, "run"))]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"count": count, "timed_out": True, "seconds": time.perf_counter() - t0}
        try:
            out = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"count": count, "error": (p.stdout + p.stderr)[-2000:]}
    out["count"] = count
    from .e2e import phases, summary

    out["phases"] = phases(out["out"])
    out["summary"] = summary(out["out"])
    return out
