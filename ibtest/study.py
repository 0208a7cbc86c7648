"""Study files: YAML validated (shape by pydantic, plugin options by the registry) before any run.

Every problem is reported as ``FILE:LINE: FIELD.PATH: what is wrong (what was expected)`` and
all problems of a file are collected before :class:`~ibtest.errors.StudyError` is raised.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .errors import StudyError
from .manager import SINGULAR, Registry
from .specs import Option
from .yamlpos import format_path, line_of, load_with_lines

Verdict = Literal["falsified", "survives", "inconclusive"]
VERDICTS = ("falsified", "survives", "inconclusive")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class PluginRef(BaseModel):
    """``{name: ..., <option>: ...}``: options stay free here and are checked by the registry."""

    model_config = ConfigDict(extra="allow")
    name: str


class InitRef(PluginRef):
    count: int = Field(1, ge=1, description="initializations drawn per dataset")


class HypothesisRef(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    expect: Union[Verdict, None] = None
    atol: Union[float, None] = Field(None, ge=0)
    rtol: Union[float, None] = Field(None, ge=0)


class VerdictSettings(_Strict):
    min_pairs: int = Field(1, ge=1, description="admissible pairs needed for 'survives'")
    safety: float = Field(10.0, ge=1, description="factor on the solver-error term of the margin")
    recheck: bool = Field(True, description="re-solve every witness at a tighter tolerance")
    max_certificates: int = Field(1, ge=0, description="certificates written per falsified member")
    max_group_pairs: int = Field(4096, ge=0, description="own-triple pairs examined per group")
    shrink: bool = Field(False, description="shrink each written pair certificate to its core (ibtest shrink)")
    shrink_budget: int = Field(6000, ge=4, description="instance solves each shrink may spend")


class ReportSettings(_Strict):
    formats: list[Literal["table", "markdown", "json"]] = Field(
        default_factory=lambda: ["table", "markdown", "json"]
    )
    triples: Union[bool, int] = Field(True, description="list solved triples (True, False or at most N rows)")
    digits: int = Field(6, ge=1, le=17)
    json_triples: int = Field(1000, ge=0, description=(
        "study triples listed in results.json (every triple is in results.sqlite)"))


class SweepSettings(_Strict):
    """Repeat the study for each value of one option (e.g. ``init.scale``) and tabulate."""

    path: str = Field(description="dotted option path, e.g. init.scale or model.width")
    values: list[Any]


class StudyModel(_Strict):
    study: str
    description: str = ""
    seed: int = 0
    plugins: list[str] = Field(default_factory=list)
    model: PluginRef
    init: Union[InitRef, list[InitRef]] = Field(default_factory=lambda: InitRef(name="zeros"))
    datasets: list[PluginRef] = Field(min_length=1)
    solver: PluginRef
    constructions: list[Union[str, PluginRef]] = Field(default_factory=list)
    hypotheses: list[HypothesisRef] = Field(default_factory=list)
    verdict: VerdictSettings = Field(default_factory=VerdictSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    sweep: Union[SweepSettings, None] = None
    device: Literal["cpu", "cuda"] = "cpu"
    chunk_size: int = Field(20000, ge=1, description="instances solved per batch")
    block_size: int = Field(20000, ge=1, description=(
        "instances streamed through the whole pipeline at a time (memory is O(block)); own-triple "
        "pairs are formed within a block"))


# ----------------------------------------------------------------------------------------
@dataclass
class PluginUse:
    """A validated reference to a plugin: its spec, resolved options and field path."""

    kind: str
    name: str
    spec: Any
    options: dict[str, Any]
    path: tuple[Any, ...]

    def expand(self) -> list[dict[str, Any]]:
        """Cartesian product over options given as lists where the option sweeps."""
        keys, values = [], []
        for k, v in self.options.items():
            opt = self.spec.options.get(k) if hasattr(self.spec, "options") else None
            if opt is not None and opt.sweep and isinstance(v, list):
                keys.append(k)
                values.append(v)
        if not keys:
            return [dict(self.options)]
        out = []
        for combo in itertools.product(*values):
            o = dict(self.options)
            o.update(zip(keys, combo))
            out.append(o)
        return out


@dataclass
class HypothesisUse:
    name: str
    spec: Any
    members: list[dict[str, Any]]  # one params dict per family member
    expect: str | None
    atol: float
    rtol: float
    path: tuple[Any, ...]


@dataclass
class Study:
    """A validated study, ready for the engine."""

    name: str
    source: str
    raw: dict[str, Any]
    seed: int
    model: PluginUse
    inits: list[PluginUse]
    init_counts: list[int]
    datasets: list[PluginUse]
    solver: PluginUse
    constructions: list[PluginUse]
    hypotheses: list[HypothesisUse]
    verdict: VerdictSettings
    report: ReportSettings
    plugin_files: list[str]
    sweep: SweepSettings | None = None
    device: str = "cpu"
    chunk_size: int = 20000
    block_size: int = 20000
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
def _describe_type(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, opt: Option) -> Any:
    """Validate one option value against its declared type (a list when the option sweeps)."""
    tp = opt.type
    if opt.sweep and isinstance(value, list):
        return [_coerce_one(v, tp) for v in value]
    return _coerce_one(value, tp)


def _coerce_one(value: Any, tp: Any) -> Any:
    if tp is Any:
        return value
    if tp is float and isinstance(value, bool):
        raise ValueError(f"expected a number ({_describe_type(tp)}), got {value!r}")
    return TypeAdapter(tp).validate_python(value)


def _pydantic_problems(exc: pydantic.ValidationError, src: str, lines: dict) -> list[str]:
    out = []
    for e in exc.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "union["))))
        # pydantic adds the union member tag ('PluginRef', 'str', ...) into loc: drop it
        loc = tuple(p for p in loc if p not in ("PluginRef", "InitRef", "str", "list[InitRef]", "SweepSettings"))
        line = line_of(lines, loc)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{src}:{line}: {format_path(loc)}: {msg} (got {e.get('input')!r})"
                   if e["type"] != "missing" else f"{src}:{line}: {format_path(loc)}: required field is missing")
    return out


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
            options[key] = _coerce(value, opt)
        except (pydantic.ValidationError, ValueError) as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, pydantic.ValidationError) else str(exc)
            problems.append(
                f"{src}:{line_of(lines, p)}: {format_path(p)}: {detail} (expected "
                f"{_describe_type(opt.type)}{' or a list of them' if opt.sweep else ''}, got {value!r})"
            )
    for key, opt in spec.options.items():
        if opt.required and ref.get(key) is None:
            problems.append(
                f"{src}:{line_of(lines, path)}: {format_path(path + (key,))}: required option of "
                f"{SINGULAR[kind]} {name!r} is missing"
            )
    return PluginUse(kind, name, spec, options, path)


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
        for item in vs:
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    problems.append(
                        f"{src}:{line_of(lines, path + ('params', key))}: "
                        f"{format_path(path + ('params', key))}: expected a number or a list of "
                        f"numbers, got {item!r}"
                    )
        values[key] = vs
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))] or [{}]


def read_study_file(path: str | Path) -> tuple[dict[str, Any], dict, str]:
    """Read a YAML study; returns (data, line map, source name). Syntax errors are StudyErrors."""
    src = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise StudyError(src, [f"{src}: cannot read: {exc.strerror or exc}"]) from None
    return parse_study_text(text, src)


def parse_study_text(text: str, src: str) -> tuple[dict[str, Any], dict, str]:
    """Parse study YAML text; returns (data, line map, source name)."""
    try:
        data, lines = load_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{src}:{mark.line + 1}" if mark else src
        raise StudyError(src, [f"{where}: YAML syntax error: {getattr(exc, 'problem', exc)}"]) from None
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
        raise StudyError(src, _pydantic_problems(exc, src, lines)) from None
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
                                  spec.rtol if h.rtol is None else h.rtol, path))
    if model is not None and solver is not None:
        try:
            reason = solver.spec.applies(model.spec.factory(**model.options))
        except Exception as exc:  # a model factory rejecting its options
            reason = None
            problems.append(f"{src}:{line_of(lines, ('model',))}: model: {type(exc).__name__}: {exc}")
        if reason:
            problems.append(
                f"{src}:{line_of(lines, ('solver', 'name'))}: solver.name: solver {solver.name!r} "
                f"cannot solve model {model.name!r}: {reason}"
            )
    if m.sweep is not None:
        head = m.sweep.path.split(".")[0]
        if head not in ("init", "model", "solver", "datasets"):
            problems.append(
                f"{src}:{line_of(lines, ('sweep', 'path'))}: sweep.path: expected init.OPTION, "
                f"model.OPTION, solver.OPTION or datasets.OPTION, got {m.sweep.path!r}"
            )
    if problems:
        raise StudyError(src, problems)
    return Study(
        name=m.study, source=src, raw=data, seed=m.seed, model=model, inits=inits,
        init_counts=[r.count for r in init_refs], datasets=datasets, solver=solver,
        constructions=constructions, hypotheses=hyps, verdict=m.verdict, report=m.report,
        plugin_files=list(plugin_files or []), sweep=m.sweep, device=m.device,
        chunk_size=m.chunk_size, block_size=m.block_size, description=m.description,
    )


def load_study(path: str | Path, extra_plugins: list[str] = ()) -> tuple[Study, Registry]:
    """Read, load the plugins it needs, and validate a study file."""
    data, lines, src = read_study_file(path)
    return _finish_load(data, lines, src, Path(path).resolve().parent, extra_plugins)


def load_study_text(text: str, src: str, base: Path, extra_plugins: list[str] = ()) -> tuple[Study, Registry]:
    """Like :func:`load_study` for study text (a stored run's study); ``base`` resolves ``plugins:``."""
    data, lines, src = parse_study_text(text, src)
    return _finish_load(data, lines, src, base, extra_plugins)


def _finish_load(data, lines, src, base: Path, extra_plugins) -> tuple[Study, Registry]:
    from .manager import load_registry

    files = list(extra_plugins) + [f for f in plugin_files_of(data, base) if f not in extra_plugins]
    registry = load_registry(files)
    return validate(data, registry, src=src, lines=lines, plugin_files=files), registry


def is_inf(x: Any) -> bool:
    return isinstance(x, float) and math.isinf(x)
