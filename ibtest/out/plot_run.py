"""The run-level figure: per hypothesis member, R(θ_b) − R(θ_a) over the pairs it is judged on,
against its margin (:func:`plot_run`), and the numbers behind it (:func:`pair_gaps`,
:func:`gap_summary`).

What is drawn: a :class:`~ibtest.out.result.StudyResult` holds the run's *retained* triples and
pairs (each block's candidate witnesses, closest calls and solver-error sample), so the dots are
those pairs, not every admissible pair of the run; the figure says so and gives both counts.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ibtest.base.errors import UserError
from ibtest.judge import evaluation as ev_mod
from ibtest.out.plot_plane import pyplot
from ibtest.run.results_file import load_results, runs_of
from ibtest.solve.rules import eligible


def _model_of(result):
    if getattr(result, "model", None) is not None:
        return result.model
    u = result.study.model
    return u.spec.factory(**u.options)


def pair_gaps(result: Any) -> dict[str, list[float]]:
    """R(θ_b) − R(θ_a) on the retained pairs each hypothesis member is judged on, by member label.

    ``result`` is a :class:`ibtest.out.result.StudyResult`; its ``triples`` / ``pairs`` are the
    run's retained ones (each block's candidate witnesses and closest calls; the member's count
    over the whole run is ``n_pairs``). A regularizer member is evaluated on the retained pairs
    its ``depends_on`` makes eligible (all for ``params``, those sharing θ0 for ``init``, none for
    ``data``), at the run's solutions θ∞ (not the re-solved ones a certificate rests on). For an
    invariant member the "gap" is C(θ∞) − C(θ0) on every retained converged triple (the component
    that moved most, signed). A member whose hypothesis raises gets an empty list.
    """
    from ibtest.base import status as st

    model = _model_of(result)
    study = {"seed": result.study.seed, **result.study.extra}
    t, pairs = result.triples, result.pairs

    def hctx(idx: torch.Tensor, spec: Any) -> Any:
        data = spec.depends_on == "data"
        return ev_mod.context(model, spec, theta0=t.theta0[idx], X=t.X[idx] if data else None,
                              y=t.y[idx] if data else None, mask=t.mask[idx] if data else None, study=study)

    out: dict[str, list[float]] = {}
    for m in result.members:
        spec = m.spec
        try:
            if spec.kind == "invariant":
                idx = (t.status == st.CONVERGED).nonzero().flatten()
                if idx.numel() == 0:
                    out[m.label] = []
                    continue
                hc = hctx(idx, spec)
                C1, _ = ev_mod.evaluate(model, spec, m.params, t.theta[idx], hc)
                C0, _ = ev_mod.evaluate(model, spec, m.params, t.theta0[idx], hc)
                D = (C1 - C0).reshape(idx.numel(), -1)
                k = D.abs().argmax(-1)
                out[m.label] = D.gather(1, k[:, None]).flatten().tolist()
                continue
            sel = (eligible(spec.depends_on, pairs.same_init).nonzero().flatten() if len(pairs)
                   else torch.zeros(0, dtype=torch.int64))
            if sel.numel() == 0:
                out[m.label] = []
                continue
            p = pairs.select(sel)
            used = torch.unique(torch.cat([p.a, p.b]))
            Rv, _ = ev_mod.evaluate(model, spec, m.params, t.theta[used], hctx(used, spec))
            pos = torch.full((len(t),), -1, dtype=torch.int64)
            pos[used] = torch.arange(used.numel())
            out[m.label] = (Rv[pos[p.b]] - Rv[pos[p.a]]).tolist()
        except Exception:
            out[m.label] = []
    return out


def gap_summary(result) -> dict[str, dict[str, Any]]:
    """{label: {"gaps": [...], "margin": float, "verdict": str}} for :func:`plot_run`.

    ``result``: a StudyResult, or a list of them (a sweep: labels get `` @ path=value``).
    ``margin`` is the margin of the member's evidence (the certified margin of a falsified member,
    the tolerance floor max(atol, rtol·|R|) of the closest call otherwise; NaN if none).
    """
    if isinstance(result, (list, tuple)):
        out = {}
        for r in result:
            tag = f" @ {r.study.sweep.path}={r.sweep_value}" if r.study.sweep is not None else ""
            out.update({k + tag: v for k, v in gap_summary(r).items()})
        return out
    gaps = pair_gaps(result)
    out = {}
    for m in result.members:
        margin = float("nan")
        if m.evidence is not None and math.isfinite(m.evidence.margin):
            margin = float(m.evidence.margin)
        out[m.label] = {"gaps": gaps.get(m.label, []), "margin": margin, "verdict": m.verdict}
    return out


def _load_run(results: str | Path) -> dict[str, dict[str, Any]]:
    """The gap summary of a finished run directory, from its stored results (which keep the
    verdicts and margins but no per-pair gaps: then a UserError says how to plot)."""
    p = Path(results)
    out = {}
    for run in runs_of(load_results(p.parent if p.is_file() else p)):
        for v in run["verdicts"]:
            if "gaps" not in v:
                raise UserError(f"run {results}: results.json stores no per-pair gaps; plot from the StudyResult "
                                f"(ibtest.out.plots.plot_run(result, FILE)) or re-run the study")
            ev = v.get("evidence") or {}
            margin = ev.get("margin", float("nan"))
            out[v["label"]] = {"gaps": v["gaps"], "margin": float(margin) if margin is not None else float("nan"),
                               "verdict": v.get("verdict", "")}
    return out


def _run_counts(results: Any) -> dict[str, int]:
    """{label: admissible pairs (or converged triples) over the whole run} of a StudyResult or a
    sweep of them (labels as :func:`gap_summary` makes them); {} for a plain summary or a run dir."""
    if isinstance(results, (str, Path, Mapping)):
        return {}
    out = {}
    for r in results if isinstance(results, (list, tuple)) else [results]:
        tag = f" @ {r.study.sweep.path}={r.sweep_value}" if r.study.sweep is not None else ""
        out.update({m.label + tag: m.n_pairs for m in r.members})
    return out


def plot_run(results: Any, path: str | Path, *, dpi: int = 110) -> Path:
    """Per hypothesis member, the distribution of R(θ2) − R(θ1) over its pairs against its margin.

    From a StudyResult the pairs are the run's *retained* pairs (candidate witnesses and closest
    calls, see :func:`pair_gaps`): each row's note gives the pairs drawn and the member's
    admissible pairs over the whole run, and the title says so.

    ``results``: a :class:`ibtest.api.StudyResult` (or a list, for a sweep), a dict
    ``{label: {"gaps": [float, ...], "margin": float, "verdict": str (optional)}}``, or a run
    directory / results.json whose verdicts carry a ``gaps`` list. One row per member; each dot
    is a pair (x on a symmetric-log axis whose linear part is the smallest margin, vertical
    jitter); the band |ΔR| ≤ margin is shaded; dots outside it are red (they exceed even the
    tolerance floor; a verdict rests on re-solved pairs, see the verdict at the right).
    Returns the path written.
    """
    if isinstance(results, (str, Path)):
        summary = _load_run(results)
    elif isinstance(results, Mapping):
        summary = {k: dict(v) for k, v in results.items()}
    else:
        summary = gap_summary(results)
    totals = _run_counts(results)
    path = Path(path)
    plt = pyplot()
    labels = list(summary)
    n = max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(11, 1.5 + 0.55 * n))
    margins = [float(v.get("margin", float("nan"))) for v in summary.values()]
    pos_m = [m for m in margins if math.isfinite(m) and m > 0]
    all_g = np.array([g for v in summary.values() for g in v.get("gaps", []) if math.isfinite(g)], dtype=float)
    nz = np.abs(all_g[all_g != 0]) if all_g.size else np.array([])
    lin = min(pos_m) if pos_m else (float(nz.min()) if nz.size else 1e-9)
    rng = np.random.default_rng(0)
    xmax = max([float(np.abs(all_g).max()) if all_g.size else 0.0] + pos_m + [lin]) * 3
    for row, lab in enumerate(labels):
        v = summary[lab]
        g = np.asarray([x for x in v.get("gaps", []) if math.isfinite(x)], dtype=float)
        m = float(v.get("margin", float("nan")))
        yrow = n - 1 - row
        if math.isfinite(m) and m > 0:
            ax.fill_between([-m, m], yrow - 0.4, yrow + 0.4, color="0.85", zorder=0)
            ax.plot([-m, -m], [yrow - 0.4, yrow + 0.4], color="0.4", lw=0.8)
            ax.plot([m, m], [yrow - 0.4, yrow + 0.4], color="0.4", lw=0.8)
        if g.size:
            out = np.abs(g) > m if math.isfinite(m) else np.zeros(g.size, dtype=bool)
            jit = yrow + rng.uniform(-0.3, 0.3, g.size)
            ax.scatter(g[~out], jit[~out], s=12, color="0.35", alpha=0.7, zorder=2)
            ax.scatter(g[out], jit[out], s=14, color="#d62728", alpha=0.8, zorder=3)
        verdict = v.get("verdict", "")
        drawn = f"{g.size} pairs" if lab not in totals else f"{g.size} retained of {totals[lab]} pairs"
        note = f"{verdict}  ({drawn}" + (f", {int((np.abs(g) > m).sum())} beyond margin" if math.isfinite(m) else "") + ")"
        ax.text(1.01, yrow, note, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.set_xscale("symlog", linthresh=lin, linscale=0.5)
    ax.set_xlim(-xmax, xmax)
    k0, k1 = math.ceil(math.log10(lin)), math.floor(math.log10(xmax))
    step = max(1, math.ceil((k1 - k0 + 1) / 4))
    ks = list(range(k1, k0 - 1, -step))
    ticks = [-(10.0 ** k) for k in ks] + [0.0] + [10.0 ** k for k in reversed(ks)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([("0" if x == 0 else f"{'−' if x < 0 else ''}1e{round(math.log10(abs(x)))}") for x in ticks],
                       fontsize=8)
    ax.minorticks_off()
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_yticks(range(n))
    ax.set_yticklabels(list(reversed(labels)), fontsize=8)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("R(θ2) − R(θ1) over admissible pairs  (shaded: |ΔR| ≤ margin; symlog axis, linear below "
                  f"{lin:.2g})")
    ax.set_title("hypothesis members: gaps over pairs against the margin"
                 + ("\n(the run's retained pairs: each block's candidate witnesses and closest calls; "
                    "the note gives the member's admissible pairs over the whole run)" if totals else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
