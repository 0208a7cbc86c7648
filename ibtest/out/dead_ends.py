"""What a run's dead ends mean and what to do next: one note per status other than converged.

A ``budget`` triple names the solver options that bound its work (the options whose doc says
"budget") with their current values, to raise; ``stalled``, ``diverged``, ``sliding`` and
``ambiguous`` and ``failed`` say what they mean for the verdicts (none of them is ever judged: only converged
triples are zero-loss solutions a hypothesis can be checked on).
"""
from __future__ import annotations

from typing import Any

from ibtest.study.typed import Study

MEANING = {
    "stalled": "GF reached a stationary point with loss above fit_tol, so θ∞ interpolates nothing: "
               "no hypothesis is judged on these triples, the verdicts rest on the converged ones "
               "(a study with none is inconclusive)",
    "diverged": "|θ| grew without bound (or a value became non-finite): there is no limit θ∞ to judge, "
                "so these triples count for no verdict (the growth is in the triples table)",
    "sliding": "the flow entered a sliding mode on a kink (no classical GF solution): not judged; "
               "a solver that can follow it (adaptive, sliding: follow) continues along the kink",
    "ambiguous": "the flow is not unique: a kink turned repelling and the ways off it end at different "
                 "limits (info: branches, branch_spread), so GD as lr -> 0 may follow either and there is "
                 "no one θ∞ to judge (or: kink events piled up at one instant, a tangent configuration "
                 "the event rule cannot settle; info ambiguous = 3): not judged (a study needing these "
                 "triples says so by its counts)",
    "failed": "the solver raised, ran past its deadline, or claimed a fit the engine's rule rejects: "
              "not judged (the errors say which)",
}


def budget_options(study: Study) -> list[tuple[str, Any]]:
    """The run's solver options that bound its work (their doc says "budget"), with the values
    the run used: what to raise when triples end at ``budget``."""
    spec = study.solver.spec
    opts = getattr(spec, "options", {}) or {}
    return [(k, study.solver.options.get(k, o.default)) for k, o in opts.items() if "budget" in (o.doc or "").lower()]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def dead_end_notes(study: Study, counts: dict[str, int]) -> list[str]:
    """One line per status of ``counts`` (study triples by status) other than converged."""
    notes = []
    for status, n in counts.items():
        if status == "converged" or not n:
            continue
        head = f"{n} triple{'s' if n != 1 else ''} {status}: "
        if status == "budget":
            raise_ = budget_options(study)
            what = (" or ".join(f"{k} (now {_fmt(v)})" for k, v in raise_) if raise_
                    else "the solver's work limits")
            notes.append(f"{n} triple{'s' if n != 1 else ''} hit the solver's budget before a limit was "
                         f"certified (not judged): raise {what} under solver: {{name: {study.solver.name}}}")
        else:
            notes.append(head + MEANING.get(status, "not judged"))
    return notes
