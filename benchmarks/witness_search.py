"""Cost of the witness search and optimality certificates (issue 11): ``benchmarks/study_10k.yaml``
run twice in one process, with ``verdict: {search: false}`` and with the default search, so the
ratio is measured on one machine state. ``count`` scales the study (10 000 by default).

    python -m benchmarks.witness_search [COUNT]
"""
from __future__ import annotations

import sys
import time
from typing import Any

import yaml

from ._common import ROOT


def run(count: int = 10_000) -> dict:
    import cvxpy  # noqa: F401  (import once, outside both timings: ~3-8 s on a busy machine)

    from ibtest.api import StudyResult, run_study

    with open(f"{ROOT}/benchmarks/study_10k.yaml") as f:
        base = yaml.safe_load(f)
    base["datasets"][0]["count"] = int(count)
    out: dict[str, Any] = {"count": int(count)}
    for search in (False, True):
        d = dict(base, verdict={"search": search})
        t0 = time.perf_counter()
        res = run_study(d, write=False)
        assert isinstance(res, StudyResult)  # no sweep
        out["search" if search else "no_search"] = time.perf_counter() - t0
        if search:
            out["table"] = res.table()
            out["searched"] = {m.label: m.search.to_json() if m.search else None for m in res.members}
    out["ratio"] = out["search"] / out["no_search"]
    return out


def row(r: dict) -> str:
    return (f"| {r['count']:,} | {r['no_search']:.1f} | {r['search']:.1f} | {r['ratio']:.2f}x | "
            f"+{r['ratio'] - 1:.2f}x |")


if __name__ == "__main__":
    r = run(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
    print("| instances | wall s, search off | wall s, search on | ratio | added |")
    print("|---|---|---|---|---|")
    print(row(r))
