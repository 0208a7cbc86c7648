"""Bad study files give one clear message (file, line, field path) and exit code 2."""
from __future__ import annotations

import textwrap

import pytest

GOOD = """\
study: t
model: {name: relu_neuron}
init: {name: zeros}
datasets:
  - {name: vardi_shamir_theorem3, gamma: [0, 1]}
solver: {name: exact}
hypotheses:
  - {name: l2_norm}
"""


def write(tmp_path, text, name="study.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize(
    "change, line, needle",
    [
        (("seed: 0", "seed: 0\ncolour: red"), 2, "colour: unknown key"),
        (("seed: 0", "seed: zero"), 1, "seed: Input should be a valid integer"),
        (("{name: relu_neuron}", "{name: relu_neurone}"), 3, "model.name: unknown model 'relu_neurone'"),
        (("{name: relu_neuron}", "{name: relu_neuron, relu_grad_at_zero: 2}"), 3,
         "model.relu_grad_at_zero: "),
        (("{name: relu_neuron}", "{name: relu_neuron, slope: 2}"), 3, "unknown option 'slope' for model 'relu_neuron'"),
        (("gamma: [0, 1]", "gamma: [0, one]"), 6, "datasets[0].gamma: "),
        (("{name: l2_norm}", "{name: lp_norm, params: {q: 2}}"), 9, "hypotheses[0].params.q: unknown parameter 'q'"),
        (("{name: l2_norm}", "{name: l2_norm, expect: refuted}"), 9, "hypotheses[0].expect"),
        (("{name: exact}", "{name: exact, grid: tiny}"), 7, "solver.grid"),
        (("{name: exact}", "{name: exact, fit_tol: 1.0e-20}"), 7, "solver.fit_tol: fit_tol is the study's fit rule"),
        (("{name: exact}", "{name: exact}\nfit_tol: tiny"), 8, "fit_tol: "),
    ],
)
def test_bad_field_names_file_line_and_path(tmp_path, cli, change, line, needle):
    text = ("seed: 0\n" + GOOD).replace(*change)
    p = write(tmp_path, text)
    r = cli("run", p, "--out", tmp_path / "run")
    assert r.code == 2, r
    assert f"{p}:{line}:" in r.err, r
    assert needle in r.err, r
    assert "Traceback" not in r.err
    assert not (tmp_path / "run").exists(), "nothing may run before the study validates"


def test_missing_required_field(tmp_path, cli):
    p = write(tmp_path, GOOD.replace("solver: {name: exact}\n", ""))
    r = cli("run", p)
    assert r.code == 2
    assert "solver: required field is missing" in r.err


def test_yaml_syntax_error(tmp_path, cli):
    p = write(tmp_path, GOOD + "  - [unclosed\n")
    r = cli("run", p)
    assert r.code == 2
    assert "YAML syntax error" in r.err and str(p) in r.err


def test_solver_that_cannot_solve_the_model(tmp_path, cli):
    p = write(tmp_path, GOOD.replace("{name: relu_neuron}", "{name: two_layer_relu}"))
    r = cli("run", p)
    assert r.code == 2
    assert "solver 'exact' cannot solve model 'two_layer_relu'" in r.err


def test_missing_file_and_unknown_builtin(cli, tmp_path):
    r = cli("run", tmp_path / "nope.yaml")
    assert r.code == 2 and "no such file" in r.err


def test_all_problems_reported_at_once(tmp_path, cli):
    text = GOOD.replace("{name: relu_neuron}", "{name: nope}").replace("{name: l2_norm}", "{name: nope2}")
    r = cli("run", write(tmp_path, text))
    assert r.code == 2
    assert "unknown model 'nope'" in r.err and "unknown hypothesis 'nope2'" in r.err
