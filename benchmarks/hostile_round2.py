"""The second round of hostile inputs (issue 27), added to :mod:`benchmarks.hostile_inputs`.

Categories: ``certs`` (every command that reads a certificate, on files edited field by field, for
each kind: pair, shrunk pair, witness, invariant), ``outputs`` (paths that cannot take what is
written, a full standard output, an ASCII terminal), ``plugins2`` (solvers, constructions,
hypotheses, plugin files, specs and model factories that misbehave), ``hangs`` (work a budget
must catch: zero tolerances, a million rotations, 100 000 points, a width of 200 000, a NaN
gradient, a step of 1e-300, an unreachable Ray cluster, a FIFO, a certificate that asks for
unbounded work, plugins that never return), ``forged`` (text from files and plugins that would
forge a line) and ``stores2`` (a foreign database, read-only commands on damaged or running
stores, a tampered solve, two runs into one directory). Each case says which exit codes it may
end with and, where that is not enough, checks what it printed or left behind: an outcome that
breaks either is counted ``wrong``.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import pathlib
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.hostile_inputs import THEOREM3, Case, Corpus, _dump, _set

DEADLINE = 2  # seconds per plugin call in the cases that run into a deadline (the corpus's timeout is 10 s)
T3PAIR = _set(THEOREM3, ("datasets", 0, "gamma"), [0, 5])

MISBEHAVE = '''
"""Plugins that misbehave, each in one way (issue 27): solvers, constructions, hypotheses, a model."""
import sys, time
import torch
import ibtest
from ibtest.solve.solvers.exact_spec import SPEC


def spin(*a, **k):
    while True:
        time.sleep(0.001)


def act(kind):
    """The ways of not returning at all."""
    if kind == "spin":
        spin()
    if kind in ("exit0", "exit3"):
        sys.exit(int(kind[-1]))
    if kind == "interrupt":
        raise KeyboardInterrupt


def solver(kind):
    def solve(model, X, y, mask, theta0, **opts):
        act(kind)
        if kind == "none":
            return None
        res = SPEC.solve(model, X, y, mask, theta0, **opts)
        if kind == "shape":
            return ibtest.SolveResult(res.theta[:, :1], res.status, res.loss)
        if kind == "status":
            return ibtest.SolveResult(res.theta, torch.full_like(res.status, 9), res.loss)
        if kind == "nan":
            return ibtest.SolveResult(res.theta * float("nan"), res.status, res.loss)
        if kind == "list":
            return [res.theta, res.status, res.loss]
        return res
    return ibtest.replace(SPEC, name=f"{kind}_solver", solve=solve)


def construction(kind):
    def build(model, rng, triples=None, **opts):
        act(kind)
        if kind == "none":
            return None
        k, n, d = triples.X.shape
        X, y, m, src, labels = triples.X, triples.y, triples.mask, torch.arange(k), ["copy"] * k
        if kind == "source":
            src = src + 7
        elif kind == "negative":
            src = src - 5
        elif kind == "shape":
            X = X[..., :1]
        elif kind == "labels":
            labels = 3
        elif kind == "mask":
            m = m * 0
        elif kind == "nan":
            X = X * float("nan")
        elif kind == "type":
            return (X, y)
        return ibtest.Partners(X, y, m, src, labels)
    return ibtest.Construction(name=f"{kind}_construction", build=build)


def R(kind):
    def fn(theta, ctx):
        act(kind)
    return ibtest.Hypothesis(name=f"{kind}_R", fn=fn)


class NanGrad(ibtest.ModelBase):
    def n_params(self, d):
        return d

    def predict(self, theta, X):
        return torch.einsum("bnd,bd->bn", X, theta)

    def grad(self, theta, X, y, mask):
        return torch.full_like(theta, float("nan"))


@ibtest.hookimpl
def ibtest_solvers():
    return [solver(k) for k in ("none", "spin", "exit0", "interrupt", "shape", "status", "nan", "list")]


@ibtest.hookimpl
def ibtest_constructions():
    return [construction(k) for k in ("spin", "exit3", "interrupt", "none", "source", "negative", "shape", "labels",
                                      "mask", "nan", "type")]


@ibtest.hookimpl
def ibtest_hypotheses():
    return [R(k) for k in ("spin", "interrupt", "exit0")]


@ibtest.hookimpl
def ibtest_models():
    return [ibtest.Model(name="nan_grad", factory=NanGrad)]
'''

SQ = '''
import ibtest


@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="sq_conserved", fn=lambda theta, ctx: (theta * theta).sum(-1), kind="invariant")]
'''


# ------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------
def one_line(code: int, out: str, err: str) -> str | None:
    """A refusal is one line on stderr (a study's is a header and one line a problem)."""
    lines = err.strip().splitlines()
    if code == 2 and lines and lines[0].startswith("ibtest: error: invalid study") and lines[0].endswith(":"):
        return None if all(line.startswith("  ") for line in lines[1:]) else "a problem line not indented"
    if code == 2 and len(lines) != 1:
        return f"{len(lines)} lines on stderr, expected one"
    return None


def says(*needles: str) -> Callable[[int, str, str], str | None]:
    def check(code: int, out: str, err: str) -> str | None:
        missing = [n for n in needles if n not in out + err]
        return f"output lacks {missing[0]!r}" if missing else None
    return check


def no_forged_line(code: int, out: str, err: str) -> str | None:
    text = out + err
    if any(ord(c) < 32 and c not in "\n" or 0x7F <= ord(c) <= 0x9F for c in text):
        return "a control character reached the terminal"
    if any(line.startswith(("FORGED", "  refutation CONFIRMED")) and "Replaying" not in line
           for line in err.splitlines()):
        return "a forged line"
    return None


def unchanged(d: pathlib.Path) -> Callable[[int, str, str], str | None]:
    """The directory's files (names, bytes, mtimes) are as they were when the corpus was built."""
    before = _listing(d)

    def check(code: int, out: str, err: str) -> str | None:
        after = _listing(d)
        if after != before:
            changed = sorted(set(after) ^ set(before)) or [k for k in after if after[k] != before.get(k)]
            return f"a read-only command changed {d.name}: {changed[:3]}"
        return None
    return check


def _listing(d: pathlib.Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.iterdir()) if p.is_file()} \
        if d.is_dir() else {}


def both(*checks: Callable[[int, str, str], str | None]) -> Callable[[int, str, str], str | None]:
    def check(code: int, out: str, err: str) -> str | None:
        for c in checks:
            why = c(code, out, err)
            if why:
                return why
        return None
    return check


# ------------------------------------------------------------------------------------------
# genuine certificates
# ------------------------------------------------------------------------------------------
def genuine(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """A certificate of each kind, made by running small studies (and the invariant's plugin)."""
    from ibtest.api import run_study

    out: dict[str, pathlib.Path] = {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        res = _single(run_study(_set(_set(T3PAIR, ("verdict",), {"shrink": True, "shrink_budget": 400}), ("hypotheses",),
                                     [{"name": "l2_norm"}]), out_dir=root / "g-pair"))
        out["pair"], out["shrunk"] = (pathlib.Path(p) for p in res.certificates)
        witness = pathlib.Path(__file__).resolve().parents[1] / "hypotheses" / "vardi_shamir_gamma5_witness.yaml"
        out["witness"] = pathlib.Path(_single(run_study(witness, out_dir=root / "g-witness")).certificates[0])
        out["plugin"] = root / "sq_conserved.py"
        out["plugin"].write_text(SQ)
        inv = _set(_set(T3PAIR, ("init",), {"name": "gaussian", "scale": 0.5, "count": 2}), ("hypotheses",),
                   [{"name": "sq_conserved"}])
        out["invariant"] = pathlib.Path(_single(run_study(inv, plugins=[str(out["plugin"])],
                                                          out_dir=root / "g-inv")).certificates[0])
    return out


def _edits(cert: dict) -> Iterator[tuple[str, dict]]:
    """Every required field deleted, nulled, given the wrong type; every number made a list."""
    def at(path: tuple, value: Any) -> dict:
        c = copy.deepcopy(cert)
        node = c
        for k in path[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return c

    skip = ("versions", "replay", "study", "study_file", "claim", "refutation", "source", "plugins", "format")
    paths: list[tuple[str, ...]] = [(k,) for k in cert if k not in skip]
    for side in ("a", "b"):
        if side in cert:
            paths += [(side, k) for k in ("X", "y", "theta", "loss", "R", "measured_error")]
    if "witness" in cert:
        paths += [("witness", k) for k in ("theta", "loss", "fit_threshold", "R")]
    if "shrink" in cert:
        paths += [("shrink", k) for k in ("before", "after", "passes")] + [("shrunk_from", "sha256")]
    for path in paths:
        name = ".".join(path)
        yield f"{name} deleted", at(path, _DELETE)
        yield f"{name} null", at(path, None)
        yield f"{name} a string", at(path, "x")


_DELETE = object()


def _single(res: Any) -> Any:
    """The one StudyResult of a study without a sweep (run_study returns a list for a sweep)."""
    assert not isinstance(res, list), "a study without a sweep gives one result"
    return res


def cert_cases(c: Corpus, certs: dict[str, pathlib.Path]) -> None:
    for kind in ("pair", "shrunk", "witness", "invariant"):
        cert = json.loads(certs[kind].read_text())
        plugin = ["--plugin", str(certs["plugin"])] if kind == "invariant" else []
        for what, edited in _edits(cert):
            p = c.file(json.dumps(edited), ".json")
            for cmd in (["show"], ["shrink", "--budget", "8", "-o", str(c.root / "shrunk-out.json")], ["verify"]):
                c.cases.append(Case("certs", f"{kind}: {what}: {cmd[0]}", [cmd[0], str(p), *cmd[1:], *plugin],
                                    expect=(0, 1, 2), check=one_line))
        odd: tuple[tuple[str, Any], ...] = (("a.R a list", [1.0, 2.0]), ("gap a list", [0.1]), ("kind unknown", "pears"))
        for what, value in odd:
            edited = copy.deepcopy(cert)
            if what.startswith("a.R"):
                edited["a"]["R"] = value
            elif what.startswith("gap"):
                edited["gap"] = value
            else:
                edited["kind"] = value
            p = c.file(json.dumps(edited), ".json")
            ok = (0, 1, 2) if kind == "invariant" and what.startswith("a.R") else (2,)
            for command in ("show", "verify"):
                c.cases.append(Case("certs", f"{kind}: {what}: {command}", [command, str(p), *plugin], expect=ok,
                                    check=one_line))


# ------------------------------------------------------------------------------------------
def output_cases(c: Corpus, certs: dict[str, pathlib.Path]) -> None:
    pair = str(certs["pair"])
    d = c.root / "out-dir"
    d.mkdir()
    f = c.file("x", ".txt")
    study = str(c.file(_dump(T3PAIR)))
    for target, ok in ((d, (0, 1)), ("/dev/full", (2,)), (os.devnull, (2,)), (f / "x.json", (2,)),
                       (c.root / "new-dir" / "deep" / "s.json", (0, 1))):
        c.cases.append(Case("outputs", f"shrink -o {target}", ["shrink", pair, "-o", str(target), "--budget", "8"],
                            expect=ok, check=one_line))
    for target, ok in ((d, (0,)), ("/dev/full", (2,)), (os.devnull, (2,)), (c.root / "fig.notaformat", (2,)),
                       (c.root / "nosuffix", (0,))):
        c.cases.append(Case("outputs", f"show --plot {target}", ["show", pair, "--plot", str(target)], expect=ok,
                            check=one_line))
    for target, ok in ((d, (0, 1)), (os.devnull, (2,))):
        c.cases.append(Case("outputs", f"run --plot {target}", ["run", study, "-q", "--out",
                                                                 str(c.root / f"plotrun{len(c.cases)}"), "--plot",
                                                                 str(target)], expect=ok, check=one_line))
    for target in (os.devnull, f, "/proc/no/such/place"):
        c.cases.append(Case("outputs", f"new --dir {target}", ["new", "hypothesis", "h27", "--dir", str(target)],
                            expect=(2,), check=one_line))
    for argv in (["show", pair], ["list"], ["verify", pair]):
        c.cases.append(Case("outputs", f"{argv[0]} with stdout on /dev/full", argv, stdout="/dev/full", expect=(2,),
                            check=says("cannot write to standard output")))
    run = str(certs["pair"].parent.parent)
    for argv in (["report", run], ["show", pair], ["list"], ["verify", pair],
                 ["run", study, "--out", str(c.root / "ascii-run")]):
        c.cases.append(Case("outputs", f"{argv[0]} on an ASCII terminal", argv, env={"PYTHONIOENCODING": "ascii"},
                            expect=(0, 1), check=lambda code, out, err: None if out.isascii() else "non-ASCII output"))


# ------------------------------------------------------------------------------------------
def plugin_cases(c: Corpus) -> None:
    plugin = str(c.file(MISBEHAVE, ".py"))
    falsified = _set(T3PAIR, ("hypotheses",), [{"name": "l2_norm", "expect": "falsified"}])
    for kind in ("none", "exit0", "interrupt", "shape", "status", "nan", "list"):
        s = _set(falsified, ("solver",), {"name": f"{kind}_solver"})
        c.study("plugins2", f"solver {kind}", _dump(s), "--plugin", plugin)
        c.cases[-1].expect, c.cases[-1].check = (1,), says("solve: instances 0..1:")
    for kind in ("exit3", "interrupt", "none", "source", "negative", "shape", "labels", "mask", "nan", "type"):
        s = _set(falsified, ("constructions",), [f"{kind}_construction", "blocking_point"])
        c.study("plugins2", f"construction {kind}", _dump(s), "--plugin", plugin)
        c.cases[-1].expect, c.cases[-1].check = (0,), says("FALSIFIED")
    for name in ("interrupt_R", "exit0_R"):
        s = _set(falsified, ("hypotheses",), [{"name": name, "expect": "falsified"},
                                             {"name": "l2_norm", "expect": "falsified"}])
        c.study("plugins2", f"hypothesis {name} during the run", _dump(s), "--plugin", plugin)
        c.cases[-1].expect, c.cases[-1].check = (1,), says("FALSIFIED", "error")
    bodies = {
        "sys.exit(0) at import": "import sys\nsys.exit(0)\n",
        "sys.exit(3) at import": "import sys\nsys.exit(3)\n",
        "sys.exit(None) at import": "import sys\nsys.exit()\n",
        "KeyboardInterrupt at import": "raise KeyboardInterrupt\n",
        "hook calls sys.exit": "import ibtest, sys\n@ibtest.hookimpl\ndef ibtest_models():\n    sys.exit(0)\n",
        "hook raises KeyboardInterrupt": "import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n"
                                         "    raise KeyboardInterrupt\n",
    }
    spec = "import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n    return [ibtest.Hypothesis(name='h', fn={fn}{extra})]\n"
    for label, extra in (("unknown kind", ", kind='conjecture'"), ("params a list", ", params=[1, 2]"),
                         ("params a string", ", params='p'"), ("depends_on unknown", ", depends_on='weather'"),
                         ("on unknown", ", on='beta'"), ("atol nan", ", atol=float('nan')"),
                         ("rtol inf", ", rtol=float('inf')"), ("atol negative", ", atol=-1.0"),
                         ("bound nan", ", kind='bound', bound=float('nan')"), ("fn None", "")):
        bodies[f"hypothesis spec: {label}"] = spec.format(fn="None" if label == "fn None" else "lambda t, c: t",
                                                           extra=extra)
    opt = ("import ibtest\nfrom ibtest.solve.solvers.exact_spec import SPEC\n@ibtest.hookimpl\ndef ibtest_solvers():\n"
           "    return [ibtest.replace(SPEC, name='s', options={{**SPEC.options, {opt}}})]\n")
    for label, o in (("option default nan", "'fit_tol': ibtest.Option(float('nan'), float)"),
                     ("tolerance default inf", "'root_tol': ibtest.Option(float('inf'), float)"),
                     ("tolerance default negative", "'root_tol': ibtest.Option(-1.0, float)"),
                     ("option not an Option", "'grid': 5"), ("option type not a type", "'grid': ibtest.Option(1, 5)")):
        bodies[f"solver spec: {label}"] = opt.format(opt=o)
    bodies["construction spec: stage unknown"] = ("import ibtest\n@ibtest.hookimpl\ndef ibtest_constructions():\n"
                                                  "    return [ibtest.Construction(name='c', build=print, stage='both')]\n")
    bodies["model factory calls sys.exit"] = ("import ibtest, sys\n@ibtest.hookimpl\ndef ibtest_models():\n"
                                              "    return [ibtest.Model(name='relu_neuron2', factory=lambda **k: sys.exit(0))]\n")
    study = c.file(_dump(_set(falsified, ("model",), {"name": "relu_neuron2"})))
    for label, body in bodies.items():
        p = str(c.file(body, ".py"))
        uses_model = "model factory" in label
        argvs = [["run", str(study if uses_model else c.file(_dump(falsified))), "-q", "--out",
                  str(c.root / f"p2run{len(c.cases)}"), "--plugin", p]]
        if not uses_model:
            argvs.append(["list", "--plugin", p])
        for argv in argvs:
            c.cases.append(Case("plugins2", f"{label}: {argv[0]}", argv, expect=(2,),
                                check=both(one_line, says(pathlib.Path(p).name if not uses_model else "sys.exit(0)"))))


# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def memory_of(gib: int) -> Iterator[None]:
    """The machine has ``gib`` GiB (so a memory refusal does not depend on where the corpus runs)."""
    from ibtest.study import budget

    real = budget.physical_memory
    budget.physical_memory = lambda: gib * 2**30
    try:
        yield
    finally:
        budget.physical_memory = real


def hang_cases(c: Corpus, certs: dict[str, pathlib.Path]) -> None:
    plugin = str(c.file(MISBEHAVE, ".py"))
    quick = {"deadline": DEADLINE}
    studies = {
        "adaptive rtol 0 atol 0": (_set(T3PAIR, ("solver",), {"name": "adaptive", "rtol": 0, "atol": 0}), (2,)),
        "adaptive rtol 0 atol 0 in a sweep": (_set(_set(T3PAIR, ("solver",), {"name": "adaptive"}), ("sweep",),
                                                   {"path": "solver.rtol", "values": [1e-9, 0.0]}), (0, 1, 2)),
        "rotate count 1000000": (_set(_set(THEOREM3, ("datasets", 0, "gamma"), [0, 1, 2, 5, 20]), ("constructions",),
                                      [{"name": "rotate", "count": 1000000}]), (2,)),
        "rotate count 10**9, max_pairs 10**6": (_set(T3PAIR, ("constructions",), [
            {"name": "rotate", "count": 10**9, "max_pairs": 10**6}]), (2,)),
        "consistent_augmentation 100000 points": (_set(T3PAIR, ("constructions",), [
            {"name": "consistent_augmentation", "points": 100000}]), (2,)),
        "consistent_augmentation count 10**8": (_set(T3PAIR, ("constructions",), [
            {"name": "consistent_augmentation", "count": 10**8}]), (2,)),
        "blocking_point 10**6 scales": (_set(T3PAIR, ("constructions",), [
            {"name": "blocking_point", "scales": [1.0] * 10**6}]), (2,)),
        "max_hours tiny": (_set(T3PAIR, ("budget",), {"max_hours": 1e-9}), (2,)),
        "two_layer_relu width 200000": (_set(_set(_set(_set(T3PAIR, ("model",), {"name": "two_layer_relu", "width": 200000}),
                                                       ("init",), {"name": "gaussian", "scale": 0.1}),
                                                  ("solver",), {"name": "adaptive"}), ("report",),
                                             {"json_triples": 0, "triples": False}), (0, 1)),
        "model with a NaN gradient, adaptive": (_set(_set(T3PAIR, ("model",), {"name": "nan_grad"}),
                                                     ("solver",), {"name": "adaptive"}), (0, 1)),
        "model with a NaN gradient, gd": (_set(_set(T3PAIR, ("model",), {"name": "nan_grad"}),
                                               ("solver",), {"name": "gd"}), (0, 1)),
        "gd lr 1e-300, 10**6 steps": (_set(T3PAIR, ("solver",), {"name": "gd", "lr": 1e-300, "steps": 10**6}), (0, 1)),
        "gd lr 1e-300, 10**6 steps, tolerances 0": (_set(T3PAIR, ("solver",), {
            "name": "gd", "lr": 1e-300, "steps": 10**6, "fit_tol": 0, "grad_tol": 0}), (0, 1)),
        "a solver that never returns": (_set(T3PAIR, ("solver",), {"name": "spin_solver"}), (0, 1)),
        "a construction that never returns": (_set(T3PAIR, ("constructions",), ["spin_construction"]), (0, 1)),
        "a hypothesis that never returns": (_set(T3PAIR, ("hypotheses",), [{"name": "spin_R"}]), (0, 1)),
    }
    for name, (s, ok) in studies.items():
        if "budget" not in s:
            s = _set(s, ("budget",), quick)
        c.study("hangs", name, _dump(s), "--plugin", plugin)
        c.cases[-1].expect, c.cases[-1].patch = ok, (lambda: memory_of(16))
    fifo = c.root / "fifo.yaml"
    os.mkfifo(fifo)
    c.cases.append(Case("hangs", "study is a FIFO nobody writes to", ["run", str(fifo), "-q", "--out",
                                                                       str(c.root / "fiforun")], expect=(2,)))
    for cmd in ("verify", "show", "report"):
        c.cases.append(Case("hangs", f"{cmd} on a FIFO", [cmd, str(fifo)], expect=(2,)))
    c.cases.append(Case("hangs", "--plugin FIFO", ["run", str(c.file(_dump(T3PAIR))), "--plugin", str(fifo)],
                        expect=(2,)))
    c.cases.append(Case("hangs", "study is /dev/zero", ["run", "/dev/zero", "-q"], expect=(2,)))
    c.cases.append(Case("hangs", "--executor ray, RAY_ADDRESS refuses", ["run", str(c.file(_dump(T3PAIR))), "-q", "--out",
                                                                       str(c.root / "rayrun"), "--executor", "ray"],
                        env={"RAY_ADDRESS": "127.0.0.1:1"}, expect=(2,),
                        check=lambda code, out, err: None if "127.0.0.1:1" in err or "not installed" in err
                        else "the message names neither the address nor a missing Ray"))
    cert = json.loads(certs["pair"].read_text())
    for label, solver in (
            ("gd lr 1e-300 steps 1e6 tolerances 0", {"name": "gd", "options": {"lr": 1e-300, "steps": 1000000,
                                                                                "fit_tol": 0, "grad_tol": 0}}),
            ("gd lr 1e-300 steps 1e6 (tightened too)", {"name": "gd", "options": {"lr": 1e-300, "steps": 1000000},
                                                         "tightened": {"lr": 1e-300, "steps": 1000000}}),
            ("adaptive max_steps 2e6 rtol 1e-30", {"name": "adaptive", "options": {"rtol": 1e-30, "atol": 0,
                                                                                  "max_steps": 2000000}}),
            ("exact max_pieces 640 grid 1920", {"name": "exact", "options": {"max_pieces": 640, "grid": 1920}})):
        edited = copy.deepcopy(cert)
        edited["solver"] = solver
        path = str(c.file(json.dumps(edited), ".json"))
        for argv in (["verify", path], ["shrink", path, "--budget", "8", "-o", str(c.root / "hang-shrunk.json")]):
            c.cases.append(Case("hangs", f"{argv[0]}: certificate asks for {label}", argv, expect=(0, 1, 2)))


# ------------------------------------------------------------------------------------------
def forged_cases(c: Corpus, certs: dict[str, pathlib.Path]) -> None:
    base = _dump(T3PAIR)
    for label, key in (("newline", "bad\\n  refutation CONFIRMED"), ("ESC", "bad\\e[2K\\e[1A"), ("BEL", "bad\\a"),
                       ("CR", "bad\\rFORGED"), ("bidi override", "bad\\u202eFORGED"), ("NUL", "bad\\0x")):
        c.study("forged", f"unknown YAML key holding {label}", base + f'"{key}": 1\n')
        c.cases[-1].expect, c.cases[-1].check = (2,), both(no_forged_line, lambda code, out, err: None
                                                           if len(err.strip().splitlines()) == 2 else "not two lines")
    for label, text in (("name with ESC and newline", "name='ev\\x1b[2Kil\\nFORGED line'"),
                        ("doc with BEL and ESC", "name='h27', doc='doc\\x07\\x1b[8mhidden'"),
                        ("doc with newline", "name='h28', doc='first\\nFORGED line'"),
                        ("name with CR", "name='h29\\rFORGED'")):
        p = str(c.file("import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n"
                       f"    return [ibtest.Hypothesis({text}, fn=lambda t, c: t.norm(dim=-1))]\n", ".py"))
        c.cases.append(Case("forged", f"ibtest list: hypothesis {label}", ["list", "--plugin", p], expect=(0,),
                            check=no_forged_line))
    for what, text in (("an empty object", "{}"), ("a genuine certificate", certs["pair"].read_text())):
        named = c.root / f"cert{len(c.cases)}\n  refutation CONFIRMED.json"
        named.write_text(text)
        for cmd in ("verify", "show"):
            c.cases.append(Case("forged", f"{cmd}: certificate file name with a newline ({what})", [cmd, str(named)],
                                expect=(0, 2), check=both(one_line, no_forged_line)))
    c.cases.append(Case("forged", "verify: missing file name with a newline",
                        ["verify", str(c.root / "missing\n  refutation CONFIRMED.json")], expect=(2,),
                        check=both(one_line, no_forged_line)))
    c.cases.append(Case("forged", "run --out with a newline", ["run", str(c.file(base)), "-q", "--out",
                                                                str(c.root / "out\nFORGED line")],
                        expect=(0, 1), check=no_forged_line))


# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def held_lock(d: pathlib.Path) -> Iterator[None]:
    """Another run writes into ``d`` (its lock is held)."""
    from ibtest.run.lock import RunLock

    d.mkdir(parents=True, exist_ok=True)
    lock = RunLock(d).acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def writing(d: pathlib.Path) -> Iterator[None]:
    """A run is writing ``d`` right now (WAL mode, its -wal beside the store, its lock)."""
    from ibtest.run.store import Store

    store = Store(d)
    store.set_meta(state="running")
    try:
        yield
    finally:
        store.close()


def store_cases(c: Corpus, finished: pathlib.Path) -> None:
    def copy_run(tag: str) -> pathlib.Path:
        d = c.root / f"s2-{tag}-{len(c.cases)}"
        shutil.copytree(finished, d)
        return d

    foreign = c.root / "foreign"
    foreign.mkdir()
    con = sqlite3.connect(foreign / "results.sqlite")
    with con:
        con.execute("CREATE TABLE accounts (id INTEGER, owner TEXT)")
    con.close()
    c.cases.append(Case("stores2", "resume a foreign SQLite database", ["run", "--resume", str(foreign), "-q"],
                        expect=(2,), check=unchanged(foreign)))
    for label, damage in (("truncated", lambda d: (d / "results.sqlite").write_bytes(
            (d / "results.sqlite").read_bytes()[:4096])),
                          ("garbage -wal", lambda d: (d / "results.sqlite-wal").write_bytes(os.urandom(9000))),
                          ("garbage -journal", lambda d: (d / "results.sqlite-journal").write_bytes(os.urandom(600))),
                          ("in WAL mode, no -wal", lambda d: _sql(d, "PRAGMA journal_mode=WAL"))):
        d = copy_run(label.replace(" ", "-"))
        damage(d)
        for argv in (["report", str(d)], ["report", str(d), "--format", "json"], ["diff", str(finished), str(d)]):
            c.cases.append(Case("stores2", f"{argv[0]} on a store {label}", argv, check=unchanged(d)))
    d = copy_run("running")
    for argv in (["report", str(d)], ["diff", str(finished), str(d)]):
        c.cases.append(Case("stores2", f"{argv[0]} on a run being written", argv, patch=functools.partial(writing, d)))
    d = copy_run("tampered")
    _tamper(d)
    c.cases.append(Case("stores2", "resume with a tampered stored solve", ["run", "--resume", str(d), "-q"],
                        expect=(0, 1), check=says("failed their checksum")))
    d = copy_run("edited-results")
    _sql(d, "UPDATE results SET json = replace(json, 'falsified', 'survives') WHERE id = 1")
    c.cases.append(Case("stores2", "report on edited results", ["report", str(d)], expect=(2,),
                        check=says("checksum")))
    busy = c.root / "busy"
    study = str(c.file(_dump(T3PAIR)))
    c.cases.append(Case("stores2", "two studies into one --out", ["run", study, "-q", "--out", str(busy)],
                        patch=lambda: held_lock(busy), expect=(2,), check=says("is in use by another ibtest run")))
    d = copy_run("resume-busy")
    c.cases.append(Case("stores2", "resume a run being resumed", ["run", "--resume", str(d), "-q"],
                        patch=functools.partial(held_lock, d), expect=(2,), check=says("is in use")))


def _sql(d: pathlib.Path, statement: str) -> None:
    con = sqlite3.connect(d / "results.sqlite")
    with con:
        con.execute(statement)
    con.close()


def _tamper(d: pathlib.Path) -> None:
    """The θ bytes of one stored solve altered (the payload still parses)."""
    con = sqlite3.connect(d / "results.sqlite")
    key, payload = con.execute("SELECT key, payload FROM solves LIMIT 1").fetchone()
    b = bytearray(payload)
    b[-1] ^= 1
    with con:
        con.execute("UPDATE solves SET payload = ? WHERE key = ?", (bytes(b), key))
    con.close()


def add_cases(c: Corpus, finished: pathlib.Path) -> None:
    """Every second-round case (the corpus's ``finished`` run is the stores' original)."""
    certs = genuine(c.root)
    cert_cases(c, certs)
    output_cases(c, certs)
    plugin_cases(c)
    hang_cases(c, certs)
    forged_cases(c, certs)
    store_cases(c, finished)
