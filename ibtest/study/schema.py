"""Study files: YAML validated (shape by pydantic, plugin options by the registry) before any run.

Every problem is reported as ``FILE:LINE: FIELD.PATH: what is wrong (what was expected)`` and
all problems of a file are collected before :class:`~ibtest.base.errors.StudyError` is raised.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml

from ibtest.base.errors import StudyError
from ibtest.base.guard import describe, plugin_call
from ibtest.base.inputs import read_input
from ibtest.plugin.manager import SINGULAR, Registry
from ibtest.study.coerce import coerce, describe_type, pydantic_problems, short, text_hint
from ibtest.study.sweep import check_sweep
from ibtest.study.typed import HypothesisUse, PluginUse, S, Study, StudyModel
from ibtest.study.yamlpos import YAMLInputError, decode_text, format_path, line_of, load_with_lines


def _resolve_plugin(
    registry: Registry, kind: str, ref: dict[str, Any], path: tuple, src: str, lines: dict,
    problems: list[str], reserved: tuple[str, ...] = ("name",),
) -> PluginUse | None:
    name = ref.get("name")
    if name not in registry.items[kind]:
        known = ", ".join(registry.names(kind)) or "none registered"
        problems.append(
            f"{src}:{line_of(lines, path + ('name',))}: {format_path(path + ('name',))}: "
            f"unknown {SINGULAR[kind]} {name!r} (known: {known})"
        )
        return None
    spec = registry.get(kind, name)
    options: dict[str, Any] = {k: o.default for k, o in spec.options.items()}
    for key, value in ref.items():
        if key in reserved:
            continue
        p = path + (key,)
        opt = spec.options.get(key)
        if opt is None:
            allowed = ", ".join(sorted(spec.options)) or "none"
            problems.append(
                f"{src}:{line_of(lines, p)}: {format_path(p)}: unknown option {key!r} for "
                f"{SINGULAR[kind]} {name!r} (options: {allowed})"
            )
            continue
        try:
            options[key] = coerce(value, opt, key)
        except (pydantic.ValidationError, ValueError) as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, pydantic.ValidationError) else str(exc)
            problems.append(
                f"{src}:{line_of(lines, p)}: {format_path(p)}: {detail} (expected "
                f"{describe_type(opt.type)}{' or a list of them' if opt.sweep else ''}, got {short(value)}"
                f"{text_hint(value)})"
            )
    for key, opt in spec.options.items():
        if opt.required and ref.get(key) is None:
            problems.append(
                f"{src}:{line_of(lines, path)}: {format_path(path + (key,))}: required option of "
                f"{SINGULAR[kind]} {name!r} is missing"
            )
    return PluginUse(kind, name, spec, options, path)


def _resolved(uses: list[PluginUse[S] | None]) -> list[PluginUse[S]]:
    """The plugin uses of a list that validated without problems (none is None)."""
    return [u for u in uses if u is not None]


def _hypothesis_members(spec: Any, given: dict[str, Any], path, src, lines, problems) -> list[dict]:
    values: dict[str, list[Any]] = {}
    for key in given:
        if key not in spec.params:
            allowed = ", ".join(sorted(spec.params)) or "none"
            problems.append(
                f"{src}:{line_of(lines, path + ('params', key))}: {format_path(path + ('params', key))}: "
                f"unknown parameter {key!r} of hypothesis {spec.name!r} (parameters: {allowed})"
            )
    for key, default in spec.params.items():
        v = given.get(key, default)
        vs = v if isinstance(v, list) else [v]
        where = f"{src}:{line_of(lines, path + ('params', key))}: {format_path(path + ('params', key))}"
        if not vs:
            problems.append(f"{where}: an empty list gives no member to test (give at least one value)")
        for item in vs:
            if isinstance(item, float) and math.isnan(item):
                problems.append(f"{where}: NaN is not a value")
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    problems.append(f"{where}: expected a number or a list of numbers, got {short(item)}")
        values[key] = vs
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))] or [{}]


def read_study_bytes(path: str | Path) -> str:
    """A study file's text: UTF-8, or a StudyError naming the file (and the first bad byte)."""
    src = str(path)
    try:
        data = read_input(path)  # a FIFO nobody writes to, /dev/zero: an error, never a hang
    except OSError as exc:
        raise StudyError(src, [f"{src}: cannot read: {exc.strerror or exc}"]) from None
    try:
        return decode_text(data, src)
    except YAMLInputError as exc:
        raise StudyError(src, [f"{src}:{exc.line}: {exc.reason}"]) from None


def read_study_file(path: str | Path) -> tuple[dict[str, Any], dict, str]:
    """Read a YAML study; returns (data, line map, source name). Syntax errors are StudyErrors."""
    return parse_study_text(read_study_bytes(path), str(path))


def parse_study_text(text: str, src: str) -> tuple[dict[str, Any], dict, str]:
    """Parse study YAML text; returns (data, line map, source name)."""
    if not isinstance(text, str):
        raise StudyError(src, [f"{src}: the study text is not text (got {type(text).__name__})"])
    try:
        data, lines = load_with_lines(text)
    except YAMLInputError as exc:
        where = f"{src}:{exc.line}" if exc.line else src
        shown = format_path(exc.path[:8]) + ("..." if len(exc.path) > 8 else "")
        field = f"{shown}: " if exc.path else ""
        raise StudyError(src, [f"{where}: {field}{exc.reason}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{src}:{mark.line + 1}" if mark else src
        raise StudyError(src, [f"{where}: YAML syntax error: {getattr(exc, 'problem', None) or exc}"]) from None
    if not isinstance(data, dict):
        raise StudyError(src, [f"{src}:1: <top level>: expected a mapping of study fields"])
    return data, lines, src


def plugin_files_of(data: dict[str, Any], base: Path) -> list[str]:
    """Local plugin files a study lists under ``plugins:``, relative to the study file."""
    files = data.get("plugins") or []
    if not isinstance(files, list):
        return []
    return [str((base / f).resolve()) if not Path(f).is_absolute() else f for f in files if isinstance(f, str)]


def validate(
    data: dict[str, Any], registry: Registry, *, src: str = "<study>", lines: dict | None = None,
    plugin_files: list[str] | None = None,
) -> Study:
    """Check ``data`` against the schema and the registry; raise StudyError listing all problems."""
    lines = lines or {}
    try:
        m = StudyModel.model_validate(data)
    except pydantic.ValidationError as exc:
        raise StudyError(src, pydantic_problems(exc, src, lines, data)) from None
    problems: list[str] = []

    model = _resolve_plugin(registry, "models", m.model.model_dump(), ("model",), src, lines, problems)
    init_refs = m.init if isinstance(m.init, list) else [m.init]
    init_paths = [("init", i) for i in range(len(init_refs))] if isinstance(m.init, list) else [("init",)]
    inits = [
        _resolve_plugin(registry, "inits", r.model_dump(), p, src, lines, problems, ("name", "count"))
        for r, p in zip(init_refs, init_paths)
    ]
    datasets = [
        _resolve_plugin(registry, "datasets", r.model_dump(), ("datasets", i), src, lines, problems)
        for i, r in enumerate(m.datasets)
    ]
    solver = _resolve_plugin(registry, "solvers", m.solver.model_dump(), ("solver",), src, lines, problems)
    constructions = []
    for i, c in enumerate(m.constructions):
        ref = {"name": c} if isinstance(c, str) else c.model_dump()
        constructions.append(
            _resolve_plugin(registry, "constructions", ref, ("constructions", i), src, lines, problems)
        )
    hyps = []
    seen = set()
    for i, h in enumerate(m.hypotheses):
        path = ("hypotheses", i)
        if h.name not in registry.items["hypotheses"]:
            known = ", ".join(registry.names("hypotheses"))
            problems.append(
                f"{src}:{line_of(lines, path + ('name',))}: {format_path(path + ('name',))}: "
                f"unknown hypothesis {h.name!r} (known: {known})"
            )
            continue
        spec = registry.get("hypotheses", h.name)
        members = _hypothesis_members(spec, h.params, path, src, lines, problems)
        key = (h.name, repr(sorted(h.params.items())))
        if key in seen:
            problems.append(f"{src}:{line_of(lines, path)}: {format_path(path)}: hypothesis {h.name!r} listed twice")
        seen.add(key)
        hyps.append(HypothesisUse(h.name, spec, members, h.expect,
                                  spec.atol if h.atol is None else h.atol,
                                  spec.rtol if h.rtol is None else h.rtol, path,
                                  _expect_limit(h, m, path, src, lines, problems)))
    if model is not None and solver is not None:
        try:  # a model factory rejecting its options, calling sys.exit, running past its deadline
            reason = plugin_call(solver.spec.applies, plugin_call(model.spec.factory, **model.options))
        except Exception as exc:
            reason = None
            problems.append(f"{src}:{line_of(lines, ('model',))}: model: {model.name!r} {describe(exc)}")
        if reason:
            problems.append(
                f"{src}:{line_of(lines, ('solver', 'name'))}: solver.name: solver {solver.name!r} "
                f"cannot solve model {model.name!r}: {reason}"
            )
    executor = None
    if m.executor is not None:
        executor = _resolve_plugin(registry, "executors", m.executor.model_dump(), ("executor",), src, lines, problems)
    if m.limit is not None:
        _check_limit(m, src, lines, problems)
    if m.fit is not None:
        names = [m.fit.family] if isinstance(m.fit.family, str) else list(m.fit.family or [])
        names += list(m.fit.expect) if isinstance(m.fit.expect, dict) else []
        for name in names:
            if name not in registry.items["families"]:
                problems.append(f"{src}:{line_of(lines, ('fit', 'family'))}: fit.family: unknown family {name!r} "
                                f"(known: {', '.join(registry.names('families')) or 'none registered'})")
    if m.sweep is not None:
        uses = {"init": inits, "model": [model], "solver": [solver], "datasets": datasets}
        check_sweep(m.sweep, uses, src, lines, problems)
    if problems:
        raise StudyError(src, problems)
    # no problems: every plugin reference resolved (a None from _resolve_plugin adds a problem)
    assert model is not None and solver is not None
    study = Study(
        name=m.study, source=src, raw=data, seed=m.seed, model=model, inits=_resolved(inits),
        init_counts=[r.count for r in init_refs], datasets=_resolved(datasets), solver=solver,
        constructions=_resolved(constructions), hypotheses=hyps, verdict=m.verdict, report=m.report,
        plugin_files=list(plugin_files or []), sweep=m.sweep, limit=m.limit, device=m.device,
        chunk_size=m.chunk_size, block_size=m.block_size, description=m.description, executor=executor, fit=m.fit,
        kinds={h.spec.kind: tuple(k for k in registry.replayers_for(h.spec.kind) if k.judges != "*") for h in hyps},
        budget=m.budget,
    )
    from ibtest.study.budget import check_study

    problems = check_study(study, lines)
    if problems:
        raise StudyError(src, problems)
    return study


def load_study(path: str | Path, extra_plugins: Sequence[str] = ()) -> tuple[Study, Registry]:
    """Read, load the plugins it needs, and validate a study file."""
    data, lines, src = read_study_file(path)
    return _finish_load(data, lines, src, Path(path).resolve().parent, extra_plugins)


def load_study_text(text: str, src: str, base: Path, extra_plugins: Sequence[str] = ()) -> tuple[Study, Registry]:
    """Like :func:`load_study` for study text (a stored run's study); ``base`` resolves ``plugins:``."""
    data, lines, src = parse_study_text(text, src)
    return _finish_load(data, lines, src, base, extra_plugins)


def _finish_load(data, lines, src, base: Path, extra_plugins) -> tuple[Study, Registry]:
    from ibtest.plugin.manager import load_registry

    files = list(extra_plugins) + [f for f in plugin_files_of(data, base) if f not in extra_plugins]
    registry = load_registry(files)
    return validate(data, registry, src=src, lines=lines, plugin_files=files), registry


def limit_directions(limit: Any) -> list[float]:
    """The directions of a ``limit:`` block, in order: [0.0], [inf] or [0.0, inf]."""
    to = limit.to if isinstance(limit.to, list) else [limit.to]
    return [float(v) for v in to]


def _check_limit(m: StudyModel, src: str, lines: dict, problems: list[str]) -> None:
    """``limit:`` needs a sweep over the same path, and directions 0 or .inf (each once)."""
    assert m.limit is not None
    where = f"{src}:{line_of(lines, ('limit',))}: limit"
    if m.sweep is None:
        problems.append(f"{where}: a limit is judged over a sweep: add sweep: {{path: {m.limit.path}, values: [...]}}")
    elif m.sweep.path != m.limit.path:
        problems.append(f"{where}.path: {m.limit.path!r} is not the sweep's path {m.sweep.path!r}")
    dirs = limit_directions(m.limit)
    if not dirs or any(d not in (0.0, math.inf) for d in dirs) or len(set(dirs)) != len(dirs):
        problems.append(f"{where}.to: expected 0, .inf or [0, .inf], got {m.limit.to!r}")


def _expect_limit(h: Any, m: StudyModel, path: tuple, src: str, lines: dict, problems: list[str]) -> dict[float, str]:
    """A hypothesis's ``expect_limit``, per direction of the study's ``limit:``."""
    if h.expect_limit is None:
        return {}
    where = f"{src}:{line_of(lines, path + ('expect_limit',))}: {format_path(path + ('expect_limit',))}"
    if m.limit is None:
        problems.append(f"{where}: the study declares no limit: add limit: {{path: ..., to: 0}}")
        return {}
    dirs = limit_directions(m.limit)
    if isinstance(h.expect_limit, str):
        return {d: h.expect_limit for d in dirs}
    out = {float(k): v for k, v in h.expect_limit.items()}
    unknown = [k for k in out if k not in dirs]
    if unknown:
        problems.append(f"{where}: direction(s) {unknown} are not among the study's limit.to {dirs}")
    return out
