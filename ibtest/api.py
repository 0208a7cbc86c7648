"""Python API: run a study (file or dict), resume one, and get a result object.

``run_study(path_or_dict)`` returns a :class:`StudyResult` (a list of them for a sweep) with
``.table()``, ``.verdicts``, ``.certificates``, ``.to_json()``. With ``write=True`` (default) the
run directory holds ``results.sqlite`` (written as the run goes), ``results.json``, ``report.md``
and ``certificates/``; ``resume_run(RUN_DIR)`` finishes an interrupted run from its store.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import certificate, fit, report
from . import status as st
from .batch import Pairs, Triples
from .engine import Context, Phase, build_context, plan_instances, run_block
from .errors import UserError
from .progress import Progress
from .store import Store, open_run
from .study import Study, load_study_text
from .streaming import SAMPLE, Retainer, Tally
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
    model: Any = None
    json_cache: dict[str, Any] | None = None  # to_json() of the finished run, computed once
    tally: Tally | None = None  # counts and report rows over every block (run_loaded sets it)
    blocks: int = 1  # > 1: a streamed study; ``triples`` / ``pairs`` hold the retained ones only

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
        """The verdict table (one row per hypothesis member)."""
        return report.table(report.verdict_rows(self.to_json()["verdicts"]), fmt)

    def render(self, fmt: str = "table") -> str:
        """The full report as ``ibtest run`` prints it (``table``), or markdown / json / html."""
        return report.render(self.to_json(), fmt)

    def summary(self) -> str:
        ty = self.tally
        counts = ty.counts
        lines = [
            f"study {self.study.name}: {sum(counts.values())} instances "
            f"({', '.join(f'{k} {v}' for k, v in counts.items())}), {ty.n_solves} solves in all, "
            f"{ty.n_pairs} admissible pairs ({ty.n_distinct} distinct), {self.seconds:.2f} s"
            + (f", streamed in {self.blocks} blocks of {self.study.block_size}" if self.blocks > 1 else ""),
        ]
        if self.solver_error is not None:
            lines.append(f"measured solver error (re-solved at tighter settings): max |Δθ| = {self.solver_error:.3g}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        ty = self.tally
        return certificate._jsonable({
            "study": self.study.name,
            "description": self.study.description,
            "source": self.study.source,
            "solver": self.study.solver.name,
            "sweep_value": self.sweep_value,
            "seconds": self.seconds,
            "expectations_held": self.expectations_held,
            "report": {"triples": self.study.report.triples, "digits": self.study.report.digits},
            "summary": self.summary(),
            "verdicts": [
                {"hypothesis": m.hypothesis, "params": m.params, "label": m.label,
                 "kind": m.kind, "depends_on": m.depends_on, "verdict": m.verdict, "expect": m.expect,
                 "held": m.held, "pairs": m.n_pairs, "distinct": m.n_distinct,
                 "max_rel_gap": m.max_rel_gap, "worst": m.worst, "reason": m.reason, "error": m.error,
                 "certificate": m.certificate,
                 "evidence": None if m.evidence is None else {
                     "gap": m.evidence.gap, "margin": m.evidence.margin, "R_a": m.evidence.Ra,
                     "R_b": m.evidence.Rb, "source": m.evidence.source}}
                for m in self.members
            ],
            "triples": ty.rows,
            "status_counts": ty.counts,
            "solves": ty.n_solves,
            "solver_calls": self.solve_calls,
            "pairs": {"admissible": ty.n_pairs, "distinct": ty.n_distinct, "by_source": ty.by_source},
            "blocks": self.blocks,
            "phases": [{"name": p.name, "instances": p.count, "seconds": p.seconds, "statuses": p.statuses,
                        "calls": p.calls} for p in self.phases],
            "errors": self.errors,
            "measured_solver_error": self.solver_error,
        })

    def markdown(self) -> str:
        return report.render_markdown(self.to_json())


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


def run_loaded(study: Study, *, out_dir: str | Path | None = None, store: Store | None = None,
               progress: Progress | None = None, sweep_value: Any = None) -> StudyResult:
    """Run a validated study once (no sweep), streamed in blocks of ``study.block_size`` instances.

    One block (the usual case): ``triples`` / ``pairs`` of the result hold the whole run. Several:
    each block is solved, stored, scored and dropped (see :mod:`ibtest.streaming`).
    ``out_dir`` None: nothing is written.
    """
    t0 = time.perf_counter()
    ctx = build_context(study, progress=progress, store=store)
    plan = plan_instances(ctx)
    warning = fit.range_warning(plan.X, plan.y, plan.theta0)
    if warning:
        ctx.errors.append(warning)
    size = max(1, study.block_size)
    setting = study.report.triples
    rows = max(study.report.json_triples, setting if setting is not True and setting is not False else 0)
    tally = Tally(ctx.model, rows)
    retainer = Retainer(ctx) if plan.n > size else None
    if store is not None:
        store.clear_tables()
    offset = n_pairs = 0
    for start in range(0, plan.n, size):
        t, pairs = run_block(ctx, plan.block(start, min(plan.n, start + size)), start)
        if store is not None:
            store.write_triples(t, offset)
            store.write_pairs(pairs, offset, n_pairs)
        tally.add(t, pairs)
        if retainer is not None:
            retainer.add(t, pairs)
        offset, n_pairs = offset + len(t), n_pairs + len(pairs)
    if retainer is None:
        # a sample of solver-error measurements for the summary, on top of those the verdicts need
        sample = (t.status == st.CONVERGED).nonzero().flatten()[:SAMPLE].tolist()
        members, meter = judge_all(ctx, t, pairs, also_measure=sample)
    else:
        t, pairs, members, meter = retainer.finish(tally)
    solver_error = max(meter.err.values()) if meter.err else None
    res = StudyResult(study, t, pairs, members, ctx.phases, ctx.errors, 0.0, sweep_value=sweep_value,
                      solve_calls=ctx.solve_calls, solver_error=solver_error, model=ctx.model, tally=tally,
                      blocks=-(-plan.n // size))
    if out_dir is not None:
        res.run_dir = Path(out_dir)
        write_certificates(res, ctx)
    res.seconds = time.perf_counter() - t0
    res.json_cache = res.to_json()
    if res.run_dir is not None:
        (res.run_dir / "results.json").write_text(json.dumps(res.json_cache, indent=1))
        (res.run_dir / "report.md").write_text(report.render_markdown(res.json_cache))
    return res


def default_run_dir(study_name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{certificate.slug(study_name)}-{stamp}"


def write_certificates(res: StudyResult, ctx: Context) -> None:
    d = res.run_dir
    d.mkdir(parents=True, exist_ok=True)
    if res.study.verdict.max_certificates <= 0:
        return
    tight = ctx.solver.tighten(dict(ctx.solver_options))
    for m in res.members:
        if m.verdict != "falsified" or m.evidence is None:
            continue
        path = d / "certificates" / f"{certificate.slug(m.label)}.json"
        certificate.write(certificate.build(ctx, res.triples, m, tight), path)
        m.certificate = str(path)
        res.certificates.append(str(path))
        if res.study.verdict.shrink and m.kind == "regularizer":
            _shrink_one(res, ctx, path)


def _shrink_one(res: StudyResult, ctx: Context, path: Path) -> None:
    """``verdict: {shrink: true}``: write ``<name>.shrunk.json`` next to the certificate (verified)."""
    from .shrink import NotRefuted, shrink_file

    try:
        dest, _ = shrink_file(path, path.with_name(path.stem + ".shrunk.json"), res.study.verdict.shrink_budget,
                              plugins=list(res.study.plugin_files))
    except (NotRefuted, UserError) as exc:
        ctx.errors.append(f"shrink {path.name}: {exc}")
        return
    res.certificates.append(str(dest))


def _execute(st_: Study, out: Path | None, store: Store | None, progress) -> StudyResult | list[StudyResult]:
    try:
        if st_.sweep is None:
            result: Any = run_loaded(st_, out_dir=out, store=store, progress=progress)
            payload: Any = result.json_cache
        else:
            result = []
            for k, v in enumerate(st_.sweep.values):
                sub = out / f"sweep-{k:02d}" if out is not None else None
                result.append(run_loaded(_apply_sweep(st_, v), out_dir=sub, store=store, progress=progress,
                                         sweep_value=v))
            payload = {"sweep": st_.sweep.path, "runs": [r.json_cache for r in result]}
        if store is not None:
            store.write_results(payload)
            store.set_meta(state="finished", finished=_dt.datetime.now().isoformat(timespec="seconds"))
        return result
    finally:
        if store is not None:
            store.close()


def run_study(study: str | Path | dict, *, plugins: list[str] = (), out_dir: str | Path | None = None,
              write: bool = True, progress: Progress | None = None) -> StudyResult | list[StudyResult]:
    """Run a study given as a YAML path or a dict. Returns a list of results for a sweep."""
    if isinstance(study, dict):
        text, src, base = yaml.safe_dump(study, sort_keys=False), "<dict>", Path.cwd()
    else:
        p = Path(study)
        try:
            text = p.read_text()
        except OSError as exc:
            raise UserError(f"study {p}: cannot read: {exc.strerror or exc}") from None
        src, base = str(study), p.resolve().parent
    st_, _ = load_study_text(text, src, base, list(plugins))
    out = None
    store = None
    if write:
        out = Path(out_dir) if out_dir else default_run_dir(st_.name)
        if (out / "results.sqlite").exists():
            raise UserError(f"run directory {out} already holds a run: resume it with "
                            f"'ibtest run --resume {out}' or choose another --out")
        store = Store(out)
        from .certificate import versions

        store.set_meta(study_text=text, study_source=src, study_base=str(base), plugins=st_.plugin_files, state="running",
                       created=_dt.datetime.now().isoformat(timespec="seconds"), versions=versions())
    return _execute(st_, out, store, progress)


def resume_run(run_dir: str | Path, *, plugins: list[str] = (), progress: Progress | None = None):
    """Finish (or re-render) a stored run: every stored solve is reused, nothing is recomputed."""
    store = open_run(run_dir)
    meta = store.meta()
    if "study_text" not in meta:
        store.close()
        raise UserError(f"run {run_dir}: the store holds no study (not started by 'ibtest run')")
    files = list(plugins) + [f for f in meta.get("plugins", []) if f not in plugins]
    base = Path(meta.get("study_base", run_dir))
    st_, _ = load_study_text(meta["study_text"], meta.get("study_source", "<stored study>"), base, files)
    store.set_meta(state="running", resumed=_dt.datetime.now().isoformat(timespec="seconds"))
    return _execute(st_, Path(run_dir), store, progress)


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """The stored results of a finished run (no solving)."""
    store = open_run(run_dir)
    try:
        res = store.results()
        state = store.meta().get("state")
    finally:
        store.close()
    if res is None:
        raise UserError(f"run {run_dir} has no results yet (state: {state}); finish it with "
                        f"'ibtest run --resume {run_dir}'")
    return res
