"""Running a hypothesis, a model or a dataset plugin on a small study inside a test (``write=False``)."""
from __future__ import annotations

import copy
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ibtest.testing.studies import builtin_study, local_files, plugin_path, registered_names


def _run(data: dict[str, Any], plugins: Sequence[str]):
    from ibtest.api import run_study

    res = run_study(data, plugins=list(plugins), write=False)
    return res


def _merge(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for k, v in overrides.items():
        data[k] = copy.deepcopy(v)
    return data


def run_hypothesis(plugin: str | Path | types.ModuleType | None = None, study: str | Path | dict = "theorem3", *,
                   names: Iterable[str] | None = None, params: dict[str, Any] | None = None,
                   expect: str | None = None, plugins: Iterable[str | Path] = (), **overrides: Any):
    """Run a small study with your hypotheses plugged in; return its :class:`~ibtest.api.StudyResult`.

    ``plugin``: your plugin file (path or imported module), or None to test hypotheses already
    registered (then give ``names``). ``study``: "theorem3", "linear", "leaky", a YAML path or a
    dict (its own hypotheses are replaced). ``names``: the hypotheses to test (default: every
    hypothesis ``plugin`` registers). ``params``: parameter values (scalars or lists, a list
    makes a family) given to every tested hypothesis. ``expect``: an expected verdict written into
    the study (the result's ``expectations_held`` then tells). ``plugins``: more plugin files the
    study needs. ``overrides``: top-level study keys replaced, e.g. ``seed=3``,
    ``solver={"name": "exact", "fit_tol": 1e-18}``, ``datasets=[...]``.
    Nothing is written to disk.
    """
    files = local_files(([plugin] if plugin is not None else []) + list(plugins))
    if plugin is not None:
        f = plugin_path(plugin)
        if names is None:
            names = registered_names(f, "hypotheses")
            if not names:
                raise ValueError(f"plugin {f} registers no hypothesis (is ibtest_hypotheses decorated with @ibtest.hookimpl?)")
    if not names:
        raise ValueError("run_hypothesis: give a plugin file or the names of registered hypotheses")
    data = _merge(builtin_study(study), overrides)
    entries = []
    for n in names:
        e: dict[str, Any] = {"name": n}
        if params:
            e["params"] = dict(params)
        if expect:
            e["expect"] = expect
        entries.append(e)
    data["hypotheses"] = entries
    return _run(data, files)


def run_model(plugin: str | Path | types.ModuleType | None, name: str, options: dict[str, Any] | None = None, *,
              hypotheses: Sequence[str | dict] = ("l2_norm",), d: int = 3, n: int = 2,
              count: int = 2, inits: int = 2, init_scale: float = 0.5, labels: str = "teacher_relu",
              solver: dict[str, Any] | None = None, constructions: Sequence[str | dict] = (),
              plugins: Iterable[str | Path] = (), **overrides: Any):
    """Run a small study on your model and return its StudyResult.

    Gaussian data (``count`` datasets of n points in R^d, labels from a ``labels`` teacher),
    ``inits`` Gaussian θ0 per dataset (scale ``init_scale``), the given hypotheses. Pairs come
    from the study's own triples (two inits on one dataset) and from ``constructions`` (none by
    default: each construction means more solving). Solver default: ``adaptive`` with
    fit_tol 1e-16 (works for any model with a gradient; ``{"name": "exact"}`` for piecewise-linear
    neurons).
    """
    files = local_files(([plugin] if plugin is not None else []) + list(plugins))
    data = {
        "study": f"ibtest-testing-model-{name}",
        "seed": 0,
        "model": {"name": name, **(options or {})},
        "init": {"name": "gaussian", "scale": init_scale, "count": inits},
        "datasets": [{"name": "gaussian", "n": n, "d": d, "count": count, "labels": labels}],
        "solver": solver or {"name": "adaptive", "fit_tol": 1e-16},
        "constructions": list(constructions),
        "hypotheses": [h if isinstance(h, dict) else {"name": h} for h in hypotheses],
        "report": {"triples": False},
    }
    return _run(_merge(data, overrides), files)


def run_dataset(plugin: str | Path | types.ModuleType | None, name: str, options: dict[str, Any] | None = None, *,
                model: str | dict[str, Any] = "relu_neuron", hypotheses: Sequence[str | dict] = ("l2_norm",),
                init: dict[str, Any] | None = None, solver: dict[str, Any] | None = None,
                constructions: Sequence[str | dict] = ("blocking_point", "consistent_augmentation"),
                plugins: Iterable[str | Path] = (), **overrides: Any):
    """Run a small study on your dataset family: ``model`` (default the ReLU neuron, σ'(0) = 1,
    from θ0 = 0, exact solver), the given constructions and hypotheses. Returns the StudyResult."""
    files = local_files(([plugin] if plugin is not None else []) + list(plugins))
    data = {
        "study": f"ibtest-testing-dataset-{name}",
        "seed": 0,
        "model": {"name": model} if isinstance(model, str) else dict(model),
        "init": init or {"name": "zeros"},
        "datasets": [{"name": name, **(options or {})}],
        "solver": solver or {"name": "exact", "fit_tol": 1e-20},
        "constructions": list(constructions),
        "hypotheses": [h if isinstance(h, dict) else {"name": h} for h in hypotheses],
        "report": {"triples": False},
    }
    return _run(_merge(data, overrides), files)
