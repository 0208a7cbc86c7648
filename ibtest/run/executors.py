"""Executors: where the blocks of a study run.

The driver (:func:`run_blocks`, called by :func:`ibtest.run.pipeline.judge_run`) cuts a study into blocks of
``study.block_size`` instances (a :class:`BlockJob`) and hands them to an executor. Contract of an
executor (an object made by an :class:`ibtest.Executor` spec's ``factory(**options)``):

* ``start()`` connects to whatever runs the blocks; ``workers()`` is the number of blocks it runs
  at once (shown in the phase table); ``close()`` lets go of what ``start`` took; an optional
  ``check()`` (called when the study is validated, before anything is written) raises a
  UserError when it cannot work here (the Ray executor: a cluster address that does not answer);
* ``run(job)`` yields one :class:`BlockResult` per block of ``job.starts``, **in block order**,
  however and wherever the blocks were computed. A block computed elsewhere must be rebuilt from
  ``job.recipe`` (plain data: the study, its plugin files' text, the sweep value) with
  :func:`run_recipe_block`, and its result handed to ``job.received`` as soon as it arrives (that
  stores its solves, so a killed driver loses no finished block). A block whose first solve is
  already stored (``job.stored``, a resumed run) is run here with ``job.run_here``: the workers
  have no store, and a stored block must not be solved again. At most a bounded number of blocks
  may be held at once, so the driver's memory stays O(blocks in flight).

The driver applies each block in block order (store tables, tally, retained candidates, phases,
errors), so the verdicts and numbers do not depend on the executor, the worker count or the order
in which blocks finished: every seed derives from the study seed and the block's first instance.

Built in: ``local`` (this process, one block after the other) and ``ray`` (a Ray cluster, see
:mod:`ibtest.run.ray_executor`); a Dask or Slurm executor is one more plugin file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibtest.base import deadline
from ibtest.base.errors import UserError
from ibtest.base.guard import PluginFailure, describe, plugin_call
from ibtest.base.progress import Quiet
from ibtest.pairs.constructions import run_block
from ibtest.plugin.hookspecs import hookimpl
from ibtest.plugin.specs import Executor, Option, SolveResult
from ibtest.run.streaming import BlockScore, score_block
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.cache import solve_key
from ibtest.solve.engine import InstancePlan, Phase, RunContext, build_context, plan_instances, solve_settings
from ibtest.study.typed import PluginUse, Study


# ------------------------------------------------------------------------------------------
# what travels: a recipe out, a block result back
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """Everything a worker needs to rebuild a run's study: plain data, no live objects.

    ``raw`` is the study as parsed from its YAML; ``plugins`` the (path, text) of every local plugin
    file (installed plugins come from the worker's own entry points); ``sweep_value`` the value of
    ``study.sweep`` this run is for (``swept`` False: no sweep); ``score``: the worker scores every
    hypothesis member on its block (a streamed study; one block is judged whole on the driver).
    """

    raw: dict[str, Any]
    source: str
    plugins: tuple[tuple[str, str], ...]
    swept: bool = False
    sweep_value: Any = None
    score: bool = True

    @classmethod
    def of(cls, study: Study, sweep_value: Any = None, score: bool = True) -> Recipe:
        plugins = []
        for f in study.plugin_files:
            try:
                plugins.append((str(f), Path(f).read_text()))
            except OSError as exc:
                raise UserError(f"plugin file {f}: cannot read it to ship to the workers: {exc}") from None
        return cls(study.raw, study.source, tuple(plugins), study.sweep is not None, sweep_value, score)

    @property
    def key(self) -> str:
        """A digest of the recipe (workers cache the rebuilt study under it)."""
        blob = json.dumps([self.raw, self.source, self.plugins, self.swept, self.sweep_value, self.score],
                          sort_keys=True, default=repr)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class BlockResult:
    """One block's output: its triples and pairs (indices local to the block), and for a block
    computed elsewhere its phases, errors, solver calls, the solves to store (key, phase, result,
    seconds) and its member scores (by (hypothesis, member) index; None: the driver scores the
    block). A block run by the driver itself has already recorded those in its context."""

    start: int
    stop: int
    triples: Triples
    pairs: Pairs
    phases: list[Phase] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    solve_calls: int = 0
    solves: list[tuple[str, str, SolveResult, float]] = field(default_factory=list)
    scores: dict[tuple[int, int], BlockScore] | None = None


class RecordingStore:
    """The store a worker's context sees: nothing is stored yet; every new solve is kept, to be
    sent back with the block and stored by the driver."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, SolveResult, float]] = []

    def get_solve(self, key: str) -> SolveResult | None:
        return None

    def put_solve(self, key: str, phase: str, res: SolveResult, seconds: float) -> None:
        self.records.append((key, phase, res, seconds))

    def n_solves(self) -> int:
        return 0


# ------------------------------------------------------------------------------------------
# the job: the blocks of one run
# ------------------------------------------------------------------------------------------
class BlockJob:
    """The blocks of one run on the driver: their starts, how to run one here, how to tell a
    stored one, and where an arriving result's solves go. ``recipe`` is what a remote executor's
    workers rebuild the run from (None for an executor that runs every block here)."""

    def __init__(self, ctx: RunContext, plan: InstancePlan, size: int, recipe: Recipe | None):
        self.ctx, self.plan, self.size, self.recipe = ctx, plan, max(1, size), recipe
        self.starts = list(range(0, plan.n, self.size))
        self._resumed = ctx.store is not None and ctx.store.n_solves() > 0

    def stop(self, start: int) -> int:
        return min(self.plan.n, start + self.size)

    def run_here(self, start: int, *, quiet: bool = False) -> BlockResult:
        """Run a block in this process, on the driver's context (and its store)."""
        ctx = self.ctx
        saved = ctx.progress
        if quiet:
            ctx.progress = Quiet()
        try:
            t, pairs = run_block(ctx, self.plan.block(start, self.stop(start)), start)
        finally:
            ctx.progress = saved
        return BlockResult(start, self.stop(start), t, pairs)

    def stored(self, start: int) -> bool:
        """Whether the block's first solver call is in the store (a resumed run): such a block is
        run on the driver, which takes its stored solves instead of solving them again."""
        store = self.ctx.store
        if not self._resumed or store is None:
            return False
        head = self.plan.block(start, min(self.stop(start), start + max(1, self.ctx.study.chunk_size)))
        key = solve_key([head.X, head.y, head.mask, head.theta0], solve_settings(self.ctx))
        return store.get_solve(key) is not None

    def received(self, res: BlockResult) -> None:
        """A block computed elsewhere has arrived (in any order): store its solves now."""
        store = self.ctx.store
        if store is not None:
            for key, phase, sol, seconds in res.solves:
                store.put_solve(key, phase, sol, seconds)


# ------------------------------------------------------------------------------------------
# executors
# ------------------------------------------------------------------------------------------
class ExecutorBase:
    """The executor interface (see the module doc); also the ``local`` executor's base."""

    name = "base"
    remote = False  # True: blocks run elsewhere; the driver shows one bar over the blocks

    def start(self) -> None:
        pass

    def workers(self) -> int:
        return 1

    def run(self, job: BlockJob) -> Iterator[BlockResult]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalExecutor(ExecutorBase):
    """Today's loop: every block in this process, one after the other, straight into the store."""

    name = "local"

    def run(self, job: BlockJob) -> Iterator[BlockResult]:
        for start in job.starts:
            yield job.run_here(start)


def _make_ray(**options: Any) -> ExecutorBase:
    from ibtest.run.ray_executor import RayExecutor

    return RayExecutor(**options)


LOCAL = Executor(name="local", factory=lambda: LocalExecutor(),
                 doc="Run the blocks in this process, one after the other (the default).")
RAY = Executor(
    name="ray", factory=_make_ray,
    doc='Run the blocks as Ray tasks on a cluster (needs pip install "ibtest[ray]").',
    options={
        "address": Option(None, str | None, 'cluster to join: "auto" (a running one), "ray://HOST:10001" '
                          "(Ray client), \"local\" (a new one here), or unset (RAY_ADDRESS, else the cluster `ray start` "
                          "began on this machine, else a new one here)"),
        "num_cpus_per_task": Option(1, int, "CPUs per block task; also its torch threads"),
        "max_in_flight": Option(0, int, "blocks submitted and not yet applied, at most (0: twice the workers)"),
        "max_retries": Option(3, int, "times a block is retried when its worker dies"),
    },
)


@hookimpl
def ibtest_executors() -> list[Executor]:
    return [LOCAL, RAY]


def choose(study: Study, registry: Any, name: str | None) -> None:
    """Set ``study.executor`` to executor ``name`` (the command line's ``--executor``; the study's
    own options are kept when it names the same executor), then check it can be made here."""
    if name is not None and (study.executor is None or study.executor.name != name):
        if name not in registry.items["executors"]:
            known = ", ".join(registry.names("executors"))
            raise UserError(f"--executor {name}: unknown executor (known: {known})")
        spec = registry.get("executors", name)
        study.executor = PluginUse("executors", name, spec, {k: o.default for k, o in spec.options.items()},
                                   ("executor",))
    made = make(study)
    try:
        check = getattr(made, "check", None)
        if callable(check):  # e.g. a cluster that does not answer: refused before anything is written
            check()
    finally:
        made.close()


def make(study: Study) -> ExecutorBase:
    """The study's executor, not started (``local`` when the study names none)."""
    use = study.executor
    if use is None:
        return LocalExecutor()
    try:
        return plugin_call(use.spec.factory, **use.options)
    except UserError:
        raise
    except Exception as exc:  # a plugin executor that cannot be made with these options
        detail = describe(exc) if isinstance(exc, PluginFailure) else f"{type(exc).__name__}: {exc}"
        raise UserError(f"executor {use.name!r}: {detail}") from None


# ------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------
@dataclass
class Ran:
    """What :func:`run_blocks` reports: the executor, its worker count, blocks and wall time."""

    executor: str
    workers: int
    blocks: int
    seconds: float


def run_blocks(ctx: RunContext, plan: InstancePlan, study: Study, sweep_value: Any,
               apply: Callable[[Triples, Pairs, dict[tuple[int, int], BlockScore] | None], None]) -> Ran:
    """Run every block of the study on its executor and ``apply`` each one in block order
    (its triples, pairs, and member scores when a worker computed them).

    A block's phases, errors and solver calls are merged into ``ctx`` before ``apply`` sees it, so
    the phase table and summary read as for a local run.
    """
    executor = make(study)
    remote = bool(getattr(executor, "remote", False))
    size = max(1, study.block_size)
    recipe = Recipe.of(study, sweep_value, score=plan.n > size) if remote else None
    job = BlockJob(ctx, plan, size, recipe)
    t0 = time.perf_counter()
    executor.start()
    try:
        workers = executor.workers()
        if remote:
            ctx.progress.start(f"blocks on {executor.name} ({workers} workers)", plan.n)
        done = 0
        for res in executor.run(job):
            if res.start != job.starts[done]:
                raise RuntimeError(f"executor {executor.name!r} yielded block {res.start} out of order "
                                   f"(expected {job.starts[done]})")
            for ph in res.phases:
                ctx.add_phase(ph)
            ctx.errors.extend(res.errors)
            ctx.solve_calls += res.solve_calls
            apply(res.triples, res.pairs, res.scores)
            done += 1
            if remote:
                ctx.progress.update(res.stop - res.start)
        if done != len(job.starts):
            raise RuntimeError(f"executor {executor.name!r} returned {done} of {len(job.starts)} blocks")
        seconds = time.perf_counter() - t0
        if remote:
            ctx.progress.end(f"blocks: {done} on {executor.name} ({workers} workers), {seconds:.2f} s")
    finally:
        executor.close()
    return Ran(executor.name, workers, len(job.starts), seconds)


# ------------------------------------------------------------------------------------------
# the worker side
# ------------------------------------------------------------------------------------------
_BUILT: dict[str, tuple[RunContext, InstancePlan]] = {}  # recipe key -> rebuilt context and plan


def _plugin_path(path: str, text: str) -> str:
    """Where this process loads a shipped plugin file from: a copy of the driver's text, in a
    directory named by its digest. Never the original path, even where this machine sees it: a
    long-lived worker caches a plugin module by its path, and the file may have changed since."""
    digest = hashlib.sha256(f"{path}\0{text}".encode()).hexdigest()[:16]
    d = Path(tempfile.gettempdir()) / "ibtest-plugins" / digest
    copy = d / Path(path).name
    if not copy.is_file() or copy.read_text() != text:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{copy.name}.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, copy)  # atomic: two workers may write it at once
    return str(copy)


def rebuild(recipe: Recipe) -> tuple[RunContext, InstancePlan]:
    """The context and instance plan of a recipe's run, rebuilt in this process (cached)."""
    got = _BUILT.get(recipe.key)
    if got is not None:
        return got
    from ibtest.plugin.manager import load_registry
    from ibtest.study.schema import validate

    files = [_plugin_path(p, text) for p, text in recipe.plugins]
    study = validate(recipe.raw, load_registry(files), src=recipe.source, plugin_files=files)
    if recipe.swept:
        from ibtest.study.sweep import apply_sweep

        study = apply_sweep(study, recipe.sweep_value)
    ctx = build_context(study)
    got = (ctx, plan_instances(ctx))
    _BUILT.clear()  # one run at a time per worker process: keep memory flat
    _BUILT[recipe.key] = got
    return got


def run_recipe_block(recipe: Recipe, start: int, stop: int) -> BlockResult:
    """Run block ``start`` … ``stop − 1`` of a recipe's run in this process (a worker): the same
    pipeline as the driver's, with no store, and the member scores; the block's new solves come
    back to be stored."""
    ctx, plan = rebuild(recipe)
    ctx.phases, ctx.errors, ctx.solve_calls = [], [], 0
    rec = RecordingStore()
    ctx.store = rec
    with deadline.policy(ctx.study.budget.deadline):  # the driver's plugin calls get it too (runner)
        try:
            t, pairs = run_block(ctx, plan.block(start, stop), start)
        finally:
            ctx.store = None
        scores = score_block(ctx, t, pairs) if recipe.score else None
    return BlockResult(start, stop, t, pairs, ctx.phases, ctx.errors, ctx.solve_calls, rec.records, scores)
