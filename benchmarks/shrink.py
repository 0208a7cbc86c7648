"""Shrinking over many random refutations (issue 13): the distribution of (n, d, max |coordinate|)
after ``ibtest shrink`` and the time per shrink.

Each refutation is the l2_norm certificate of a small study on random data: a ReLU neuron
(σ'(0) = 1), Gaussian data (n = 4, d = 5, teacher-ReLU labels), a Gaussian init of scale 0.1 and
the blocking_point / consistent_augmentation constructions, one study per seed.

``python -m benchmarks.shrink [--count N] [--budget B]`` prints a markdown section;
:func:`refutations` is also what tests/test_shrink.py uses to make its random refutations.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import torch


def random_study(seed: int, datasets: int = 4) -> dict:
    return {"study": f"shrink-bench-{seed}", "seed": seed,
            "model": {"name": "relu_neuron", "relu_grad_at_zero": 1},
            "init": {"name": "gaussian", "scale": 0.1, "count": 1},
            "datasets": [{"name": "gaussian", "n": 4, "d": 5, "count": datasets}],
            "solver": {"name": "exact"},
            "constructions": ["blocking_point", "consistent_augmentation"],
            "hypotheses": [{"name": "l2_norm"}],
            "report": {"triples": False}}


def refutations(count: int, root: Path, first_seed: int = 0, max_seeds: int = 200,
                labelled: bool = True) -> list[Path]:
    """The l2_norm certificates of the first ``count`` seeds whose study falsifies l2_norm.

    ``labelled``: only refutations whose dataset a has a positive label. A refutation on data whose
    every label is 0 rests on θ0 ≠ 0 (from θ0 = 0 such data has zero loss and the flow does not
    move), so it can never end at θ0 = 0; the benchmark reports both populations.
    """
    from ibtest.api import StudyResult, run_study
    from ibtest.cert.schema import load

    out: list[Path] = []
    for seed in range(first_seed, first_seed + max_seeds):
        if len(out) >= count:
            break
        res = run_study(random_study(seed), out_dir=root / f"seed{seed}")
        assert isinstance(res, StudyResult)  # no sweep
        if res.certificates:
            p = Path(res.certificates[0])
            if not labelled or any(v > 0 for v in load(p)["a"]["y"]):
                out.append(p)
    return out


def run(count: int = 30, budget: int = 6000, labelled: bool = False) -> dict:
    from ibtest.cert.schema import load
    from ibtest.cert.shrink import shrink_file

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        certs = refutations(count, Path(tmp), labelled=labelled)
        for p in certs:
            positive = any(v > 0 for v in load(p)["a"]["y"])
            t = time.perf_counter()
            _, r = shrink_file(p, p.with_name("shrunk.json"), budget)
            rows.append({"positive": positive, "seconds": time.perf_counter() - t, "solves": r.solves, "before": r.before,
                         "after": r.after, "steps": len(r.steps), "fixed_point": r.fixed_point})
    return {"count": len(rows), "budget": budget, "rows": rows}


def table(res: dict) -> str:
    lines = []
    for title, rows in (("all refutations", res["rows"]),
                        ("refutations with a positive label", [r for r in res["rows"] if r["positive"]])):
        lines += [f"### {title}", "", _table(rows, res["budget"]), ""]
    return "\n".join(lines)


def _table(rows: list[dict], budget: int) -> str:
    if not rows:
        return "no refutations"
    a = [r["after"] for r in rows]
    core = sum(1 for s in a if s["n"] <= 3 and s["d"] <= 3 and s["integer"] and s["max_abs"] <= 10 and s["theta0_zero"])
    dist = collections.Counter((s["n"], s["d"], s["max_abs"] if s["integer"] else "non-integer") for s in a)
    secs = [r["seconds"] for r in rows]
    solves = [r["solves"] for r in rows]
    lines = [f"{len(rows)} random refutations of l2_norm (budget {budget} solves each):", "",
             "| n | d | max abs coordinate | shrinks |", "|---|---|---|---|"]
    for (n, d, m), k in sorted(dist.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        lines.append(f"| {n} | {d} | {m} | {k} |")
    lines += ["",
              f"- before: n = {sorted({r['before']['n'] for r in rows})}, d = {sorted({r['before']['d'] for r in rows})}, "
              f"digits {max(r['before']['digits'] for r in rows)}",
              f"- integer data: {sum(s['integer'] for s in a)} of {len(a)}; theta0 = 0: {sum(s['theta0_zero'] for s in a)}; "
              f"n <= 3, d <= 3, integers |.| <= 10 and theta0 = 0: **{core} of {len(a)}**",
              f"- fixed point reached: {sum(r['fixed_point'] for r in rows)} of {len(rows)}",
              f"- seconds per shrink: median {statistics.median(secs):.2f}, max {max(secs):.2f}; "
              f"solves per shrink: median {statistics.median(solves):.0f}, max {max(solves)}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--budget", type=int, default=6000)
    ap.add_argument("--labelled", action="store_true", help="only refutations with a positive label")
    a = ap.parse_args()
    print(table(run(a.count, a.budget, a.labelled)))


if __name__ == "__main__":
    main()
