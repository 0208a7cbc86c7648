"""The result of one run of a study (:class:`StudyResult`) and its JSON, the results format.

:meth:`StudyResult.to_json` makes the results format that ``results.sqlite`` / ``results.json``
store and :mod:`ibtest.run.results_file` reads back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibtest.base.jsonio import to_jsonable as jsonable
from ibtest.judge.limits import LimitVerdict
from ibtest.judge.records import MemberResult
from ibtest.out import report
from ibtest.run.streaming import Tally
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.engine import Phase
from ibtest.study.typed import Study


@dataclass
class StudyResult:
    """Everything a run produced. ``verdicts`` maps a member label to its verdict.

    ``triples`` and ``pairs`` are always the run's *retained* triples and pairs, whatever the
    number of blocks: the few each block keeps for the verdicts (candidate witnesses, closest
    calls, the solver-error sample; see :class:`ibtest.run.streaming.Retainer`). The evidence
    indices of ``members`` point into them. Counts over *every* triple and pair of the run are in
    ``tally`` (``tally.counts`` study triples by status, ``tally.n_solves`` all triples solved,
    ``tally.n_pairs`` / ``tally.n_distinct`` admissible pairs, ``tally.rows`` the first report
    rows); the full tables are in the run's ``results.sqlite``.
    """

    study: Study
    triples: Triples  # the retained triples (not every triple of the run: see above)
    pairs: Pairs  # the retained admissible pairs, indices into ``triples``
    members: list[MemberResult]
    phases: list[Phase]
    errors: list[str]
    seconds: float
    run_dir: Path | None = None
    certificates: list[str] = field(default_factory=list)
    sweep_value: Any = None
    solve_calls: int = 0
    solver_error: float | None = None
    model: Any = None
    json_cache: dict[str, Any] | None = None  # to_json() of the finished run, computed once
    tally: Tally | None = None  # counts and report rows over every triple (run_loaded sets it)
    blocks: int = 1  # blocks of ``study.block_size`` instances the run was streamed in
    executor: dict[str, Any] | None = None  # {"name": ..., "workers": ...}: where the blocks ran

    @property
    def verdicts(self) -> dict[str, str]:
        return {m.label: m.verdict.value for m in self.members}

    @property
    def n_triples(self) -> int:
        """Triples solved in the whole run (study and constructed), of which ``triples`` is a subset."""
        return self.tally.n_solves if self.tally is not None else len(self.triples)

    @property
    def expectations_held(self) -> bool:
        return all(m.held is not False for m in self.members)

    @property
    def exit_code(self) -> int:
        return 0 if self.expectations_held else 1

    def table(self, fmt: str = "simple") -> str:
        """The verdict table (one row per hypothesis member)."""
        return report.table(report.verdict_rows(self.to_json()["verdicts"]), fmt)

    def render(self, fmt: str = "table") -> str:
        """The full report as ``ibtest run`` prints it (``table``), or markdown / json / html."""
        return report.render(self.to_json(), fmt)

    def _tally(self) -> Tally:
        assert self.tally is not None, "a StudyResult made by run_loaded has a tally"
        return self.tally

    def summary(self) -> str:
        ty = self._tally()
        counts = ty.counts
        lines = [
            f"study {self.study.name}: {sum(counts.values())} instances "
            f"({', '.join(f'{k} {v}' for k, v in counts.items())}), {ty.n_solves} solves in all, "
            f"{ty.n_pairs} admissible pairs ({ty.n_distinct} distinct), {self.seconds:.2f} s"
            + (f", streamed in {self.blocks} blocks of {self.study.block_size}" if self.blocks > 1 else ""),
        ]
        if self.solver_error is not None:
            lines.append(f"measured solver error (re-solved at tighter settings): max |Δθ| = {self.solver_error:.3g}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The results format (see :mod:`ibtest.run.results_file`), a JSON-able dict."""
        ty = self._tally()
        return jsonable({
            "study": self.study.name,
            "description": self.study.description,
            "source": self.study.source,
            "solver": self.study.solver.name,
            "sweep_value": self.sweep_value,
            "seconds": self.seconds,
            "expectations_held": self.expectations_held,
            "report": {"triples": self.study.report.triples, "digits": self.study.report.digits},
            "summary": self.summary(),
            "verdicts": [
                {"hypothesis": m.hypothesis, "params": m.params, "label": m.label,
                 "kind": m.kind, "depends_on": m.depends_on, "verdict": m.verdict.value,
                 "grade": None if m.grade is None else m.grade.value, "expect": m.expect,
                 "held": m.held, "pairs": m.n_pairs, "distinct": m.n_distinct,
                 "max_rel_gap": m.max_rel_gap, "worst": m.worst, "reason": m.reason, "error": m.error,
                 "certificate": m.certificate,
                 "search": None if m.search is None else m.search.to_json(),
                 "evidence": None if m.evidence is None else m.evidence.to_json()}
                for m in self.members
            ],
            "triples": ty.rows,
            "status_counts": ty.counts,
            "solves": ty.n_solves,
            "solver_calls": self.solve_calls,
            "pairs": {"admissible": ty.n_pairs, "distinct": ty.n_distinct, "by_source": ty.by_source},
            "blocks": self.blocks,
            "executor": self.executor,
            "phases": [{"name": p.name, "instances": p.count, "seconds": p.seconds, "statuses": p.statuses,
                        "calls": p.calls} for p in self.phases],
            "errors": self.errors,
            "measured_solver_error": self.solver_error,
        })

    def markdown(self) -> str:
        return report.render_markdown(self.to_json())


class SweepResult(list):
    """The runs of a swept study, one :class:`StudyResult` per value (a list of them), with the
    limit verdicts of a study that declares ``limit:`` (:mod:`ibtest.judge.limits`)."""

    def __init__(self, runs: list[StudyResult], path: str, limits: list[LimitVerdict] | None = None):
        super().__init__(runs)
        self.path = path
        self.limits: list[LimitVerdict] = list(limits or [])

    @property
    def expectations_held(self) -> bool:
        return all(r.expectations_held for r in self) and all(v.held is not False for v in self.limits)

    @property
    def exit_code(self) -> int:
        return 0 if self.expectations_held else 1

    def to_json(self) -> dict[str, Any]:
        """The results format of a sweep: its path, each run's results and the limit verdicts."""
        return jsonable({"sweep": self.path, "runs": [r.json_cache or r.to_json() for r in self],
                         "limits": [v.to_json() for v in self.limits]})
