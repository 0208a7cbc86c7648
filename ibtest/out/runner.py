"""Running studies: a study (file or dict) run once or over its sweep, into a run directory, and
resumed from its store.

A run directory holds ``results.sqlite`` (written as the run goes), ``results.json``, ``report.md``
and ``certificates/``. :func:`run_loaded` is one run; :func:`run_study` / :func:`resume_run` add
the study's loading, its sweep and the store. :mod:`ibtest.api` re-exports the public names.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ibtest.base import deadline
from ibtest.base.errors import UserError
from ibtest.base.progress import Progress
from ibtest.base.textsafe import clean
from ibtest.cert import certificate
from ibtest.cert.shrink import SHRINKABLE
from ibtest.judge.limits import CONSISTENT, NOT_THE_LIMIT, LimitVerdict, judge_limit, point_of
from ibtest.out import report
from ibtest.out.result import StudyResult, SweepResult
from ibtest.run import executors
from ibtest.run.lock import holder, in_use
from ibtest.run.pipeline import judge_run
from ibtest.run.store import Store, open_run
from ibtest.solve.engine import InstancePlan, RunContext, build_context, plan_instances
from ibtest.solve.rules import Verdict
from ibtest.study.schema import load_study_text, read_study_bytes
from ibtest.study.sweep import variants
from ibtest.study.typed import Study


def run_loaded(study: Study, *, out_dir: str | Path | None = None, store: Store | None = None,
               progress: Progress | None = None, sweep_value: Any = None,
               plan: InstancePlan | None = None) -> StudyResult:
    """Run a validated study once (no sweep), streamed in blocks of ``study.block_size`` instances
    (one block for a small study; see :func:`ibtest.run.pipeline.judge_run`).

    ``out_dir`` None: nothing is written; else certificates, ``results.json`` and ``report.md``.
    ``plan``: the study's instances, if already made.
    """
    t0 = time.perf_counter()
    j = judge_run(study, store=store, progress=progress, sweep_value=sweep_value, plan=plan)
    ctx = j.ctx
    res = StudyResult(study, j.triples, j.pairs, j.members, ctx.phases, ctx.errors, 0.0, sweep_value=sweep_value,
                      solve_calls=ctx.solve_calls, solver_error=j.solver_error, model=ctx.model, tally=j.tally,
                      blocks=j.blocks, executor=j.executor)
    if out_dir is not None:
        res.run_dir = Path(out_dir)
        write_certificates(res, ctx)
    res.seconds = time.perf_counter() - t0
    res.json_cache = res.to_json()
    if res.run_dir is not None:
        _write_text(res.run_dir / "results.json", json.dumps(res.json_cache, indent=1), res.run_dir)
        _write_text(res.run_dir / "report.md", report.render_markdown(res.json_cache), res.run_dir)
    return res


def _write_text(path: Path, text: str, run_dir: Path) -> None:
    """Write a file of a run; a failure (full disk, read-only) is a UserError naming it."""
    try:
        path.write_text(text)
    except OSError as exc:
        raise UserError(_write_failure(path, exc, run_dir)) from None


def _write_failure(path: Path, exc: OSError, run_dir: Path) -> str:
    return (f"run {run_dir}: cannot write {path}: {exc.strerror or exc}. Every solve is in the results "
            f"store: free some space (or fix the permissions), then 'ibtest run --resume {run_dir}'")


def default_run_dir(study_name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{certificate.slug(study_name)}-{stamp}"


def write_certificates(res: StudyResult, ctx: RunContext) -> None:
    d = res.run_dir
    assert d is not None, "write_certificates needs the result's run_dir"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(_write_failure(d, exc, d)) from None
    if res.study.verdict.max_certificates <= 0:
        return
    for m in res.members:
        if m.verdict == Verdict.SURVIVES and m.support is not None:  # a certified survival
            _write_support(res, ctx, m)
            continue
        if m.verdict != Verdict.FALSIFIED or m.evidence is None:
            continue
        path = d / "certificates" / f"{certificate.slug(m.label)}.json"
        try:
            cert = certificate.build(ctx, res.triples, m)
        except Exception as exc:  # a claim kind's plugin that cannot certify: said, the run goes on
            ctx.errors.append(f"certificate of {m.label}: {type(exc).__name__}: {exc}")
            continue
        try:
            certificate.write(cert, path)
        except OSError as exc:
            raise UserError(_write_failure(path, exc, d)) from None
        m.certificate = str(path)
        res.certificates.append(str(path))
        if res.study.verdict.shrink and m.evidence.kind in SHRINKABLE:
            _shrink_one(res, ctx, path)


def judge_limits(st_: Study, runs: list[StudyResult], out: Path | None) -> list[LimitVerdict]:
    """The limit verdicts of a sweep with ``limit:`` (every member, every direction), with the
    expectations of the study and, where consistent or not the limit, a limit certificate written to
    ``out/certificates/<member>.limit-<to>.json`` embedding the runs' own certificates."""
    if st_.limit is None or not runs:
        return []
    from ibtest.cert import limit_cert
    from ibtest.cert.schema import load
    from ibtest.study.schema import limit_directions

    out_v: list[LimitVerdict] = []
    for hi, use in enumerate(st_.hypotheses):
        for mj in range(len(use.members)):
            label = runs[0].members[sum(len(u.members) for u in st_.hypotheses[:hi]) + mj].label
            points, certs = [], {}
            for r in runs:
                m = next((x for x in r.members if x.label == label), None)
                if m is None or not isinstance(r.sweep_value, (int, float)):
                    continue
                s = float(r.sweep_value)
                pt = point_of(m, s)
                if pt is not None:
                    points.append(pt)
                if m.certificate:
                    with contextlib.suppress(UserError):
                        certs[s] = load(m.certificate)
            for direction in limit_directions(st_.limit):
                v = judge_limit(label, points, direction)
                v.expect = use.expect_limit.get(direction)
                if out is not None and v.verdict in (CONSISTENT, NOT_THE_LIMIT) and any(
                        p.refuted and p.s in certs for p in v.points):
                    path = out / "certificates" / f"{certificate.slug(label)}.limit-{v.toward}.json"
                    try:
                        certificate.write(limit_cert.build(v, st_.limit.path, certs), path)
                        v.certificate = str(path)
                    except (OSError, ValueError) as exc:
                        runs[0].errors.append(f"limit certificate of {label}: {exc}")
                out_v.append(v)
    return out_v


def _write_support(res: StudyResult, ctx: RunContext, m: Any) -> None:
    """``certificates/<member>.certified.json``: the run a certified survival rests on (when the
    study has the ``optimum`` claim kind registered), which ``ibtest verify`` re-certifies."""
    assert res.run_dir is not None and m.use is not None and m.support is not None
    kind = ctx.study.kind_named(m.use, m.support.kind)
    if kind is None:
        return
    path = res.run_dir / "certificates" / f"{certificate.slug(m.label)}.certified.json"
    try:
        certificate.write(certificate.build(ctx, res.triples, m, m.support, kind), path)
    except Exception as exc:  # said, the run goes on
        ctx.errors.append(f"certificate of {m.label} (certified survival): {type(exc).__name__}: {exc}")
        return
    m.certificate = str(path)
    res.certificates.append(str(path))


def _shrink_one(res: StudyResult, ctx: RunContext, path: Path) -> None:
    """``verdict: {shrink: true}``: write ``<name>.shrunk.json`` next to the certificate (verified)."""
    from ibtest.cert.shrink import NotRefuted, shrink_file

    try:
        dest, _ = shrink_file(path, path.with_name(path.stem + ".shrunk.json"), res.study.verdict.shrink_budget,
                              plugins=list(res.study.plugin_files))
    except (NotRefuted, UserError) as exc:
        ctx.errors.append(f"shrink {path.name}: {exc}")
        return
    res.certificates.append(str(dest))


def _plans(st_: Study) -> list[InstancePlan]:
    """The instances of every run of a study (each sweep value), made before anything is written:
    a dataset or init plugin that fails, or data too large or too much work, stop here (exit 2, no
    run directory). What the plans warn of (a long estimated run) is said on stderr now."""
    with deadline.policy(st_.budget.deadline):
        plans = [plan_instances(build_context(s)) for _, s in variants(st_)]
    said: set[str] = set()
    for plan in plans:
        for w in plan.warnings:
            if w not in said:
                said.add(w)
                print(f"ibtest: warning: {clean(w)}", file=sys.stderr)
    return plans


def _execute(st_: Study, out: Path | None, store: Store | None, progress,
             plans: list[InstancePlan] | None = None) -> StudyResult | list[StudyResult]:
    """Run a study (each sweep value) into ``out`` and ``store``; the store is closed after. Every
    plugin call gets the study's deadline (``budget.deadline``)."""
    try:
        with deadline.policy(st_.budget.deadline):
            return _run_variants(st_, out, store, progress, plans)
    finally:
        if store is not None:
            store.close()


def _run_variants(st_: Study, out: Path | None, store: Store | None, progress,
                  plans: list[InstancePlan] | None) -> StudyResult | list[StudyResult]:
    """Each sweep value's run in turn (one run without a sweep); a sweep also gets its limit
    verdicts and its own ``results.json``. The store gets the payload and is marked finished."""
    runs = variants(st_)
    todo: list[InstancePlan | None] = list(plans) if plans else [None] * len(runs)
    if st_.sweep is None:
        result: Any = run_loaded(st_, out_dir=out, store=store, progress=progress, plan=todo[0])
        payload: Any = result.json_cache
    else:
        result = SweepResult([], st_.sweep.path)
        for k, ((v, s), plan) in enumerate(zip(runs, todo)):
            sub = out / f"sweep-{k:02d}" if out is not None else None
            result.append(run_loaded(s, out_dir=sub, store=store, progress=progress, sweep_value=v, plan=plan))
        result.limits = judge_limits(st_, result, out)
        payload = result.to_json()
        if out is not None:  # the sweep's own results: every run's, and its limit verdicts
            _write_text(out / "results.json", json.dumps(payload, indent=1), out)
    if store is not None:
        store.write_results(payload)
        store.set_meta(state="finished", finished=_dt.datetime.now().isoformat(timespec="seconds"))
        store.finish()
    return result


def run_study(study: str | Path | dict, *, plugins: Sequence[str] = (), out_dir: str | Path | None = None,
              write: bool = True, progress: Progress | None = None,
              executor: str | None = None) -> StudyResult | list[StudyResult]:
    """Run a study given as a YAML path or a dict. Returns a list of results for a sweep.

    ``executor`` names where the blocks run (``local``, ``ray``, ...), over the study's ``executor:``."""
    if isinstance(study, dict):
        text, src, base = yaml.safe_dump(study, sort_keys=False), "<dict>", Path.cwd()
    else:
        p = Path(study)
        text = read_study_bytes(p)
        src, base = str(study), p.resolve().parent
    st_, registry = load_study_text(text, src, base, list(plugins))
    executors.choose(st_, registry, executor)
    plans = _plans(st_)
    out = None
    store = None
    if write:
        out = Path(out_dir) if out_dir else default_run_dir(st_.name)
        who = holder(out)
        if who is not None:
            raise UserError(in_use(out, who))
        if (out / "results.sqlite").exists():
            raise UserError(f"run directory {out} already holds a run: resume it with "
                            f"'ibtest run --resume {out}' or choose another --out")
        store = _start_store(out, text=text, src=src, base=base, plugins=st_.plugin_files)
    return _execute(st_, out, store, progress, plans)


def _start_store(out: Path, **study: Any) -> Store:
    """A new run's store holding its study. If even that cannot be written (a full disk, a
    read-only place), what was created is removed, so the same ``--out`` works next time."""
    from ibtest.cert.certificate import versions

    made_dir = not out.exists()
    store = None
    try:
        store = Store(out)
        store.set_meta(study_text=study["text"], study_source=study["src"], study_base=str(study["base"]),
                       plugins=study["plugins"], state="running",
                       created=_dt.datetime.now().isoformat(timespec="seconds"), versions=versions())
        return store
    except UserError as exc:
        if store is not None:
            store.close()
        with contextlib.suppress(OSError):
            for suffix in ("", "-wal", "-shm", "-journal"):
                (out / f"results.sqlite{suffix}").unlink(missing_ok=True)
            if made_dir:
                out.rmdir()
        reason = str(exc).split(". What was stored", 1)[0]
        raise UserError(f"{reason}; nothing was run: fix this, then run the study again") from None


def resume_run(run_dir: str | Path, *, plugins: Sequence[str] = (), progress: Progress | None = None,
               executor: str | None = None):
    """Finish (or re-render) a stored run: every stored solve is reused, nothing is recomputed.

    A store is data: the plugin files it lists (``meta.plugins``, the study's ``plugins:``) are
    never imported on its say-so. Code comes from installed entry points and ``plugins`` (the
    user's ``--plugin FILE``); a study that needs more is refused (UserError, exit 2) naming
    what is missing and the files the run was made with. ``executor`` may differ from the
    interrupted run's: a stored block is never solved again.
    """
    from ibtest.plugin.manager import load_registry, require_registered
    from ibtest.study.schema import parse_study_text, plugin_files_of, validate

    who = holder(run_dir)
    if who is not None:  # said first: the store may not even exist yet
        raise UserError(in_use(run_dir, who))
    store = open_run(run_dir)
    try:
        meta = store.meta()
        _check_meta(meta, run_dir)
        if "study_text" not in meta:
            raise UserError(f"run {run_dir}: the store holds no study (not started by 'ibtest run')")
        src = str(meta.get("study_source", "<stored study>"))
        base = Path(str(meta.get("study_base", run_dir)))
        data, lines, src = parse_study_text(meta["study_text"], src)
        registry = load_registry(list(plugins))
        listed = meta.get("plugins")
        stored: list[Any] = listed if isinstance(listed, list) else []
        named = [str(f) for f in stored] + [f for f in plugin_files_of(data, base) if f not in stored]
        require_registered(registry, _study_needs(data), what=f"run {run_dir}",
                           named_files=[f for f in named if f not in plugins])
        st_ = validate(data, registry, src=src, lines=lines, plugin_files=list(plugins))
        executors.choose(st_, registry, executor)
    except BaseException:
        store.close()
        raise
    try:
        plans = _plans(st_)  # a data plugin that fails, or too much work: refused before the store changes
    except BaseException:
        store.close()
        raise
    store.set_meta(state="running", resumed=_dt.datetime.now().isoformat(timespec="seconds"))
    return _execute(st_, Path(run_dir), store, progress, plans)


def _study_needs(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every plugin a study's raw data names (malformed entries are left to validate)."""
    def name(ref: Any) -> Any:
        return ref.get("name") if isinstance(ref, dict) else ref

    needs: list[tuple[str, Any]] = [("models", name(data.get("model"))), ("solvers", name(data.get("solver")))]
    inits = data.get("init", {"name": "zeros"})
    needs += [("inits", name(r)) for r in (inits if isinstance(inits, list) else [inits])]
    for kind, key in (("datasets", "datasets"), ("constructions", "constructions"), ("hypotheses", "hypotheses")):
        refs = data.get(key) or []
        needs += [(kind, name(r)) for r in (refs if isinstance(refs, list) else [])]
    needs.append(("executors", name(data.get("executor"))))
    return [(k, n) for k, n in needs if isinstance(n, str)]


def _check_meta(meta: dict[str, Any], run_dir: str | Path) -> None:
    """The stored fields resume reads have the types 'ibtest run' writes."""
    want = {"study_text": str, "study_source": str, "study_base": str, "plugins": list}
    for key, tp in want.items():
        if key in meta and not isinstance(meta[key], tp):
            raise UserError(f"run {run_dir}: results.sqlite is damaged: meta value {key!r} is a "
                            f"{type(meta[key]).__name__}, expected a {tp.__name__}")
    if not all(isinstance(f, str) for f in meta.get("plugins", [])):
        raise UserError(f"run {run_dir}: results.sqlite is damaged: meta value 'plugins' is not a list of paths")
