"""The study's types: the shape of a study file (pydantic models, checked before any plugin is
loaded) and the validated study handed to the engine (dataclasses with the registered specs).

:class:`StudyModel` is what YAML must look like; :func:`ibtest.study.schema.validate` turns it
into a :class:`Study`, whose :class:`PluginUse` entries carry the registered spec (typed: a
``PluginUse[Model]`` for the model, ``PluginUse[Solver]`` for the solver, ...) and the options
resolved against it, and whose :class:`HypothesisUse` entries carry one params dict per member.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ibtest.plugin.specs import ClaimKind, Construction, Dataset, Executor, Hypothesis, Init, Model, Solver

#: what a study may expect of a member (``survives`` is not met by ``unrefuted``)
Verdict = Literal["falsified", "survives", "unrefuted", "inconclusive"]


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
    count: Int = Field(default=1, ge=1, description="initializations drawn per dataset")


#: what a limit verdict may be (:mod:`ibtest.judge.limits`)
LimitVerdict = Literal["consistent", "not_the_limit", "inconclusive"]


class HypothesisRef(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    expect: Verdict | None = None
    #: the expected verdict about the sweep's limit (a study with ``limit:``): one for every
    #: direction, or one per direction ({0: consistent, .inf: not_the_limit})
    expect_limit: LimitVerdict | dict[float, LimitVerdict] | None = None
    atol: Float | None = Field(default=None, ge=0)
    rtol: Float | None = Field(default=None, ge=0)


class VerdictSettings(_Strict):
    min_pairs: Int = Field(default=1, ge=1, description="admissible pairs needed for 'survives'")
    safety: Float = Field(default=10.0, ge=1, description="factor on the solver-error term of the margin")
    recheck: bool = Field(default=True, description="re-solve every witness at a tighter tolerance")
    max_certificates: Int = Field(default=1, ge=0, description="certificates written per falsified member")
    max_group_pairs: Int = Field(default=4096, ge=0, description="own-triple pairs examined per group")
    search: bool = Field(default=True, description="search each converged triple's zero-loss set for a witness")
    search_steps: Int = Field(default=40, ge=0, description="projected (sub)gradient steps of the witness search")
    certify_max: Int = Field(default=16, ge=0, description=(
        "triples per member and block whose convex optimum is solved by cvxpy (≈ 10 ms each)"))
    shrink: bool = Field(default=False, description="shrink each written pair certificate to its core (ibtest shrink)")
    shrink_budget: Int = Field(default=6000, ge=4, description="instance solves each shrink may spend")


class ReportSettings(_Strict):
    triples: bool | Annotated[int, Field(ge=0)] = Field(default=True, description=(
        "list solved triples (True, False or at most N rows)"))
    digits: Int = Field(default=6, ge=1, le=17)
    json_triples: Int = Field(default=1000, ge=0, description=(
        "study triples listed in results.json (every triple is in results.sqlite)"))


class LimitSettings(_Strict):
    """Judge each member's trend toward a limit of the swept scale (``init.scale → 0``): the
    sweep's ``path`` and the direction(s) ``to`` (0, .inf, or both)."""

    path: str = Field(description="the swept option, e.g. init.scale (must be the sweep's path)")
    to: float | list[float] = Field(description="0 or .inf (or [0, .inf]): the limit of the scale")


class BudgetSettings(_Strict):
    """How long a study may take: each plugin call (``deadline``) and the whole (``max_hours``)."""

    deadline: Float | None = Field(default=60.0, gt=0, description=(
        "seconds one plugin call (a solver's chunk, a construction, a hypothesis on a block) may take; a call "
        "past it is stopped and reported in its row; null: no deadline"))
    max_hours: Float = Field(default=1.0, gt=0, description=(
        "a study whose work is estimated beyond this many hours is refused before it runs"))


class SweepSettings(_Strict):
    """Repeat the study for each value of one option (e.g. ``init.scale``) and tabulate."""

    path: str = Field(description="dotted option path, e.g. init.scale or model.width")
    values: list[Any] = Field(min_length=1, description="one run per value (at least one)")


class FitSettings(_Strict):
    """``fit:``, what ``ibtest fit STUDY`` does with the study (the command line may override
    ``family`` and ``strict``): the families to fit, their options, strict convexity, the share of
    study instances held out for the falsifier, and what is expected."""

    family: str | Annotated[list[str], Field(min_length=1)] | None = Field(default=None, description=(
        "the family (or families) to fit"))
    options: dict[str, Any] = Field(default_factory=dict, description="options of the families (a c grid, degrees)")
    strict: Float | None = Field(default=None, ge=0, description=(
        "ask R - strict*|x - x0|^2/2 convex (lambda normalized to unit growth): only strictly convex members"))
    holdout: Float = Field(default=0.5, ge=0, lt=1, description="share of the study's instances held out")
    expect: Literal["fits", "no_fit"] | dict[str, Literal["fits", "no_fit"]] | None = Field(default=None, description=(
        "the expected outcome, for every family or per family"))
    verdict: Verdict | None = Field(default=None, description="expected verdict of the fitted member on held-out triples")
    truth: dict[str, Any] = Field(default_factory=dict, description=(
        "known values of the fitted parameters (a number, a list, 'identity' for a matrix, 'sweep' for the "
        "sweep's value)"))
    rtol: Float = Field(default=1e-6, gt=0, description="relative tolerance of the truth comparison")
    ties: bool | None = Field(default=None, description="expect the fit to only tie (distinct admissible pairs rated equal)")


class StudyModel(_Strict):
    study: str
    description: str = ""
    seed: Int = 0
    plugins: list[str] = Field(default_factory=list)
    model: PluginRef
    init: InitRef | Annotated[list[InitRef], Field(min_length=1)] = Field(
        default_factory=lambda: InitRef(name="zeros"))
    datasets: list[PluginRef] = Field(min_length=1)
    solver: PluginRef
    constructions: list[str | PluginRef] = Field(default_factory=list)
    hypotheses: list[HypothesisRef] = Field(default_factory=list)
    verdict: VerdictSettings = Field(default_factory=VerdictSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    sweep: SweepSettings | None = None
    limit: LimitSettings | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    chunk_size: Int = Field(default=20000, ge=1, description="instances solved per batch")
    block_size: Int = Field(default=20000, ge=1, description=(
        "instances streamed through the whole pipeline at a time (memory is O(block)); own-triple "
        "pairs are formed within a block"))
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    executor: PluginRef | None = Field(default=None, description=(
        "where the blocks run: {name: local} (default) or {name: ray, address: ..., num_cpus_per_task: ...}"))
    fit: FitSettings | None = Field(default=None, description="what ibtest fit does with this study")


# ----------------------------------------------------------------------------------------
#: the registered spec a :class:`PluginUse` refers to (Model, Dataset, Init, Solver, ...)
S = TypeVar("S", Model, Dataset, Init, Solver, Construction, Executor)


@dataclass
class PluginUse(Generic[S]):
    """A validated reference to a plugin: its spec, resolved options and field path.

    Generic in the spec's type, so ``Study.model.spec`` is a :class:`~ibtest.plugin.specs.Model`,
    ``Study.solver.spec`` a :class:`~ibtest.plugin.specs.Solver`, and so on.
    """

    kind: str
    name: str
    spec: S
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
    """A validated hypothesis entry: its registered spec, one params dict per family member (the
    product of the parameters given as lists), the expected verdict and tolerances."""

    name: str
    spec: Hypothesis
    members: list[dict[str, Any]]  # one params dict per family member
    expect: str | None
    atol: float
    rtol: float
    path: tuple[Any, ...]
    expect_limit: dict[float, str] = field(default_factory=dict)  # direction (0 or inf) -> limit verdict


@dataclass
class Study:
    """A validated study, ready for the engine."""

    name: str
    source: str
    raw: dict[str, Any]
    seed: int
    model: PluginUse[Model]
    inits: list[PluginUse[Init]]
    init_counts: list[int]
    datasets: list[PluginUse[Dataset]]
    solver: PluginUse[Solver]
    constructions: list[PluginUse[Construction]]
    hypotheses: list[HypothesisUse]
    verdict: VerdictSettings
    report: ReportSettings
    plugin_files: list[str]
    sweep: SweepSettings | None = None
    limit: LimitSettings | None = None
    device: str = "cpu"
    chunk_size: int = 20000
    block_size: int = 20000
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    executor: PluginUse[Executor] | None = None  # None: the local executor with its defaults
    fit: FitSettings | None = None  # ``ibtest fit``'s settings (the study's ``fit:``)
    #: hypothesis kind → the claim kinds that judge it (registration order), for every kind the
    #: study's hypotheses use
    kinds: dict[str, tuple[ClaimKind, ...]] = field(default_factory=dict)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    warnings: list[str] = field(default_factory=list)  # said before the study runs (e.g. its estimated work)

    def claim_kinds(self, use: HypothesisUse) -> tuple[ClaimKind, ...]:
        """The claim kinds that judge each run of a hypothesis of this study (those that score)."""
        return tuple(k for k in self.kinds.get(use.spec.kind, ()) if k.score is not None and k.finish is not None)

    def kind_named(self, use: HypothesisUse, name: str) -> ClaimKind | None:
        """The claim kind ``name`` among those of the hypothesis's kind (certificate-only ones too)."""
        return next((k for k in self.kinds.get(use.spec.kind, ()) if k.name == name), None)

