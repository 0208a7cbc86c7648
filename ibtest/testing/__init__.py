"""pytest helpers for plugin authors: test a hypothesis, model or dataset inside your own tests.

Typical use, in ``test_my_reg.py`` next to the plugin file ``my_reg.py``::

    from pathlib import Path
    from ibtest.testing import assert_falsified, assert_survives, check_hypothesis, run_hypothesis

    PLUGIN = Path(__file__).with_name("my_reg.py")

    def test_shapes():
        check_hypothesis(PLUGIN, "my_reg")

    def test_theorem3():                      # Vardi & Shamir, Theorem 3: a single ReLU neuron
        assert_falsified(run_hypothesis(PLUGIN, "theorem3"), "my_reg")

Built-in studies (small: each runs in about a second with the ``exact`` solver):

* ``"theorem3"``: single ReLU neuron (σ'(0) = 1) from w(0) = 0 on the paper's Theorem 3 data for
  γ = 0, 1, 5, with the blocking-point, consistent-augmentation and rotation constructions. Every
  ``params`` or ``init`` R that is not constant on the admissible pairs is falsified (the paper
  shows every such R is refuted, Theorem 5).
* ``"linear"``: linear model, Gaussian data with n = 3 < d = 6, two Gaussian inits per dataset.
  GF converges to the interpolator closest to θ0 (Theorem 1), so ``dist_to_init`` survives and a
  θ-only R such as ``l2_norm`` is falsified (two inits on one dataset).
* ``"leaky"``: leaky ReLU neuron (slope 0.2), ReLU-teacher data, Gaussian inits (Theorem 1 again).
* or a path to any study YAML file: its hypotheses are replaced by yours.

Runs never write to the working directory (``write=False``). Fixtures ``ibtest_registry`` and
``ibtest_run`` are defined here: ``from ibtest.testing import ibtest_registry, ibtest_run`` in a
test module or conftest.py makes them available (or list ``pytest_plugins = ["ibtest.testing"]``
in the top-level conftest.py).
"""
from __future__ import annotations

from ibtest.plugin.manager import Registry, load_registry
from ibtest.testing.checks import check_dataset, check_hypothesis, check_model
from ibtest.testing.runs import run_dataset, run_hypothesis, run_model
from ibtest.testing.studies import STUDIES, builtin_study, plugin_path, registered_names
from ibtest.testing.verdicts import (
    assert_falsified,
    assert_inconclusive,
    assert_survives,
    assert_unrefuted,
    assert_verdict,
    verdict_of,
)

__all__ = [
    "STUDIES", "builtin_study", "plugin_path", "registered_names", "run_hypothesis", "run_model",
    "run_dataset", "check_hypothesis", "check_model", "check_dataset", "verdict_of", "assert_verdict",
    "assert_falsified", "assert_survives", "assert_unrefuted", "assert_inconclusive", "ibtest_registry", "ibtest_run",
]


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - ibtest.testing is only useful under pytest
    pytest = None  # type: ignore[assignment]  # the fixtures below are skipped

if pytest is not None:

    @pytest.fixture
    def ibtest_registry() -> Registry:
        """The registry of every installed plugin (built-ins and the ``ibtest`` entry points)."""
        return load_registry()

    @pytest.fixture
    def ibtest_run():
        """:func:`run_hypothesis` as a fixture: ``ibtest_run("my_reg.py", "theorem3")``."""
        return run_hypothesis
