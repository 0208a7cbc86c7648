"""Unit and property tests of engine pieces: grouping of own pairs, padding, the YAML line map."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ibtest.pairs.admissible import group_pairs
from ibtest.solve.batch import cat_padded
from ibtest.study.yamlpos import format_path, line_of, load_with_lines


@settings(max_examples=60, deadline=None, derandomize=True)
@given(keys=st.lists(st.integers(0, 6), min_size=0, max_size=30))
def test_group_pairs_equals_brute_force(keys):
    k = torch.tensor(keys, dtype=torch.int64)
    a, b = group_pairs(k, cap=10_000)
    got = {tuple(sorted((int(i), int(j)))) for i, j in zip(a, b)}
    want = {(i, j) for i, j in itertools.combinations(range(len(keys)), 2) if keys[i] == keys[j]}
    assert got == want
    assert len(got) == a.numel()  # no duplicates


def test_group_pairs_cap_limits_each_group():
    k = torch.tensor([1] * 10 + [2] * 3)
    a, b = group_pairs(k, cap=4)
    groups = [int(k[i]) for i in a]
    assert groups.count(1) == 4 and groups.count(2) == 3


def test_padding_keeps_the_data_and_masks_the_rest():
    X1, y1, m1 = torch.ones(2, 3, 4), torch.ones(2, 3), torch.ones(2, 3)
    X2, y2, m2 = 2 * torch.ones(1, 5, 4), 2 * torch.ones(1, 5), torch.ones(1, 5)
    X, y, m = cat_padded([(X1, y1, m1), (X2, y2, m2)])
    assert X.shape == (3, 5, 4) and m[:2, 3:].sum() == 0 and X[:2, 3:].abs().sum() == 0
    assert torch.equal(X[2], X2[0]) and m.sum() == 11


def test_yaml_line_map():
    data, lines = load_with_lines("a: 1\nb:\n  - {c: 2}\n  - d: [3,\n      4]\n")
    assert data == {"a": 1, "b": [{"c": 2}, {"d": [3, 4]}]}
    assert lines[("b", 0, "c")] == 3 and lines[("b", 1, "d")] == 4
    assert line_of(lines, ("b", 1, "d", 7, "x")) == 4
    assert format_path(("hypotheses", 1, "params", "p")) == "hypotheses[1].params.p"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_runs_on_the_cpu_and_says_so():
    from ibtest import run_study

    study = {"study": "cuda-asked", "model": {"name": "relu_neuron"},
             "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 5]}],
             "solver": {"name": "exact"}, "hypotheses": [{"name": "l2_norm"}], "device": "cuda"}
    res = run_study(study, write=False)
    assert any("torch sees no CUDA device" in e and "ran on the cpu" in e for e in res.errors)
    assert res.verdicts == {"l2_norm": "falsified"}
