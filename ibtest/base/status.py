"""Status codes of a solved triple (D, θ0, θ∞).

Stored as small integers in a ``torch.int64`` tensor ``[B]`` so that batched solvers can write
them without Python objects. Only ``CONVERGED`` triples enter verdicts; the others are counted.
"""
from __future__ import annotations

CONVERGED = 0  # loss(θ∞) ≤ fit_tol and θ∞ is a limit (drift bounded)
STALLED = 1  # stationary point (or limit) with loss > fit_tol
DIVERGED = 2  # ‖θ‖ → ∞ or a non-finite value appeared
BUDGET = 3  # step, piece or time budget exhausted before a limit was certified
SLIDING = 4  # Filippov sliding mode on a kink: no classical GF solution to follow
FAILED = 5  # the solver raised, or claimed a fit the engine's rule rejects (reported, never judged)
AMBIGUOUS = 6  # the flow is not unique (a repelling kink whose branches end apart): no one limit

NAMES = {
    CONVERGED: "converged",
    STALLED: "stalled",
    DIVERGED: "diverged",
    BUDGET: "budget",
    SLIDING: "sliding",
    FAILED: "failed",
    AMBIGUOUS: "ambiguous",
}


def counts(codes) -> dict[str, int]:
    """How many of each status a ``torch.int64`` tensor of codes holds, in :data:`NAMES` order,
    statuses that do not occur left out."""
    n = codes.bincount(minlength=max(NAMES) + 1).tolist()
    return {NAMES[c]: n[c] for c in NAMES if n[c]}


def name(code: int) -> str:
    """Human name of a status code."""
    return NAMES.get(int(code), f"unknown({int(code)})")
