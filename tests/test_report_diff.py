"""``ibtest diff``: triples matched one to one, even when two init entries share labels."""
from __future__ import annotations

from ibtest.out.report import diff


def _run(thetas, statuses, pairs=(3, 2)):
    rows = [{"dataset": "gaussian #0", "init": "gaussian#0", "theta": th, "status": s}
            for th, s in zip(thetas, statuses)]
    return {"verdicts": [], "triples": rows, "status_counts": {},
            "pairs": {"admissible": pairs[0], "distinct": pairs[1]}}


def test_duplicate_labels_are_matched_in_order():
    a = _run([[1.0, 0.0], [0.0, 2.0]], ["converged", "stalled"])
    assert diff(a, _run([[1.0, 0.0], [0.0, 2.0]], ["converged", "stalled"])) == []
    moved = diff(a, _run([[1.0, 0.0], [0.0, 2.5]], ["converged", "stalled"]))
    assert moved == ["triple gaussian #0 / gaussian#0 (#2 of that name): theta moved by 0.5"]


def test_moves_are_judged_relative_to_the_solution_size():
    a = _run([[1e-12, 0.0]], ["converged"])
    assert diff(a, _run([[1.5e-12, 0.0]], ["converged"])) == [
        "triple gaussian #0 / gaussian#0: theta moved by 5e-13"]


def test_pair_counts_are_compared():
    a = _run([[1.0]], ["converged"])
    assert diff(a, _run([[1.0]], ["converged"], pairs=(4, 2))) == ["admissible pairs: 3 -> 4"]
