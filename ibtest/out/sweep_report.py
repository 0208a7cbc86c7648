"""A sweep's results (``{"sweep": path, "runs": [...], "limits": [...]}``) as a text table,
markdown or HTML: one row per swept value with each member's verdict and whether its ``expect:``
held (✓ / ✗, as in a single run's table), the certificates, the limit verdicts, and the
expectations that did not hold.
"""
from __future__ import annotations

import html
from typing import Any

from ibtest.out.cells import DEFAULT_WIDTH, md_cell
from ibtest.out.report import expectation_line, fmt_num, fmt_vec, html_page, limit_rows, render_limits, table


def _mark(v: dict[str, Any]) -> str:
    """A member's verdict at one value, with ✓ (its expectation held) or ✗ (it did not)."""
    held = v.get("held")
    return v["verdict"] + ("" if held is None else (" ✓" if held else f" ✗ expected {v['expect']}"))


def sweep_rows(runs: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """One row per value: statuses, each study triple's solution (up to 6 triples, 4 coordinates
    each), each member's verdict with ✓ / ✗."""
    rows = []
    for r in runs:
        v = r["sweep_value"]
        row: dict[str, Any] = {path: fmt_num(v) if isinstance(v, float) else v}
        row["statuses"] = ", ".join(f"{k} {n}" for k, n in r["status_counts"].items())
        if len(r["triples"]) <= 6:
            for t in r["triples"]:
                vec = t.get("predictor", t["theta"])
                # the first 4 coordinates: the whole vectors are in the JSON results
                row[f"{'predictor' if 'predictor' in t else 'θ∞'}: {t['dataset']}"] = fmt_vec(vec, 5, max_len=4)
        for m in r["verdicts"]:
            row[m["label"]] = _mark(m)
        rows.append(row)
    return rows


def _certificates(runs: list[dict[str, Any]], path: str) -> list[str]:
    return [f"{path}={r['sweep_value']}: {m['label']}: {m['certificate']}"
            for r in runs for m in r["verdicts"] if m.get("certificate")]


def render_sweep(res: dict[str, Any], fmt: str = "table", width: int | None = DEFAULT_WIDTH) -> str:
    """The sweep in ``fmt`` (``table``, ``markdown`` or ``html``; ``json`` is the results as they are)."""
    runs, path, limits = res["runs"], res["sweep"], res.get("limits") or []
    rows, certs, failed = sweep_rows(runs, path), _certificates(runs, path), expectation_line(res)
    if fmt == "markdown":
        return _markdown(res, rows, certs, failed)
    if fmt == "html":
        return _html(res, rows, certs, failed)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    out = [f"Sweep over {path}:", table(rows, width=width)]
    out += [f"  {c}" for c in certs]
    if limits:
        out += ["", render_limits(limits, path, runs, width)]
    if failed:
        out += ["", failed]
    return "\n".join(out)


def _markdown(res: dict[str, Any], rows: list[dict[str, Any]], certs: list[str], failed: str | None) -> str:
    path = res["sweep"]
    parts = [f"# Sweep over {md_cell(path)}", "", table(rows, "github"), ""]
    if certs:
        parts += ["## Certificates", ""] + [f"- {md_cell(c)}" for c in certs] + [""]
    if res.get("limits"):
        parts += [f"## Limits over {md_cell(path)}", "", table(limit_rows(res["limits"]), "github"), ""]
        parts += [f"- {md_cell(v['label'])} → {v['to']}: {md_cell(v['reason'])}" for v in res["limits"]] + [""]
    if failed:
        parts += ["## Expectations", "", md_cell(failed), ""]
    for r in res["runs"]:
        parts += [f"## {md_cell(path)} = {md_cell(r['sweep_value'])}", "", "```", r["summary"], "```", ""]
    return "\n".join(parts)


def _html(res: dict[str, Any], rows: list[dict[str, Any]], certs: list[str], failed: str | None) -> str:
    esc, path = html.escape, res["sweep"]
    body = [f"<h1>Sweep over {esc(path)}</h1>", table(rows, "html")]
    if certs:
        body += ["<h2>Certificates</h2><ul>"] + [f"<li>{esc(c)}</li>" for c in certs] + ["</ul>"]
    if res.get("limits"):
        body += [f"<h2>Limits over {esc(path)}</h2>", table(limit_rows(res["limits"]), "html")]
    if failed:
        body.append(f"<h2>Expectations</h2><p>{esc(failed)}</p>")
    body += [f"<h2>{esc(path)} = {esc(str(r['sweep_value']))}</h2><pre>{esc(r['summary'])}</pre>" for r in res["runs"]]
    return html_page(f"Sweep over {path}", body)
