"""End to end: wall time of ``ibtest run`` as a subprocess (process start included), the phase
table it prints, and the import time of the CLI."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from ._common import ROOT

THEOREM3 = os.path.join(ROOT, "hypotheses", "vardi_shamir_theorem3.yaml")
STUDY_10K = os.path.join(ROOT, "benchmarks", "study_10k.yaml")


def _cli(*args: str) -> list[str]:
    # the console script is a thin wrapper around ibtest.cli:main; `-m ibtest.cli` is the same
    # process start without depending on PATH
    exe = shutil.which("ibtest", path=os.path.dirname(sys.executable))
    return [exe, *args] if exe else [sys.executable, "-m", "ibtest.cli", *args]


def run_study(study: str, quiet: bool, repeat: int = 1) -> dict:
    """Best wall time over ``repeat`` fresh runs (and every time, and ``python -c "import torch"``
    timed right after each run, for the machine's speed at that moment); the stdout of the last."""
    times, torch_times, out, rc = [], [], "", None
    for _ in range(max(1, repeat)):
        with tempfile.TemporaryDirectory(prefix="ibtest-bench-") as tmp:
            cmd = _cli("run", study, "--out", os.path.join(tmp, "run"), *(["-q"] if quiet else []))
            t0 = time.perf_counter()
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            out, rc = p.stdout + p.stderr, p.returncode
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], cwd=ROOT, capture_output=True)
        torch_times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "times": times, "torch_import_times": torch_times, "returncode": rc,
            "output": out, "phases": phases(out), "summary": summary(out)}


def phases(output: str) -> str:
    """The 'phases:' table of a run's output (empty if not printed)."""
    m = re.search(r"^phases(?: \([^)\n]*\))?:\n(.*?)(?:\n\s*\n|\Z)", output, re.S | re.M)
    return m.group(1).rstrip() if m else ""


def summary(output: str) -> str:
    m = re.search(r"^study .*$", output, re.M)
    return m.group(0) if m else ""


def import_time(repeat: int = 3) -> dict:
    """`python -X importtime -m ibtest.cli list`: the slowest imports (cumulative, µs) and the
    wall time of `ibtest list` and of `python -c pass` (the interpreter alone)."""
    best_list = best_py = float("inf")
    rows: list[tuple[int, int, int, str]] = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], cwd=ROOT, capture_output=True)
        best_py = min(best_py, time.perf_counter() - t0)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "ibtest.cli", "list"], cwd=ROOT,
                           capture_output=True, text=True)
        best_list = min(best_list, time.perf_counter() - t0)
        cur: list[tuple[int, int, int, str]] = []
        for line in p.stderr.splitlines():
            mm = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
            if mm:
                cur.append((int(mm.group(2)), int(mm.group(1)), len(mm.group(3)) - 1, mm.group(4)))
        if not rows or sum(r[0] for r in cur if r[2] == 0) < sum(r[0] for r in rows if r[2] == 0):
            rows = cur
    top = sorted((r for r in rows if r[2] == 0), reverse=True)
    total = sum(r[0] for r in top)
    # packages (no dot in the name) at any depth, by cumulative time, and ibtest's own modules
    pkgs = sorted((r for r in rows if "." not in r[3] and r[3] != "ibtest"), reverse=True)
    own = sorted((r for r in rows if r[3].startswith("ibtest") or r[3].startswith("plugins")
                  or r[3].startswith("ibtest_plugins")), key=lambda r: -r[1])
    return {"python_startup_s": best_py, "ibtest_list_s": best_list, "imports_total_s": total / 1e6,
            "top": [(name, cum / 1e6) for cum, _self, _lvl, name in top[:6]],
            "packages": [(name, cum / 1e6) for cum, _self, _lvl, name in pkgs[:10]],
            "own_self": [(name, slf / 1e6) for _cum, slf, _lvl, name in own[:8]]}


def run(quick: bool = False) -> dict:
    out = {"theorem3": run_study(THEOREM3, quiet=True, repeat=1 if quick else 3),
           "imports": import_time(1 if quick else 3)}
    if not quick:
        out["study_10k"] = run_study(STUDY_10K, quiet=False)
    return out
