"""Rendering results: the verdict table, the triples table, the run summary, markdown and JSON."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from tabulate import tabulate

from . import status as st


def fmt_num(x: float, digits: int = 6) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and math.isnan(x):
        return ""
    return f"{x:.{digits}g}"


def fmt_vec(v: torch.Tensor, digits: int = 6, max_len: int = 8) -> str:
    vals = [fmt_num(float(x), digits) for x in v.tolist()[:max_len]]
    more = ", …" if v.numel() > max_len else ""
    return "(" + ", ".join(vals) + more + ")"


def verdict_rows(members: Iterable[Any], digits: int = 4) -> list[dict[str, Any]]:
    rows = []
    for r in members:
        ev = r.evidence
        if r.verdict == "falsified" and ev is not None:
            evidence = f"|ΔR|={fmt_num(ev.gap, digits)} > margin {fmt_num(ev.margin, 2)}"
        elif ev is not None and r.verdict in ("survives", "inconclusive") and r.n_pairs:
            evidence = f"closest: rel gap {fmt_num(r.max_rel_gap, 2)}"
        else:
            evidence = ""
        held = "" if r.expect is None else ("✓" if r.held else "✗ expected " + r.expect)
        rows.append({
            "hypothesis": r.label,
            "depends on": r.depends_on if r.kind == "regularizer" else "invariant",
            "verdict": r.verdict.upper() if r.verdict == "falsified" else r.verdict,
            "expect": held,
            "pairs": r.n_pairs if r.kind == "regularizer" else f"{r.n_pairs} triples",
            "distinct": r.n_distinct if r.kind == "regularizer" else "",
            "evidence": evidence or (r.reason if r.verdict in ("inconclusive", "error") else ""),
            "certificate": r.certificate or "",
        })
    return rows


def triple_rows(t, limit: int | None, digits: int = 6, blocks: dict | None = None) -> list[dict[str, Any]]:
    idx = [i for i in range(len(t)) if t.origin[i] == "study"]
    if limit is not None:
        idx = idx[:limit]
    rows = []
    for i in idx:
        row = {"#": i, "dataset": t.labels[i], "init": t.init_labels[i], "status": st.name(t.status[i]),
               "loss": fmt_num(float(t.loss[i]), 3), "θ∞": fmt_vec(t.theta[i], digits)}
        if "pieces" in t.info:
            row["pieces"] = int(t.info["pieces"][i]) if not math.isnan(float(t.info["pieces"][i])) else ""
        elif "steps" in t.info:
            row["steps"] = int(t.info["steps"][i]) if not math.isnan(float(t.info["steps"][i])) else ""
        rows.append(row)
    return rows


def phase_rows(phases) -> list[dict[str, Any]]:
    return [{"phase": p.name, "instances": p.count, "seconds": f"{p.seconds:.3f}",
             "per second": f"{p.rate:,.0f}" if p.seconds > 0 else "",
             "statuses": ", ".join(f"{k} {v}" for k, v in p.statuses.items())} for p in phases]


def table(rows: list[dict[str, Any]], fmt: str = "simple") -> str:
    if not rows:
        return "(none)"
    return tabulate(rows, headers="keys", tablefmt=fmt, disable_numparse=True)


def status_counts(t) -> dict[str, int]:
    study = torch.tensor([o == "study" for o in t.origin])
    s = t.status[study]
    return {st.name(c): int((s == c).sum()) for c in st.NAMES if int((s == c).sum())}
