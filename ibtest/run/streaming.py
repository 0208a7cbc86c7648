"""Streaming a study through the engine block by block, keeping only what the verdicts need.

A study of N instances is cut into blocks of ``study.block_size`` instances. Each block goes
through the whole pipeline (solve, own pairs, constructions, admissible pairs), is written to the
results store and is scored by every hypothesis member; then it is dropped. What survives a block:

* the **tally**: status counts, solve and pair counts, and the first report rows
  (``report.json_triples`` study triples for ``results.json``);
* per member, the :class:`~ibtest.judge.records.MemberCounts` (pairs or triples judged, largest relative
  gap, worst value, first error) and the triples a verdict can rest on: the ``RECHECK_TOP`` candidate
  witnesses of the block (largest gap / tolerance floor, beyond the floor) and its closest call
  (largest relative gap), with the pairs between them;
* the first converged triples (study triples first), on which the summary's solver error is measured.

This is the only run path: a study of at most ``block_size`` instances is one block, and its
verdicts too are decided on the retained triples (with the counts of the whole run).

Memory is O(block) + O(members · blocks). The verdicts are those of the study run in one block:
the global top candidates of a member are among the per-block top candidates, its closest call is
the closest of the per-block ones, and its counts are sums. One difference, by design: own-triple
pairs (two study datasets sharing θ0, or two θ0 on one dataset) are formed within a block only.
"""
from __future__ import annotations

import math
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.base.jsonio import encode_float
from ibtest.judge.records import ErrorMeter, MemberCounts, MemberResult, no_converged_reason, no_pair_reason
from ibtest.judge.verdicts import judge_all, raised_message
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import RunContext

SAMPLE = 16  # converged study triples re-solved for the summary's measured solver error


class Tally:
    """Counts and report rows of a run, accumulated block by block."""

    def __init__(self, model: Any, row_limit: int):
        self.model = model
        self.row_limit = row_limit
        self.rows: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}  # study triples, by status
        self.all_counts: dict[str, int] = {}  # every solved triple, by status
        self.growth: float | None = None  # largest growth of a diverged run
        self.n_solves = 0
        self.n_pairs = 0
        self.n_distinct = 0
        self.by_source: dict[str, int] = {}
        from ibtest.plugin.specs import ModelBase

        self.show_pred = model is not None and type(model).predictor is not ModelBase.predictor

    def add(self, t: Triples, pairs: Pairs) -> None:
        study = torch.tensor([o == "study" for o in t.origin], dtype=torch.bool)
        _count(self.counts, t.status[study])
        _count(self.all_counts, t.status)
        if "growth" in t.info:
            g = t.info["growth"][(t.status == st.DIVERGED) & torch.isfinite(t.info["growth"])]
            if g.numel():
                self.growth = max(self.growth or 0.0, float(g.max()))
        room = self.row_limit - len(self.rows)
        if room > 0:
            self.rows += self.triple_rows(t, study.nonzero().flatten()[:room], self.n_solves)
        self.n_solves += len(t)
        self.n_pairs += len(pairs)
        self.n_distinct += int(pairs.distinct.sum())
        for k, v in pairs.counts().items():
            self.by_source[k] = self.by_source.get(k, 0) + v

    def triple_rows(self, t: Triples, idx: torch.Tensor, offset: int) -> list[dict[str, Any]]:
        """The report rows of triples ``idx`` (their run-wide index is ``offset`` + position)."""
        if idx.numel() == 0:
            return []
        num = encode_float
        pred = self.model.predictor(t.theta[idx]).tolist() if self.show_pred else None
        theta, theta0 = t.theta[idx].tolist(), t.theta0[idx].tolist()
        loss, status = t.loss[idx].tolist(), t.status[idx].tolist()
        extra = {k: t.info[k][idx].tolist() for k in ("pieces", "steps", "growth") if k in t.info}
        rows = []
        for r, i in enumerate(idx.tolist()):
            row = {"index": offset + i, "dataset": t.labels[i], "init": t.init_labels[i], "status": st.name(status[r]),
                   "loss": num(float(loss[r])), "theta": theta[r], "theta0": theta0[r]}
            if pred is not None:
                row["predictor"] = pred[r]
            for k in ("pieces", "steps"):
                if k in extra and not math.isnan(extra[k][r]):
                    row[k] = int(extra[k][r])
            if status[r] == st.DIVERGED and "growth" in extra and math.isfinite(extra["growth"][r]):
                row["growth"] = float(extra["growth"][r])
            rows.append(row)
        return rows

    def no_converged_reason(self) -> str:
        return no_converged_reason(self.all_counts, self.growth)


def _count(into: dict[str, int], status: torch.Tensor) -> None:
    """Add the status counts of ``status`` to ``into``, keeping :data:`status.NAMES` order."""
    add = st.counts(status)
    merged = {k: into.get(k, 0) + add.get(k, 0) for k in st.NAMES.values() if k in into or k in add}
    into.clear()
    into.update(merged)


@dataclass
class BlockScore:
    """One member's scores on one block, as much as the driver keeps: the block's counts (to be
    merged into the run's), the positions a verdict can rest on (triples and pairs of the block),
    or the exception it raised. Small and plain, so a worker can compute it and send it back."""

    counts: MemberCounts = field(default_factory=MemberCounts)
    keep_triples: list[int] = field(default_factory=list)
    keep_pairs: list[int] = field(default_factory=list)
    raised: str | None = None


def members_of(ctx: RunContext) -> list[tuple[int, int, Any, dict[str, Any]]]:
    """(hypothesis index, member index, its use, its params) of every member of the study."""
    return [(i, j, use, params) for i, use in enumerate(ctx.study.hypotheses) for j, params in enumerate(use.members)]


def score_block(ctx: RunContext, t: Triples, pairs: Pairs, skip: AbstractSet[tuple[int, int]] = frozenset()
                ) -> dict[tuple[int, int], BlockScore]:
    """Score every member (but those in ``skip``) on one block, where the block was computed: each
    claim kind that judges its hypothesis adds its counts and the positions a verdict can rest on."""
    out: dict[tuple[int, int], BlockScore] = {}
    for i, j, use, params in members_of(ctx):
        if (i, j) in skip:
            continue
        b = out[(i, j)] = BlockScore()
        try:
            prior: list[Any] = []
            for kind in ctx.study.claim_kinds(use):
                assert kind.score is not None  # claim_kinds gives the kinds that score a run
                sc = kind.score(ctx, t, pairs, use, params, list(prior))
                prior.append(sc)
                if sc is None:
                    continue
                b.counts.merge(sc.counts())
                b.keep_triples += sc.keep_triples()
                b.keep_pairs += sc.keep_pairs()
        except Exception as exc:
            b.raised = raised_message(exc)
    return out


class Retainer:
    """Per-member run-wide counts and the retained triples and pairs of a run."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.members = members_of(ctx)
        self.counts = {(i, j): MemberCounts() for i, j, _, _ in self.members}
        self.kept: Triples | None = None
        self.pairs = Pairs.empty()
        self.sample: list[int] = []

    def add(self, t: Triples, pairs: Pairs, scores: dict[tuple[int, int], BlockScore] | None = None) -> None:
        """Take in one block: its member scores (computed here unless ``scores`` come with the
        block from a worker), its candidates and closest calls."""
        if scores is None:
            scores = score_block(self.ctx, t, pairs, skip={k for k, tot in self.counts.items() if tot.raised})
        keep_pairs: set[int] = set()
        keep_triples: set[int] = set()
        for key, tot in self.counts.items():
            b = scores.get(key)
            if tot.raised or b is None:
                continue
            if b.raised:
                tot.raised = b.raised
                continue
            tot.merge(b.counts)
            keep_triples.update(b.keep_triples)
            keep_pairs.update(b.keep_pairs)
        if self.kept is None:
            self.kept = t.take(torch.zeros(0, dtype=torch.int64))
        # the solver-error sample: the first SAMPLE converged triples of the run (study triples come
        # first in a block, then constructed ones), re-solved with the verdicts' candidates
        conv = (t.status == st.CONVERGED).nonzero().flatten()
        sample = conv[: max(0, SAMPLE - len(self.sample))].tolist()
        pk = torch.tensor(sorted(keep_pairs), dtype=torch.int64)
        idx = sorted(keep_triples | set(sample) | set(pairs.a[pk].tolist()) | set(pairs.b[pk].tolist()))
        if not idx:
            return
        where = torch.full((len(t),), -1, dtype=torch.int64)
        where[torch.tensor(idx)] = torch.arange(len(idx))
        base = int(self.kept.append(t.take(torch.tensor(idx)))[0])
        self.sample += [base + int(where[k]) for k in sample]
        if pk.numel():
            p = pairs.select(pk)
            p.a, p.b = where[p.a], where[p.b]
            self.pairs.extend(p, offset=base)

    def finish(self, tally: Tally) -> tuple[Triples, Pairs, list[MemberResult], ErrorMeter]:
        """Verdicts on the retained triples, with every member's counts over the whole run. Sets
        the reason of a member judged on nothing (here only: it depends on the whole run)."""
        any_converged = tally.all_counts.get("converged", 0) > 0
        for (i, j, use, _) in self.members:
            tot = self.counts[(i, j)]
            if tot.n:
                continue
            tot.no_pairs_reason = (no_pair_reason(use.spec.depends_on) if any_converged
                                   else tally.no_converged_reason())
        assert self.kept is not None, "finish() before any block"
        members, meter = judge_all(self.ctx, self.kept, self.pairs, self.counts, also_measure=self.sample)
        return self.kept, self.pairs, members, meter
