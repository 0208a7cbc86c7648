"""The plugin system: entry points, throwaway plugins, local files, and the errors for bad ones."""
from __future__ import annotations

import textwrap

import pytest
import torch
from conftest import STUDIES, verdicts

import ibtest
from ibtest.plugin.manager import Registry, get_plugin_manager, load_registry

KINDS = ("models", "datasets", "inits", "solvers", "constructions", "hypotheses")


def test_builtins_register_through_the_entry_point_group():
    reg = load_registry()
    expected = {
        "models": {"relu_neuron", "leaky_relu_neuron", "linear"},
        "datasets": {"vardi_shamir_theorem3", "gaussian"},
        "inits": {"zeros", "gaussian", "fixed"},
        "solvers": {"exact", "gd"},
        "constructions": {"blocking_point", "consistent_augmentation", "rotate"},
        "hypotheses": {"l2_norm", "lp_norm", "dist_to_init"},
    }
    for kind, names in expected.items():
        assert names <= set(reg.names(kind)), kind
    # plugins come from the ibtest_plugins / ibtest_hypotheses packages, not the core
    assert reg.items["models"]["relu_neuron"].plugin.startswith("models.")
    assert reg.items["hypotheses"]["l2_norm"].plugin.startswith("hypotheses.")


def test_throwaway_plugin_registers_and_unregisters():
    pm = get_plugin_manager()

    class Plugin:
        __name__ = "throwaway"

        @ibtest.hookimpl
        def ibtest_hypotheses(self):
            return [ibtest.Hypothesis(name="throwaway_norm", fn=lambda th, ctx: th.abs().sum(-1), doc="sum |theta_i|")]

    plugin = Plugin()
    pm.register(plugin, name="throwaway")
    try:
        reg = Registry(pm)
        spec = reg.get("hypotheses", "throwaway_norm")
        assert float(spec.fn(torch.tensor([[1.0, -2.0]]), None)[0]) == 3.0
    finally:
        pm.unregister(plugin)
    assert "throwaway_norm" not in Registry(pm).names("hypotheses")


def test_list_shows_every_kind_with_source_and_doc(cli):
    r = cli("list")
    assert r.code == 0
    for kind in KINDS:
        assert f"{kind}:" in r.out
    assert "relu_neuron" in r.out and "neurons.py" in r.out
    assert "distance to the initialization" in r.out


HYP_FILE = """
import torch
import ibtest

@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="third_coordinate", depends_on="params",
                              fn=lambda theta, ctx: theta[:, 2].abs(),
                              doc="|w_3|: not constant along the Theorem 3 pair")]
"""


def test_hypothesis_from_a_local_file_is_evaluated_without_core_changes(tmp_path, cli):
    f = tmp_path / "my_hyp.py"
    f.write_text(HYP_FILE)
    study = tmp_path / "s.yaml"
    study.write_text(textwrap.dedent("""\
        study: local
        model: {name: relu_neuron}
        datasets: [{name: vardi_shamir_theorem3, gamma: [0, 5]}]
        solver: {name: exact}
        hypotheses: [{name: third_coordinate, expect: falsified}]
        """))
    r = cli("run", study, "--plugin", f, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert verdicts(tmp_path / "run") == {"third_coordinate": "falsified"}
    assert (tmp_path / "run" / "certificates" / "third_coordinate.json").exists()
    # listed with its file as source
    r = cli("list", "--plugin", f)
    assert "third_coordinate" in r.out and "my_hyp.py" in r.out


def test_study_plugins_key_is_relative_to_the_study(tmp_path, cli):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "h.py").write_text(HYP_FILE)
    study = tmp_path / "s.yaml"
    study.write_text(textwrap.dedent("""\
        study: local
        plugins: [sub/h.py]
        model: {name: relu_neuron}
        datasets: [{name: vardi_shamir_theorem3, gamma: [0, 2]}]
        solver: {name: exact}
        hypotheses: [{name: third_coordinate, expect: falsified}]
        """))
    r = cli("run", study, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r


@pytest.mark.parametrize(
    "source, needle",
    [
        ("raise RuntimeError('boom')\n", "raised on import: RuntimeError: boom"),
        ("import ibtest\n@ibtest.hookimpl\ndef ibtest_widgets():\n    return []\n", "ibtest_widgets"),
        ("import ibtest\n@ibtest.hookimpl\ndef ibtest_models(extra):\n    return []\n", "extra"),
        ("import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n    return [ibtest.Hypothesis(name='l2_norm', fn=None)]\n",
         "duplicate hypothesis name 'l2_norm'"),
        ("import ibtest\n@ibtest.hookimpl\ndef ibtest_hypotheses():\n    return 'l2'\n", "must return a list"),
    ],
    ids=["raises-on-import", "unknown-hook", "bad-signature", "duplicate-name", "bad-return"],
)
def test_broken_plugin_is_an_error_naming_plugin_and_file(tmp_path, cli, source, needle):
    f = tmp_path / "broken_plugin.py"
    f.write_text(source)
    r = cli("run", STUDIES / "vardi_shamir_theorem3.yaml", "--plugin", f, "--out", tmp_path / "run")
    assert r.code == 2, r
    assert needle in r.err, r
    assert "broken_plugin.py" in r.err, r
    assert "Traceback" not in r.err


def test_missing_plugin_file(cli, tmp_path):
    r = cli("list", "--plugin", tmp_path / "absent.py")
    assert r.code == 2 and "absent.py: no such file" in r.err


def test_a_raising_hypothesis_is_reported_in_its_row_and_the_study_goes_on(tmp_path, cli):
    f = tmp_path / "bad_fn.py"
    f.write_text(textwrap.dedent("""
        import ibtest
        def boom(theta, ctx):
            raise ValueError("no can do")
        @ibtest.hookimpl
        def ibtest_hypotheses():
            return [ibtest.Hypothesis(name="boom", fn=boom)]
        """))
    study = tmp_path / "s.yaml"
    study.write_text(textwrap.dedent("""\
        study: goes-on
        model: {name: relu_neuron}
        datasets: [{name: vardi_shamir_theorem3, gamma: [0, 5]}]
        solver: {name: exact}
        hypotheses: [{name: boom}, {name: l2_norm, expect: falsified}]
        """))
    r = cli("run", study, "--plugin", f, "--out", tmp_path / "run", "-q", "--wide")  # the reason on one line
    assert r.code == 0, r
    v = verdicts(tmp_path / "run")
    assert v == {"boom": "error", "l2_norm": "falsified"}
    assert "no can do" in r.out
