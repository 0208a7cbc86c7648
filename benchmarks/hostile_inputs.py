"""Hostile inputs: how many end in a traceback (or a hang) instead of a result or exit 2.

``python -m benchmarks.hostile_inputs [--only CATEGORY] [--timeout S] [-v]`` builds a varied
corpus of bad study files, misbehaving plugins and damaged results stores under a temporary
directory, runs each through ``ibtest.cli.main`` in this process and classifies the outcome:

* ``result``: exit 0 or 1 (the study ran, or the command did its job);
* ``user error``: exit 2 with a message on stderr;
* ``traceback``: an exception escaped ``main`` (the user would see a traceback);
* ``hang``: still running after ``--timeout`` seconds (SIGALRM);
* ``wrong``: it ended, but not as it must: an exit code the case does not allow (``Case.expect``:
  a failing study that passes, a refusal with no message) or a check of what it printed or left
  behind that fails (``Case.check``: a forged line, a file changed by a read-only command).

A case with ``env`` or ``stdout`` runs as a subprocess (``python -m ibtest.cli``): an ASCII
terminal, a standard output on ``/dev/full``. The second round (issue 27) adds certificates edited
by kind, output paths, plugins of every kind, hangs a budget catches, forged lines and stores
(:mod:`benchmarks.hostile_round2`).

Every study in the corpus is tiny, so a case that runs takes well under a second; sizes that
would allocate much are chosen so large that the allocation fails at once (or is refused).
Read-only media and a full disk are simulated by patching ``sqlite3.connect`` and file writes.

Measured (issue 9): on main before the fix (commit 4935beb), 158 of the 708 inputs ended in a
traceback (153) or a hang (5: alias bombs of 5, 6 and 9 levels, ``root_tol: -3`` and
``root_tol: -.inf``); after it, none. The exit-2 share rose from 367 to 618 (inputs that ran
to a meaningless result before, such as ``grid: -5`` or ``n: true``, are refused now).

Measured (issue 27): the second round adds 978 inputs (1686 in all). On main before the fix
(commit d3538bd), the first four round-2 categories gave 30 bad outcomes of certs (25
tracebacks from ``show`` on edited shrunk and witness certificates, 5 wrong), 15 of outputs (12
tracebacks: ``-o DIR``, ``-o /dev/full``, ``--plot x.notaformat``, ``new --dir /dev/null``, stdout
on ``/dev/full``, ``PYTHONIOENCODING=ascii``), 59 of plugins2 (13 tracebacks, 46 wrong: plugin
files calling ``sys.exit(0)`` ending the run with exit 0, specs with an unknown kind or NaN
tolerances accepted) and 2 hangs before the run was killed for memory (``rotate count:
1000000``); after it, none of the 1686.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import io
import math
import os
import pathlib
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

THEOREM3 = {
    "study": "t3",
    "model": {"name": "relu_neuron"},
    "init": {"name": "zeros"},
    "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 1]}],
    "solver": {"name": "exact"},
    "hypotheses": [{"name": "l2_norm"}],
    "report": {"digits": 6},
}
LINEAR = {
    "study": "lin",
    "model": {"name": "linear"},
    "init": {"name": "gaussian", "scale": 1.0, "count": 2},
    "datasets": [{"name": "gaussian", "n": 2, "d": 3, "count": 2, "labels": "teacher_linear"}],
    "solver": {"name": "exact"},
    "hypotheses": [{"name": "l2_norm"}, {"name": "dist_to_init"}],
    "report": {"digits": 6},
}

BAD_NUMBERS: list[Any] = [-3, 0, True, [], "x", {}, None, 1.5, math.nan, math.inf, -math.inf, -1e-3]
HUGE = 10**12


@dataclass
class Case:
    category: str
    name: str
    argv: list[str]
    patch: Callable[[], contextlib.AbstractContextManager] | None = None
    #: exit codes this case may end with (None: any but a traceback or a hang)
    expect: tuple[int, ...] | None = None
    #: (exit code, stdout, stderr) -> why the outcome is wrong, or None
    check: Callable[[int, str, str], str | None] | None = None
    #: run as a subprocess with these environment variables / this standard output (a path)
    env: dict[str, str] | None = None
    stdout: str | None = None


@dataclass
class Outcome:
    case: Case
    kind: str  # result | user error | traceback | hang
    detail: str = ""
    seconds: float = 0.0


def _dump(study: dict) -> str:
    return yaml.safe_dump(study, sort_keys=False, allow_unicode=True)


def _set(study: dict, path: tuple, value: Any) -> dict:
    import copy

    s = copy.deepcopy(study)
    node = s
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return s


class Corpus:
    def __init__(self, root: pathlib.Path):
        self.root = root
        self.cases: list[Case] = []
        self.k = 0

    def file(self, text: str | bytes, suffix: str = ".yaml") -> pathlib.Path:
        self.k += 1
        p = self.root / f"case{self.k:04d}{suffix}"
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    def study(self, category: str, name: str, text: str | bytes, *extra: str) -> None:
        p = self.file(text)
        self.cases.append(Case(category, name, ["run", str(p), "-q", "--out", str(self.root / f"run{self.k:04d}"),
                                                *extra]))


# ------------------------------------------------------------------------------------------
def yaml_cases(c: Corpus) -> None:
    base = _dump(THEOREM3)
    for levels in (3, 5, 6, 9):
        lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        for i in range(1, levels + 1):
            lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
        c.study("yaml", f"alias bomb {levels} levels",
                "\n".join(lines) + "\n" + base.replace("study: t3", f"study: t3\ndescription: *a{levels}"))
    c.study("yaml", "alias bomb in a list", base + "plugins: &p [x]\nconstructions: *p\n")
    c.study("yaml", "recursive alias", base + "extra: &r [*r]\n")
    c.study("yaml", "recursive alias as value", "study: &s [*s]\n")
    c.study("yaml", "legit anchor", base.replace("model: {name: relu_neuron}", "model: &m {name: relu_neuron}")
            .replace("model:\n  name: relu_neuron", "model: &m\n  name: relu_neuron") + "description: x\n")
    c.study("yaml", "merge key", base + "verdict:\n  <<: {min_pairs: 1}\n")
    c.study("yaml", "merge key bomb", "a: &a {x: 1, y: 2}\nb: &b {<<: [*a, *a]}\nc: {<<: [*b, *b]}\n" + base)
    c.study("yaml", "duplicate top-level key", base + "seed: 1\nseed: 2\n")
    c.study("yaml", "duplicate key in flow mapping",
            base.replace("solver:\n  name: exact", "solver: {name: exact, fit_tol: 1.0e-20, fit_tol: 1.0}"))
    c.study("yaml", "duplicate study key", base + "study: again\n")
    c.study("yaml", "latin-1 file", ("description: café résumé\n" + base).encode("latin-1"))
    for seed in range(6):
        rnd = random.Random(seed)
        c.study("yaml", f"random bytes {seed}", bytes(rnd.randrange(256) for _ in range(200 + 50 * seed)))
    c.study("yaml", "NUL byte", base + "description: a\x00b\n")
    c.study("yaml", "UTF-8 BOM", "\ufeff" + base)
    c.study("yaml", "UTF-16 file", base.encode("utf-16"))
    c.study("yaml", "empty file", "")
    c.study("yaml", "only a comment", "# nothing\n")
    c.study("yaml", "top-level list", "- a\n- b\n")
    c.study("yaml", "top-level scalar", "42\n")
    c.study("yaml", "multiple documents", base + "---\n" + base)
    for depth in (50, 2000, 50000):
        c.study("yaml", f"deep nesting {depth}", base + "description: " + "[" * depth + "]" * depth + "\n")
        c.study("yaml", f"deep mapping nesting {depth}", base + "extra: " + "{a: " * depth + "1" + "}" * depth + "\n")
    c.study("yaml", "complex key", base + "? [a, b]\n: 1\n")
    c.study("yaml", "mapping as key", base + "? {a: 1}\n: 1\n")
    c.study("yaml", "python tag", base + "description: !!python/object/apply:os.system ['true']\n")
    c.study("yaml", "binary tag", base + "description: !!binary aGVsbG8=\n")
    c.study("yaml", "timestamp as seed", base + "seed: 2001-01-01\n")
    c.study("yaml", "tab indentation", base.replace("  name: exact", "\tname: exact"))
    c.study("yaml", "huge integer", base + "seed: " + "9" * 5000 + "\n")
    c.study("yaml", "study name not a string", base.replace("study: t3", "study: [1, 2]"))
    c.study("yaml", "very long line", base + "description: " + "x" * 1_000_000 + "\n")
    c.study("yaml", "many keys", base + "".join(f"k{i}: {i}\n" for i in range(5000)))
    c.study("yaml", "unknown yaml tag", base + "description: !foo bar\n")
    c.study("yaml", "directory as study", "")
    c.cases[-1].argv[1] = str(c.root)


def option_cases(c: Corpus) -> None:
    targets = [
        (THEOREM3, ("datasets", 0), ["alpha", "gamma", "pad_to"]),
        (LINEAR, ("datasets", 0), ["n", "d", "count", "labels", "slope", "noise"]),
        (_set(LINEAR, ("datasets", 0), {"name": "sparse_regression", "n": 2, "d": 4, "k": 1}), ("datasets", 0),
         ["n", "d", "k", "count", "noise"]),
        (_set(LINEAR, ("datasets", 0), {"name": "orthogonal", "n": 2, "d": 3}), ("datasets", 0),
         ["n", "d", "count", "scale"]),
        (LINEAR, ("init",), ["scale", "count"]),
        (THEOREM3, ("solver",), ["fit_tol", "root_tol", "max_pieces", "grid", "workers"]),
        (_set(THEOREM3, ("init",), {"name": "fixed", "value": [0.0, 0.0, 0.0]}), ("init",), ["value"]),
        (THEOREM3, ("verdict",), ["min_pairs", "safety", "max_certificates", "max_group_pairs"]),
        (THEOREM3, (), ["seed", "chunk_size", "block_size"]),
        (THEOREM3, ("hypotheses", 0), ["atol", "rtol"]),
        (THEOREM3, ("report",), ["digits", "triples", "json_triples"]),
    ]
    for study, where, options in targets:
        for opt in options:
            for v in BAD_NUMBERS:
                s = study
                if where and where[0] in ("verdict",) and "verdict" not in s:
                    s = _set(s, ("verdict",), {})
                s = _set(s, where + (opt,), v)
                c.study("options", f"{'.'.join(map(str, where))}.{opt}: {v!r}", _dump(s))
    for where, opt in ((("datasets", 0), "n"), (("datasets", 0), "d"), (("datasets", 0), "count"), (("init",), "count")):
        c.study("counts", f"{'.'.join(map(str, where))}.{opt}: 10**12", _dump(_set(LINEAR, where + (opt,), HUGE)))
    c.study("counts", "gaussian count: 1e9 (a string in YAML 1.1)",
            _dump(LINEAR).replace("count: 2\n  labels", "count: 1e9\n  labels"))
    c.study("counts", "gaussian count: 1.0e+9", _dump(LINEAR).replace("count: 2\n  labels", "count: 1.0e+9\n  labels"))
    c.study("counts", "gaussian count: 1000000000", _dump(_set(LINEAR, ("datasets", 0, "count"), 10**9)))
    c.study("counts", "pad_to: 10**12", _dump(_set(THEOREM3, ("datasets", 0, "pad_to"), HUGE)))
    c.study("counts", "matrix completion custom size -2", _dump(_set(LINEAR, ("datasets", 0), {
        "name": "matrix_completion", "preset": "custom", "size": -2, "entries": [[1, 1, 1.0]]})))
    c.study("counts", "matrix completion entries ragged", _dump(_set(LINEAR, ("datasets", 0), {
        "name": "matrix_completion", "preset": "custom", "size": 2, "entries": [[1, 1], [1, 2, 3, 4]]})))
    c.study("counts", "matrix completion entries nan", _dump(_set(LINEAR, ("datasets", 0), {
        "name": "matrix_completion", "preset": "custom", "size": 2, "entries": [[1, 1, math.nan]]})))
    c.study("counts", "hypothesis param nan",
            _dump(_set(THEOREM3, ("hypotheses",), [{"name": "lp_norm", "params": {"p": math.nan}}])))
    c.study("counts", "hypothesis param list empty",
            _dump(_set(THEOREM3, ("hypotheses",), [{"name": "lp_norm", "params": {"p": []}}])))
    c.study("counts", "gamma sweep empty", _dump(_set(THEOREM3, ("datasets", 0, "gamma"), [])))
    c.study("counts", "two gaussian datasets of different d", _dump(_set(LINEAR, ("datasets",), [
        {"name": "gaussian", "n": 2, "d": 3}, {"name": "gaussian", "n": 2, "d": 4}])))
    c.study("counts", "gaussian d sweep", _dump(_set(LINEAR, ("datasets", 0, "d"), [3, 4])))
    c.study("counts", "theorem3 pad_to 3 and 4", _dump(_set(THEOREM3, ("datasets",), [
        {"name": "vardi_shamir_theorem3"}, {"name": "vardi_shamir_theorem3", "pad_to": 4}])))
    c.study("counts", "datasets empty list", _dump(_set(THEOREM3, ("datasets",), [])))
    c.study("counts", "init list empty", _dump(_set(THEOREM3, ("init",), [])))
    c.study("counts", "init fixed wrong length", _dump(_set(THEOREM3, ("init",), {"name": "fixed", "value": [1.0]})))


def sweep_cases(c: Corpus) -> None:
    for path, values in [
        ("init.scale", []), ("init.nope", [1.0]), ("model.nope", [1]), ("solver.nope", [1]),
        ("datasets.nope", [1]), ("nope", [1]), ("", [1]), ("init", [1]), ("datasets.0.n", [2]),
        ("init.scale", ["x"]), ("init.scale", [math.nan]), ("init.scale", [True]), ("init.scale", [[1, 2]]),
        ("datasets.n", [-3]), ("datasets.n", [0]), ("datasets.d", [0]), ("datasets.count", [0]),
        ("datasets.n", [[]]), ("solver.grid", [-5]), ("solver.fit_tol", [math.nan]), ("solver.fit_tol", [-1.0]),
        ("init.count", [2]), ("model.relu_grad_at_zero", [2]), ("datasets.labels", ["nope"]),
        ("init.scale", 3), ("init.scale", None),
    ]:
        base = LINEAR if path != "model.relu_grad_at_zero" else THEOREM3
        c.study("sweeps", f"sweep {path!r}: {values!r}", _dump(_set(base, ("sweep",), {"path": path, "values": values})))
    c.study("sweeps", "sweep not a mapping", _dump(_set(LINEAR, ("sweep",), [1, 2])))


PLUGIN_HEAD = "import torch\nimport ibtest\n\n"
DATASET = PLUGIN_HEAD + """
def gen(rng, **kw):
{body}

@ibtest.hookimpl
def ibtest_datasets():
    return [ibtest.Dataset(name="bad_ds", generate=gen)]
"""
INIT = PLUGIN_HEAD + """
def sample(model, d, count, rng, **kw):
{body}

@ibtest.hookimpl
def ibtest_inits():
    return [ibtest.Init(name="bad_init", sample=sample)]
"""


def plugin_cases(c: Corpus) -> None:
    good_x = "torch.tensor([[[3., -1, 0], [4, 2, 0]]], dtype=torch.float64)"
    good_y = "torch.tensor([[16., 18]], dtype=torch.float64)"
    datasets = {
        "raises": "    raise RuntimeError('boom')",
        "X of shape [1, 0]": "    return ibtest.DataBatch(torch.zeros(1, 0), torch.zeros(1, 0), ['a'])",
        "X of shape [1, 3, 0]": "    return ibtest.DataBatch(torch.zeros(1, 3, 0), torch.zeros(1, 3), ['a'])",
        "no points": "    return ibtest.DataBatch(torch.zeros(1, 0, 3), torch.zeros(1, 0), ['a'])",
        "no datasets": "    return ibtest.DataBatch(torch.zeros(0, 2, 3), torch.zeros(0, 2), [])",
        "ragged y": f"    return ibtest.DataBatch({good_x}, torch.zeros(1, 5), ['a'])",
        "ragged list": "    return ibtest.DataBatch([[[1, 2], [3]]], [[1, 2]], ['a'])",
        "nan X": f"    X = {good_x}; X[0, 0, 0] = float('nan'); return ibtest.DataBatch(X, {good_y}, ['a'])",
        "inf y": f"    y = {good_y}; y[0, 1] = float('inf'); return ibtest.DataBatch({good_x}, y, ['a'])",
        "returns None": "    return None",
        "returns tuple": f"    return ({good_x}, {good_y})",
        "2-D X": f"    return ibtest.DataBatch({good_x}[0], {good_y}[0], ['a'])",
        "bad mask shape": f"    return ibtest.DataBatch({good_x}, {good_y}, ['a'], torch.ones(3))",
        "nan mask": f"    return ibtest.DataBatch({good_x}, {good_y}, ['a'], torch.full((1, 2), float('nan')))",
        "int dtype": "    return ibtest.DataBatch(torch.ones(1, 2, 3, dtype=torch.int64), "
                     "torch.ones(1, 2, dtype=torch.int64), ['a'])",
        "complex dtype": f"    return ibtest.DataBatch({good_x}.to(torch.complex128), {good_y}, ['a'])",
        "labels not a list": f"    return ibtest.DataBatch({good_x}, {good_y}, 5)",
        "sys.exit": "    import sys; sys.exit(3)",
        "KeyboardInterrupt-free recursion": "    return gen(rng)",
        "wrong signature": None,
    }
    for name, body in datasets.items():
        if body is None:
            code = PLUGIN_HEAD + ("def gen():\n    return None\n\n@ibtest.hookimpl\ndef ibtest_datasets():\n"
                                  "    return [ibtest.Dataset(name='bad_ds', generate=gen)]\n")
        else:
            code = DATASET.format(body=body)
        plugin = c.file(code, ".py")
        s = _set(THEOREM3, ("datasets",), [{"name": "bad_ds"}])
        c.study("plugins", f"dataset {name}", _dump(s), "--plugin", str(plugin))
    inits = {
        "raises": "    raise ValueError('no init for you')",
        "wrong shape": "    return torch.zeros(count, 7)",
        "too few": "    return torch.zeros(max(count - 1, 0), model.n_params(d))",
        "nan": "    return torch.full((count, model.n_params(d)), float('nan'))",
        "inf": "    return torch.full((count, model.n_params(d)), float('inf'))",
        "returns None": "    return None",
        "returns list": "    return [[0.0] * model.n_params(d)] * count",
        "returns ragged list": "    return [[0.0], [0.0, 1.0]]",
        "returns string": "    return 'zeros'",
        "complex": "    return torch.zeros(count, model.n_params(d), dtype=torch.complex128)",
        "sys.exit": "    import sys; sys.exit(3)",
    }
    for name, body in inits.items():
        plugin = c.file(INIT.format(body=body), ".py")
        for count in (1, 2):
            s = _set(THEOREM3, ("init",), {"name": "bad_init", "count": count})
            c.study("plugins", f"init {name} (count {count})", _dump(s), "--plugin", str(plugin))
    model = c.file(PLUGIN_HEAD + "def f(**kw):\n    raise RuntimeError('model says no')\n\n@ibtest.hookimpl\n"
                   "def ibtest_models():\n    return [ibtest.Model(name='bad_model', factory=f)]\n", ".py")
    c.study("plugins", "model factory raises", _dump(_set(THEOREM3, ("model",), {"name": "bad_model"})),
            "--plugin", str(model))
    model2 = c.file(PLUGIN_HEAD + "class M(ibtest.ModelBase):\n    def n_params(self, d):\n        raise RuntimeError('P?')\n"
                    "    def predict(self, theta, X):\n        return X[..., 0]\n\n@ibtest.hookimpl\n"
                    "def ibtest_models():\n    return [ibtest.Model(name='bad_model2', factory=M)]\n", ".py")
    c.study("plugins", "model n_params raises", _dump(_set(_set(THEOREM3, ("model",), {"name": "bad_model2"}),
                                                          ("solver",), {"name": "gd", "steps": 10})),
            "--plugin", str(model2))
    model3 = c.file(PLUGIN_HEAD + "class M(ibtest.ModelBase):\n    def n_params(self, d):\n        return -1\n"
                    "    def predict(self, theta, X):\n        return X[..., 0]\n\n@ibtest.hookimpl\n"
                    "def ibtest_models():\n    return [ibtest.Model(name='bad_model3', factory=M)]\n", ".py")
    c.study("plugins", "model n_params negative", _dump(_set(_set(THEOREM3, ("model",), {"name": "bad_model3"}),
                                                            ("solver",), {"name": "gd", "steps": 10})),
            "--plugin", str(model3))
    hyp = c.file(PLUGIN_HEAD + "def fn(theta, ctx):\n    raise RuntimeError('R?')\n\n@ibtest.hookimpl\n"
                 "def ibtest_hypotheses():\n    return [ibtest.Hypothesis(name='bad_h', fn=fn)]\n", ".py")
    c.study("plugins", "hypothesis raises", _dump(_set(THEOREM3, ("hypotheses",), [{"name": "bad_h"}])),
            "--plugin", str(hyp))
    con = c.file(PLUGIN_HEAD + "def build(**kw):\n    raise RuntimeError('C?')\n\n@ibtest.hookimpl\n"
                 "def ibtest_constructions():\n    return [ibtest.Construction(name='bad_c', build=build)]\n", ".py")
    c.study("plugins", "construction raises", _dump(_set(THEOREM3, ("constructions",), ["bad_c"])),
            "--plugin", str(con))
    c.study("plugins", "plugin file missing", _dump(_set(THEOREM3, ("plugins",), ["nope.py"])))
    c.study("plugins", "plugin list not a list", _dump(_set(THEOREM3, ("plugins",), "nope.py")))
    c.study("plugins", "plugin entry not a string", _dump(_set(THEOREM3, ("plugins",), [3, None])))
    bad_syntax = c.file("def (:\n", ".py")
    c.study("plugins", "plugin file with a syntax error", _dump(THEOREM3), "--plugin", str(bad_syntax))
    latin = c.file("# caf\xe9\nx = 1\n".encode("latin-1"), ".py")
    c.study("plugins", "plugin file not UTF-8", _dump(THEOREM3), "--plugin", str(latin))


# ------------------------------------------------------------------------------------------
class _FailingConnection:
    """A sqlite3 connection whose writes fail after ``budget`` statements (a full disk)."""

    def __init__(self, db: sqlite3.Connection, budget: int, message: str):
        self._db, self._budget, self._message = db, budget, message

    def _tick(self, sql: str) -> None:
        if sql.lstrip().upper().startswith(("INSERT", "DELETE", "UPDATE", "CREATE")):
            self._budget -= 1
            if self._budget < 0:
                raise sqlite3.OperationalError(self._message)

    def execute(self, sql, *a):
        self._tick(sql)
        return self._db.execute(sql, *a)

    def executemany(self, sql, *a):
        self._tick(sql)
        return self._db.executemany(sql, *a)

    def executescript(self, sql):
        self._tick(sql)
        return self._db.executescript(sql)

    def __getattr__(self, name):
        return getattr(self._db, name)

    def __enter__(self):
        return self._db.__enter__()

    def __exit__(self, *exc):
        return self._db.__exit__(*exc)


@contextlib.contextmanager
def full_disk(budget: int, files_too: bool = True) -> Iterator[None]:
    real = sqlite3.connect

    def connect(*a, **k):
        return _FailingConnection(real(*a, **k), budget, "database or disk is full")

    real_write = pathlib.Path.write_text

    def write_text(self, *a, **k):
        if files_too and self.suffix in (".json", ".md", ".png"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, *a, **k)

    sqlite3.connect = connect
    setattr(pathlib.Path, "write_text", write_text)  # noqa: B010 - a monkeypatch of a method
    try:
        yield
    finally:
        sqlite3.connect = real
        setattr(pathlib.Path, "write_text", real_write)  # noqa: B010


@contextlib.contextmanager
def read_only_media() -> Iterator[None]:
    """sqlite opens read-only and every file write fails with EROFS (as on a read-only mount)."""
    real = sqlite3.connect

    def connect(database, *a, uri=False, **k):
        db = str(database)
        if not uri:
            db, uri = f"file:{db}", True
        sep = "&" if "?" in db else "?"
        if "mode=" not in db:
            db += f"{sep}mode=ro"
        return real(db, *a, uri=uri, **k)

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    saved = {name: getattr(pathlib.Path, name) for name in ("write_text", "write_bytes", "mkdir", "touch")}
    sqlite3.connect = connect
    for name in saved:
        setattr(pathlib.Path, name, refuse)
    try:
        yield
    finally:
        sqlite3.connect = real
        for name, f in saved.items():
            setattr(pathlib.Path, name, f)


def store_cases(c: Corpus, finished: pathlib.Path) -> None:
    def copy(name: str) -> pathlib.Path:
        c.k += 1
        d = c.root / f"store{c.k:04d}"
        shutil.copytree(finished, d)
        return d

    def add(name: str, run: pathlib.Path, commands=("report", "diff", "resume"), patch=None) -> None:
        for cmd in commands:
            argv = {"report": ["report", str(run)], "json": ["report", str(run), "--format", "json"],
                    "diff": ["diff", str(finished), str(run)],
                    "resume": ["run", "--resume", str(run), "-q"]}[cmd]
            c.cases.append(Case("stores", f"{name}: {cmd}", argv, patch))

    db = lambda d: d / "results.sqlite"  # noqa: E731
    d = copy("truncated")
    raw = db(d).read_bytes()
    db(d).write_bytes(raw[: len(raw) // 2])
    add("sqlite truncated to half", d)
    d = copy("t100")
    db(d).write_bytes(raw[:100])
    add("sqlite truncated to 100 bytes", d)
    d = copy("t0")
    db(d).write_bytes(b"")
    add("sqlite truncated to 0 bytes", d)
    d = copy("garbage")
    db(d).write_bytes(os.urandom(4096))
    add("sqlite overwritten with random bytes", d)
    d = copy("text")
    db(d).write_text("hello, I am not a database\n")
    add("sqlite overwritten with text", d)
    d = copy("header")
    db(d).write_bytes(raw[:16] + os.urandom(len(raw) - 16))
    add("sqlite header kept, body random", d)
    for what, sql in [
        ("meta study_text not JSON", "UPDATE meta SET value = '{broken' WHERE key = 'study_text'"),
        ("meta state not JSON", "UPDATE meta SET value = 'nope' WHERE key = 'state'"),
        ("meta plugins not a list", "UPDATE meta SET value = '5' WHERE key = 'plugins'"),
        ("meta plugins list of ints", "UPDATE meta SET value = '[1, 2]' WHERE key = 'plugins'"),
        ("meta study_text a number", "UPDATE meta SET value = '5' WHERE key = 'study_text'"),
        ("meta study_text bad YAML", "UPDATE meta SET value = '\"study: [\"' WHERE key = 'study_text'"),
        ("meta emptied", "DELETE FROM meta"),
        ("results JSON broken", "UPDATE results SET json = '{\"verdicts\": [' WHERE id = 1"),
        ("results JSON empty object", "UPDATE results SET json = '{}' WHERE id = 1"),
        ("results JSON a list", "UPDATE results SET json = '[1, 2]' WHERE id = 1"),
        ("results JSON verdicts a number", "UPDATE results SET json = '{\"verdicts\": 3}' WHERE id = 1"),
        ("results JSON null", "UPDATE results SET json = 'null' WHERE id = 1"),
        ("results JSON NULL column", "UPDATE results SET json = NULL WHERE id = 1"),
        ("results JSON sweep without runs", "UPDATE results SET json = '{\"runs\": 5, \"sweep\": 1}' WHERE id = 1"),
        ("results row deleted", "DELETE FROM results"),
        ("results table dropped", "DROP TABLE results"),
        ("meta table dropped", "DROP TABLE meta"),
        ("solves payload damaged", "UPDATE solves SET payload = X'00112233'"),
        ("solves payload header damaged", "UPDATE solves SET payload = X'0800000000000000' || CAST('{broken}!!' AS BLOB)"),
        ("solves table dropped", "DROP TABLE solves"),
        ("triples table dropped", "DROP TABLE triples"),
    ]:
        d = copy(what)
        con = sqlite3.connect(db(d))
        with con:
            con.execute(sql)
        con.close()
        add(what, d)
    d = copy("dir")
    db(d).unlink()
    db(d).mkdir()
    add("results.sqlite is a directory", d)
    d = copy("nofile")
    db(d).unlink()
    add("no results.sqlite", d)
    f = c.file("not a run\n", ".txt")
    add("run is a file", f)
    add("run does not exist", c.root / "no-such-run")
    # read-only media: report / diff must work, resume must say it cannot write
    d = copy("ro")
    add("read-only media", d, ("report", "json", "diff", "resume"), read_only_media)
    # a full disk while running a fresh study, and while resuming
    study = c.file(_dump(THEOREM3))
    for budget in (0, 2, 5, 9):
        c.cases.append(Case("stores", f"full disk after {budget} writes: run",
                            ["run", str(study), "-q", "--out", str(c.root / f"full{budget}")],
                            functools.partial(full_disk, budget)))
    c.cases.append(Case("stores", "full disk only for files: run",
                        ["run", str(study), "-q", "--out", str(c.root / "fullfiles")], lambda: full_disk(10**9)))
    d = copy("fullresume")
    c.cases.append(Case("stores", "full disk: resume", ["run", "--resume", str(d), "-q"], lambda: full_disk(0)))
    # run directories that cannot be made
    f = c.file("x", ".txt")
    c.cases.append(Case("stores", "--out is a file", ["run", str(study), "-q", "--out", str(f)]))
    c.cases.append(Case("stores", "--out below a file", ["run", str(study), "-q", "--out", str(f / "sub")]))
    d = c.root / "outdir-with-dir-store"
    (d / "results.sqlite").mkdir(parents=True)
    c.cases.append(Case("stores", "--out holds a results.sqlite directory", ["run", str(study), "-q", "--out", str(d)]))
    c.cases.append(Case("stores", "read-only media: run", ["run", str(study), "-q", "--out", str(c.root / "rorun")],
                        read_only_media))


# ------------------------------------------------------------------------------------------
class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _judged(case: Case, code: int, out: str, err: str, seconds: float) -> Outcome:
    """The outcome of a case that ended with ``code``: a result, a user error, or wrong."""
    if code == 2 and not err.strip():
        return Outcome(case, "wrong", "exit 2 with no message", seconds)
    if case.expect is not None and code not in case.expect:
        return Outcome(case, "wrong", f"exit {code}, expected {'/'.join(map(str, case.expect))}: "
                                      f"{(err.strip().splitlines() or [''])[-1][:160]}", seconds)
    if case.check is not None:
        why = case.check(code, out, err)
        if why:
            return Outcome(case, "wrong", why[:200], seconds)
    if code == 2:
        msg = err.strip().splitlines()
        return Outcome(case, "user error", msg[0][:200] if msg else "(no message)", seconds)
    return Outcome(case, "result", f"exit {code}", seconds)


def run_subprocess(case: Case, timeout: float) -> Outcome:
    """A case that needs its own process (environment, standard output)."""
    import subprocess

    t0 = time.perf_counter()
    env = {**os.environ, **(case.env or {})}
    sink = open(case.stdout, "w") if case.stdout else subprocess.PIPE  # noqa: SIM115
    try:
        p = subprocess.run([sys.executable, "-m", "ibtest.cli", *case.argv], stdout=sink, stderr=subprocess.PIPE,
                           text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Outcome(case, "hang", f"> {timeout} s", time.perf_counter() - t0)
    finally:
        if not isinstance(sink, int):
            sink.close()
    seconds = time.perf_counter() - t0
    if "Traceback" in (p.stderr or ""):
        return Outcome(case, "traceback", p.stderr.strip().splitlines()[-1][:160], seconds)
    return _judged(case, p.returncode, p.stdout or "", p.stderr or "", seconds)


def run_case(case: Case, timeout: float) -> Outcome:
    from ibtest.cli import main

    if case.env is not None or case.stdout is not None:
        return run_subprocess(case, timeout)

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with (case.patch() if case.patch else contextlib.nullcontext()):
                code = main(case.argv)
    except _Timeout:
        return Outcome(case, "hang", f"> {timeout} s", time.perf_counter() - t0)
    except SystemExit as exc:  # argparse or a plugin calling sys.exit
        code = exc.code if isinstance(exc.code, int) else 1
        if code != 2:
            return Outcome(case, "traceback", f"SystemExit({exc.code!r})", time.perf_counter() - t0)
    except BaseException as exc:  # noqa: BLE001 - that is what we count
        return Outcome(case, "traceback", f"{type(exc).__name__}: {str(exc)[:160]}", time.perf_counter() - t0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return _judged(case, code, out.getvalue(), err.getvalue(), time.perf_counter() - t0)


def build(root: pathlib.Path) -> Corpus:
    from ibtest.cli import main

    c = Corpus(root)
    finished = root / "finished"
    study = c.file(_dump(THEOREM3))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(study), "-q", "--out", str(finished)]) in (0, 1)
    yaml_cases(c)
    option_cases(c)
    sweep_cases(c)
    plugin_cases(c)
    store_cases(c, finished)
    from benchmarks import hostile_round2

    hostile_round2.add_cases(c, finished)
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run these categories, comma-separated (yaml, options, counts, sweeps, plugins, "
                    "stores; round 2: certs, outputs, plugins2, hangs, forged, stores2)")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
    args = ap.parse_args(argv)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    with tempfile.TemporaryDirectory(prefix="ibtest-hostile-") as tmp:
        root = pathlib.Path(tmp)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            corpus = build(root)
            only = set(args.only.split(",")) if args.only else None
            cases = [c for c in corpus.cases if only is None or c.category in only]
            outcomes = []
            for case in cases:
                o = run_case(case, args.timeout)
                outcomes.append(o)
                if args.verbose or o.kind in ("traceback", "hang", "wrong"):
                    print(f"{o.kind:10s} {o.seconds:6.2f}s  [{case.category}] {case.name}: {o.detail}", flush=True)
        finally:
            os.chdir(cwd)
    by_cat: dict[str, dict[str, int]] = {}
    for o in outcomes:
        by_cat.setdefault(o.case.category, {}).setdefault(o.kind, 0)
        by_cat[o.case.category][o.kind] += 1
    print()
    kinds = ("result", "user error", "traceback", "hang", "wrong")
    print(f"{'category':10s} " + " ".join(f"{k:>11s}" for k in kinds) + "      total")
    for cat, counts in by_cat.items():
        print(f"{cat:10s} " + " ".join(f"{counts.get(k, 0):11d}" for k in kinds) + f" {sum(counts.values()):10d}")
    bad = sum(o.kind in ("traceback", "hang", "wrong") for o in outcomes)
    print(f"\n{bad} of {len(outcomes)} hostile inputs end in a traceback, a hang or a wrong result")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
