"""Python API: run a study (file or dict) and get a result object with tables and verdicts."""
from __future__ import annotations

import copy
import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import certificate, report
from . import status as st
from .batch import Pairs, Triples
from .engine import Context, Phase, build_context, run_engine
from .manager import Registry, load_registry
from .study import Study, load_study, plugin_files_of, validate
from .verdicts import MemberResult, judge_all


@dataclass
class StudyResult:
    """Everything a run produced. ``verdicts`` maps a member label to its verdict."""

    study: Study
    triples: Triples
    pairs: Pairs
    members: list[MemberResult]
    phases: list[Phase]
    errors: list[str]
    seconds: float
    run_dir: Path | None = None
    certificates: list[str] = field(default_factory=list)
    sweep_value: Any = None
    solve_calls: int = 0
    solver_error: float | None = None

    @property
    def verdicts(self) -> dict[str, str]:
        return {m.label: m.verdict for m in self.members}

    @property
    def expectations_held(self) -> bool:
        return all(m.held is not False for m in self.members)

    @property
    def exit_code(self) -> int:
        return 0 if self.expectations_held else 1

    def table(self, fmt: str = "simple") -> str:
        return report.table(report.verdict_rows(self.members), fmt)

    def triples_table(self, fmt: str = "simple") -> str:
        setting = self.study.report.triples
        if setting is False:
            return ""
        limit = None if setting is True else int(setting)
        limit = 50 if limit is None and sum(o == "study" for o in self.triples.origin) > 50 else limit
        return report.table(report.triple_rows(self.triples, limit, self.study.report.digits), fmt)

    def summary(self) -> str:
        counts = report.status_counts(self.triples)
        n_pairs = len(self.pairs)
        lines = [
            f"study {self.study.name}: {sum(counts.values())} instances "
            f"({', '.join(f'{k} {v}' for k, v in counts.items())}), {len(self.triples)} solves in all, "
            f"{n_pairs} admissible pairs ({int(self.pairs.distinct.sum())} distinct), {self.seconds:.2f} s",
        ]
        if self.solver_error is not None:
            lines.append(f"measured solver error (re-solved at tighter settings): max |Δθ| = {self.solver_error:.3g}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        t = self.triples
        study_idx = [i for i in range(len(t)) if t.origin[i] == "study"]
        return {
            "study": self.study.name,
            "source": self.study.source,
            "sweep_value": self.sweep_value,
            "seconds": self.seconds,
            "expectations_held": self.expectations_held,
            "verdicts": [
                {"hypothesis": m.hypothesis, "params": certificate._jsonable(m.params), "label": m.label,
                 "kind": m.kind, "depends_on": m.depends_on, "verdict": m.verdict, "expect": m.expect,
                 "held": m.held, "pairs": m.n_pairs, "distinct": m.n_distinct,
                 "max_rel_gap": certificate._num(m.max_rel_gap), "reason": m.reason, "error": m.error,
                 "certificate": m.certificate,
                 "evidence": None if m.evidence is None else {
                     "gap": certificate._num(m.evidence.gap), "margin": certificate._num(m.evidence.margin),
                     "R_a": certificate._num(m.evidence.Ra), "R_b": certificate._num(m.evidence.Rb),
                     "source": m.evidence.source}}
                for m in self.members
            ],
            "triples": [
                {"index": i, "dataset": t.labels[i], "init": t.init_labels[i], "status": st.name(t.status[i]),
                 "loss": certificate._num(float(t.loss[i])), "theta": t.theta[i].tolist(),
                 "theta0": t.theta0[i].tolist()}
                for i in study_idx
            ],
            "status_counts": report.status_counts(t),
            "solves": len(t),
            "pairs": {"admissible": len(self.pairs), "distinct": int(self.pairs.distinct.sum()),
                      "by_source": {s: self.pairs.source.count(s) for s in sorted(set(self.pairs.source))}},
            "phases": [{"name": p.name, "instances": p.count, "seconds": p.seconds, "statuses": p.statuses}
                       for p in self.phases],
            "errors": self.errors,
            "measured_solver_error": self.solver_error,
        }

    def markdown(self) -> str:
        parts = [f"# {self.study.name}", "", self.study.description or "", "", "## Verdicts", "",
                 self.table("github"), "", "## Summary", "", "```", self.summary(), "```", ""]
        tt = self.triples_table("github")
        if tt:
            parts += ["## Solved triples", "", tt, ""]
        parts += ["## Phases", "", report.table(report.phase_rows(self.phases), "github"), ""]
        if self.errors:
            parts += ["## Errors", ""] + [f"- {e}" for e in self.errors] + [""]
        return "\n".join(parts)


def _apply_sweep(study: Study, value: Any) -> Study:
    s = copy.copy(study)
    head, opt = study.sweep.path.split(".", 1)
    if head == "init":
        s.inits = [copy.copy(u) for u in study.inits]
        for u in s.inits:
            u.options = {**u.options, opt: value}
    elif head == "datasets":
        s.datasets = [copy.copy(u) for u in study.datasets]
        for u in s.datasets:
            u.options = {**u.options, opt: value}
    else:
        use = copy.copy(getattr(study, head))
        use.options = {**use.options, opt: value}
        setattr(s, head, use)
    return s


def run_loaded(study: Study, *, out_dir: str | Path | None = None, write: bool = True,
               progress: Callable[[str, int], Any] | None = None, sweep_value: Any = None) -> StudyResult:
    """Run a validated study once (no sweep)."""
    t0 = time.perf_counter()
    ctx = build_context(study, progress=progress)
    triples, pairs = run_engine(ctx)
    # a sample of solver-error measurements for the summary, on top of those the verdicts need
    sample = (triples.status == st.CONVERGED).nonzero().flatten()[:16].tolist()
    members, meter = judge_all(ctx, triples, pairs, also_measure=sample)
    solver_error = max(meter.err.values()) if meter.err else None
    res = StudyResult(study, triples, pairs, members, ctx.phases, ctx.errors, 0.0, sweep_value=sweep_value,
                      solve_calls=ctx.solve_calls, solver_error=solver_error)
    if write:
        res.run_dir = Path(out_dir) if out_dir else default_run_dir(study)
        write_outputs(res, ctx)
    res.seconds = time.perf_counter() - t0
    if res.run_dir is not None:
        (res.run_dir / "results.json").write_text(json.dumps(certificate._jsonable(res.to_json()), indent=1))
    return res


def default_run_dir(study: Study) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{certificate.slug(study.name)}-{stamp}"


def write_outputs(res: StudyResult, ctx: Context) -> None:
    d = res.run_dir
    d.mkdir(parents=True, exist_ok=True)
    per_member = res.study.verdict.max_certificates
    if per_member > 0:
        tight = ctx.solver.tighten(dict(ctx.solver_options))
        for m in res.members:
            if m.verdict != "falsified" or m.evidence is None:
                continue
            path = d / "certificates" / f"{certificate.slug(m.label)}.json"
            certificate.write(certificate.build(ctx, res.triples, m, tight), path)
            m.certificate = str(path)
            res.certificates.append(str(path))
    (d / "report.md").write_text(res.markdown())


def run_study(study: str | Path | dict, *, plugins: list[str] = (), out_dir: str | Path | None = None,
              write: bool = True, progress=None) -> StudyResult | list[StudyResult]:
    """Run a study given as a YAML path or a dict. Returns a list of results for a sweep."""
    if isinstance(study, dict):
        files = list(plugins) + plugin_files_of(study, Path.cwd())
        reg: Registry = load_registry(files)
        st_ = validate(study, reg, src="<dict>", plugin_files=files)
    else:
        st_, reg = load_study(study, list(plugins))
    if st_.sweep is None:
        return run_loaded(st_, out_dir=out_dir, write=write, progress=progress)
    results = []
    base = Path(out_dir) if out_dir else default_run_dir(st_)
    for k, v in enumerate(st_.sweep.values):
        sub = base / f"sweep-{k:02d}" if write else None
        results.append(run_loaded(_apply_sweep(st_, v), out_dir=sub, write=write, progress=progress, sweep_value=v))
    return results
