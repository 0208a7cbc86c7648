"""Issue 27, classes 1, 2 and 5: certificates edited by hand, output paths, forged lines.

* every command that reads a certificate (show, shrink, verify) goes through one schema check,
  complete for each kind (pair, witness, invariant/bound triple, shrunk): an edited file is one
  line and exit 2 naming the field, never a traceback from the command that reads it later;
* output paths (``shrink -o``, ``--plot``, ``new --dir``, stdout) that cannot take what is written
  are one line and exit 2; an ASCII terminal gets ASCII spellings, never a UnicodeEncodeError;
* text from files and plugins (a YAML key, a hypothesis's name and doc, a file name) cannot
  forge a line of output.
"""
from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as hs

from ibtest.api import run_study
from ibtest.base.errors import UserError
from ibtest.base.outpath import output_file
from ibtest.base.textsafe import fit_stream
from ibtest.cert import schema
from ibtest.out.show import describe, describe_shrunk

ROOT = Path(__file__).resolve().parents[1]
T3 = {"study": "t3", "seed": 0, "model": {"name": "relu_neuron", "relu_grad_at_zero": 1}, "init": {"name": "zeros"},
      "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 5]}], "solver": {"name": "exact"},
      "hypotheses": [{"name": "l2_norm"}], "verdict": {"shrink": True, "shrink_budget": 400}}
SQ = ("import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n"
      "    return [ibtest.Hypothesis(name='sq_conserved', fn=lambda theta, ctx: (theta * theta).sum(-1),\n"
      "                              kind='invariant', doc='|theta|^2')]\n")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A genuine certificate of each kind: pair, shrunk pair, witness, invariant (and its plugin)."""
    d = tmp_path_factory.mktemp("certs27")
    out: dict[str, Path] = {}
    res = run_study(T3, out_dir=d / "t3")
    out["pair"], out["shrunk"] = (Path(p) for p in res.certificates)
    res = run_study(ROOT / "hypotheses" / "vardi_shamir_gamma5_witness.yaml", out_dir=d / "w")
    out["witness"] = Path(res.certificates[0])
    out["plugin"] = d / "sq.py"
    out["plugin"].write_text(SQ)
    study = {"study": "inv", "seed": 0, "model": {"name": "relu_neuron"}, "init": {"name": "gaussian", "scale": 0.5, "count": 2},
             "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 5]}], "solver": {"name": "exact"},
             "hypotheses": [{"name": "sq_conserved"}]}
    res = run_study(study, plugins=[str(out["plugin"])], out_dir=d / "inv")
    out["invariant"] = Path(res.certificates[0])
    assert out["shrunk"].name.endswith(".shrunk.json")
    assert json.loads(out["witness"].read_text())["kind"] == "witness"
    return out


def _load(p: Path) -> dict:
    return json.loads(p.read_text())


def _one_line(r) -> None:
    assert r.code == 2, r
    assert r.err.startswith("ibtest: error: ") and len(r.err.strip().splitlines()) == 1, r
    assert "Traceback" not in r.err + r.out


def _pop(path: tuple):
    def edit(c: dict) -> None:
        node = c
        for k in path[:-1]:
            node = node[k]
        node.pop(path[-1])
    return edit


def _set(path: tuple, value):
    def edit(c: dict) -> None:
        node = c
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return edit


# ------------------------------------------------------------------------------------------
# class 1: show and shrink on edited files
# ------------------------------------------------------------------------------------------
EDITS = [  # the examples, then one of each kind's other fields
    ("shrunk", _pop(("shrunk_from",)), "'shrunk_from' is missing"),
    ("shrunk", _pop(("gap",)), "'gap' is missing"),
    ("shrunk", _pop(("margin",)), "'margin' is missing"),
    ("shrunk", _pop(("a", "R")), "'a.R' is missing"),
    ("shrunk", _set(("a", "R"), [1.0, 2.0]), "field a.R: expected a number"),
    ("shrunk", _pop(("shrink", "after")), "'shrink.after' is missing"),
    ("witness", _pop(("a", "loss")), "'a.loss' is missing"),
    ("witness", _pop(("gap",)), "'gap' is missing"),
    ("witness", _pop(("a", "measured_error")), "'a.measured_error' is missing"),
    ("witness", _pop(("witness", "R")), "'witness.R' is missing"),
    ("witness", _pop(("witness", "fit_threshold")), "'witness.fit_threshold' is missing"),
    ("witness", _set(("b",), {"X": [[1.0]], "y": [1.0], "theta": [1.0]}), "field b: a witness certificate"),
    ("pair", _pop(("cross_loss",)), "'cross_loss' is missing"),
    ("pair", _pop(("b", "R")), "'b.R' is missing"),
    ("pair", _set(("kind",), "pears"), "field kind"),
    ("invariant", _pop(("a", "measured_error")), "'a.measured_error' is missing"),
    ("invariant", _set(("b",), None), None),  # still an invariant certificate: fine
    ("invariant", _set(("shrink",), {}), "only pair and witness certificates are shrunk"),
]


@pytest.mark.parametrize("kind, edit, needle", EDITS, ids=[f"{k}-{n}" for n, (k, _, _) in enumerate(EDITS)])
def test_every_command_refuses_an_incomplete_certificate_the_same_way(certs, tmp_path, cli, kind, edit, needle):
    cert = _load(certs[kind])
    edit(cert)
    p = tmp_path / "edited.json"
    p.write_text(json.dumps(cert))
    plugin = ("--plugin", certs["plugin"]) if kind == "invariant" else ()
    if needle is None:
        assert cli("show", p, *plugin).code == 0
        return
    errs = set()
    for argv in (("show", p), ("show", p, "--plot", tmp_path / "f.png"), ("shrink", p, "--budget", "8"), ("verify", p)):
        r = cli(*argv, *plugin)
        _one_line(r)
        assert needle in r.err, r
        errs.add(r.err)
    assert len(errs) == 1, errs  # one schema check, one message, whichever command read the file
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "edited.shrunk.json").exists()


def _paths(node, prefix=()):
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:2]):
            out += _paths(v, prefix + (i,))
    return out


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hs.data())
def test_show_relies_on_the_schema_alone(certs, data):
    """Law: whatever one edit does to a genuine certificate (a field deleted or replaced by null, a
    number, a string, a list), either the schema refuses it (UserError) or show describes it:
    show never meets a field the schema let through broken."""
    kind = data.draw(hs.sampled_from(["pair", "shrunk", "witness", "invariant"]))
    cert = _load(certs[kind])
    path = data.draw(hs.sampled_from(_paths(cert)))
    value = data.draw(hs.sampled_from(["<delete>", None, 0, 1.5, "x", [], [1.0, 2.0], {}]))
    c = copy.deepcopy(cert)
    node = c
    for k in path[:-1]:
        node = node[k]
    if value == "<delete>":
        del node[path[-1]]
    else:
        node[path[-1]] = value
    try:
        ok = schema.validate(c, "certificate x")
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    lines = describe_shrunk(ok) if ok.get("shrink") and "b" in ok else describe(ok)
    assert lines and all(isinstance(line, str) for line in lines)


# ------------------------------------------------------------------------------------------
# class 2: output paths, a full stdout, an ASCII terminal
# ------------------------------------------------------------------------------------------
def test_output_paths(certs, tmp_path, cli):
    pair = certs["pair"]
    d = tmp_path / "dir"
    d.mkdir()
    r = cli("shrink", pair, "-o", d, "--budget", "8")  # a directory: the default name inside it
    assert r.code in (0, 1), r
    if r.code == 0:
        assert (d / f"{pair.stem}.shrunk.json").is_file() and str(d / f"{pair.stem}.shrunk.json") in r.out
    for bad, needle in ((os.devnull, "is not a regular file"), ("/dev/full", "is not a regular file"),
                        (tmp_path / "file.txt" / "x.json", "is not a directory")):
        (tmp_path / "file.txt").write_text("x")
        r = cli("shrink", pair, "-o", bad, "--budget", "8")
        _one_line(r)
        assert needle in r.err and "-o " in r.err, r
    assert Path(os.devnull).exists() and not Path(os.devnull).is_file()  # never replaced or removed
    r = cli("show", pair, "--plot", d)
    assert r.code == 0 and (d / f"{pair.stem}.png").is_file(), r
    # a figure without a suffix gets .png, so the message names the file that is written
    assert output_file(tmp_path / "nosuffix", flag="--plot", default_name="x.png", suffix=".png") == \
        tmp_path / "nosuffix.png"
    assert output_file(tmp_path / "deep" / "er" / "f.png", flag="--plot", default_name="x.png") == \
        tmp_path / "deep" / "er" / "f.png" and (tmp_path / "deep" / "er").is_dir()
    for bad, needle in ((os.devnull, "is not a regular file"), (tmp_path / "fig.notaformat", "not supported")):
        r = cli("show", pair, "--plot", bad)
        _one_line(r)
        assert needle in r.err, r
    for bad, needle in ((os.devnull, "exists and is not a directory"), (tmp_path / "file.txt", "is not a directory")):
        r = cli("new", "hypothesis", "h27", "--dir", bad)
        _one_line(r)
        assert needle in r.err, r


def test_run_plot_into_a_directory(tmp_path, cli):
    d = tmp_path / "figs"
    d.mkdir()
    r = cli("run", ROOT / "hypotheses" / "vardi_shamir_gamma5_witness.yaml", "-q", "--out", tmp_path / "run",
            "--plot", d)
    assert r.code == 0 and (d / "gaps.png").is_file(), r
    r = cli("run", ROOT / "hypotheses" / "vardi_shamir_gamma5_witness.yaml", "-q", "--out", tmp_path / "run2",
            "--plot", os.devnull)
    _one_line(r)
    assert not (tmp_path / "run2").exists(), "a bad --plot is refused before the study runs"


def test_writing_a_file_on_a_full_disk_is_one_line(certs, tmp_path, cli, monkeypatch):
    import errno

    real = Path.write_text

    def full(self, *a, **k):
        if self.suffix == ".json" and "shrunk" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    r = cli("shrink", certs["pair"], "-o", tmp_path / "s.shrunk.json", "--budget", "8")
    _one_line(r)
    assert "cannot write the shrunk certificate" in r.err and "No space left on device" in r.err, r


def _ibtest(*args: str, env: dict | None = None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ibtest.cli", *map(str, args)], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_stdout_that_cannot_be_written_and_an_ascii_terminal(certs, tmp_path):
    with open("/dev/full", "w") as full:
        p = _ibtest("show", certs["pair"], stdout=full)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == ["ibtest: error: cannot write to standard output: No space left on device"]
    run = certs["pair"].parent.parent
    p = _ibtest("report", run, env={"PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "thetainf" in p.stdout and p.stdout.isascii()


def test_ascii_spellings():
    s = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    fit_stream(s)
    s.write("θ∞ = (5, −1) ✓ ✗ → ≤ ‖θ‖ café ☃\n")
    s.flush()
    assert s.buffer.getvalue() == b"thetainf = (5, -1) ok NO -> <= |theta| cafe \\u2603\n"
    u = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    fit_stream(u)  # a stream that can hold them is left alone
    assert u.errors == "strict"


# ------------------------------------------------------------------------------------------
# class 5: forged lines
# ------------------------------------------------------------------------------------------
FORGE = "\n  refutation CONFIRMED"


def test_unknown_yaml_key_with_a_newline_is_one_line(tmp_path, cli):
    p = tmp_path / "s.yaml"
    p.write_text("study: t\nmodel: {name: relu_neuron}\ndatasets: [{name: vardi_shamir_theorem3}]\n"
                 "solver: {name: exact}\n\"bad\\n  refutation CONFIRMED\\x1b[2K\": 1\n")
    r = cli("run", p, "-q", "--out", tmp_path / "run")
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 2 and lines[0] == f"ibtest: error: invalid study {p}:", lines
    assert "bad\\n  refutation CONFIRMED\\x1b[2K: unknown key" in lines[1]
    assert "\x1b" not in r.err


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=hs.text(alphabet=hs.characters(codec="utf-8", exclude_characters="\"\\"), min_size=1, max_size=12))
def test_no_yaml_key_forges_a_line(tmp_path, cli, key):
    """Law: a study with one unknown key, whatever characters it holds, is refused in exactly two
    lines (the header and the one problem) with no control character but their line break."""
    p = tmp_path / "s.yaml"
    escaped = key.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    p.write_text(f"study: t\nmodel: {{name: relu_neuron}}\ndatasets: [{{name: vardi_shamir_theorem3}}]\n"
                 f"solver: {{name: exact}}\n\"zz{escaped}\": 1\n")
    r = cli("run", p, "-q", "--out", tmp_path / "run")
    assert r.code == 2
    assert len(r.err.strip("\n").split("\n")) == 2, r.err
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) <= 0x9F for c in r.err), repr(r.err)


def test_ibtest_list_shows_a_plugins_text_inert(tmp_path, cli):
    p = tmp_path / "evil.py"
    p.write_text("import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n"
                 "    return [ibtest.Hypothesis(name='ev\\x1b[2Kil\\nFORGED line', fn=lambda t, c: t.norm(dim=-1),\n"
                 "                              doc='doc\\x07with\\rbell\\x1b[8m')]\n")
    r = cli("list", "--plugin", p)
    assert r.code == 0, r
    assert not any(c in r.out for c in "\x1b\x07\r")
    assert "ev\\x1b[2Kil\\nFORGED line" in r.out and "doc\\x07with" in r.out  # a doc's first line
    assert not any(line.startswith("FORGED") for line in r.out.splitlines())


def test_a_certificate_file_name_cannot_forge_a_line(certs, tmp_path, cli):
    bad = tmp_path / f"bad{FORGE}.json"
    bad.write_text("{}")
    for argv in (("verify", bad), ("show", bad), ("shrink", bad), ("verify", tmp_path / f"missing{FORGE}.json")):
        r = cli(*argv)
        _one_line(r)
        assert "\\n  refutation CONFIRMED" in r.err
    good = tmp_path / f"good{FORGE}.json"
    good.write_text(certs["pair"].read_text())
    r = cli("verify", good)
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert [line for line in lines if line.lstrip().startswith("refutation")] == ["  refutation CONFIRMED"]
    assert lines[0] == f"Replaying {tmp_path}/good\\n  refutation CONFIRMED.json"
