"""A new model (or hypothesis) is one small file and zero edits to the core."""
from __future__ import annotations

import textwrap

import torch
from conftest import verdicts

NEW_MODEL = '''
import ibtest

class ScaledRelu(ibtest.ModelBase):
    """f(x) = c * max(0, <w, x>): piecewise linear, so the core's exact solver applies."""

    def __init__(self, c: float = 2.0):
        super().__init__(c=c)
        self.piecewise = ibtest.PiecewiseLinearNeuron(pos=c, neg=0.0, at_zero=c)

    def n_params(self, d):
        return d

    def predict(self, theta, X):
        return self.piecewise.pos * (X @ theta.unsqueeze(-1)).squeeze(-1).clamp_min(0)

@ibtest.hookimpl
def ibtest_models():
    return [ibtest.Model(name="scaled_relu", factory=ScaledRelu, doc="c * relu(<w, x>)",
                         options={"c": ibtest.Option(2.0, float, "output scale")})]
'''


def test_new_model_in_one_file_runs_through_the_unchanged_core(tmp_path, cli):
    (tmp_path / "scaled_relu.py").write_text(NEW_MODEL)
    study = tmp_path / "s.yaml"
    study.write_text(textwrap.dedent("""\
        study: new-model
        plugins: [scaled_relu.py]
        model: {name: scaled_relu, c: 2.0}
        datasets: [{name: vardi_shamir_theorem3, gamma: [0, 5]}]
        solver: {name: exact}
        constructions: [blocking_point]
        hypotheses: [{name: l2_norm, expect: falsified}]
        """))
    r = cli("run", study, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert verdicts(tmp_path / "run") == {"l2_norm": "falsified"}
    # c * relu with labels y equals relu with labels y / c: w∞ = (5, -1, 0) / 2 for gamma = 0
    import json

    tri = json.loads((tmp_path / "run" / "results.json").read_text())["triples"]
    assert torch.allclose(torch.tensor(tri[0]["theta"], dtype=torch.float64),
                          torch.tensor([2.5, -0.5, 0.0], dtype=torch.float64), atol=1e-12)
    # the autograd default gradient of ModelBase is what the exact solver cross-checks against
    listed = cli("list", "--plugin", tmp_path / "scaled_relu.py")
    assert "scaled_relu" in listed.out and "scaled_relu.py" in listed.out
