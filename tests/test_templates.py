"""`ibtest new KIND NAME`: each template passes its own generated tests and is listed by `ibtest list`."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from ibtest.base.errors import UserError
from ibtest.templates import KINDS, write_template

NAMES = {"hypothesis": "my_reg", "model": "my_model", "dataset": "my_data"}
REGISTRY_KIND = {"hypothesis": "hypotheses", "model": "models", "dataset": "datasets"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Every template written to its own directory, and one pytest run over all their tests (one
    interpreter start instead of one per kind). Returns {kind: (directory, paths)} and the run's
    JUnit XML root and output."""
    root = tmp_path_factory.mktemp("templates")
    out = {}
    for kind in KINDS:
        d = root / kind
        d.mkdir()
        out[kind] = (d, write_template(kind, NAMES[kind], d))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    xml = tmp_path_factory.mktemp("junit") / "junit.xml"
    tests = [str(d / f"test_{NAMES[kind]}.py") for kind, (d, _) in out.items()]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *tests],
                          cwd=root, capture_output=True, text=True, timeout=600, env=env)
    # the working directory too: a generated test that writes into it would leave a file here
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith((".", "__"))) == sorted(KINDS), \
        "the generated tests must not write into their working directory"
    return out, ET.parse(xml).getroot(), proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_template_passes_its_own_tests(kind, generated):
    out, junit, log = generated
    name = NAMES[kind]
    d, paths = out[kind]
    assert [p.name for p in paths] == [f"{name}.py", f"test_{name}.py", f"{name}_study.yaml"]
    cases = [c for c in junit.iter("testcase") if c.get("classname", "").split(".")[-1] == f"test_{name}"]
    assert cases, log
    bad = [c.get("name") for c in cases if any(c.find(t) is not None for t in ("failure", "error", "skipped"))]
    assert not bad, log
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith((".", "__"))) == sorted(
        p.name for p in paths), "the generated tests must not write into their directory"


@pytest.mark.parametrize("kind", KINDS)
def test_template_is_listed(kind, tmp_path, cli):
    name = NAMES[kind]
    plugin = write_template(kind, name, tmp_path)[0]
    r = cli("list", "--plugin", plugin)
    assert r.code == 0, r
    section = r.out.split(f"{REGISTRY_KIND[kind]}:", 1)[1].split("\n\n", 1)[0]
    assert any(line.startswith(name + " ") and plugin.name in line for line in section.splitlines()), r.out
    detail = cli("list", name, "--plugin", plugin)  # the whole path, and the plugin's options
    assert detail.code == 0 and str(plugin) in detail.out.splitlines()[0], detail


def test_hypothesis_template_study_runs_from_the_cli(tmp_path, cli):
    paths = write_template("hypothesis", "my_reg", tmp_path)
    r = cli("run", paths[2], "--out", tmp_path / "run", "-q")
    assert r.code == 0, r  # every expectation in the generated study holds
    assert "my_reg[p=1]" in r.out and "FALSIFIED" in r.out


def test_new_refuses_bad_names_and_overwrites(tmp_path):
    with pytest.raises(UserError, match="identifier"):
        write_template("hypothesis", "my-reg", tmp_path)
    with pytest.raises(UserError, match="identifier"):
        write_template("hypothesis", "class", tmp_path)
    with pytest.raises(UserError, match="unknown kind"):
        write_template("solver", "x", tmp_path)
    write_template("dataset", "d1", tmp_path)
    with pytest.raises(UserError, match="already exist"):
        write_template("dataset", "d1", tmp_path)
    assert write_template("dataset", "d1", tmp_path, overwrite=True)


def test_cli_new_writes_the_files(tmp_path, cli):
    r = cli("new", "hypothesis", "cli_reg", "--dir", tmp_path)
    assert r.code == 0, r
    assert (tmp_path / "cli_reg.py").is_file() and (tmp_path / "test_cli_reg.py").is_file()
