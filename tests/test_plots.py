"""Pictures: `ibtest show CERT --plot` for a real Theorem 3 certificate, and the run-level figure."""
from __future__ import annotations

import json
import math

import pytest
from conftest import STUDIES

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def theorem3_run(tmp_path_factory):
    """One real run of the paper's Theorem 3 study (certificates written)."""
    from ibtest.api import run_study

    out = tmp_path_factory.mktemp("t3") / "run"
    res = run_study(STUDIES / "vardi_shamir_theorem3.yaml", out_dir=out)
    assert res.certificates, res.table()
    return res


def _is_png(path, min_bytes=10_000):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > min_bytes


@pytest.mark.slow
def test_show_plot_writes_png_for_theorem3_certificate(theorem3_run, cli, tmp_path):
    cert = next(c for c in theorem3_run.certificates if c.endswith("l2_norm.json"))
    png = tmp_path / "fig" / "l2.png"
    r = cli("show", cert, "--plot", png)
    assert r.code == 0, r
    assert "figure written to" in r.out
    assert _is_png(png), png.stat().st_size


@pytest.mark.slow
def test_plot_certificate_blocking_and_rotated_pairs(theorem3_run, tmp_path):
    """A blocking-point pair (dist_to_init) and a rotated pair (l_inf) draw too."""
    from ibtest.cert.schema import load
    from ibtest.out.plots import plot_certificate

    for c in [c for c in theorem3_run.certificates if c.endswith(("dist_to_init.json", "p=inf.json"))]:
        out = plot_certificate(load(c), tmp_path / (c.rsplit("/", 1)[-1] + ".png"))
        assert _is_png(out)


def test_gradient_flow_path_reaches_theorem3_limit():
    """The plotting integrator reproduces the exact GF limit (5, -1, s), s = -0.20905 for gamma = 5."""
    import torch

    from ibtest.out.plots import gradient_flow_path
    from ibtest.plugin.manager import load_registry

    reg = load_registry()
    model = reg.get("models", "relu_neuron").factory(relu_grad_at_zero=1)
    b = reg.get("datasets", "vardi_shamir_theorem3").generate(torch.Generator(), alpha=1.0, gamma=5.0)
    t, th = gradient_flow_path(model, b.X[0], b.y[0], b.mask[0], torch.zeros(3), max_steps=50_000)
    assert t[0] == 0 and (t[1:] > t[:-1]).all()
    assert abs(th[-1][0] - 5) < 1e-3 and abs(th[-1][1] + 1) < 1e-3
    assert abs(th[-1][2] + 0.20905) < 1e-3


@pytest.mark.slow
def test_plot_certificate_invariant(tmp_path):
    """An invariant certificate (no side b): single path and C along it."""
    from ibtest.api import run_study
    from ibtest.out.plots import plot_certificate

    plugin = tmp_path / "sqnorm.py"
    plugin.write_text(
        "import ibtest\n"
        "def sq(theta, ctx):\n    return (theta * theta).sum(-1)\n"
        "@ibtest.hookimpl\n"
        "def ibtest_hypotheses():\n"
        "    return [ibtest.Hypothesis(name='sq_norm_conserved', fn=sq, kind='invariant', doc='|theta|^2')]\n")
    study = {"study": "inv", "seed": 0, "plugins": [str(plugin)], "model": {"name": "relu_neuron"},
             "init": {"name": "gaussian", "scale": 0.5, "count": 2},
             "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 5]}],
             "solver": {"name": "exact"}, "hypotheses": [{"name": "sq_norm_conserved", "expect": "falsified"}]}
    res = run_study(study, out_dir=tmp_path / "run")
    assert res.verdicts["sq_norm_conserved"] == "falsified", res.table()
    cert = json.loads(open(res.certificates[0]).read())
    assert "b" not in cert
    out = plot_certificate(cert, tmp_path / "inv.png", plugins=[str(plugin)])
    assert _is_png(out)


def test_pair_gaps_and_plot_run(theorem3_run, tmp_path):
    from ibtest.out.plots import gap_summary, pair_gaps, plot_run

    gaps = pair_gaps(theorem3_run)
    assert set(gaps) == set(theorem3_run.verdicts)
    for m in theorem3_run.members:
        # the gaps are over the run's retained pairs (candidates and closest calls), a subset
        assert 0 < len(gaps[m.label]) <= m.n_pairs
        # the certified gap is (up to the re-solve) the gap of one of the pairs, at most the largest
        # (the witness is the pair with the largest gap / margin, not always the largest gap)
        assert any(abs(g) == pytest.approx(m.evidence.gap, rel=1e-6) for g in gaps[m.label])
        assert m.evidence.gap <= max(abs(g) for g in gaps[m.label]) * (1 + 1e-6)
    summary = gap_summary(theorem3_run)
    assert all(v["verdict"] == "falsified" and v["margin"] > 0 for v in summary.values())
    out = plot_run(theorem3_run, tmp_path / "run.png")
    assert _is_png(out)
    # the plain-dict form
    out2 = plot_run({"toy": {"gaps": [0.0, 1e-12, -3e-3, 0.2], "margin": 1e-9, "verdict": "falsified"},
                     "empty": {"gaps": [], "margin": math.nan}}, tmp_path / "toy.png")
    assert out2.read_bytes()[:8] == PNG_MAGIC


def test_plot_run_refuses_run_dir_without_gaps(theorem3_run, tmp_path):
    from ibtest.base.errors import UserError
    from ibtest.out.plots import plot_run

    data = json.loads((theorem3_run.run_dir / "results.json").read_text())
    if all("gaps" in v for v in data["verdicts"]):  # the store already keeps them
        assert _is_png(plot_run(theorem3_run.run_dir, tmp_path / "r.png"))
    else:
        with pytest.raises(UserError, match="per-pair gaps"):
            plot_run(theorem3_run.run_dir, tmp_path / "r.png")
