"""The paper's Theorem 3 study has one source, hypotheses/vardi_shamir_theorem3.yaml: ``ibtest run``
with no argument, the ``ibtest.testing`` "theorem3" study and the ``ibtest new hypothesis`` study
all come from it, and say what they said when each kept its own copy."""
from __future__ import annotations

from pathlib import Path

import yaml

from ibtest import cli, templates, testing
from ibtest.study import builtin

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "hypotheses" / "vardi_shamir_theorem3.yaml"

# What ibtest.testing.STUDIES["theorem3"] was as a literal copy.
OLD_TESTING_THEOREM3 = {
    "study": "ibtest-testing-theorem3",
    "description": "Vardi & Shamir Theorem 3: single ReLU neuron from w(0) = 0, gamma = 0, 1, 5",
    "seed": 0,
    "model": {"name": "relu_neuron", "relu_grad_at_zero": 1},
    "init": {"name": "zeros"},
    "datasets": [{"name": "vardi_shamir_theorem3", "alpha": 1.0, "gamma": [0, 1, 5]}],
    "solver": {"name": "exact"},
    "constructions": ["blocking_point", "consistent_augmentation", {"name": "rotate", "count": 2, "max_pairs": 8}],
    "report": {"triples": False},
}

# What `ibtest new hypothesis my_reg` wrote as NAME_study.yaml when the template kept its own copy.
OLD_HYPOTHESIS_STUDY = '''# Vardi & Shamir (COLT 2021), Theorem 3, with the my_reg hypothesis (plugin my_reg.py).
# Run: ibtest run my_reg_study.yaml
study: my_reg-theorem3
description: Single ReLU neuron from w(0) = 0 on the paper's Theorem 3 data; is my_reg refuted?
seed: 0
plugins: [my_reg.py]            # relative to this file
model: {name: relu_neuron, relu_grad_at_zero: 1}
init: {name: zeros}
datasets:
  - {name: vardi_shamir_theorem3, alpha: 1.0, gamma: [0, 1, 2, 5, 20]}
solver: {name: exact}
fit_tol: 1.0e-20  # the study's fit rule: theta fits D when L <= fit_tol * max(0.5|y|^2, L(theta0))
constructions:
  - blocking_point
  - consistent_augmentation
  - {name: rotate, count: 2, max_pairs: 16}
hypotheses:
  - {name: my_reg, params: {p: [1, 2, .inf]}, expect: falsified}
  - {name: l2_norm, expect: falsified}     # a built-in, for comparison
'''


def test_the_shipped_text_is_the_yaml_file():
    assert builtin.study_text(builtin.THEOREM3) == YAML.read_text(encoding="utf-8")
    assert builtin.study_data(builtin.THEOREM3) == yaml.safe_load(YAML.read_text())


def test_testing_theorem3_is_unchanged():
    assert testing.STUDIES["theorem3"] == OLD_TESTING_THEOREM3
    assert list(testing.STUDIES["theorem3"]) == list(OLD_TESTING_THEOREM3)  # same key order
    assert testing.builtin_study("theorem3") == OLD_TESTING_THEOREM3


def test_hypothesis_template_study_is_unchanged(tmp_path):
    paths = templates.write_template("hypothesis", "my_reg", tmp_path)
    assert paths[2].read_text() == OLD_HYPOTHESIS_STUDY


def test_default_run_is_the_theorem3_yaml():
    p = cli.resolve_study(None)
    assert p.name == "vardi_shamir_theorem3.yaml"
    assert p.read_text(encoding="utf-8") == YAML.read_text(encoding="utf-8")
