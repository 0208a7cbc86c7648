"""Study files: YAML validated (shape by pydantic, plugin options by the registry) before any run.

Every problem is reported as ``FILE:LINE: FIELD.PATH: what is wrong (what was expected)`` and
all problems of a file are collected before :class:`~ibtest.base.errors.StudyError` is raised.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from ibtest.base.errors import StudyError
from ibtest.plugin.manager import SINGULAR, Registry
from ibtest.plugin.specs import Option
from ibtest.study.yamlpos import YAMLInputError, decode_text, format_path, line_of, load_with_lines

Verdict = Literal["falsified", "survives", "inconclusive"]
VERDICTS = ("falsified", "survives", "inconclusive")


def _no_bool(value: Any) -> Any:
    """YAML's ``true`` must not pass for the number 1 (pydantic's lax mode would take it)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not {value!r}")
    return value


#: an int field: lax (``"3"`` and ``3.0`` read as 3) but never a bool
Int = Annotated[int, BeforeValidator(_no_bool)]
#: a float field: lax (YAML reads ``1e-9``, without a dot, as a string), never a bool, finite
Float = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class PluginRef(BaseModel):
    """``{name: ..., <option>: ...}``: options stay free here and are checked by the registry."""

    model_config = ConfigDict(extra="allow")
    name: str


class InitRef(PluginRef):
    count: Int = Field(1, ge=1, description="initializations drawn per dataset")


class HypothesisRef(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    expect: Union[Verdict, None] = None
    atol: Union[Float, None] = Field(None, ge=0)
    rtol: Union[Float, None] = Field(None, ge=0)


class VerdictSettings(_Strict):
    min_pairs: Int = Field(1, ge=1, description="admissible pairs needed for 'survives'")
    safety: Float = Field(10.0, ge=1, description="factor on the solver-error term of the margin")
    recheck: bool = Field(True, description="re-solve every witness at a tighter tolerance")
    max_certificates: Int = Field(1, ge=0, description="certificates written per falsified member")
    max_group_pairs: Int = Field(4096, ge=0, description="own-triple pairs examined per group")
    search: bool = Field(True, description="search each converged triple's zero-loss set for a witness")
    search_steps: Int = Field(40, ge=0, description="projected (sub)gradient steps of the witness search")
    certify_max: Int = Field(16, ge=0, description=(
        "triples per member and block whose convex optimum is solved by cvxpy (≈ 10 ms each)"))
    shrink: bool = Field(False, description="shrink each written pair certificate to its core (ibtest shrink)")
    shrink_budget: Int = Field(6000, ge=4, description="instance solves each shrink may spend")


class ReportSettings(_Strict):
    formats: list[Literal["table", "markdown", "json"]] = Field(
        default_factory=lambda: ["table", "markdown", "json"]
    )
    triples: Union[bool, Annotated[int, Field(ge=0)]] = Field(True, description="list solved triples (True, False or at most N rows)")
    digits: Int = Field(6, ge=1, le=17)
    json_triples: Int = Field(1000, ge=0, description=(
        "study triples listed in results.json (every triple is in results.sqlite)"))


class SweepSettings(_Strict):
    """Repeat the study for each value of one option (e.g. ``init.scale``) and tabulate."""

    path: str = Field(description="dotted option path, e.g. init.scale or model.width")
    values: list[Any] = Field(min_length=1, description="one run per value (at least one)")


class StudyModel(_Strict):
    study: str
    description: str = ""
    seed: Int = 0
    plugins: list[str] = Field(default_factory=list)
    model: PluginRef
    init: Union[InitRef, Annotated[list[InitRef], Field(min_length=1)]] = Field(
        default_factory=lambda: InitRef(name="zeros"))
    datasets: list[PluginRef] = Field(min_length=1)
    solver: PluginRef
    constructions: list[Union[str, PluginRef]] = Field(default_factory=list)
    hypotheses: list[HypothesisRef] = Field(default_factory=list)
    verdict: VerdictSettings = Field(default_factory=VerdictSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    sweep: Union[SweepSettings, None] = None
    device: Literal["cpu", "cuda"] = "cpu"
    chunk_size: Int = Field(20000, ge=1, description="instances solved per batch")
    block_size: Int = Field(20000, ge=1, description=(
        "instances streamed through the whole pipeline at a time (memory is O(block)); own-triple "
        "pairs are formed within a block"))
    executor: Union[PluginRef, None] = Field(None, description=(
        "where the blocks run: {name: local} (default) or {name: ray, address: ..., num_cpus_per_task: ...}"))


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
    executor: PluginUse | None = None  # None: the local executor with its defaults


# ----------------------------------------------------------------------------------------
def _describe_type(tp: Any) -> str:
    """``int``, ``float``, ``list[float]``; an ``Annotated[int, Field(ge=1)]`` reads ``int >= 1``."""
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        bounds = []
        for m in meta:
            for c in getattr(m, "metadata", [m]):
                for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    if getattr(c, attr, None) is not None:
                        bounds.append(f"{sym} {getattr(c, attr)}")
        return " ".join([_describe_type(base)] + bounds)
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_args(tp):
        return f"{_describe_type(get_origin(tp))}[{', '.join(_describe_type(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _admits_bool(tp: Any) -> bool:
    """Whether a value of type ``tp`` may be a bool (``Any``, ``bool`` or a type that holds one)."""
    if tp is Any or tp is bool:
        return True
    if get_origin(tp) is Literal:
        return any(isinstance(a, bool) for a in get_args(tp))
    return any(_admits_bool(a) for a in get_args(tp) if not isinstance(a, (int, float, str)) or a is Any)


def _find_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            b = _find_bool(v)
            if b is not None:
                return b
    if isinstance(value, dict):
        return _find_bool(list(value.values()))
    return None


def _numbers(value: Any):
    """Every int or float (not bool) inside ``value`` (lists, tuples, dict values)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, dict):
        yield from _numbers(list(value.values()))


def _convention_lower(name: str, tp: Any) -> float | None:
    """Lower bound an undeclared option gets: a plain ``int`` is ≥ 0 (counts, sizes, budgets),
    a plain ``float`` named ``*tol`` (a tolerance) is ≥ 0. ``Annotated`` types bring their own."""
    if tp is int:
        return 0
    if tp is float and name.endswith("tol"):
        return 0
    return None


def _coerce(value: Any, opt: Option, name: str = "") -> Any:
    """Validate one option value against its declared type (a list when the option sweeps).

    On top of pydantic's check of ``opt.type``: a bool never passes for a number, no number is
    NaN, none is ±inf unless ``opt.allow_inf``, the conventions of :func:`_convention_lower`
    hold, and a sweep list is not empty.
    """
    if opt.sweep and isinstance(value, list):
        if not value:
            raise ValueError("an empty list gives no value to run (give at least one)")
        return [_coerce_one(v, opt, name) for v in value]
    return _coerce_one(value, opt, name)


def _coerce_one(value: Any, opt: Option, name: str = "") -> Any:
    tp = opt.type
    if not _admits_bool(tp):
        b = _find_bool(value)
        if b is not None:
            raise ValueError(f"{b!r} is not a number")
    for x in _numbers(value):  # before the type's own bounds: "NaN is not a value" says more
        if isinstance(x, float) and math.isnan(x):
            raise ValueError("NaN is not a value")
    out = value if tp is Any else TypeAdapter(tp).validate_python(value)
    lower = _convention_lower(name, tp)
    for x in _numbers(out):
        if isinstance(x, float) and math.isnan(x):
            raise ValueError("NaN is not a value")
        if isinstance(x, float) and math.isinf(x) and not getattr(opt, "allow_inf", False):
            raise ValueError("must be finite")
        if lower is not None and x < lower:
            raise ValueError(f"must be >= {lower:g}")
    return out


def _data_loc(loc: tuple, data: Any) -> tuple:
    """The part of a pydantic error location that indexes ``data`` (drops union member tags
    such as ``PluginRef`` or ``constrained-int``); a last key missing from a mapping is kept."""
    out, cur = [], data
    for i, part in enumerate(loc):
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif i == len(loc) - 1 and isinstance(cur, dict) and isinstance(part, str):
            out.append(part)
    return tuple(out)


def _pydantic_problems(exc: pydantic.ValidationError, src: str, lines: dict, data: Any = None) -> list[str]:
    by_loc: dict[tuple, list[str]] = {}
    for e in exc.errors():
        loc = _data_loc(tuple(e["loc"]), data) if data is not None else tuple(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        if e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = f"{msg} (got {_short(e.get('input'))}{_text_hint(e.get('input'))})"
        if msg not in by_loc.setdefault(loc, []):
            by_loc[loc].append(msg)
    return [f"{src}:{line_of(lines, loc)}: {format_path(loc)}: {'; or '.join(msgs)}" for loc, msgs in by_loc.items()]


def _text_hint(value: Any) -> str:
    """YAML 1.1 reads ``1e9`` (no dot, no exponent sign) as text: say so where a number was due."""
    if isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            return ""
        if math.isfinite(x) and x == int(x) and abs(x) < 1e18:
            return f"; YAML reads {value!r} as text, not a number: write {int(x)}"
        return f"; YAML reads {value!r} as text, not a number: write it with a dot and a signed exponent (1.0e+9)"
    return ""


def _short(value: Any, limit: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


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
            options[key] = _coerce(value, opt, key)
        except (pydantic.ValidationError, ValueError) as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, pydantic.ValidationError) else str(exc)
            problems.append(
                f"{src}:{line_of(lines, p)}: {format_path(p)}: {detail} (expected "
                f"{_describe_type(opt.type)}{' or a list of them' if opt.sweep else ''}, got {_short(value)}"
                f"{_text_hint(value)})"
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
        where = f"{src}:{line_of(lines, path + ('params', key))}: {format_path(path + ('params', key))}"
        if not vs:
            problems.append(f"{where}: an empty list gives no member to test (give at least one value)")
        for item in vs:
            if isinstance(item, float) and math.isnan(item):
                problems.append(f"{where}: NaN is not a value")
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    problems.append(f"{where}: expected a number or a list of numbers, got {_short(item)}")
        values[key] = vs
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))] or [{}]


def read_study_bytes(path: str | Path) -> str:
    """A study file's text: UTF-8, or a StudyError naming the file (and the first bad byte)."""
    src = str(path)
    try:
        data = Path(path).read_bytes()
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
        raise StudyError(src, _pydantic_problems(exc, src, lines, data)) from None
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
    executor = None
    if m.executor is not None:
        executor = _resolve_plugin(registry, "executors", m.executor.model_dump(), ("executor",), src, lines, problems)
    if m.sweep is not None:
        uses = {"init": inits, "model": [model], "solver": [solver], "datasets": datasets}
        _check_sweep(m.sweep, uses, src, lines, problems)
    if problems:
        raise StudyError(src, problems)
    study = Study(
        name=m.study, source=src, raw=data, seed=m.seed, model=model, inits=inits,
        init_counts=[r.count for r in init_refs], datasets=datasets, solver=solver,
        constructions=constructions, hypotheses=hyps, verdict=m.verdict, report=m.report,
        plugin_files=list(plugin_files or []), sweep=m.sweep, device=m.device,
        chunk_size=m.chunk_size, block_size=m.block_size, description=m.description, executor=executor,
    )
    from ibtest.study.budget import check_study

    problems = check_study(study, lines)
    if problems:
        raise StudyError(src, problems)
    return study


def _check_sweep(sweep: SweepSettings, uses: dict[str, list], src: str, lines: dict, problems: list[str]) -> None:
    """``sweep.path`` names an option every plugin of its kind has; every value is valid for it.

    The values are replaced by their validated form (``"1e-3"`` read as 0.001 where the option
    is a float), as :func:`apply_sweep` sets them on every plugin of that kind.
    """
    head, _, opt = sweep.path.partition(".")
    where = f"{src}:{line_of(lines, ('sweep', 'path'))}: sweep.path"
    if head not in uses or not opt:
        problems.append(f"{where}: expected init.OPTION, model.OPTION, solver.OPTION or datasets.OPTION, "
                        f"got {sweep.path!r}")
        return
    coerced: list[Any] | None = None
    for use in uses[head]:
        if use is None:
            continue
        option = use.spec.options.get(opt)
        if option is None:
            allowed = ", ".join(sorted(use.spec.options)) or "none"
            hint = " (count is not an option: list several inits instead)" if opt == "count" else ""
            problems.append(f"{where}: {SINGULAR[use.kind]} {use.name!r} ({format_path(use.path)}) has no "
                            f"option {opt!r} (options: {allowed}){hint}")
            continue
        values = []
        for k, v in enumerate(sweep.values):
            try:
                values.append(_coerce(v, option, opt))
            except (pydantic.ValidationError, ValueError) as exc:
                detail = exc.errors()[0]["msg"] if isinstance(exc, pydantic.ValidationError) else str(exc)
                problems.append(f"{src}:{line_of(lines, ('sweep', 'values', k))}: sweep.values[{k}]: {detail} "
                                f"(expected {_describe_type(option.type)} for {sweep.path}, got {_short(v)})")
        if coerced is None:
            coerced = values
    if coerced is not None and len(coerced) == len(sweep.values):
        sweep.values = coerced


def apply_sweep(study: Study, value: Any) -> Study:
    """The study with ``study.sweep.path`` set to ``value`` on every plugin of that kind."""
    import copy

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


def variants(study: Study) -> list[tuple[Any, Study]]:
    """(sweep value, study) for each run a study makes: one (None, study) without a sweep."""
    if study.sweep is None:
        return [(None, study)]
    return [(v, apply_sweep(study, v)) for v in study.sweep.values]


def load_study(path: str | Path, extra_plugins: list[str] = ()) -> tuple[Study, Registry]:
    """Read, load the plugins it needs, and validate a study file."""
    data, lines, src = read_study_file(path)
    return _finish_load(data, lines, src, Path(path).resolve().parent, extra_plugins)


def load_study_text(text: str, src: str, base: Path, extra_plugins: list[str] = ()) -> tuple[Study, Registry]:
    """Like :func:`load_study` for study text (a stored run's study); ``base`` resolves ``plugins:``."""
    data, lines, src = parse_study_text(text, src)
    return _finish_load(data, lines, src, base, extra_plugins)


def _finish_load(data, lines, src, base: Path, extra_plugins) -> tuple[Study, Registry]:
    from ibtest.plugin.manager import load_registry

    files = list(extra_plugins) + [f for f in plugin_files_of(data, base) if f not in extra_plugins]
    registry = load_registry(files)
    return validate(data, registry, src=src, lines=lines, plugin_files=files), registry


def is_inf(x: Any) -> bool:
    return isinstance(x, float) and math.isinf(x)
