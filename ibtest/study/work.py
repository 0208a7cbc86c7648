"""The work a study or a certificate asks for, estimated before anything runs.

Next to the memory estimate (:mod:`ibtest.study.budget`), the work estimate catches what memory
does not: a million rotations of every pair, an error tolerance of 0, a step size of 1e-300 with
10^6 steps. It counts solver calls and prices each one:

    seconds ≈ Σ_calls  steps × (T0 + T1·B + F·flops(B, n, P))

* **calls**: per block of B = min(N, block_size) instances, the main solve; each triple
  construction's partners and each pair construction's new pairs, sized by the construction's
  ``size(sources, n, **options) -> (instances, points)`` (a construction that declares none is
  taken to add one instance per source; a pair construction's sources are every pair the block
  can hold); and once per run the re-solve of the candidates a verdict
  rests on, at the solver's tightened settings. A sweep runs every value.
* **steps** an instance is *expected* to take, from the solver's options (:func:`expected_steps`):
  ``exact`` its linear pieces (at most one per point and ``max_pieces``); ``gd`` its ``steps``, or
  fewer when it can stop (flow time :data:`GD_FLOW_TIME` reached at its ``lr``) — never fewer when
  ``fit_tol`` and ``grad_tol`` are both 0; ``adaptive`` :data:`ADAPTIVE_STEPS` at the default
  tolerance, more for a tighter one (local error ∝ h^(order+1)), at most ``max_steps``; with
  ``rtol`` and ``atol`` both 0 no step can ever be accepted: the work is unbounded. A solver
  plugin is counted one step a call (its own cost is unknown here).
* **price of a step**: a fixed cost per call T0, a cost per instance T1 and the multiply-adds of
  the model's gradient (B·n·P, times the stages of a Runge–Kutta step) at F seconds each.

The constants (:data:`PRICE`) are a fast machine's, so the estimate is optimistic: real runs take
about as long or longer. A study estimated beyond ``budget.max_hours`` is refused with its
breakdown; beyond :data:`WARN_SECONDS` it runs with a warning; a solver call estimated past the
study's deadline gets a warning too (it would end as failed rows).

A certificate replay (``verify``, ``shrink``) may ask for at most :data:`REPLAY_FACTOR` times the
work its solver's *default* settings would on the same data (:func:`certificate_work_problem`):
an edited file can lower a tolerance, raise a budget or shrink a step size within each option's
own cap and still not make ``verify`` run for hours, because the product is capped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ibtest.plugin.specs import DEFAULT_FIT_TOL

#: per solver: (T0 seconds a step of a call, T1 seconds a step per instance, stages a step)
PRICE: dict[str, tuple[float, float, int]] = {"exact": (1e-3, 2e-5, 1), "gd": (1e-4, 2e-7, 2),
                                              "adaptive": (2e-3, 5e-5, 12)}
FLOP = 1e-9  # seconds a multiply-add of a gradient
GD_FLOW_TIME = 100.0  # flow time after which gradient descent has usually stopped
ADAPTIVE_STEPS = 300  # steps an adaptive solve takes at rtol 1e-10
ADAPTIVE_RTOL = 1e-10
RECHECK = 64  # instances re-solved at tightened settings per run (candidates, error sample)
WARN_SECONDS = 600.0
REPLAY_FACTOR = 3.0


def _num(options: dict[str, Any], key: str, default: float) -> float:
    v = options.get(key, default)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def expected_steps(solver: str, options: dict[str, Any], n: int) -> tuple[float, str | None]:
    """Steps (pieces) one instance is expected to take, and why it is unbounded (else None)."""
    if solver == "exact":
        return max(1.0, min(_num(options, "max_pieces", 64), n + 1.0)), None
    if solver == "gd":
        steps = max(1.0, _num(options, "steps", 100_000))
        lr = _num(options, "lr", 1e-2)
        stops = _num(options, "fit_tol", DEFAULT_FIT_TOL) > 0 or _num(options, "grad_tol", 1e-14) > 0
        if not stops or lr <= 0:
            return steps, None
        return min(steps, max(1.0, GD_FLOW_TIME / lr)), None
    if solver == "adaptive":
        cap = max(1.0, _num(options, "max_steps", 200_000))
        tol = max(_num(options, "rtol", ADAPTIVE_RTOL), _num(options, "atol", 1e-12))
        if tol <= 0:
            return math.inf, ("solver.rtol and solver.atol are both 0: no step can meet a zero error "
                              "tolerance, so every instance would run until max_steps")
        order = _num(options, "order", 8)
        return min(cap, ADAPTIVE_STEPS * max(1.0, (ADAPTIVE_RTOL / tol) ** (1.0 / (order + 1)))), None
    return 1.0, None


def call_seconds(solver: str, options: dict[str, Any], B: int, n: int, P: int) -> tuple[float, str | None]:
    """Estimated seconds of one solver call on B instances of n points and P parameters."""
    if B <= 0:
        return 0.0, None
    steps, why = expected_steps(solver, options, n)
    if why:
        return math.inf, why
    t0, t1, stages = PRICE.get(solver, (1e-3, 1e-5, 1))
    if solver == "exact":  # a piece: root finding on a grid over every point, and a P x P eigenproblem
        flops = B * (n * _num(options, "grid", 192) + P ** 3)
    else:
        flops = stages * 4.0 * B * n * P
    return steps * (t0 + t1 * B + FLOP * flops), None


@dataclass
class Estimate:
    """A study's estimated work: seconds in all, the longest single call, what they came from."""

    seconds: float = 0.0
    longest_call: float = 0.0
    longest_what: str = ""
    parts: list[tuple[str, float]] = field(default_factory=list)
    unbounded: str | None = None

    def add(self, what: str, seconds: float, call: float, times: int = 1) -> None:
        self.seconds += seconds * times
        self.parts.append((what, seconds * times))
        if call > self.longest_call:
            self.longest_call, self.longest_what = call, what

    def breakdown(self, most: int = 3) -> str:
        big = sorted(self.parts, key=lambda p: -p[1])[:most]
        return "; ".join(f"{what} {human(s)}" for what, s in big if s > 0)


def human(seconds: float) -> str:
    """``7260`` -> ``'2 h'``; ``90`` -> ``'1.5 min'``."""
    if not math.isfinite(seconds):
        return "forever"
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.2g} {unit}"
    return f"{seconds:.2g} s"


def construction_size(use: Any, opts: dict[str, Any], sources: int, n: int) -> tuple[int, int]:
    """(new instances, points each) a construction builds from ``sources`` triples or pairs of n points."""
    size = getattr(use.spec, "size", None)
    if size is None:
        return sources * (2 if use.spec.stage == "pair" else 1), n
    from ibtest.base.guard import plugin_call

    try:
        k, m = plugin_call(size, sources, n, **opts)
        return max(0, int(k)), max(1, int(m))
    except Exception:  # noqa: BLE001 - a size() that cannot say: one per source
        return sources, n


def built_by_constructions(study: Any, B: int, n: int) -> list[tuple[str, int, int]]:
    """(name, instances, points) each construction of ``study`` builds in a block of B study
    instances of n points: a triple construction from the B triples, a pair construction from
    every pair the block can hold (its study triples and the partners built before: T·(T−1)/2)."""
    out = [(use.name, *construction_size(use, opts, B, n)) for use in study.constructions
           if use.spec.stage != "pair" for opts in use.expand()]
    T = B + sum(k for _, k, _ in out)
    pairs = T * (T - 1) // 2
    out += [(use.name, *construction_size(use, opts, pairs, n)) for use in study.constructions
            if use.spec.stage == "pair" for opts in use.expand()]
    return out


def estimate(study: Any, N: int, n: int, d: int, P: int) -> Estimate:
    """The work of one run (one sweep value) of ``study`` with N instances of n points, d, P."""
    est = Estimate()
    name, opts = study.solver.name, dict(study.solver.options)
    B = min(N, max(1, study.block_size))
    blocks = -(-N // B) if B else 0
    chunk = max(1, study.chunk_size)

    def solves(what: str, k: int, m: int, options: dict[str, Any], times: int) -> None:
        if k <= 0 or est.unbounded:
            return
        full, rest = divmod(k, chunk)
        one, why = call_seconds(name, options, min(k, chunk), m, P)
        if why:
            est.unbounded = why
            return
        last = call_seconds(name, options, rest, m, P)[0] if rest else 0.0
        est.add(what, full * one + last, one, times)

    try:
        tight = study.solver.spec.tighten(dict(opts))
    except Exception:  # noqa: BLE001 - judged when it runs
        tight = opts
    fit_tol = {"fit_tol": study.fit_tol}  # the study's fit rule: every solver call gets it
    solves("solve", B, n, {**opts, **fit_tol}, blocks)
    for name_c, k, m in built_by_constructions(study, B, n):
        solves(f"construction {name_c}", k, m, {**opts, **fit_tol}, blocks)
    if study.verdict.recheck:
        solves("re-solve at tightened settings", min(N, RECHECK), n, {**tight, **fit_tol}, 1)
    return est


def check(study: Any, N: int, n: int, d: int, P: int, suffix: str = "") -> tuple[list[str], list[str]]:
    """(problems, warnings) of a study's work: refused beyond ``budget.max_hours``, warned beyond
    :data:`WARN_SECONDS` or when a call is estimated past the deadline."""
    est = estimate(study, N, n, d, P)
    if est.unbounded:
        return [f"the study's work is unbounded: {est.unbounded}{suffix}"], []
    limit = study.budget.max_hours * 3600.0
    size = f"{N:,} instances of n = {n:,} points, P = {P:,} parameters, solver {study.solver.name}"
    if est.seconds > limit:
        return [f"the study is estimated to take about {human(est.seconds)} ({size}: {est.breakdown()}), more "
                f"than budget.max_hours = {study.budget.max_hours:g}: make it smaller (constructions' counts, "
                f"steps, n, instances), or raise budget.max_hours if you mean it{suffix}"], []
    warnings = []
    if est.seconds > WARN_SECONDS:
        warnings.append(f"the study is estimated to take about {human(est.seconds)} ({size}: {est.breakdown()}){suffix}")
    deadline = study.budget.deadline
    if deadline is not None and est.longest_call > deadline:
        warnings.append(f"one solver call ({est.longest_what}) is estimated at about {human(est.longest_call)}, past "
                        f"the deadline of {deadline:g} s per plugin call: such calls end as failed rows (raise "
                        f"budget.deadline, or lower chunk_size){suffix}")
    return [], warnings


def certificate_work_problem(spec: Any, options: dict[str, Any], *, tightened: int, B: int, n: int,
                             P: int) -> str | None:
    """Why the settings a certificate's replay would solve with ask for too much work (None: they
    do not): more than :data:`REPLAY_FACTOR` times what the solver's defaults, tightened the same
    number of times (``tightened``: 1 for a file's ``tightened`` settings tightened once more by
    the replay), would on the same data (B instances of n points, P parameters). The one call the
    rules (``verify``, ``shrink``) make where they build solver settings from a file."""
    defaults: dict[str, Any] = {k: o.default for k, o in spec.options.items()}
    try:
        for _ in range(tightened):
            defaults = spec.tighten(dict(defaults))
    except Exception:  # noqa: BLE001 - a plugin's tighten: its own defaults are the reference
        defaults = {k: o.default for k, o in spec.options.items()}
    return work_problem(spec.name, options, defaults, B, n, P)


def work_problem(solver: str, options: dict[str, Any], defaults: dict[str, Any],
                 B: int, n: int, P: int) -> str | None:
    """:func:`certificate_work_problem` with the reference settings given."""
    asked, why = call_seconds(solver, options, B, n, P)
    if why:
        return f"its solver settings ask for unbounded work: {why}"
    base, _ = call_seconds(solver, defaults, B, n, P)
    if base > 0 and asked > REPLAY_FACTOR * base:
        steps, _ = expected_steps(solver, options, n)
        usual, _ = expected_steps(solver, defaults, n)
        return (f"its solver settings ask the replay for about {asked / base:.3g} times the work of the tool's "
                f"default settings ({steps:,.0f} steps an instance where the defaults take about {usual:,.0f}; "
                f"about {human(asked)}), more than the {REPLAY_FACTOR:g} times a certificate may ask for")
    return None
