"""``ibtest fit`` (issue 26): families fitted through the KKT conditions of min R over Z(D), with
known answers (Theorem 1: M ∝ I; Woodworth et al.: α; Theorem 3: no strictly convex member), the
fit and no-fit certificates replayed by ``ibtest verify``, a no-fit shrunk, and a family judged by
``ibtest run`` through its claim kinds like any hypothesis."""
from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
import yaml
from conftest import STUDIES

from ibtest.api import run_study
from ibtest.plugin.manager import load_registry
from ibtest.propose import engine, kkt, program
from ibtest.propose.study import fit_study
from ibtest.solve.batch import Triples
from ibtest.solve.rules import Verdict


def _one(report):
    assert not isinstance(report, list)
    return report


@pytest.fixture(scope="module")
def linear_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit_linear")
    return out, _one(fit_study(STUDIES / "fit_linear.yaml", out_dir=out))


@pytest.fixture(scope="module")
def theorem3_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit_t3")
    return out, _one(fit_study(STUDIES / "fit_relu_theorem3.yaml", out_dir=out))


# ------------------------------------------------------------------------------------------
def test_families_register_a_member_and_a_family_hypothesis_and_two_claim_kinds():
    reg = load_registry()
    assert {"quadratic", "separable", "q_alpha_free", "q_alpha_coords", "lp_norm_free"} <= set(reg.names("families"))
    assert reg.get("hypotheses", "quadratic").kind == "regularizer"
    assert reg.get("hypotheses", "quadratic_family").kind == "family"
    assert [k.name for k in reg.kinds_for("family")] == ["fit", "no_fit"]
    assert [k.name for k in reg.kinds_for("regularizer")] == ["pair", "witness"]


def test_a_third_party_family_is_one_plugin_file(tmp_path, cli):
    plugin = tmp_path / "my_family.py"
    plugin.write_text(textwrap.dedent('''
        import ibtest

        @ibtest.hookimpl
        def ibtest_families():
            return [ibtest.Family(name="sq_dist", depends_on="init",
                                  features=lambda x, ctx: ((x - ctx.init) ** 2).sum(-1, keepdim=True),
                                  doc="|theta - theta0|^2 times lambda")]
    '''))
    r = cli("list", "--plugin", plugin)
    assert r.code == 0 and "sq_dist" in r.out and "sq_dist_family" in r.out, r
    r = cli("fit", STUDIES / "linear_zero_init.yaml", "--family", "sq_dist", "--plugin", plugin, "--out", tmp_path / "r")
    assert r.code == 0 and "family sq_dist" in r.out and "fits" in r.out, r


def test_kkt_rows_vanish_at_the_true_member_and_not_elsewhere():
    """Linear model: θ∞ = θ0 + X⁺(y − Xθ0) minimizes ‖θ − θ0‖² on {Xθ = y}: the quadratic family's
    KKT residual is 0 at M = I and not at a skewed M; the normalization is the growth of ½‖θ − θ0‖²."""
    reg = load_registry()
    model = reg.get("models", "linear").factory()
    fam = reg.get("families", "quadratic")
    g = torch.Generator().manual_seed(0)
    B, n, d = 5, 2, 4
    X, y = torch.randn(B, n, d, generator=g, dtype=torch.float64), torch.randn(B, n, generator=g, dtype=torch.float64)
    th0 = torch.randn(B, d, generator=g, dtype=torch.float64)
    th = th0 + (torch.linalg.pinv(X) @ (y - (X @ th0[..., None])[..., 0])[..., None])[..., 0]
    z = torch.zeros(B, dtype=torch.int64)
    t = Triples(X, y, torch.ones(B, n, dtype=torch.float64), th0, th, z.clone(), torch.zeros(B, dtype=torch.float64),
                torch.arange(B), torch.arange(B), z - 1, ["d"] * B, ["i"] * B, ["study"] * B)
    k = kkt.build(model, fam, {}, t, torch.arange(B), torch.zeros(B, dtype=torch.float64), 10.0)
    pb = program.Problem(k, kkt.PairData.empty(k.K), fam, {})
    i, j = torch.triu_indices(d, d)
    eye = (i == j).to(torch.float64)
    rho, _, _ = program.residuals(pb, eye)
    assert float((rho / pb.scale).max()) < 1e-13
    skew = eye.clone()
    skew[1] = 0.5  # M_01 = 0.25
    rho2, _, _ = program.residuals(pb, skew)
    assert float((rho2 / pb.scale).max()) > 1e-2
    c = k.normalization()
    assert math.isclose(float(c @ eye), 2.0, rel_tol=1e-12)  # ∇(dᵀd)·d / |d|² = 2
    lam, _, null_dim = program.unconstrained(pb)
    assert null_dim == 0 and float((lam / lam[0] - eye).abs().max()) < 1e-10


# ------------------------------------------------------------------------------------------
def test_linear_model_recovers_the_distance_to_the_init(linear_fit):
    _, rep = linear_fit
    (f,) = rep.fits
    o = f.outcome
    assert o.status == engine.FITS and o.ls is not None and o.ls.null_dim == 0
    M = torch.tensor(f.parameters["M"])
    assert float((M - torch.eye(M.shape[0], dtype=M.dtype)).abs().max()) < 1e-6
    assert "dist_to_init" in f.closed_form
    h = f.heldout
    assert h is not None and h.member is not None and h.member.verdict == Verdict.SURVIVES and h.triples > 0
    assert rep.expectations_held and all(c.held for c in f.checks) and len(f.checks) == 3
    assert rep.fit_triples + rep.heldout_triples == rep.converged


def test_the_fit_certificate_replays_and_an_edited_member_is_withdrawn(linear_fit, cli, tmp_path):
    _, rep = linear_fit
    cert = rep.fits[0].certificate
    r = cli("verify", cert)
    assert r.code == 0 and "fit CONFIRMED" in r.out and "judged as: fit claim on family quadratic_family" in r.out, r
    data = json.loads(open(cert).read())
    data["fit"]["lam"][1] += 0.3  # M_01 ≠ 0: not the distance to the init
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(data))
    r = cli("verify", bad)
    assert r.code == 1 and "fit WITHDRAWN" in r.out, r
    data["fit"]["family"] = "separable"
    bad.write_text(json.dumps(data))
    assert cli("verify", bad).code == 2
    r = cli("show", cert)
    assert r.code == 0 and "proposed R:" in r.out, r


def test_relu_neuron_no_strictly_convex_member_fits(theorem3_fit, cli, tmp_path):
    """Theorem 3 found by the machine: every built-in family, strictly convex, fails on a few triples."""
    out, rep = theorem3_fit
    assert rep.expectations_held
    by = {f.family.name: f for f in rep.fits}
    assert all(f.outcome.status == engine.NO_FIT for f in by.values())
    q = by["quadratic"]
    assert 1 <= len(q.outcome.core) <= 5 and q.certificate is not None
    assert by["lp_norm_free"].certificate is None  # a norm has no strictly convex member: nothing to certify
    r = cli("verify", q.certificate)
    assert r.code == 0 and "refutation CONFIRMED" in r.out and "no_fit claim" in r.out, r
    r = cli("show", q.certificate)
    assert r.code == 0 and "No member of a family fits" in r.out, r
    r = cli("shrink", q.certificate, "-o", tmp_path / "shrunk.json")
    assert r.code == 0 and (tmp_path / "shrunk.json").exists(), r
    shrunk = json.loads((tmp_path / "shrunk.json").read_text())
    assert len(shrunk["runs"]) <= len(json.loads(open(q.certificate).read())["runs"])
    assert cli("verify", tmp_path / "shrunk.json").code == 0
    data = json.loads(open(q.certificate).read())
    data["fit"]["strict"] = None  # the flat member (5, -1, s) -> 0 in the third coordinate then fits
    data["runs"] = data["runs"][:1]
    data["fit"]["pairs"] = []
    lax = tmp_path / "lax.json"
    lax.write_text(json.dumps(data))
    r = cli("verify", lax)
    assert r.code == 1 and "refutation WITHDRAWN" in r.out, r
    hostile = json.loads(open(by["separable"].certificate).read())
    for key, value in (("degree", 10**9), ("c", ["x"]), ("per_coordinate", 1), ("nope", 1.0)):
        bad = json.loads(json.dumps(hostile))
        bad["fit"]["settings"][key] = value
        lax.write_text(json.dumps(bad))
        r = cli("verify", lax)
        assert r.code == 2 and f"fit.settings.{key}" in r.err, (key, r)


def test_a_family_in_ibtest_run_is_falsified_by_its_no_fit(tmp_path, cli):
    study = yaml.safe_load((STUDIES / "vardi_shamir_theorem3.yaml").read_text())
    study["hypotheses"] = [{"name": "quadratic_family", "expect": "falsified"}]
    res = run_study(study, out_dir=tmp_path / "run")
    (m,) = res.members
    assert m.verdict == Verdict.FALSIFIED and m.evidence is not None and m.evidence.kind == "no_fit"
    assert res.expectations_held and m.certificate is not None
    assert cli("verify", m.certificate).code == 0


def test_fit_command_line_errors(tmp_path, cli):
    assert cli("fit", STUDIES / "linear_control.yaml").code == 2  # no family: neither the study nor --family
    assert cli("fit", STUDIES / "fit_linear.yaml", "--family", "nope").code == 2
    with pytest.raises(SystemExit) as e:
        cli("fit", STUDIES / "fit_linear.yaml", "--strict", "-1")
    assert e.value.code == 2
    bad = yaml.safe_load((STUDIES / "fit_linear.yaml").read_text())
    bad["fit"]["family"] = "nope"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    r = cli("fit", p)
    assert r.code == 2 and "fit.family: unknown family 'nope'" in r.err, r


def test_fit_benchmark_quick_numbers_are_finite():
    from benchmarks import fit

    r = fit.run(count=6, repeat=1)
    for x in r["runs"].values():
        assert math.isfinite(x["median_ratio"]) and x["median_fit_s"] > 0
    assert len(fit.rows(r)) == 2


# ------------------------------------------------------------------------------------------
def _study_exits_0(cli, tmp_path, name: str) -> str:
    r = cli("fit", name, "--out", tmp_path / name)
    assert r.code == 0, r
    return r.out


@pytest.mark.slow
def test_diagonal_net_recovers_alpha(tmp_path):
    reps = fit_study(STUDIES / "fit_diagonal.yaml", out_dir=tmp_path)
    assert isinstance(reps, list) and len(reps) == 3
    for rep in reps:
        (f,) = rep.fits
        assert abs(f.parameters["alpha"] / rep.sweep_value - 1) < 1e-6, f.parameters
        assert rep.expectations_held


@pytest.mark.slow
def test_diagonal_net_non_uniform_init_recovers_every_scale(tmp_path, cli):
    out = _study_exits_0(cli, tmp_path, "fit_diagonal_nonuniform")
    assert "expect alpha (rtol 1e-06)" in out and "✓" in out
    fit = json.loads((tmp_path / "fit_diagonal_nonuniform" / "fit.json").read_text())
    alpha = fit["families"][0]["parameters"]["alpha"]
    truth = [0.3, 0.5, 1.0, 1.5, 2.0, 0.7]
    assert max(abs(a / b - 1) for a, b in zip(alpha, truth)) < 1e-6


@pytest.mark.slow
def test_leaky_neuron_recovers_the_distance_to_the_init(tmp_path, cli):
    out = _study_exits_0(cli, tmp_path, "fit_leaky")
    assert "dist_to_init" in out and "survives on" in out


@pytest.mark.slow
def test_relu_neuron_without_strictness_only_ties(tmp_path, cli):
    out = _study_exits_0(cli, tmp_path, "fit_relu_theorem3_ties")
    assert out.count("it only ties") == 2


@pytest.mark.slow
def test_two_layer_net_no_family_fits(tmp_path, cli):
    out = _study_exits_0(cli, tmp_path, "fit_two_layer")
    assert out.count("no fit:") == 2
    for cert in sorted((tmp_path / "fit_two_layer" / "certificates").glob("*.no_fit.json")):
        assert cli("verify", cert).code == 0
