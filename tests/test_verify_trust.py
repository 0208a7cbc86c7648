"""Issue 9 (security, verify): a certificate or a store from someone else's hands.

No code runs because a file names it; verify judges by the registry's rules (claim type,
pair validity, tolerance floors); strings from files cannot drive the terminal; a bad file is
one line and exit 2, never a traceback and never 1 (which means "withdrawn").
"""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from ibtest.api import run_study
from ibtest.base.errors import PluginError
from ibtest.cert import schema as certschema
from ibtest.plugin.manager import DISABLE_AUTOLOAD_ENV, entry_points_to_load, get_plugin_manager, load_registry

ESC = "\x1b"


# ------------------------------------------------------------------------------------------
# genuine certificates, made once per module
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def theorem3_cert(tmp_path_factory) -> dict:
    """l2_norm refuted on the paper's pair (relu neuron, w(0) = 0, gamma 0 against 5)."""
    out = tmp_path_factory.mktemp("t3") / "run"
    study = {"study": "t3", "seed": 0, "model": {"name": "relu_neuron", "relu_grad_at_zero": 1},
             "init": {"name": "zeros"}, "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 5]}],
             "solver": {"name": "exact"}, "hypotheses": [{"name": "l2_norm", "expect": "falsified"}]}
    res = run_study(study, out_dir=out)
    assert res.verdicts == {"l2_norm": "falsified"}
    return json.loads(Path(res.certificates[0]).read_text())


@pytest.fixture(scope="module")
def linear_cert(tmp_path_factory) -> dict:
    """l2_norm refuted on a linear model by two Gaussian inits on one dataset (Theorem 1 setting)."""
    out = tmp_path_factory.mktemp("lin") / "run"
    study = {"study": "lin", "seed": 1, "model": {"name": "linear"},
             "init": {"name": "gaussian", "scale": 1.0, "count": 2},
             "datasets": [{"name": "gaussian", "n": 3, "d": 6, "count": 1, "labels": "teacher_linear"}],
             "solver": {"name": "exact"},
             "hypotheses": [{"name": "l2_norm", "expect": "falsified"}]}
    res = run_study(study, out_dir=out)
    assert res.verdicts == {"l2_norm": "falsified"}, res.table()
    cert = json.loads(Path(res.certificates[0]).read_text())
    assert cert["a"]["theta0"] != cert["b"]["theta0"]  # two inits, one dataset
    return cert


def _write(tmp_path: Path, cert: dict, name: str = "cert.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(cert))
    return p


def _copy(cert: dict) -> dict:
    return json.loads(json.dumps(cert))


def _one_line_error(r) -> None:
    assert r.code == 2, r
    assert "Traceback" not in r.err and "Traceback" not in r.out, r
    assert len(r.err.strip().splitlines()) == 1, r
    assert r.err.startswith("ibtest: error: "), r


def test_genuine_certificates_confirm(theorem3_cert, linear_cert, tmp_path, cli):
    for name, cert in (("t3", theorem3_cert), ("lin", linear_cert)):
        r = cli("verify", _write(tmp_path, cert, f"{name}.json"))
        assert r.code == 0, r
        assert "refutation CONFIRMED" in r.out
        assert "disagree" not in r.out, r  # the file's own numbers reproduce


# ------------------------------------------------------------------------------------------
# security: no code runs unless the user asked
# ------------------------------------------------------------------------------------------
MARKER_PLUGIN = """\
import pathlib, ibtest
pathlib.Path({marker!r}).write_text("ran")

@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="marker_l2", fn=lambda theta, ctx: theta.norm(dim=-1), doc="l2, with a side effect")]
"""


def _marker_plugin(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    plugin = tmp_path / "evil_plugin.py"
    plugin.write_text(MARKER_PLUGIN.format(marker=str(marker)))
    return plugin, marker


def test_verify_never_runs_a_plugin_the_certificate_names(theorem3_cert, tmp_path, cli):
    plugin, marker = _marker_plugin(tmp_path)
    cert = _copy(theorem3_cert)
    cert["hypothesis"]["name"] = "marker_l2"
    cert["plugins"] = [str(plugin)]
    path = _write(tmp_path, cert)
    r = cli("verify", path)
    _one_line_error(r)
    assert not marker.exists(), "the certificate's plugin file was imported"
    assert "--plugin" in r.err and "marker_l2" in r.err and str(plugin) in r.err, r
    assert "CONFIRMED" not in r.out
    # the user asks for it: now it loads, and the refutation (l2 under another name) holds
    r = cli("verify", path, "--plugin", plugin)
    assert marker.exists()
    assert r.code == 0, r


def test_show_plot_never_runs_a_plugin_the_certificate_names(theorem3_cert, tmp_path, cli):
    plugin, marker = _marker_plugin(tmp_path)
    cert = _copy(theorem3_cert)
    cert["hypothesis"]["name"] = "marker_l2"
    cert["plugins"] = [str(plugin)]
    r = cli("show", _write(tmp_path, cert), "--plot", tmp_path / "fig.png")
    _one_line_error(r)
    assert not marker.exists()
    assert "--plugin" in r.err, r
    assert not (tmp_path / "fig.png").exists()


def test_resume_never_runs_the_stores_plugins(tmp_path, cli):
    plugin, marker = _marker_plugin(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(
        "study: marker\nplugins: [evil_plugin.py]\nmodel: {name: relu_neuron}\n"
        "datasets: [{name: vardi_shamir_theorem3, gamma: [0, 5]}]\nsolver: {name: exact}\n"
        "hypotheses: [{name: marker_l2, expect: falsified}]\n")
    run = tmp_path / "run"
    r = cli("run", study, "--out", run, "-q")  # the user runs their own study: its plugins load
    assert r.code == 0, r
    assert marker.exists()
    marker.unlink()
    import sys

    for name in [m for m in sys.modules if m.startswith("ibtest_local_") and m.endswith("evil_plugin")]:
        del sys.modules[name]  # a fresh process would import the file anew
    r = cli("run", "--resume", run, "-q")
    _one_line_error(r)
    assert not marker.exists(), "the store's meta.plugins were imported"
    assert "--plugin" in r.err and "marker_l2" in r.err and "evil_plugin.py" in r.err, r
    r = cli("run", "--resume", run, "--plugin", plugin, "-q")
    assert r.code == 0, r
    assert marker.exists()


class _FakeDist:
    def __init__(self, name: str):
        self.name = name
        self.metadata = {"Name": name}


def _with_foreign_entry_point(monkeypatch) -> None:
    real = importlib.metadata.entry_points

    def fake(**kw):
        eps = list(real(**kw))
        if kw.get("group") == "ibtest":
            ep = importlib.metadata.EntryPoint("evil", "ibtest_no_such_module_xyz", "ibtest")
            try:
                ep = ep._for(_FakeDist("evil-package"))
            except AttributeError:  # pragma: no cover (older importlib.metadata)
                object.__setattr__(ep, "dist", _FakeDist("evil-package"))
            eps.append(ep)
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)


def test_disable_plugin_autoload_keeps_builtins_skips_third_party(monkeypatch):
    _with_foreign_entry_point(monkeypatch)
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    with pytest.raises(PluginError, match="evil"):  # autoload on: the third-party entry point is imported
        get_plugin_manager()
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    assert all(ep.name != "evil" for ep in entry_points_to_load())
    reg = load_registry()
    assert "l2_norm" in reg.items["hypotheses"] and "relu_neuron" in reg.items["models"]
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "0")  # "0" means not set, as for pytest
    assert any(ep.name == "evil" for ep in entry_points_to_load())


def test_missing_plugin_message_mentions_disabled_autoload(theorem3_cert, tmp_path, cli, monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    cert = _copy(theorem3_cert)
    cert["hypothesis"]["name"] = "from_some_package"
    cert["plugins"] = []
    r = cli("verify", _write(tmp_path, cert))
    _one_line_error(r)
    assert DISABLE_AUTOLOAD_ENV in r.err and "--plugin" in r.err


# ------------------------------------------------------------------------------------------
# control characters
# ------------------------------------------------------------------------------------------
FORGE = "argmin l2\n  refutation CONFIRMED\x1b[8m\r\x9b2K"


def test_control_characters_cannot_forge_a_verdict_line(theorem3_cert, tmp_path, cli):
    cert = _copy(theorem3_cert)
    cert["claim"] = FORGE
    cert["b"]["y"][-1] = 1.0  # the pair no longer cross-fits: withdrawn
    cert["a"]["label"] = "gamma\x1b]0;owned\x07"
    path = _write(tmp_path, cert)
    r = cli("verify", path)
    assert r.code == 1, r
    verdict_lines = [l for l in r.out.splitlines() if l.strip().startswith("refutation")]
    assert verdict_lines == ["  refutation WITHDRAWN"], r
    for text in (r.out, r.err):
        assert ESC not in text and "\r" not in text and "\x9b" not in text and "\x07" not in text
    assert "\\x1b[8m" in r.out  # visible, not executed
    r = cli("show", path)
    assert r.code == 0, r
    assert ESC not in r.out and "\r" not in r.out and "\x07" not in r.out
    assert not any(l.strip().startswith("refutation CONFIRMED") for l in r.out.splitlines()), r


def test_control_characters_in_a_stored_run_are_shown_inert(tmp_path, cli):
    from ibtest.run.store import Store

    run = tmp_path / "run"
    study = {"study": "ctl", "seed": 0, "model": {"name": "relu_neuron"},
             "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 5]}], "solver": {"name": "exact"},
             "hypotheses": [{"name": "l2_norm"}]}
    run_study(study, out_dir=run)
    s = Store(run)
    res = s.results()
    res["study"] = "ctl\x1b[2J\nfake line"
    res["verdicts"][0]["label"] = "l2_norm\r\x1b[32mSURVIVES"
    res["errors"] = ["boom\x1b[8m"]
    s.write_results(res)
    s.close()
    for fmt in ("table", "markdown", "html", "json"):
        r = cli("report", run, "--format", fmt)
        assert r.code == 0, r
        assert ESC not in r.out and "\r" not in r.out, (fmt, r)
    other = tmp_path / "other"
    run_study(study, out_dir=other)
    r = cli("diff", run, other)
    assert ESC not in r.out and "\r" not in r.out, r


def test_textsafe_clean():
    from ibtest.base.textsafe import clean, clean_tree

    assert clean("a\x1b[31mb\nc\rd\te\x7f\x85\u202e") == "a\\x1b[31mb\\nc\\rd\\te\\x7f\\x85\\u202e"
    assert clean("line1\nline2\x1b", keep_newlines=True) == "line1\nline2\\x1b"
    assert clean("π ≤ 2, θ∞ ∈ Z(D)") == "π ≤ 2, θ∞ ∈ Z(D)"  # printable Unicode passes
    assert clean_tree({"k\n": ["\x1b", 1.5, None]}) == {"k\\n": ["\\x1b", 1.5, None]}


# ------------------------------------------------------------------------------------------
# verify decides by the registry's rules
# ------------------------------------------------------------------------------------------
def test_init_hypothesis_on_a_two_init_pair_is_withdrawn(linear_cert, tmp_path, cli):
    """Renaming l2_norm to dist_to_init would 'refute' Theorem 1: the pair does not share θ0."""
    cert = _copy(linear_cert)
    cert["hypothesis"]["name"] = "dist_to_init"
    cert["hypothesis"]["depends_on"] = "params"  # the file lies about the dependence: ignored
    r = cli("verify", _write(tmp_path, cert))
    assert r.code == 1, r
    assert "refutation WITHDRAWN" in r.out and "different theta0" in r.out, r


def test_data_hypothesis_across_datasets_is_withdrawn(theorem3_cert, tmp_path, cli):
    plugin = tmp_path / "data_hyp.py"
    plugin.write_text(
        "import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n"
        "    return [ibtest.Hypothesis(name='norm_plus_data', depends_on='data',\n"
        "                              fn=lambda theta, ctx: theta.norm(dim=-1), doc='l2, claimed per dataset')]\n")
    cert = _copy(theorem3_cert)
    cert["hypothesis"]["name"] = "norm_plus_data"
    r = cli("verify", _write(tmp_path, cert), "--plugin", plugin)
    assert r.code == 1, r
    assert "depends on the data" in r.out, r


def test_regularizer_without_side_b_is_bad_input(theorem3_cert, tmp_path, cli):
    cert = _copy(theorem3_cert)
    del cert["b"]
    cert["hypothesis"]["kind"] = "invariant"  # the file's word does not count
    r = cli("verify", _write(tmp_path, cert))
    _one_line_error(r)
    assert "regularizer" in r.err and "'b'" in r.err, r


@pytest.mark.parametrize("field,value", [("atol", -1.0), ("rtol", -1e-3), ("safety", -10.0),
                                         ("atol", "nan"), ("safety", "inf"), ("fit_tol", -1.0)])
def test_negative_or_nonfinite_tolerances_are_bad_input(theorem3_cert, tmp_path, cli, field, value):
    cert = _copy(theorem3_cert)
    if field in ("atol", "rtol"):
        cert["hypothesis"][field] = value
    else:
        cert[field] = value
    r = cli("verify", _write(tmp_path, cert))
    _one_line_error(r)
    assert field in r.err, r


def test_loose_tolerances_are_floored(theorem3_cert, tmp_path, cli):
    """A file may only tighten: atol 1e6 (looser margin) is kept, a zero safety is raised to the tool's."""
    cert = _copy(theorem3_cert)
    cert["safety"] = 0.0
    cert["hypothesis"]["atol"] = 0.0
    r = cli("verify", _write(tmp_path, cert))
    assert r.code == 0, r
    assert "safety 0 in the file is below the tool's floor 10" in r.out, r
    cert["hypothesis"]["atol"] = 1e6  # stricter than the default: the file's value holds
    r = cli("verify", _write(tmp_path, cert))
    assert r.code == 1 and "WITHDRAWN" in r.out, r


def test_huge_fit_tol_does_not_make_a_non_fit_fit(theorem3_cert, tmp_path, cli):
    cert = _copy(theorem3_cert)
    cert["b"]["y"][-1] = 1.0  # side b's solution no longer fits D_a (nor θ_a D_b)
    cert["fit_tol"] = 1e6
    r = cli("verify", _write(tmp_path, cert))
    assert r.code == 1, r
    assert "refutation WITHDRAWN" in r.out
    assert "fit_tol 1e+06 in the file is looser than the tool's 1e-20" in r.out, r
    # among the solver options, fit_tol is not an option at all: ignored, said, and the rules' holds
    cert["solver"]["options"]["fit_tol"] = 1e6
    cert["solver"]["tightened"] = {**cert["solver"]["tightened"], "fit_tol": 1e6}
    r = cli("verify", _write(tmp_path, cert))
    assert r.code == 1 and "refutation WITHDRAWN" in r.out, r
    assert "solver.options.fit_tol is not a solver option" in r.out, r


def test_stored_values_that_disagree_are_reported(theorem3_cert, tmp_path, cli):
    cert = _copy(theorem3_cert)
    cert["a"]["R"] = 123.0
    cert["gap"] = 99.0
    cert["margin"] = 1e-30
    r = cli("verify", _write(tmp_path, cert))
    assert r.code == 0, r  # the refutation itself still holds: the recomputed values decide
    line = next(l for l in r.out.splitlines() if "disagree" in l)
    assert "R(theta_a) stored 123" in line and "gap stored 99" in line and "margin stored 1e-30" in line


def test_edited_theta_is_reported_and_judged_on_the_re_solve(theorem3_cert, tmp_path, cli):
    cert = _copy(theorem3_cert)
    cert["b"]["theta"] = [x + 1.0 for x in cert["b"]["theta"]]
    r = cli("verify", _write(tmp_path, cert))
    assert "stored values disagree" in r.out, r
    assert r.code in (0, 1)


def test_file_shapes_follow_the_registered_kind_for_invariants(tmp_path, cli):
    """An invariant certificate with a side b added is bad input (one run per claim)."""
    plugin = tmp_path / "sqnorm.py"
    plugin.write_text(
        "import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n"
        "    return [ibtest.Hypothesis(name='sq_conserved', fn=lambda theta, ctx: (theta * theta).sum(-1),\n"
        "                              kind='invariant', doc='|theta|^2')]\n")
    study = {"study": "inv", "seed": 0, "model": {"name": "relu_neuron"},
             "init": {"name": "gaussian", "scale": 0.5, "count": 2},
             "datasets": [{"name": "vardi_shamir_theorem3", "gamma": [0, 5]}],
             "solver": {"name": "exact"}, "hypotheses": [{"name": "sq_conserved", "expect": "falsified"}]}
    res = run_study(study, plugins=[str(plugin)], out_dir=tmp_path / "run")
    cert = json.loads(Path(res.certificates[0]).read_text())
    r = cli("verify", _write(tmp_path, cert), "--plugin", plugin)
    assert r.code == 0, r
    cert["b"] = cert["a"]
    r = cli("verify", _write(tmp_path, cert), "--plugin", plugin)
    _one_line_error(r)
    assert "invariant" in r.err


# ------------------------------------------------------------------------------------------
# bad files: one line, exit 2
# ------------------------------------------------------------------------------------------
def _mutations(cert: dict) -> dict[str, object]:
    def edit(fn):
        c = _copy(cert)
        fn(c)
        return c

    return {
        "nan_in_X": edit(lambda c: c["a"]["X"][0].__setitem__(0, "nan")),
        "inf_in_y": edit(lambda c: c["b"]["y"].__setitem__(0, "inf")),
        "json_NaN_literal_in_theta": "NaN",  # written below as a raw JSON literal
        "ragged_X": edit(lambda c: c["a"]["X"][1].append(1.0)),
        "y_length": edit(lambda c: c["a"]["y"].append(1.0)),
        "theta_length": edit(lambda c: c["b"]["theta"].append(1.0)),
        "missing_model": edit(lambda c: c.pop("model")),
        "missing_X": edit(lambda c: c["a"].pop("X")),
        "X_is_a_string": edit(lambda c: c["a"].__setitem__("X", "1,2,3")),
        "name_is_a_number": edit(lambda c: c["hypothesis"].__setitem__("name", 3)),
        "bool_in_X": edit(lambda c: c["a"]["X"][0].__setitem__(0, True)),
        "another_models_options": edit(lambda c: c["model"].__setitem__("options", {"width": 4})),
        "option_of_wrong_type": edit(lambda c: c["model"]["options"].__setitem__("relu_grad_at_zero", "one")),
        "unknown_solver_option": edit(lambda c: c["solver"]["tightened"].__setitem__("warp", 9)),
        "unknown_param": edit(lambda c: c["hypothesis"]["params"].__setitem__("p", 2)),
        "empty_dataset": edit(lambda c: (c["a"].__setitem__("X", []), c["a"].__setitem__("y", []))),
        "huge_int": edit(lambda c: c["a"]["X"][0].__setitem__(0, 10**400)),
        "top_level_list": [cert],
        "wrong_format": edit(lambda c: c.__setitem__("format", "ibtest-certificate/99")),
        "deep_nesting": None,  # raw text below
        "deep_options": None,
    }


REGISTRY_CHECKS = {"another_models_options", "option_of_wrong_type", "unknown_solver_option",
                   "unknown_param"}


def test_bad_files_exit_2_with_one_line(theorem3_cert, tmp_path, cli):
    for name, cert in _mutations(theorem3_cert).items():
        p = tmp_path / f"{name}.json"
        if name == "json_NaN_literal_in_theta":
            good = _copy(theorem3_cert)
            good["a"]["theta"][0] = 12345.678
            p.write_text(json.dumps(good).replace("12345.678", "NaN"))
        elif name == "deep_nesting":
            p.write_text("[" * 100_000 + "0" + "]" * 100_000)
        elif name == "deep_options":
            p.write_text(_deep_options_text(theorem3_cert))
        else:
            p.write_text(json.dumps(cert))
        r = cli("verify", p)
        assert r.code == 2, (name, r)
        _one_line_error(r)
        r = cli("show", p)  # show needs no registry: options it cannot judge are printed as stored
        if name in REGISTRY_CHECKS:
            assert r.code == 0, (name, r)
        else:
            _one_line_error(r)


def _deep_options_text(cert: dict) -> str:
    c = _copy(cert)
    c["model"]["options"]["relu_grad_at_zero"] = 12345.678
    return json.dumps(c).replace("12345.678", "[" * 5000 + "1" + "]" * 5000)


def test_binary_and_huge_files_exit_2(tmp_path, cli, monkeypatch, theorem3_cert):
    p = tmp_path / "bin.json"
    p.write_bytes(b"\xff\xfe\x00{\x80\x81" * 50)
    for cmd in ("verify", "show"):
        _one_line_error(cli(cmd, p))
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps(theorem3_cert).replace("t3", "caf\u00e9").encode("latin-1"))
    _one_line_error(cli("verify", latin))
    monkeypatch.setattr(certschema, "MAX_BYTES", 1000)
    r = cli("verify", _write(tmp_path, theorem3_cert))
    _one_line_error(r)
    assert "bytes" in r.err
    monkeypatch.setattr(certschema, "MAX_BYTES", 10**8)
    big = _copy(theorem3_cert)
    for side in ("a", "b"):
        big[side]["X"] = [[1.0] * 2000 for _ in big[side]["X"]]  # d = 2000: hours in the exact solver
    r = cli("verify", _write(tmp_path, big, "wide.json"))
    _one_line_error(r)
    assert "dimension" in r.err
    _one_line_error(cli("verify", tmp_path))  # a directory
    _one_line_error(cli("verify", tmp_path / "absent.json"))


def test_a_hypothesis_returning_nan_is_withdrawn_not_confirmed(theorem3_cert, tmp_path, cli):
    plugin = tmp_path / "nan_hyp.py"
    plugin.write_text(
        "import ibtest, torch\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n"
        "    return [ibtest.Hypothesis(name='nan_norm', fn=lambda theta, ctx: theta.norm(dim=-1) * float('nan'),\n"
        "                              doc='NaN everywhere')]\n")
    cert = _copy(theorem3_cert)
    cert["hypothesis"]["name"] = "nan_norm"
    r = cli("verify", _write(tmp_path, cert), "--plugin", plugin)
    assert r.code == 1, r
    assert "not finite" in r.out and "refutation WITHDRAWN" in r.out, r


def test_solver_budgets_from_the_file_are_capped(theorem3_cert, tmp_path, cli):
    cert = _copy(theorem3_cert)
    cert["solver"]["tightened"]["max_pieces"] = 10**9
    r = cli("verify", _write(tmp_path, cert))
    assert r.code == 0, r
    assert "solver max_pieces 1e+09 in the file is beyond 10x the default" in r.out, r
