"""Fuzzing ``ibtest run`` with generated study files, valid and mutated.

Every input must end in a result (exit 0 or 1) or a clear message with exit 2: never another
exception (a traceback), never a hang. Mutations: wrong types, negative and huge numbers, NaN
and inf, unknown keys, deleted fields, truncated text, random bytes, deep nesting, alias bombs,
duplicate keys, other encodings. Studies stay tiny (n, d, counts ≤ 6; "huge" numbers are so
huge that they are refused, or fail at once), so an example that runs takes well under a second.
"""
from __future__ import annotations

import contextlib
import copy
import io
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from ibtest.cli import main

T3 = {
    "study": "t3",
    "model": {"name": "relu_neuron"},
    "init": {"name": "zeros"},
    "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 1]}],
    "solver": {"name": "exact"},
    "constructions": ["blocking_point"],
    "hypotheses": [{"name": "l2_norm", "expect": "falsified"}],
    "report": {"digits": 6},
}
LIN = {
    "study": "lin",
    "model": {"name": "linear"},
    "init": {"name": "gaussian", "scale": 1.0, "count": 2},
    "datasets": [{"name": "gaussian", "n": 2, "d": 3, "count": 2, "labels": "teacher_linear"}],
    "solver": {"name": "exact"},
    "hypotheses": [{"name": "dist_to_init"}, {"name": "lp_norm", "params": {"p": [1, 2]}}],
    "report": {"digits": 6},
}
PATHS: list[tuple] = [
    ("seed",), ("study",), ("description",), ("model",), ("model", "name"), ("model", "relu_grad_at_zero"),
    ("init",), ("init", "name"), ("init", "count"), ("init", "scale"), ("init", "value"),
    ("datasets",), ("datasets", 0), ("datasets", 0, "name"), ("datasets", 0, "n"), ("datasets", 0, "d"),
    ("datasets", 0, "count"), ("datasets", 0, "gamma"), ("datasets", 0, "alpha"), ("datasets", 0, "pad_to"),
    ("datasets", 0, "labels"), ("datasets", 0, "noise"), ("datasets", 1),
    ("solver",), ("solver", "name"), ("solver", "fit_tol"), ("solver", "grid"), ("solver", "max_pieces"),
    ("solver", "root_tol"), ("constructions",), ("constructions", 0),
    ("hypotheses",), ("hypotheses", 0), ("hypotheses", 0, "name"), ("hypotheses", 0, "params"),
    ("hypotheses", 0, "params", "p"), ("hypotheses", 0, "expect"), ("hypotheses", 0, "atol"),
    ("verdict",), ("verdict", "safety"), ("verdict", "min_pairs"), ("verdict", "max_certificates"),
    ("report",), ("report", "triples"), ("report", "digits"), ("sweep",), ("sweep", "path"), ("sweep", "values"),
    ("chunk_size",), ("block_size",), ("device",), ("plugins",), ("nope",),
]
NAMES = ["exact", "gd", "gaussian", "zeros", "fixed", "scaled", "l2_norm", "lp_norm", "relu_neuron", "linear",
         "vardi_shamir_theorem3", "sparse_regression", "orthogonal", "matrix_completion", "blocking_point",
         "init.scale", "datasets.n", "datasets.d", "solver.fit_tol", "model.relu_grad_at_zero", "falsified"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 6), st.sampled_from([10**12, -10**12, 2**70]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.sampled_from(NAMES),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["name", "n", "d", "x", ""]) |
                                                                st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def _set(data: Any, path: tuple, value: Any, delete: bool = False) -> None:
    node = data
    for p in path[:-1]:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        else:
            return
    last = path[-1]
    if isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int):
        if last < len(node):
            if delete:
                del node[last]
            else:
                node[last] = value
        elif not delete:
            node.append(value)


def _bomb(levels: int) -> str:
    lines = ['lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@st.composite
def study_files(draw) -> bytes:
    data = copy.deepcopy(draw(st.sampled_from([T3, LIN])))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS))
        _set(data, path, draw(values), delete=draw(st.booleans()) and draw(st.booleans()))
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    how = draw(st.sampled_from(["as is"] * 4 + ["truncate", "bytes", "random", "bomb", "duplicate", "deep",
                                                 "latin-1", "alias", "tab"]))
    raw = text.encode()
    if how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif how == "bytes":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    elif how == "random":
        raw = draw(st.binary(max_size=300))
    elif how == "bomb":
        levels = draw(st.integers(1, 9))
        raw = (_bomb(levels) + text + f"description: *l{levels}\n").encode()
    elif how == "duplicate":
        lines = text.splitlines(keepends=True)
        raw = "".join(lines + [draw(st.sampled_from(lines))]).encode()
    elif how == "deep":
        depth = draw(st.integers(1, 5000))
        raw = (text + "description: " + "[" * depth + "]" * depth + "\n").encode()
    elif how == "latin-1":
        raw = ("description: é\n" + text).encode("latin-1", errors="replace")
    elif how == "alias":
        raw = text.replace("name:", "name: &n", 1).replace("study:", "study: *n\nx:", 1).encode()
    elif how == "tab":
        raw = text.replace("  ", "\t", 1).encode()
    return raw


class _Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hang()


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(raw=study_files())
def test_every_study_file_ends_in_a_result_or_exit_2(raw: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study.yaml"
        study.write_bytes(raw)
        out, err = io.StringIO(), io.StringIO()
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, 60)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["run", str(study), "-q", "--out", str(Path(tmp) / "run")])
        except _Hang:
            raise AssertionError(f"no answer after 60 s for:\n{raw[:2000]!r}") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    assert code in (0, 1, 2), (code, raw[:2000])
    if code == 2:
        assert err.getvalue().startswith("ibtest: error: "), (err.getvalue(), raw[:2000])
    assert "Traceback" not in err.getvalue() + out.getvalue()
