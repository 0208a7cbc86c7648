"""One meaning for StudyResult.triples (the run's retained triples, whatever the block count), the
public facade ibtest.api, and the one reader of the results format."""
from __future__ import annotations

import pytest

import ibtest.api as api
from ibtest.base.errors import UserError


def _study(block_size: int) -> dict:
    return {"study": "result", "seed": 1, "model": {"name": "relu_neuron"},
            "init": {"name": "gaussian", "scale": 0.1},
            "datasets": [{"name": "gaussian", "n": 4, "d": 5, "count": 12, "labels": "teacher_relu"}],
            "solver": {"name": "exact"}, "constructions": ["blocking_point"],
            "hypotheses": [{"name": "l2_norm"}, {"name": "theorem8_ratio"}],
            "block_size": block_size}


def test_facade_names():
    for name in ("run_study", "resume_run", "load_results", "StudyResult", "run_loaded", "default_run_dir",
                 "write_certificates"):
        assert hasattr(api, name), name
    from ibtest.out.result import StudyResult
    from ibtest.run.results_file import load_results

    assert api.StudyResult is StudyResult and api.load_results is load_results


@pytest.mark.parametrize("block_size", [1000, 5])
def test_triples_are_the_retained_ones(block_size, tmp_path):
    res = api.run_study(_study(block_size), out_dir=tmp_path / "run")
    assert res.blocks == (1 if block_size == 1000 else 3)
    assert 0 < len(res.triples) <= res.n_triples == res.tally.n_solves
    assert len(res.pairs) <= res.tally.n_pairs
    for m in res.members:
        ev = m.evidence
        assert ev is not None and 0 <= ev.a < len(res.triples)
        assert (ev.b is None) == (m.kind != "regularizer")
        assert ev.b is None or 0 <= ev.b < len(res.triples)
    stored = api.load_results(tmp_path / "run")
    assert stored["solves"] == res.n_triples


def test_results_reader_refuses_damaged_results(tmp_path):
    from ibtest.run.results_file import check_results

    with pytest.raises(UserError, match="damaged"):
        check_results([], tmp_path)
    with pytest.raises(UserError, match="no 'verdicts'"):
        check_results({"triples": [], "summary": ""}, tmp_path)
