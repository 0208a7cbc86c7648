"""Fuzzing ``ibtest verify`` and ``ibtest show`` with genuine certificates, valid and mutated.

Every input must end in a result: verify exits 0 (confirmed) or 1 (withdrawn), or either command
exits 2 with a one-line message. Never another exception (it would propagate out of
``ibtest.cli.main`` and fail the test), never a traceback, never a hang (examples are bounded and
each is small).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ibtest.api import run_study
from ibtest.cli import main

# FUZZ_N=400 for a longer, random search by hand; the suite runs 40 fixed examples
_N = os.environ.get("FUZZ_N")
SETTINGS = settings(max_examples=int(_N or 40), deadline=None, derandomize=not _N,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    study = {"study": "fuzz", "seed": 0, "model": {"name": "relu_neuron", "relu_grad_at_zero": 1},
             "init": {"name": "zeros"}, "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 5]}],
             "solver": {"name": "exact"}, "hypotheses": [{"name": "l2_norm"}, {"name": "dist_to_init"}]}
    res = run_study(study, out_dir=out)
    assert len(res.certificates) == 2
    return json.loads(Path(res.certificates[0]).read_text())


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["nan", "inf", "-inf", "1e999"]),
    st.text(max_size=12), st.just("\x1b[8m\r\n"),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON tree (dict keys and list indices)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:6]):
            out += _paths(v, prefix + (i,))
    return out


def _set(tree: Any, path: tuple, fn) -> Any:
    if not path:
        return fn(tree)
    parent = tree
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    new = fn(parent[last])
    if new is _DELETE:
        del parent[last]
    else:
        parent[last] = new
    return tree


_DELETE = object()


@st.composite
def mutated(draw, cert: dict) -> bytes:
    """A genuine certificate with 1 to 3 edits, or (rarely) random bytes or deep nesting."""
    kind = draw(st.sampled_from(["edit"] * 8 + ["bytes", "deep", "valid"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.sampled_from([50, 5000, 200_000]))
        return ("[" * depth + "1" + "]" * depth).encode()
    tree = json.loads(json.dumps(cert))
    if kind == "valid":
        return json.dumps(tree).encode()
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(tree)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "replace", "scale", "wrap", "nan"]))
        if op == "delete" and path:
            tree = _set(tree, path, lambda v: _DELETE)
        elif op == "replace":
            v = draw(values)
            tree = _set(tree, path, lambda _, v=v: v)
        elif op == "scale":
            f = draw(st.sampled_from([-1.0, 0.0, 1e-300, 1e300, 2.0]))
            tree = _set(tree, path, lambda v, f=f: v * f if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
        elif op == "wrap":
            tree = _set(tree, path, lambda v: [v])
        else:
            tree = _set(tree, path, lambda v: math.nan if isinstance(v, float) else v)
    return json.dumps(tree, allow_nan=True).encode()


def _check(code: int, err: str, allowed: set[int]) -> None:
    assert code in allowed, (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("ibtest: error: ") and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_verify_and_show_end_in_a_result(genuine, tmp_path, capsys, data):
    blob = data.draw(mutated(genuine))
    path = tmp_path / "cert.json"
    path.write_bytes(blob)
    capsys.readouterr()
    code = main(["verify", str(path)])
    cap = capsys.readouterr()
    _check(code, cap.err, {0, 1, 2})
    assert "\x1b" not in cap.out + cap.err
    code = main(["show", str(path)])
    cap = capsys.readouterr()
    _check(code, cap.err, {0, 2})
    assert "\x1b" not in cap.out + cap.err
