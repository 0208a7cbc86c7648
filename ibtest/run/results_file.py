"""The results format of a finished run, read back: the one module that parses stored results.

A run's results are the JSON object :meth:`ibtest.out.result.StudyResult.to_json` makes (or, for a
sweep, ``{"sweep": path, "runs": [one such object per value]}``), stored in ``results.sqlite``
(and written to ``results.json``). Reports, diffs and plots read them through :func:`load_results`
and :func:`runs_of`, never by parsing the files themselves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ibtest.base.errors import UserError
from ibtest.run.lock import holder
from ibtest.run.store import open_run


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """The stored results of a finished run (no solving). The store is opened read-only: this
    works on read-only media and never changes the run directory."""
    store = open_run(run_dir, readonly=True)
    try:
        res = store.results()
        if res is None:
            state = store.meta().get("state")
            who = holder(run_dir)
            if who is not None:
                raise UserError(f"run {run_dir} has no results yet: it is still running ({who})")
            raise UserError(f"run {run_dir} has no results yet (state: {state}); finish it with "
                            f"'ibtest run --resume {run_dir}'")
    finally:
        store.close()
    check_results(res, run_dir)
    return res


def runs_of(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of checked results: one for a single run, one per value for a sweep."""
    return res["runs"] if "runs" in res else [res]


def check_results(res: Any, run_dir: str | Path) -> None:
    """The stored results JSON has the shape ``to_json`` writes (a run, or a sweep of runs)."""
    def bad(why: str) -> UserError:
        return UserError(f"run {run_dir}: results.sqlite is damaged: the stored results {why}; "
                         f"re-render them with 'ibtest run --resume {run_dir}'")

    if not isinstance(res, dict):
        raise bad(f"are a {type(res).__name__}, not a JSON object")
    runs = res["runs"] if "runs" in res else [res]
    if not isinstance(runs, list) or not runs:
        raise bad("hold no list of runs")
    for r in runs:
        if not isinstance(r, dict):
            raise bad("hold a run that is not a JSON object")
        for key, tp in (("verdicts", list), ("triples", list), ("summary", str)):
            if not isinstance(r.get(key), tp):
                raise bad(f"have no {key!r} {tp.__name__}")
        if not all(isinstance(v, dict) for v in r["verdicts"]):
            raise bad("hold a verdict that is not a JSON object")
