"""Benchmark runner of issue 4: ``python -m benchmarks [--quick] [--memory] [--out FILE]``.

Sections (each next to its baseline, in this process or in subprocesses it starts):

* W1  — ``exact`` on 10 000 single-neuron instances vs GD loop / batched GD / LSODA / reference;
* W2  — ``adaptive`` vs per-instance LSODA (``benchmarks/w2_adaptive.py`` ``run()``, if present);
* end to end — ``ibtest run`` of the Theorem 3 study and of a 10 000-instance study, as
  subprocesses (process start included), with the phase table the run prints, and import times;
* growth — ``exact`` triples/s against B, d and n;
* fit — ``ibtest fit`` on 10 000 triples against the time to produce them (``benchmarks/fit.py``);
* memory (``--memory``) — peak RSS of a study with 10^6 instances streamed through the engine.

``--quick`` runs every section on tiny sizes (a smoke test; tests/test_benchmarks_smoke.py).
Writes markdown to ``--out`` (default ``benchmarks/RESULTS.md``, or stdout only with ``--quick``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from typing import Any

from ._common import ROOT, log, machine


def _fmt(x, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def _table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def section_w1(quick: bool) -> tuple[dict, str]:
    from . import w1

    if quick:
        r = w1.run(n=64, n_ref=8, n_loop=2, n_gd_batched=16, n_lsoda=2, repeat=1, gd_max_steps=500)
    else:
        r = w1.run()
    md = ["## W1: single ReLU neuron, exact solver",
          f"{r['n']:,} instances, d = 5, n = 4, ReLU-teacher labels, Gaussian θ0 with ‖θ0‖ ≈ 0.1 "
          f"(statuses {r['status_counts']}; at most {r['max_pieces']} linear "
          f"pieces). `exact` runs with its defaults: one torch intra-op thread (`threads=1`), one "
          f"worker; the `workers={r['workers']}` row splits the batch over that many Python threads "
          f"(torch releases the GIL in its kernels; it only pays when the cores are otherwise idle). "
          f"The slow baselines run on "
          f"the first instances only (column 'instances'); GD (lr 1e-2) stops at ‖∇L‖ ≤ 1e-9, "
          f"loss ≤ 1e-20 or {r['gd_max_steps']:,} steps (t = {r['gd_max_steps'] * 0.01:g}); LSODA integrates to t = 10⁴. "
          f"Errors: max over "
          f"the instances timed (median in parentheses) of max_k |θ_k − θ_k(exact reference)|.", "",
          _table(["method", "instances", "triples/s", "exact ÷ method", "error vs exact flow"], w1.table(r)),
          "", f"Target ≥ 20 000 triples/s: **{r['exact_per_s']:,.0f}** triples/s (median; best "
          f"{r['exact_per_s_best']:,.0f}); target ≥ 1000× the GD loop: **{r['ratio_vs_loop']:,.0f}×**; "
          f"error ≤ 1e-10: **{r['exact_max_err']:.1e}**."]
    return r, "\n".join(md)


def section_w2(quick: bool) -> tuple[dict | None, str]:
    try:
        mod = importlib.import_module("benchmarks.w2_adaptive")
        run = mod.run
    except (ImportError, AttributeError) as exc:
        return None, f"## W2: one-hidden-layer ReLU net, adaptive solver\n\nnot run: {exc}"
    if quick:  # its cost is the colleague's workload, not a smoke test's
        return {"skipped": True}, "## W2\n\n`benchmarks/w2_adaptive.run` found; not run with --quick."
    r = run(n_instances=1000, n_baseline=50)
    rows = [[k, v] for k, v in r.items()]
    md = ["## W2: one-hidden-layer ReLU net (width 4, d = 4, n = 3), adaptive solver",
          "From `benchmarks/w2_adaptive.py` `run()`: `adaptive` on all instances in one batch, "
          "per-instance scipy LSODA (rtol 1e-10, atol 1e-12) on the first `n_baseline` of them, "
          "each integrated to the flow time the adaptive solver stopped at, in the same process. "
          f"LSODA gets {r.get('lsoda_max_nfev', 0):,} evaluations per instance; an instance that uses "
          "them up (`lsoda_capped`) counts with the time it took, so `speedup` is a lower bound. "
          "`speedup_without_capped` leaves those instances out of the LSODA mean.", "",
          _table(["quantity", "value"], rows), "",
          f"Target ≥ 30× LSODA per instance: **≥ {_fmt(r.get('speedup'))}×** "
          f"({r.get('lsoda_capped', 0)} of {r.get('n_baseline')} LSODA runs capped; "
          f"{_fmt(r.get('speedup_without_capped'))}× without them); agreement 1e-7 where both "
          f"converge: **{_fmt(r.get('max_abs_diff_vs_lsoda'))}** over {r.get('compared')} instances."]
    return r, "\n".join(md)


def section_e2e(quick: bool) -> tuple[dict, str]:
    from . import e2e

    r = e2e.run(quick=quick)
    t3 = r["theorem3"]
    def times(x: dict) -> str:
        return ", ".join(f"{v:.2f}" for v in x["times"])

    def torch_times(x: dict) -> str:
        return ", ".join(f"{v:.2f}" for v in x["torch_import_times"])

    md = ["## End to end (subprocess, process start included)", "",
          "Each run is followed by `python -c \"import torch\"` timed the same way, for the "
          "machine's speed at that moment (it also pays interpreter teardown, ~0.3 s, which the `ibtest` "
          "console script skips with `os._exit`).", "",
          _table(["run", "wall s (best)", "every run, s", "`import torch` alone, s", "exit code", "target"], [
              ["`ibtest run hypotheses/vardi_shamir_theorem3.yaml -q --out <tmp>` (best of "
               f"{1 if quick else 3})", t3["seconds"], times(t3), torch_times(t3), t3["returncode"], "< 3 s"],
              *([["`ibtest run benchmarks/study_10k.yaml --out <tmp>` (10 000 instances × 2 "
                  "constructions × 10 hypothesis members)", r["study_10k"]["seconds"], times(r["study_10k"]),
                  torch_times(r["study_10k"]), r["study_10k"]["returncode"], "< 15 s"]] if "study_10k" in r else []),
          ])]
    if "study_10k" in r:
        s = r["study_10k"]
        md += ["", "Its summary and phase table, as printed:", "", "```", s["summary"], "phases:",
               s["phases"], "```"]
    im = r["imports"]
    md += ["", "### Import time", "",
           f"`python -c pass`: {im['python_startup_s']:.2f} s; `ibtest list`: {im['ibtest_list_s']:.2f} s; "
           f"`python -X importtime -m ibtest.cli list`, top-level imports (cumulative s, total "
           f"{im['imports_total_s']:.2f} s):", "",
           _table(["module", "cumulative s"], [[f"`{n}`", s] for n, s in im["top"]]), "",
           "Packages imported on the way (any depth, cumulative s):", "",
           _table(["package", "cumulative s"], [[f"`{n}`", s] for n, s in im["packages"]]), "",
           "ibtest's own modules (self time, s):", "",
           _table(["module", "self s"], [[f"`{n}`", s] for n, s in im["own_self"]])]
    return r, "\n".join(md)


def section_growth(quick: bool) -> tuple[dict, str]:
    from . import growth

    r = growth.run(quick=quick)
    md = ["## Growth: exact triples/s", "",
          "Batch size (d = 5, n = 4):", "",
          _table(["B", "triples/s", "s per batch", "max pieces"],
                 [[x["B"], x["per_s"], x["seconds"], x["max_pieces"]] for x in r["batch"]]), "",
          f"Dimension (B = {r['d'][0]['B']:,}, n = 4):", "",
          _table(["d", "triples/s", "s per batch", "max pieces"],
                 [[x["d"], x["per_s"], x["seconds"], x["max_pieces"]] for x in r["d"]]), "",
          f"Points (B = {r['n'][0]['B']:,}, d = 5):", "",
          _table(["n", "triples/s", "s per batch", "max pieces"],
                 [[x["n"], x["per_s"], x["seconds"], x["max_pieces"]] for x in r["n"]])]
    return r, "\n".join(md)


def section_fit(quick: bool) -> tuple[dict, str]:
    from . import fit

    r = fit.run(count=25, repeat=1) if quick else fit.run()
    md = ["## ibtest fit: fitting a family to 10^4 triples (issue 26)", "",
          f"`benchmarks/fit.py`: {r['count']:,} datasets × 4 inits, exact solver, the `quadratic` family "
          "(least squares by LAPACK; an SDP by cvxpy + Clarabel where its cone is active). 'produce': "
          "solving the instances and forming the own pairs (`ibtest.propose.collect`); 'fit': "
          "`ibtest.propose.engine.fit_table` (KKT rows, the tight re-solves of the error sample and of "
          "the closest calls, the programs, the no-fit core and its confirmation); cvxpy is imported once "
          f"before both timings. Median of {r['repeat']} runs, both timed in one process.", "",
          _table(fit.HEAD, fit.rows(r)), "",
          "Target: fit ≤ 2 × produce: **" + ", ".join(f"{k} {v['median_ratio']:.2f}×" for k, v in r["runs"].items())
          + "**."]
    return r, "\n".join(md)


def section_memory(counts: list[int]) -> tuple[list[dict], str]:
    from . import memory

    res = [memory.run(count) for count in counts]
    return res, memory_markdown(res)


def memory_markdown(res: list[dict]) -> str:
    """The memory section from :func:`benchmarks.memory.run` results (one per instance count)."""
    rows, blocks = [], []
    for r in res:
        count = r["count"]
        if "peak_rss_mb" not in r:
            rows.append([count, "—", "—", f"did not finish: {str(r)[:200]}"])
            continue
        err = ""
        if r["rc"] not in (0, 1):
            tail = [ln for ln in r["out"].strip().splitlines() if ln.strip()][-1:]
            err = f" ({tail[0][:160]})" if tail else ""
        rows.append([count, r["peak_rss_mb"], r["seconds"], f"{r['rc']}{err}"])
        if r["phases"]:
            blocks += ["", f"{count:,} instances:", "", "```", r["summary"], "phases:", r["phases"], "```"]
    return "\n".join(["## Memory (peak RSS of a streamed study)", "",
                      "`benchmarks/study_10k.yaml` with `count` instances, run as a subprocess (peak RSS of "
                      "the child from getrusage; target < 2 GB at 10^6 instances). The study streams in "
                      "blocks of `block_size` = 20 000 instances (`ibtest/streaming.py`):", "",
                      _table(["instances", "peak RSS MB", "wall s", "exit code"], rows), *blocks])


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--memory", action="store_true", help="also the 10^6-instance memory run (slow)")
    ap.add_argument("--memory-count", type=int, nargs="+", default=[1_000_000],
                    help="instances of the memory run(s)")
    ap.add_argument("--only", nargs="*", choices=["w1", "w2", "e2e", "growth", "fit", "memory"],
                    help="run these sections only")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/RESULTS.md; "
                    "with --quick, stdout only; '-': stdout only)")
    ap.add_argument("--json", default=None, help="also write the raw numbers as JSON")
    ap.add_argument("--append", action="store_true",
                    help="append the sections to --out (e.g. a slow section run on its own)")
    a = ap.parse_args(argv)
    only = set(a.only or ["w1", "w2", "e2e", "growth", "fit"] + (["memory"] if a.memory else []))
    m = machine()
    parts = ["# Benchmarks (issue 4)", "",
             f"- machine: {m['cpu']}, {m['cores']} cores (load average {m['load_1min_at_start']:.2f} "
             f"at start: the box is shared, timings vary by ~30% or more between runs; compare "
             f"ratios from one run)",
             f"- python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, scipy {m['scipy']}; "
             f"torch threads {m['torch_threads']}; {m['platform']}",
             f"- date: {m['date']}; command: `python -m benchmarks{' --quick' if a.quick else ''}"
             f"{' --memory' if a.memory else ''}`", ""]
    raw: dict[str, Any] = {"machine": m}
    # W2 last: its per-instance LSODA baseline is the slowest part (minutes)
    sections = [("w1", section_w1), ("e2e", section_e2e), ("growth", section_growth), ("fit", section_fit),
                ("w2", section_w2)]
    for name, fn in sections:
        if name not in only:
            continue
        log(f"[benchmarks] {name} ...")
        t0 = time.perf_counter()
        r, md = fn(a.quick)
        log(f"[benchmarks] {name}: {time.perf_counter() - t0:.1f} s")
        raw[name] = r
        parts += [md, ""]
        print(md + "\n", flush=True)
    if "memory" in only:
        log("[benchmarks] memory ...")
        mem, md = section_memory([1000] if a.quick else a.memory_count)
        raw["memory"] = mem
        parts += [md, ""]
        print(md + "\n", flush=True)
    text = "\n".join(parts)
    out = a.out or ("-" if a.quick else os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    if out != "-":
        if a.append and os.path.exists(out):
            text = "\n".join(parts[5:])  # without the header
            text = f"_(appended {m['date']}, load average {m['load_1min_at_start']:.2f})_\n\n" + text
            with open(out, "a") as fh:
                fh.write("\n" + text)
        else:
            with open(out, "w") as fh:
                fh.write(text)
        log(f"[benchmarks] wrote {out}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(raw, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
