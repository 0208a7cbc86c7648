"""Rendering a run's results (the JSON of :meth:`StudyResult.to_json`) as tables and documents.

Everything renders from that JSON alone, so ``ibtest report RUN`` re-renders exactly what
``ibtest run`` printed, without solving anything.
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from typing import Any

from tabulate import tabulate

FORMATS = ("table", "markdown", "json", "html")


def fmt_num(x: Any, digits: int = 6) -> str:
    if x is None or isinstance(x, str):
        return "" if x is None else x
    if isinstance(x, float) and math.isnan(x):
        return ""
    return f"{x:.{digits}g}"


def fmt_vec(v: Any, digits: int = 6, max_len: int = 8) -> str:
    vals = v.tolist() if hasattr(v, "tolist") else list(v)
    shown = [fmt_num(float(x), digits) for x in vals[:max_len]]
    more = ", …" if len(vals) > max_len else ""
    return "(" + ", ".join(shown) + more + ")"


def _source(v: dict[str, Any], ev: dict[str, Any]) -> str:
    """Where a falsifying witness came from: its claim kind ("pair", "witness", ...)."""
    if v["verdict"] != "falsified" or not ev:
        return ""
    return str(ev.get("kind", ""))


def _subopt(v: dict[str, Any]) -> str:
    """Worst relative suboptimality of θ∞ over the study, and how it was obtained."""
    se = v.get("search") or {}
    if not se.get("searched"):
        return ""
    return f"{fmt_num(se['worst_suboptimality'], 2)} ({se['label']})"


def graded(v: dict[str, Any]) -> str:
    """The verdict with the grade a survival rests on: ``survives (certified)``."""
    return f"{v['verdict']} ({v['grade']})" if v.get("grade") else v["verdict"]


def verdict_text(v: dict[str, Any]) -> str:
    """The verdict column: FALSIFIED, or the verdict with its grade."""
    return "FALSIFIED" if v["verdict"] == "falsified" else graded(v)


def evidence_text(v: dict[str, Any], digits: int = 4) -> str:
    """The evidence column: the refuting gap against its margin; for the others what the verdict
    rests on, or the closest call in units of its margin."""
    ev = v.get("evidence") or {}
    if v["verdict"] == "falsified" and ev:
        return f"{ev.get('label', 'gap')}={fmt_num(ev['gap'], digits)} > margin {fmt_num(ev['margin'], 2)}"
    if v["verdict"] in ("inconclusive", "error", "unrefuted") or v.get("grade") == "vacuous":
        return v["reason"]
    if v["kind"] == "bound" and v.get("worst") is not None:
        return f"worst {fmt_num(v['worst'], digits)} <= {fmt_num(v['params'].get('bound'), digits)}"
    se = v.get("search") or {}
    if v.get("grade") == "certified" and se.get("searched"):
        return (f"argmin on {se['certified']}/{se['searched']} triples, worst subopt "
                f"{fmt_num(se['worst_suboptimality'], 2)} ({se['label']})")
    if ev and ev.get("margin"):
        return (f"closest: {ev.get('label', 'gap')}={fmt_num(ev['gap'], 2)}, "
                f"{fmt_num(ev['gap'] / (ev['margin'] + ev.get('noise', 0.0)), 2)} of the margin")
    return ""


def verdict_rows(verdicts: Iterable[dict[str, Any]], digits: int = 4) -> list[dict[str, Any]]:
    rows = []
    for v in verdicts:
        regularizer = v["kind"] == "regularizer"
        held = "" if v["expect"] is None else ("✓" if v["held"] else "✗ expected " + v["expect"])
        rows.append({
            "hypothesis": v["label"],
            "depends on": v["depends_on"] if regularizer else v["kind"],
            "verdict": verdict_text(v),
            "expect": held,
            "pairs": v["pairs"] if regularizer else f"{v['pairs']} triples",
            "distinct": v["distinct"] if regularizer else "",
            "source": _source(v, v.get("evidence") or {}),
            "subopt": _subopt(v),
            "evidence": evidence_text(v, digits),
            "certificate": v.get("certificate") or "",
        })
    return rows


def triple_rows(triples: list[dict[str, Any]], digits: int = 6) -> list[dict[str, Any]]:
    rows = []
    for t in triples:
        row = {"#": t["index"], "dataset": t["dataset"], "init": t["init"], "status": t["status"],
               "loss": fmt_num(t["loss"], 3), "θ∞": fmt_vec(t["theta"], digits)}
        if t.get("predictor") is not None:
            row["predictor"] = fmt_vec(t["predictor"], digits)
        for k in ("pieces", "steps"):
            if t.get(k) is not None:
                row[k] = t[k]
        if t.get("growth") is not None:
            row["|θ| growth"] = fmt_num(t["growth"], 3)
        rows.append(row)
    return rows


def phase_rows(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"phase": p["name"], "instances": p["instances"], "solver calls": p.get("calls", ""),
             "seconds": f"{p['seconds']:.3f}",
             "per second": f"{p['instances'] / p['seconds']:,.0f}" if p["seconds"] > 0 else "",
             "statuses": ", ".join(f"{k} {v}" for k, v in p["statuses"].items())} for p in phases]


def _executor_note(res: dict[str, Any]) -> str:
    """``executor ray, 2 workers``: where the blocks ran (empty for runs stored before executors)."""
    ex = res.get("executor")
    if not ex:
        return ""
    n = ex.get("workers", 1)
    return f"executor {ex['name']}, {n} worker{'s' if n != 1 else ''}"


def table(rows: list[dict[str, Any]], fmt: str = "simple") -> str:
    if not rows:
        return "(none)"
    return tabulate(rows, headers="keys", tablefmt=fmt, disable_numparse=True)


def _triples_limit(res: dict[str, Any]) -> list[dict[str, Any]]:
    setting = res.get("report", {}).get("triples", True)
    if setting is False:
        return []
    limit = 50 if setting is True else int(setting)
    return res["triples"][:limit]


def render_table(res: dict[str, Any], *, verbose: bool = True) -> str:
    """What ``ibtest run`` prints on stdout (and ``ibtest report`` re-prints)."""
    digits = res.get("report", {}).get("digits", 6)
    out = []
    shown = _triples_limit(res)
    if verbose and shown:
        more = len(res["triples"]) - len(shown)
        out += [f"Solved triples ({res['solver']} solver):", table(triple_rows(shown, digits))]
        if more > 0:
            out.append(f"... and {more} more triples (see results.json)")
        out.append("")
    out += [table(verdict_rows(res["verdicts"])), "", res["summary"]]
    if verbose:
        out += ["", f"phases ({_executor_note(res)}):" if res.get("executor") else "phases:", table(phase_rows(res["phases"]))]
    return "\n".join(out)


def render_markdown(res: dict[str, Any]) -> str:
    digits = res.get("report", {}).get("digits", 6)
    parts = [f"# {res['study']}", "", res.get("description") or "", "", "## Verdicts", "",
             table(verdict_rows(res["verdicts"]), "github"), "", "## Summary", "", "```", res["summary"], "```", ""]
    shown = _triples_limit(res)
    if shown:
        parts += ["## Solved triples", "", table(triple_rows(shown, digits), "github"), ""]
    parts += ["## Phases", "", f"Blocks ran on {_executor_note(res)}." if res.get("executor") else "",
              table(phase_rows(res["phases"]), "github"), ""]
    if res.get("errors"):
        parts += ["## Errors", ""] + [f"- {e}" for e in res["errors"]] + [""]
    return "\n".join(parts)


def render_html(res: dict[str, Any]) -> str:
    digits = res.get("report", {}).get("digits", 6)
    esc = html.escape
    body = [f"<h1>{esc(res['study'])}</h1>", f"<p>{esc(res.get('description') or '')}</p>",
            "<h2>Verdicts</h2>", table(verdict_rows(res["verdicts"]), "html"),
            f"<h2>Summary</h2><pre>{esc(res['summary'])}</pre>"]
    shown = _triples_limit(res)
    if shown:
        body += ["<h2>Solved triples</h2>", table(triple_rows(shown, digits), "html")]
    body += ["<h2>Phases</h2>", table(phase_rows(res["phases"]), "html")]
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(res['study'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def render(res: dict[str, Any], fmt: str = "table") -> str:
    if fmt == "table":
        return render_table(res)
    if fmt == "markdown":
        return render_markdown(res)
    if fmt == "json":
        return json.dumps(res, indent=1)
    if fmt == "html":
        return render_html(res)
    raise ValueError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")


def diff(a: dict[str, Any], b: dict[str, Any], *, rel: float = 1e-9) -> list[str]:
    """Verdicts that changed and numbers that moved between two runs' results."""
    lines = []
    va = {v["label"]: v for v in a["verdicts"]}
    vb = {v["label"]: v for v in b["verdicts"]}
    for label in sorted(set(va) | set(vb)):
        x, y = va.get(label), vb.get(label)
        if x is None:
            lines.append(f"{label}: only in run B ({vb[label]['verdict']})")
            continue
        if y is None:
            lines.append(f"{label}: only in run A ({x['verdict']})")
            continue
        if graded(x) != graded(y):  # the grade a survival rests on counts too
            lines.append(f"{label}: verdict {graded(x)} -> {graded(y)}")
        for key in ("pairs", "distinct"):
            if x[key] != y[key]:
                lines.append(f"{label}: {key} {x[key]} -> {y[key]}")
        if x.get("worst") != y.get("worst"):
            lines.append(f"{label}: worst value {x.get('worst')} -> {y.get('worst')}")
        gx = (x.get("evidence") or {}).get("gap")
        gy = (y.get("evidence") or {}).get("gap")
        if isinstance(gx, float) and isinstance(gy, float) and abs(gx - gy) > rel * max(abs(gx), abs(gy), 1e-300):
            lines.append(f"{label}: evidence gap {gx:.6g} -> {gy:.6g}")
    pa, pb = a.get("pairs") or {}, b.get("pairs") or {}
    for key in ("admissible", "distinct"):
        if pa.get(key) != pb.get(key):
            lines.append(f"{key} pairs: {pa.get(key)} -> {pb.get(key)}")
    if a.get("status_counts") != b.get("status_counts"):
        lines.append(f"statuses: {a.get('status_counts')} -> {b.get('status_counts')}")
    ta = _keyed_triples(a["triples"])
    for tkey, t in _keyed_triples(b["triples"]).items():
        s = ta.get(tkey)
        if s is None:
            continue
        name = f"triple {t['dataset']} / {t['init']}" + (f" (#{tkey[2] + 1} of that name)" if tkey[2] else "")
        same_p = len(s["theta"]) == len(t["theta"])
        d = math.sqrt(sum((p - q) ** 2 for p, q in zip(s["theta"], t["theta"]))) if same_p else math.inf
        if s["status"] != t["status"]:
            lines.append(f"{name}: status {s['status']} -> {t['status']}")
        size = max(math.sqrt(sum(p * p for p in s["theta"])), math.sqrt(sum(p * p for p in t["theta"])))
        if d > rel * size:
            lines.append(f"{name}: theta moved by {d:.3g}")
    return lines


def _keyed_triples(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Triples keyed by (dataset, init, k): the k-th triple of that name, so that two init entries
    of one plugin (labels 'gaussian#0' for both) are still matched one to one."""
    seen: dict[tuple[str, str], int] = {}
    out = {}
    for t in rows:
        k = (t["dataset"], t["init"])
        out[(k[0], k[1], seen.get(k, 0))] = t
        seen[k] = seen.get(k, 0) + 1
    return out


def sweep_mismatch(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> str | None:
    """Why two runs' results cannot be diffed (None when they can: two single runs, or two sweeps
    over the same option with the same values in the same order). ``names`` name the runs."""
    if ("runs" in a) != ("runs" in b):
        sweep, single = (0, 1) if "runs" in a else (1, 0)
        res = (a, b)[sweep]
        return (f"run {names[sweep]} is a sweep over {res.get('sweep')} ({len(res['runs'])} values), "
                f"run {names[single]} is a single run")
    if "runs" not in a:
        return None
    if a.get("sweep") != b.get("sweep"):
        return (f"the sweeps are over different options: {a.get('sweep')} (run {names[0]}), "
                f"{b.get('sweep')} (run {names[1]})")
    va, vb = ([r.get("sweep_value") for r in x["runs"]] for x in (a, b))
    if va != vb:
        return (f"the sweeps over {a.get('sweep')} have different values: {va} (run {names[0]}), "
                f"{vb} (run {names[1]})")
    return None


def diff_sweeps(a: dict[str, Any], b: dict[str, Any], *, rel: float = 1e-9) -> list[str]:
    """:func:`diff` of two sweeps over the same values (see :func:`sweep_mismatch`), value by value:
    each line starts with ``path=value: ``."""
    path = a["sweep"]
    return [f"{path}={ra['sweep_value']}: {line}" for ra, rb in zip(a["runs"], b["runs"])
            for line in diff(ra, rb, rel=rel)]


def limit_rows(limits: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per member and direction of a sweep's limit verdicts."""
    rows = []
    for v in limits:
        held = "" if v.get("expect") is None else ("✓" if v.get("held") else "✗ expected " + str(v["expect"]))
        if v.get("law") == "log":
            rate = f"1/|log s|^{fmt_num(v['log_rate'], 3)} (R² {fmt_num(v.get('log_r2'), 2)})"
        else:
            rate = "" if v.get("rate") is None else f"s^{fmt_num(v['rate'], 3)} (R² {fmt_num(v.get('r2'), 2)})"
        rows.append({"hypothesis": v["label"], "limit": "→ 0" if v["to"] == "0" else "→ ∞",
                     "verdict": str(v["verdict"]).replace("_", " "), "expect": held, "rate": rate,
                     "gaps": ", ".join(f"{fmt_num(p['s'], 3)}: {fmt_num(p['g'], 2) if p['refuted'] else '≤margin'}"
                                       for p in v.get("points", [])),
                     "certificate": v.get("certificate") or ""})
    return rows


def render_limits(limits: list[dict[str, Any]], path: str, runs: list[dict[str, Any]] | None = None) -> str:
    """The limit verdicts of a sweep: each member's relative gap toward the limit of ``path``, the
    fitted rate and the verdict; then each verdict's reason; then, for each study triple, its
    solution (the predictor where the model has one) at the value nearest the limit and how much it
    still moved from the value before (the limit the flows themselves approach)."""
    if not limits:
        return ""
    out = [f"Limits over {path} (relative gap at each value nearest the limit):", table(limit_rows(limits))]
    out += [f"  {v['label']} → {'0' if v['to'] == '0' else '∞'}: {v['reason']}" for v in limits]
    for to in dict.fromkeys(v["to"] for v in limits):
        rows = solution_trend(runs or [], to)
        if rows:
            out += [f"Solutions as {path} → {'0' if to == '0' else '∞'}:", table(rows)]
    return "\n".join(out)


def solution_trend(runs: list[dict[str, Any]], to: str) -> list[dict[str, Any]]:
    """Per study triple (dataset, init) of the sweep: the solution at the two values nearest the
    limit ``to`` ("0" or "inf") and the relative change between them."""
    valued = [r for r in runs if isinstance(r.get("sweep_value"), (int, float))]
    if len(valued) < 2:
        return []
    valued.sort(key=lambda r: r["sweep_value"], reverse=to == "0")
    a, b = valued[-2], valued[-1]
    rows = []
    ta = {(t["dataset"], t["init"]): t for t in a["triples"]}
    for t in b["triples"]:
        s = ta.get((t["dataset"], t["init"]))
        if s is None or t["status"] != "converged":
            continue
        key = "predictor" if "predictor" in t else "theta"
        x, w = t[key], s[key]
        size = max(math.sqrt(sum(v * v for v in x)), 1e-300)
        change = math.sqrt(sum((p - q) ** 2 for p, q in zip(x, w))) / size if len(x) == len(w) else math.nan
        rows.append({"dataset": t["dataset"], "init": t["init"],
                     f"{key} at {fmt_num(b['sweep_value'], 3)}": fmt_vec(x, 5),
                     f"change from {fmt_num(a['sweep_value'], 3)}": fmt_num(change, 2)})
    return rows


def render_sweep(runs: list[dict[str, Any]], path: str, limits: list[dict[str, Any]] | None = None) -> str:
    """One row per sweep value: statuses, the end-to-end predictor of each study triple, verdicts."""
    rows = []
    for r in runs:
        v = r["sweep_value"]
        row: dict[str, Any] = {path: fmt_num(v) if isinstance(v, float) else v}
        row["statuses"] = ", ".join(f"{k} {n}" for k, n in r["status_counts"].items())
        if len(r["triples"]) <= 6:
            for t in r["triples"]:
                vec = t.get("predictor", t["theta"])
                row[f"{'predictor' if 'predictor' in t else 'θ∞'}: {t['dataset']}"] = fmt_vec(vec, 5)
        for m in r["verdicts"]:
            row[m["label"]] = m["verdict"]
        rows.append(row)
    out = [f"Sweep over {path}:", table(rows)]
    for r in runs:
        for m in r["verdicts"]:
            if m.get("certificate"):
                out.append(f"  {path}={r['sweep_value']}: {m['label']}: certificate {m['certificate']}")
    if limits:
        out += ["", render_limits(limits, path, runs)]
    return "\n".join(out)
