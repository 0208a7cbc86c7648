"""Streaming a study block by block gives the verdicts and counts of the study run in one block.

Own-triple pairs are formed within a block only (by design), so the comparison switches them off
(``max_group_pairs: 0``); every pair then comes from a per-triple construction, and the streamed
run must agree with the one-block run exactly: verdicts, counts, largest relative gaps, evidence,
status counts, and the report rows.
"""
from __future__ import annotations

import json
import sqlite3

import pytest

from ibtest import run_study


def _study(block_size: int, n_datasets: int = 40) -> dict:
    return {
        "study": "streaming",
        "seed": 3,
        "model": {"name": "relu_neuron"},
        "init": {"name": "gaussian", "scale": 0.1},
        "datasets": [{"name": "gaussian", "n": 4, "d": 5, "count": n_datasets, "labels": "teacher_relu"}],
        "solver": {"name": "exact"},
        "constructions": ["blocking_point"],
        "hypotheses": [
            {"name": "l2_norm"},
            {"name": "dist_to_init"},
            {"name": "lp_norm", "params": {"p": [1, float("inf")]}},
            {"name": "theorem8_ratio"},
            {"name": "theorem8_ratio", "params": {"bound": [1.0001]}},
        ],
        "verdict": {"max_group_pairs": 0},
        "block_size": block_size,
        "report": {"json_triples": 25},
    }


def _essentials(res) -> dict:
    """The run's verdicts and counts; rows without their run-wide index, which depends on where
    each block's partner triples went."""
    out = res.to_json()
    verdicts = [{k: v[k] for k in ("label", "verdict", "pairs", "distinct", "max_rel_gap", "worst", "reason")}
                | {"gap": (v["evidence"] or {}).get("gap"), "margin": (v["evidence"] or {}).get("margin")}
                for v in out["verdicts"]]
    rows = [{k: v for k, v in r.items() if k != "index"} for r in out["triples"]]
    return {"verdicts": verdicts, "counts": out["status_counts"], "solves": out["solves"],
            "pairs": out["pairs"], "rows": rows}


def _same(x, y) -> bool:
    """Equal, floats up to round-off: a batched solve is not bitwise independent of what else is in
    its batch (θ∞ agrees to ~1e-16, a loss of 1e-30 to ~1e-29, a margin of 1e-9 — a floor plus
    10·‖∇R‖·(measured error ~1e-16) — to ~1e-15)."""
    if isinstance(x, float) and isinstance(y, float):
        return abs(x - y) <= 1e-9 * max(abs(x), abs(y)) + 1e-12
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y))
    return x == y


@pytest.fixture(scope="module")
def one_block():
    return run_study(_study(block_size=1000), write=False)


@pytest.mark.slow
def test_streamed_equals_one_block(one_block):
    streamed = run_study(_study(block_size=7), write=False)
    assert one_block.blocks == 1 and streamed.blocks == 6
    a, b = _essentials(one_block), _essentials(streamed)
    assert _same(b, a), (b, a)
    # the verdicts are not vacuous: the norms are refuted, Theorem 8's bound 2 holds, 1.0001 does not
    v = {m.label: m.verdict for m in streamed.members}
    assert v["l2_norm"] == v["lp_norm[p=1]"] == "falsified"
    assert v["theorem8_ratio[bound=2]"] == "survives" and v["theorem8_ratio[bound=1.0001]"] == "falsified"
    assert a["pairs"]["admissible"] > 20
    # only the retained triples are held: far fewer than were solved
    assert len(streamed.triples) < a["solves"]
    assert len(a["rows"]) == 25  # report.json_triples caps the rows of results.json


@pytest.mark.slow
def test_streamed_run_writes_every_triple_and_a_verifiable_certificate(tmp_path, one_block):
    from ibtest.cert.replay import verify

    res = run_study(_study(block_size=9), out_dir=tmp_path / "run")
    db = sqlite3.connect(tmp_path / "run" / "results.sqlite")
    n_triples = db.execute("SELECT COUNT(*) FROM triples").fetchone()[0]
    idx = [r[0] for r in db.execute("SELECT idx FROM triples ORDER BY idx")]
    pairs = db.execute("SELECT COUNT(*), MAX(a), MAX(b) FROM pairs").fetchone()
    parents = db.execute("SELECT COUNT(*) FROM triples WHERE parent >= 0 AND origin = 'study'").fetchone()[0]
    # a partner's parent is the study triple (same θ0) it was built from, at its run-wide index
    bad = db.execute("SELECT COUNT(*) FROM triples c JOIN triples p ON c.parent = p.idx "
                     "WHERE c.origin != 'study' AND (p.origin != 'study' OR p.theta0 != c.theta0 OR p.idx > c.idx)"
                     ).fetchone()[0]
    orphans = db.execute("SELECT COUNT(*) FROM triples WHERE origin != 'study' AND parent NOT IN "
                         "(SELECT idx FROM triples)").fetchone()[0]
    db.close()
    assert bad == 0 and orphans == 0
    assert n_triples == one_block.to_json()["solves"] and idx == list(range(n_triples))
    assert pairs[0] == one_block.to_json()["pairs"]["admissible"] and max(pairs[1:]) < n_triples
    assert parents == 0
    cert = json.loads((tmp_path / "run" / "certificates" / "l2_norm.json").read_text())
    assert cert["gap"] > cert["margin"]
    assert verify(tmp_path / "run" / "certificates" / "l2_norm.json").holds
    assert res.verdicts == one_block.verdicts


def test_streamed_raising_hypothesis_and_no_converged_triple(tmp_path):
    """A hypothesis that raises on a block gets an error row, the others still get verdicts; a
    member with nothing to judge in any block says why, from the counts of the whole run."""
    f = tmp_path / "boom.py"
    f.write_text(
        "import ibtest\n"
        "def boom(theta, ctx):\n"
        "    raise ValueError('no can do')\n"
        "@ibtest.hookimpl\n"
        "def ibtest_hypotheses():\n"
        "    return [ibtest.Hypothesis(name='boom', fn=boom)]\n")
    study = _study(block_size=10, n_datasets=30)
    study["plugins"] = [str(f)]
    study["hypotheses"] = [{"name": "boom"}, {"name": "l2_norm", "expect": "falsified"}]
    res = run_study(study, write=False)
    rows = {m.label: m for m in res.members}
    assert res.blocks == 3
    assert rows["boom"].verdict == "error" and "no can do" in rows["boom"].error
    assert rows["l2_norm"].verdict == "falsified"

    dead = _study(block_size=4, n_datasets=9)
    dead["init"] = {"name": "zeros"}  # σ'(0) = 1 by default: make every unit dead instead
    dead["model"] = {"name": "relu_neuron", "relu_grad_at_zero": 0}
    dead["hypotheses"] = [{"name": "l2_norm"}, {"name": "theorem8_ratio"}]
    res = run_study(dead, write=False)
    assert res.blocks == 3
    for m in res.members:
        assert m.verdict == "inconclusive" and m.reason == "no converged triple (stalled 9)"
        assert m.n_pairs == 0


@pytest.mark.slow
def test_resuming_a_streamed_run_solves_nothing_and_rebuilds_the_tables(tmp_path):
    from ibtest.api import resume_run

    first = run_study(_study(block_size=8, n_datasets=20), out_dir=tmp_path / "run")
    db = sqlite3.connect(tmp_path / "run" / "results.sqlite")
    before = db.execute("SELECT COUNT(*), SUM(status = 'converged') FROM triples").fetchone()
    db.close()
    again = resume_run(tmp_path / "run")
    assert again.solve_calls == 0 and again.blocks == first.blocks == 3
    assert again.verdicts == first.verdicts
    db = sqlite3.connect(tmp_path / "run" / "results.sqlite")
    after = db.execute("SELECT COUNT(*), SUM(status = 'converged') FROM triples").fetchone()
    db.close()
    assert after == before and before[0] > 20

