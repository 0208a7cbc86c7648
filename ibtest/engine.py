"""The engine: instances → triples → admissible pairs → evaluations → verdicts.

Data flows one way (shared/DESIGN.md). Everything is batched: instances are solved in chunks of
``study.chunk_size``; constructions, cross-fit checks and hypothesis evaluations work on whole
tensors. A failing plugin is reported in its row (``errors``) and the rest of the study goes on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from . import budget, fit
from . import status as st
from .batch import Pairs, Triples, cat_padded
from .checks import call_plugin, check_data, check_n_params, check_theta0
from .errors import UserError
from .progress import Progress, Quiet
from .specs import ModelBase, NewPairs, PairBatch, Partners, SolveResult, TripleBatch
from .store import Store, solve_key
from .study import PluginUse, Study
from .yamlpos import format_path

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
class Context:
    """Everything the later phases need: the study, the model instance, the solver and its settings."""

    study: Study
    model: ModelBase
    solver: Any
    solver_options: dict[str, Any]
    fit_tol: float
    device: torch.device
    phases: list[Phase] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    progress: Progress = field(default_factory=Quiet)
    store: Store | None = None
    solve_calls: int = 0
    block_start: int = 0  # index of the first study instance of the block being run

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


def _seed(*parts: int) -> torch.Generator:
    s = 0
    for p in parts:
        s = (s * 1_000_003 + int(p) + 7919) % (2**63 - 1)
    return torch.Generator().manual_seed(s)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _construction_seed(ctx: Context, stage: int, n: int) -> torch.Generator:
    """The generator a construction gets: from the study seed, the stage and the table size, and
    for a later block of a streamed study its first instance (so blocks differ)."""
    parts = (ctx.study.seed, stage, n) + ((ctx.block_start,) if ctx.block_start else ())
    return _seed(*parts)


def _label(use: PluginUse, opts: dict[str, Any]) -> str:
    varying = [k for k, v in use.options.items() if isinstance(v, list) and use.spec.options[k].sweep]
    shown = ", ".join(f"{k}={_fmt(opts[k])}" for k in varying)
    return f"{use.name}({shown})" if shown else use.name


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


def plan_instances(ctx: Context) -> InstancePlan:
    """Generate every dataset and every θ0 of the study once.

    Inits are drawn once per (init entry, d) and shared by every dataset of that dimension, so
    datasets run from the same θ0 and own-triple pairs can share an initialization.

    Whatever a dataset or init plugin raises or returns that the engine cannot use (see
    :mod:`ibtest.checks`), datasets of different d, and a size beyond the memory budget (see
    :mod:`ibtest.budget`) end here with a :class:`~ibtest.errors.PluginError` or
    :class:`~ibtest.errors.UserError`, before anything is solved.
    """
    study, model = ctx.study, ctx.model
    parts, labels, dims = [], [], []
    for i, use in enumerate(study.datasets):
        for j, opts in enumerate(use.expand()):
            batch = call_plugin(use, use.spec.generate, rng=_seed(study.seed, 1, i, j), **opts)
            batch = check_data(batch, use)
            base = _label(use, opts)
            k = batch.X.shape[0]
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
    budget.check_plan(X.shape[0], X.shape[1], d, n_inits, P, max(1, study.block_size))
    thetas, init_labels = [], []
    for ii, (use, count) in enumerate(zip(study.inits, study.init_counts)):
        for jj, opts in enumerate(use.expand()):
            th0 = call_plugin(use, use.spec.sample, model=model, d=d, count=count,
                              rng=_seed(study.seed, 2, ii, jj), **opts)
            thetas.append(check_theta0(th0, use, count, P))
            base = _label(use, opts)
            init_labels += [f"{base}#{c}" for c in range(count)] if count > 1 else [base]
    return InstancePlan(X, y, mask, torch.cat(thetas), labels, init_labels, ctx.device)


def make_instances(ctx: Context) -> Triples:
    """All (dataset, θ0) instances of a study as one block of unsolved triples."""
    plan = plan_instances(ctx)
    return plan.block(0, plan.n)


# ------------------------------------------------------------------------------------------
# solving
# ------------------------------------------------------------------------------------------
def solve(ctx: Context, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor, *,
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
    settings = {"solver": ctx.study.solver.name, "options": opts, "model": ctx.study.model.name,
                "model_options": ctx.study.model.options}
    calls = 0
    ctx.progress.start(phase, B)
    for s in range(0, B, chunk):
        sl = slice(s, min(B, s + chunk))
        res, key = None, None
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
            c0 = time.perf_counter()
            try:
                res = ctx.solver.solve(ctx.model, X[sl], y[sl], mask[sl], theta0[sl], **opts)
            except (Exception, SystemExit) as exc:  # keep going: report the failure in the summary
                ctx.errors.append(f"{phase}: solver {ctx.study.solver.name!r} raised on instances "
                                  f"{sl.start}..{sl.stop - 1}: {type(exc).__name__}: {exc}")
                k = sl.stop - sl.start
                res = SolveResult(theta0[sl].clone(), torch.full((k,), st.FAILED, dtype=torch.int64),
                                  torch.full((k,), float("nan"), dtype=torch.float64), {})
            else:
                if ctx.store is not None:
                    ctx.store.put_solve(key, phase, res, time.perf_counter() - c0)
        thetas.append(res.theta.detach().to(theta0.device))
        stats.append(res.status.to(torch.int64).cpu())
        losses.append(res.loss.detach().to(torch.float64))
        infos.append(res.info)
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
    counts = st.counts(status)
    ph = Phase(phase, B, time.perf_counter() - t0, counts, calls)
    ctx.add_phase(ph)
    ctx.progress.end(f"{phase}: {B} instances ({', '.join(f'{k} {v}' for k, v in counts.items()) or 'none'}), "
                     f"{ph.seconds:.2f} s" + ("" if calls or not B else ", all from the results store"))
    return SolveResult(theta, status, loss, info)


def solve_into(ctx: Context, t: Triples, phase: str) -> Triples:
    res = solve(ctx, t.X, t.y, t.mask, t.theta0, phase=phase)
    t.theta, t.status, t.loss, t.info = res.theta, res.status, res.loss.to(torch.float64), res.info
    return t


# ------------------------------------------------------------------------------------------
# pairs
# ------------------------------------------------------------------------------------------
DISTINCT_RTOL = 1e-9  # two solutions are distinct when ‖θa − θb‖ > DISTINCT_RTOL · max(‖θa‖, ‖θb‖)


def _distinct(ta: Tensor, tb: Tensor) -> Tensor:
    """Relative to the solutions' own size, so a study scaled by any factor pairs alike."""
    scale = torch.maximum(ta.norm(dim=-1), tb.norm(dim=-1))
    return (ta - tb).norm(dim=-1) > DISTINCT_RTOL * scale


def admissible(ctx: Context, t: Triples, a: Tensor, b: Tensor, source: str | tuple[Tensor, list[str]]) -> Pairs:
    """Keep the pairs (a, b) whose two sides converged and fit each other's dataset.

    ``source`` names where the pairs came from: one name for all, or (codes [k], names).
    """
    if a.numel() == 0:
        return Pairs.empty()
    m = ctx.model
    code, names = (torch.zeros(a.numel(), dtype=torch.int64), [source]) if isinstance(source, str) else source
    conv = (t.status[a] == st.CONVERGED) & (t.status[b] == st.CONVERGED)
    a, b, code = a[conv], b[conv], code[conv]
    cab = m.loss(t.theta[a], t.X[b], t.y[b], t.mask[b]).detach().cpu()
    cba = m.loss(t.theta[b], t.X[a], t.y[a], t.mask[a]).detach().cpu()
    tol_b = fit.fit_threshold(m, t.X[b], t.y[b], t.mask[b], t.theta0[b], ctx.fit_tol).cpu()
    tol_a = fit.fit_threshold(m, t.X[a], t.y[a], t.mask[a], t.theta0[a], ctx.fit_tol).cpu()
    keep = ((cab <= tol_b) & (cba <= tol_a)).nonzero().flatten()
    a, b = a[keep], b[keep]
    same = (t.theta0[a] == t.theta0[b]).all(-1).cpu()
    return Pairs(a, b, code[keep], list(names), same, cab[keep], cba[keep], _distinct(t.theta[a], t.theta[b]).cpu())


def group_pairs(keys: Tensor, cap: int) -> tuple[Tensor, Tensor]:
    """All pairs (i < j) of positions with equal ``keys``, at most ``cap`` per group.

    Vectorized: a Python loop runs over the distinct group *sizes* only, never over groups.
    """
    order = torch.argsort(keys, stable=True)
    _, counts = torch.unique_consecutive(keys[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    out_a, out_b = [], []
    for size in torch.unique(counts).tolist():
        if size < 2:
            continue
        first = starts[counts == size]
        # only the rows the cap can reach: O(cap + size) memory, not O(size²)
        rows = min(size - 1, cap // (size - 1) + 1)
        ia, ib = torch.triu_indices(rows, size, 1)
        ia, ib = ia[:cap], ib[:cap]
        out_a.append(order[(first[:, None] + ia[None]).flatten()])
        out_b.append(order[(first[:, None] + ib[None]).flatten()])
    if not out_a:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    return torch.cat(out_a), torch.cat(out_b)


def own_pairs(ctx: Context, t: Triples, idx: Tensor) -> Pairs:
    """Pairs among the study's own converged triples: same θ0 on two datasets, or two θ0 on one dataset.

    Quadratic in a group's size, so each group is capped at ``verdict.max_group_pairs`` pairs.
    """
    cap = ctx.study.verdict.max_group_pairs
    conv = idx[t.status[idx] == st.CONVERGED]
    a_all, b_all, codes = [], [], []
    for code, key in enumerate((t.init_id, t.dataset_id)):
        ia, ib = group_pairs(key[conv], cap)
        a_all.append(conv[ia])
        b_all.append(conv[ib])
        codes.append(torch.full((ia.numel(),), code, dtype=torch.int64))
    a, b = torch.cat(a_all), torch.cat(b_all)
    if a.numel() == 0:
        return Pairs.empty()
    return admissible(ctx, t, a, b, (torch.cat(codes), ["study (same init)", "study (same dataset)"]))


def _triple_batch(t: Triples, idx: Tensor) -> TripleBatch:
    return TripleBatch(t.X[idx], t.y[idx], t.mask[idx], t.theta0[idx], t.theta[idx], [t.labels[i] for i in idx.tolist()])


def _new_triples(ctx: Context, X, y, mask, theta0, labels, origin, parent, init_id, dataset_base) -> Triples:
    k = theta0.shape[0]
    return Triples(
        X=X, y=y, mask=mask, theta0=theta0, theta=theta0.clone(),
        status=torch.full((k,), st.BUDGET, dtype=torch.int64),
        loss=torch.full((k,), float("nan"), dtype=torch.float64),
        dataset_id=torch.arange(dataset_base, dataset_base + k), init_id=init_id, parent=parent,
        labels=labels, init_labels=[f"θ0 of #{int(p)}" for p in parent.tolist()], origin=[origin] * k,
    )


def run_triple_constructions(ctx: Context, t: Triples, pairs: Pairs) -> None:
    """Partner datasets from every converged study triple; solve; keep admissible pairs."""
    src_idx = ((t.status == st.CONVERGED) & (t.parent < 0)).nonzero().flatten()
    for use in ctx.study.constructions:
        if use.spec.stage != "triple" or src_idx.numel() == 0:
            continue
        for opts in use.expand():
            try:
                out: Partners = use.spec.build(model=ctx.model, triples=_triple_batch(t, src_idx),
                                               rng=_construction_seed(ctx, 3, len(t)), **opts)
            except (Exception, SystemExit) as exc:  # a plugin's sys.exit must not end the run
                ctx.errors.append(f"construction {use.name!r} raised: {type(exc).__name__}: {exc}")
                continue
            if out is None or out.X.shape[0] == 0:
                continue
            parent = src_idx[out.source]
            new = _new_triples(ctx, out.X.to(torch.float64), out.y.to(torch.float64), out.mask.to(torch.float64),
                               t.theta0[parent], list(out.labels), use.name, parent, t.init_id[parent],
                               int(t.dataset_id.max()) + 1)
            solve_into(ctx, new, f"solve partners ({use.name})")
            ids = t.append(new)
            pairs.extend(admissible(ctx, t, parent, ids, use.name))


def run_pair_constructions(ctx: Context, t: Triples, pairs: Pairs) -> None:
    """Constructions on admissible, distinct pairs (e.g. rotations); solve both new sides."""
    for use in ctx.study.constructions:
        if use.spec.stage != "pair":
            continue
        base = pairs.select(pairs.distinct.nonzero().flatten())
        if len(base) == 0:
            continue
        pb = PairBatch(t.X[base.a], t.y[base.a], t.mask[base.a], t.X[base.b], t.y[base.b], t.mask[base.b],
                       t.theta0[base.a], [f"{t.labels[i]} | {t.labels[j]}" for i, j in zip(base.a.tolist(), base.b.tolist())])
        for opts in use.expand():
            try:
                out: NewPairs = use.spec.build(model=ctx.model, pairs=pb, rng=_construction_seed(ctx, 4, len(t)), **opts)
            except (Exception, SystemExit) as exc:  # a plugin's sys.exit must not end the run
                ctx.errors.append(f"construction {use.name!r} raised: {type(exc).__name__}: {exc}")
                continue
            if out is None or out.pairs.theta0.shape[0] == 0:
                continue
            p = out.pairs
            k = p.theta0.shape[0]
            parent = base.a[out.source]
            X, y, m = cat_padded([(p.Xa, p.ya, p.maska), (p.Xb, p.yb, p.maskb)])
            iid = torch.arange(int(t.init_id.max()) + 1, int(t.init_id.max()) + 1 + k)
            labels = [f"{use.name}: {l} (side a)" for l in p.labels] + [f"{use.name}: {l} (side b)" for l in p.labels]
            new = _new_triples(ctx, X, y, m, torch.cat([p.theta0, p.theta0]), labels, use.name,
                               torch.cat([parent, base.b[out.source]]), torch.cat([iid, iid]),
                               int(t.dataset_id.max()) + 1)
            solve_into(ctx, new, f"solve pairs ({use.name})")
            ids = t.append(new)
            pairs.extend(admissible(ctx, t, ids[:k], ids[k:], use.name))


# ------------------------------------------------------------------------------------------
def build_context(study: Study, progress: Progress | None = None, store: Store | None = None) -> Context:
    model = study.model.spec.factory(**study.model.options)
    options = dict(study.solver.options)
    fit_tol = float(options.get("fit_tol", fit.DEFAULT_FIT_TOL))
    cuda = study.device == "cuda" and torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    ctx = Context(study, model, study.solver.spec, options, fit_tol, dev, progress=progress or Quiet(), store=store)
    if study.device == "cuda" and not cuda:
        ctx.errors.append("device: cuda was asked for, but torch sees no CUDA device "
                          "(torch.cuda.is_available() is False): the study ran on the cpu")
    return ctx


def run_block(ctx: Context, t: Triples, start: int = 0) -> tuple[Triples, Pairs]:
    """Solve a block of study instances (the first is instance ``start``), pair them, build and
    solve partners; return all its triples and admissible pairs (indices local to the block)."""
    ctx.block_start = start
    solve_into(ctx, t, "solve")
    pairs = Pairs.empty()
    t0 = time.perf_counter()
    pairs.extend(own_pairs(ctx, t, torch.arange(len(t))))
    ctx.add_phase(Phase("own pairs", len(t), time.perf_counter() - t0))
    run_triple_constructions(ctx, t, pairs)
    run_pair_constructions(ctx, t, pairs)
    return t, pairs


def run_engine(ctx: Context) -> tuple[Triples, Pairs]:
    """Solve the study's instances in one block, build and solve partners, return all triples and pairs."""
    return run_block(ctx, make_instances(ctx))
