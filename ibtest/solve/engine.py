"""The engine: instances → triples → admissible pairs → evaluations → verdicts.

Data flows one way (shared/DESIGN.md). Everything is batched: instances are solved in chunks of
``study.chunk_size``; constructions, cross-fit checks and hypothesis evaluations work on whole
tensors. A failing plugin is reported in its row (``errors``) and the rest of the study goes on.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.base.errors import UserError
from ibtest.base.progress import Progress, Quiet
from ibtest.plugin.specs import ModelBase, SolveResult
from ibtest.solve.batch import Triples, cat_padded
from ibtest.solve.cache import SolveCache, solve_key
from ibtest.solve.rules import Rules, SolverSettings
from ibtest.study import budget
from ibtest.study.checks import call_plugin, call_solver, check_data, check_n_params, check_theta0
from ibtest.study.typed import PluginUse, Study
from ibtest.study.yamlpos import format_path

Tensor = torch.Tensor


@dataclass
class Phase:
    """Timing of one engine phase (for the run summary: solves/s per phase)."""

    name: str
    count: int
    seconds: float
    statuses: dict[str, int] = field(default_factory=dict)
    calls: int = 0  # solver invocations (chunks not found in the results store)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class RunContext:
    """Everything the later phases need: the study, the model instance, the solver and its settings."""

    study: Study
    model: ModelBase
    solver: Any
    solver_options: dict[str, Any]
    fit_tol: float
    device: torch.device
    rules: Rules
    settings: SolverSettings
    phases: list[Phase] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    progress: Progress = field(default_factory=Quiet)
    store: SolveCache | None = None
    solve_calls: int = 0
    block_start: int = 0  # index of the first study instance of the block being run
    out_of_range: str | None = None  # the data's scale is beyond float64 (fit.range_warning): no verdict

    def add_phase(self, ph: Phase) -> Phase:
        """Record a phase; a phase of the same name (a later block of a streamed study) is merged."""
        for old in self.phases:
            if old.name == ph.name:
                old.count += ph.count
                old.seconds += ph.seconds
                old.calls += ph.calls
                for k, v in ph.statuses.items():
                    old.statuses[k] = old.statuses.get(k, 0) + v
                return old
        self.phases.append(ph)
        return ph


class PluginInputWritten(RuntimeError):
    """A solver or model plugin modified a tensor it was given."""


def _seed(*parts: int) -> torch.Generator:
    s = 0
    for p in parts:
        s = (s * 1_000_003 + int(p) + 7919) % (2**63 - 1)
    return torch.Generator().manual_seed(s)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def construction_seed(ctx: RunContext, stage: int, n: int) -> torch.Generator:
    """The generator a construction gets: from the study seed, the stage and the table size, and
    for a later block of a streamed study its first instance (so blocks differ)."""
    parts = (ctx.study.seed, stage, n) + ((ctx.block_start,) if ctx.block_start else ())
    return _seed(*parts)


def _label(use: PluginUse, opts: dict[str, Any], telling: Sequence[str] = ()) -> str:
    """``gaussian(scale=0.1)``: the plugin's name with the options that vary within the entry (a
    list) and those in ``telling`` (the options that tell it from another entry of the plugin)."""
    varying = [k for k, v in use.options.items() if isinstance(v, list) and use.spec.options[k].sweep]
    varying += [k for k in telling if k not in varying]
    shown = ", ".join(f"{k}={_fmt(opts.get(k, use.options.get(k)))}" for k in varying)
    return f"{use.name}({shown})" if shown else use.name


def _telling_options(uses: Sequence[PluginUse]) -> list[list[str]]:
    """Per entry, the options whose values differ between the entries of the same plugin (two
    ``gaussian`` inits of scales 0.1 and 1 are labelled by their scale, not both ``gaussian``)."""
    out = []
    for u in uses:
        same = [o for o in uses if o.name == u.name]
        keys = dict.fromkeys(k for o in same for k in o.options)
        out.append([k for k in keys if len(same) > 1 and
                    len({repr(o.options.get(k)) for o in same}) > 1])
    return out


# ------------------------------------------------------------------------------------------
# instances
# ------------------------------------------------------------------------------------------
@dataclass
class InstancePlan:
    """The study's instances, unmaterialised: every dataset × every θ0, dataset-major.

    ``X`` [N_d, n, d], ``y`` / ``mask`` [N_d, n] hold each dataset once and ``theta0`` [N_i, P]
    each init once; instance k is dataset k // N_i with init k % N_i. :meth:`block` builds the
    :class:`Triples` of a range of instances, so a large study is streamed block by block
    without ever holding N_d · N_i copies.
    """

    X: Tensor
    y: Tensor
    mask: Tensor
    theta0: Tensor
    labels: list[str]
    init_labels: list[str]
    device: torch.device
    warnings: list[str] = field(default_factory=list)  # its estimated work, said before it runs

    @property
    def n(self) -> int:
        return self.X.shape[0] * self.theta0.shape[0]

    def block(self, start: int, stop: int) -> Triples:
        """Instances ``start`` … ``stop − 1`` as unsolved triples (theta = theta0, status BUDGET)."""
        k = torch.arange(start, stop)
        N_i = self.theta0.shape[0]
        di, ii = k // N_i, k % N_i
        dev, B = self.device, stop - start
        th0 = self.theta0[ii].to(dev)
        return Triples(
            X=self.X[di].to(dev), y=self.y[di].to(dev), mask=self.mask[di].to(dev), theta0=th0, theta=th0.clone(),
            status=torch.full((B,), st.BUDGET, dtype=torch.int64),
            loss=torch.full((B,), float("nan"), dtype=torch.float64),
            dataset_id=di, init_id=ii, parent=torch.full((B,), -1, dtype=torch.int64),
            labels=[self.labels[j] for j in di.tolist()], init_labels=[self.init_labels[j] for j in ii.tolist()],
            origin=["study"] * B,
        )


def plan_instances(ctx: RunContext) -> InstancePlan:
    """Generate every dataset and every θ0 of the study once.

    Inits are drawn once per (init entry, d) and shared by every dataset of that dimension, so
    datasets run from the same θ0 and own-triple pairs can share an initialization.

    Whatever a dataset or init plugin raises or returns that the engine cannot use (see
    :mod:`ibtest.study.checks`), datasets of different d, and a size beyond the memory budget (see
    :mod:`ibtest.study.budget`) end here with a :class:`~ibtest.base.errors.PluginError` or
    :class:`~ibtest.base.errors.UserError`, before anything is solved.
    """
    study, model = ctx.study, ctx.model
    parts, labels, dims = [], [], []
    data_telling = _telling_options(study.datasets)
    for i, use in enumerate(study.datasets):
        for j, opts in enumerate(use.expand()):
            batch = call_plugin(use, use.spec.generate, rng=_seed(study.seed, 1, i, j), **opts)
            batch = check_data(batch, use)
            base = _label(use, opts, data_telling[i])
            k = batch.X.shape[0]
            assert batch.mask is not None  # DataBatch fills a missing mask with ones
            parts.append((batch.X, batch.y, batch.mask))
            dims.append((f"{format_path(use.path)} {base}", batch.X.shape[-1]))
            if k == 1:
                labels.append(base)
            else:
                subs = list(batch.labels[:k]) + [str(c) for c in range(len(batch.labels), k)]
                labels += [f"{base} {sub}".strip() for sub in subs]
    mismatch = budget.d_mismatch(dims)
    if mismatch:
        raise UserError(f"study {study.source}: {mismatch}")
    X, y, mask = cat_padded(parts)
    d = X.shape[-1]
    P = check_n_params(call_plugin(study.model, model.n_params, d), study.model.name, d)
    n_inits = sum(len(u.expand()) * c for u, c in zip(study.inits, study.init_counts))
    warnings = budget.check_plan_study(study, X.shape[0], X.shape[1], d, n_inits, P)
    thetas, init_labels = [], []
    telling = _telling_options(study.inits)
    for ii, (iuse, count) in enumerate(zip(study.inits, study.init_counts)):
        for jj, opts in enumerate(iuse.expand()):
            th0 = call_plugin(iuse, iuse.spec.sample, model=model, d=d, count=count,
                              rng=_seed(study.seed, 2, ii, jj), **opts)
            thetas.append(check_theta0(th0, iuse, count, P))
            base = _label(iuse, opts, telling[ii])
            init_labels += [f"{base}#{c}" for c in range(count)] if count > 1 else [base]
    return InstancePlan(X, y, mask, torch.cat(thetas), labels, init_labels, ctx.device, warnings)


# ------------------------------------------------------------------------------------------
# solving
# ------------------------------------------------------------------------------------------
def solve_settings(ctx: RunContext, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings part of a solve's store key (solver, its options, model, its options)."""
    opts = dict(ctx.solver_options if options is None else options)
    return {"solver": ctx.study.solver.name, "options": opts, "fit_tol": ctx.fit_tol, "model": ctx.study.model.name,
            "model_options": ctx.study.model.options}


def solve(ctx: RunContext, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor, *,
          options: dict[str, Any] | None = None, phase: str = "solve") -> SolveResult:
    """Solve B instances in chunks of ``study.chunk_size``.

    With a results store, each chunk is looked up by the hash of its inputs first and stored as
    soon as it is solved, so a resumed run recomputes nothing. A solver exception marks its
    chunk FAILED and the study goes on.
    """
    opts = dict(ctx.solver_options if options is None else options)
    B = theta0.shape[0]
    t0 = time.perf_counter()
    thetas, stats, losses, infos = [], [], [], []
    chunk = max(1, ctx.study.chunk_size)
    settings = solve_settings(ctx, opts)
    calls = 0
    ctx.progress.start(phase, B)
    for s in range(0, B, chunk):
        sl = slice(s, min(B, s + chunk))
        res, key = None, None
        solved = False
        if ctx.store is not None:
            key = solve_key([X[sl], y[sl], mask[sl], theta0[sl]], settings)
            res = ctx.store.get_solve(key)
            k = sl.stop - sl.start
            if res is not None and (res.theta.shape != theta0[sl].shape or res.status.shape != (k,)
                                    or res.loss.shape != (k,)):
                res = None  # a damaged stored solve: solve it again
        if res is None:
            ctx.solve_calls += 1
            calls += 1
            solved = True
            c0 = time.perf_counter()
            # the solver and the model get their own copies: a plugin that writes into its inputs
            # cannot change the triples (and is reported)
            given = [v[sl].clone() for v in (X, y, mask, theta0)]
            versions = [v._version for v in given]
            try:  # raising, sys.exit, the deadline, a result of the wrong shape: all a failed chunk
                gX, gy, gmask, gtheta0 = given
                with ctx.progress.solving(sl.stop - sl.start):
                    res = call_solver(ctx.solver, ctx.model, gX, gy, gmask, gtheta0, opts, ctx.fit_tol)
                if [v._version for v in given] != versions:
                    raise PluginInputWritten("the solver or the model wrote into its inputs (X, y, mask or theta0); "
                                             "a plugin must compute on copies")
            except Exception as exc:  # keep going: report the failure in the summary
                detail = str(exc) if isinstance(exc, UserError) else \
                    f"solver {ctx.study.solver.name!r} raised {type(exc).__name__}: {exc}"
                ctx.errors.append(f"{phase}: instances {sl.start}..{sl.stop - 1}: {detail}")
                k = sl.stop - sl.start
                res = SolveResult(theta0[sl].clone(), torch.full((k,), st.FAILED, dtype=torch.int64),
                                  torch.full((k,), float("nan"), dtype=torch.float64), {})
            else:
                if ctx.store is not None and key is not None:
                    ctx.store.put_solve(key, phase, res, time.perf_counter() - c0)
        thetas.append(res.theta.detach().to(theta0.device))
        stats.append(res.status.to(torch.int64).cpu())
        losses.append(res.loss.detach().to(torch.float64))
        infos.append(res.info)
        if not solved:  # a solved chunk moved the bar inside its call
            ctx.progress.update(sl.stop - sl.start)
    theta = torch.cat(thetas) if thetas else theta0.clone()
    status = torch.cat(stats) if stats else torch.zeros(0, dtype=torch.int64)
    loss = torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64)
    info: dict[str, Tensor] = {}
    for key in set().union(*[set(i) for i in infos]) if infos else set():
        info[key] = torch.cat([
            i[key].detach().to(torch.float64).cpu() if key in i
            else torch.full((t.shape[0],), float("nan"), dtype=torch.float64)
            for i, t in zip(infos, thetas)
        ])
    status = _recheck_converged(ctx, theta, status, X, y, mask, theta0, phase)
    counts = st.counts(status)
    ph = Phase(phase, B, time.perf_counter() - t0, counts, calls)
    ctx.add_phase(ph)
    ctx.progress.end(f"{phase}: {B} instances ({', '.join(f'{k} {v}' for k, v in counts.items()) or 'none'}), "
                     f"{ph.seconds:.2f} s" + ("" if calls or not B else ", all from the results store"))
    return SolveResult(theta, status, loss, info)


def _recheck_converged(ctx: RunContext, theta: Tensor, status: Tensor, X: Tensor, y: Tensor, mask: Tensor,
                       theta0: Tensor, phase: str) -> Tensor:
    """The engine's own fit rule on every triple a solver calls converged: one that does not fit
    (loss above the threshold, or too far from Z(D)) is FAILED, never judged, and said so."""
    conv = (status == st.CONVERGED).nonzero().flatten()
    if conv.numel() == 0:
        return status
    ok = ctx.rules.fits(ctx.model, theta[conv], X[conv], y[conv], mask[conv], theta0[conv]).cpu()
    bad = conv[~ok]
    if bad.numel():
        status = status.clone()
        status[bad] = st.FAILED
        ctx.errors.append(f"{phase}: solver {ctx.study.solver.name!r} reported {bad.numel()} instance(s) converged "
                          f"whose solution does not fit its data by the engine's rule (loss <= fit_tol * scale and "
                          f"distance to Z(D) <= {ctx.rules.dist_tol:g} * |theta|), e.g. instance {int(bad[0])}: "
                          "marked failed, not judged")
    return status


def solve_into(ctx: RunContext, t: Triples, phase: str) -> Triples:
    res = solve(ctx, t.X, t.y, t.mask, t.theta0, phase=phase)
    t.theta, t.status, t.loss, t.info = res.theta, res.status, res.loss.to(torch.float64), res.info
    return t


# ------------------------------------------------------------------------------------------
def build_context(study: Study, progress: Progress | None = None, store: SolveCache | None = None) -> RunContext:
    model = call_plugin(study.model, study.model.spec.factory, **study.model.options)
    options = dict(study.solver.options)
    fit_tol = float(study.fit_tol)  # the study's fit rule, handed to every solver call
    cuda = study.device == "cuda" and torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    settings = SolverSettings(options, study.solver.spec.tighten(dict(options)))
    ctx = RunContext(study, model, study.solver.spec, options, fit_tol, dev, Rules.from_study(study, fit_tol), settings,
                     progress=progress or Quiet(), store=store)
    if study.device == "cuda" and not cuda:
        ctx.errors.append("device: cuda was asked for, but torch sees no CUDA device "
                          "(torch.cuda.is_available() is False): the study ran on the cpu")
    return ctx
