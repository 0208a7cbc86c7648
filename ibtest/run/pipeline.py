"""One run of a validated study, end to end up to its verdicts: every block is solved, paired,
stored, tallied and scored (:mod:`ibtest.run.streaming`), then every member is judged on the
retained triples with its counts over the whole run. Streaming is the only path: a study of at
most ``block_size`` instances is one block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ibtest.base.progress import Progress
from ibtest.judge.records import MemberResult
from ibtest.run import executors
from ibtest.run.store import Store
from ibtest.run.streaming import Retainer, Tally
from ibtest.solve import fit
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import InstancePlan, RunContext, build_context, plan_instances
from ibtest.study.typed import Study


@dataclass
class Judged:
    """What a run produced before anything is written.

    ``triples`` / ``pairs``: the *retained* triples and pairs (each block's candidate witnesses,
    closest calls and solver-error sample, :class:`~ibtest.run.streaming.Retainer`); the evidence
    indices of ``members`` point into them. ``tally``: counts and report rows over every triple.
    """

    ctx: RunContext
    triples: Triples
    pairs: Pairs
    members: list[MemberResult]
    tally: Tally
    blocks: int  # blocks of ``study.block_size`` instances (1 for a small study)
    executor: dict[str, Any]  # {"name": ..., "workers": ...}: where the blocks ran
    solver_error: float | None  # max ‖θ∞ − θ∞'‖ over the re-solved triples; None if none was


def judge_run(study: Study, *, store: Store | None = None, progress: Progress | None = None,
              sweep_value: Any = None, plan: InstancePlan | None = None) -> Judged:
    """Stream ``study`` (one sweep value) through the engine in blocks and judge every member.

    ``store``: its triple and pair tables are rewritten block by block (solves are reused).
    ``plan``: the study's instances, if already made.
    """
    ctx = build_context(study, progress=progress, store=store)
    if plan is None:
        plan = plan_instances(ctx)
    warning = fit.range_warning(plan.X, plan.y, plan.theta0)
    if warning:
        ctx.errors.append(warning)
        ctx.out_of_range = warning
    size = max(1, study.block_size)
    setting = study.report.triples
    rows = max(study.report.json_triples, setting if setting is not True and setting is not False else 0)
    tally = Tally(ctx.model, rows)
    retainer = Retainer(ctx)
    if store is not None:
        store.clear_tables()
    offset = n_pairs = 0

    def apply(bt: Triples, bp: Pairs, scores: dict | None) -> None:
        """One block, in block order, wherever it ran: store tables, tally, retained candidates
        (from the member ``scores`` a worker computed, else scored here)."""
        nonlocal offset, n_pairs
        if store is not None:
            store.write_triples(bt, offset)
            store.write_pairs(bp, offset, n_pairs)
        tally.add(bt, bp)
        retainer.add(bt, bp, scores)
        offset, n_pairs = offset + len(bt), n_pairs + len(bp)

    rejected = getattr(store, "rejected", 0)
    ran = executors.run_blocks(ctx, plan, study, sweep_value, apply)
    rejected = getattr(store, "rejected", 0) - rejected
    if rejected:  # the store's checksums: what failed was solved again, and the run says so
        ctx.errors.append(f"results store: {rejected} stored solve(s) failed their checksum (damaged or edited "
                          "since they were written) and were solved again")
    t, pairs, members, meter = retainer.finish(tally)
    solver_error = max(meter.err.values()) if meter.err else None
    return Judged(ctx, t, pairs, members, tally, -(-plan.n // size),
                  {"name": ran.executor, "workers": ran.workers}, solver_error)
