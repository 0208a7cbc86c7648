"""The studies :func:`ibtest.testing.run_hypothesis` runs (built-in by name, a YAML path or a dict) and
the plugin files a test names (paths, modules, what they register)."""
from __future__ import annotations

import copy
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ibtest.plugin.manager import load_registry
from ibtest.study.builtin import THEOREM3, study_data


def _theorem3_small() -> dict[str, Any]:
    """The paper's Theorem 3 study (hypotheses/vardi_shamir_theorem3.yaml, the one source of it),
    made smaller for tests: γ = 0, 1, 5 instead of 0, 1, 2, 5, 20, at most 8 rotated pairs, no
    hypotheses (the caller's replace them) and no triples in the report."""
    paper = study_data(THEOREM3)
    constructions = [dict(c, max_pairs=8) if isinstance(c, dict) and c.get("name") == "rotate" else c
                     for c in paper["constructions"]]
    return {
        "study": "ibtest-testing-theorem3",
        "description": "Vardi & Shamir Theorem 3: single ReLU neuron from w(0) = 0, gamma = 0, 1, 5",
        "seed": paper["seed"],
        "model": paper["model"],
        "init": paper["init"],
        "datasets": [dict(paper["datasets"][0], gamma=[0, 1, 5])],
        "solver": paper["solver"],
        "constructions": constructions,
        "report": {"triples": False},
    }


#: The built-in studies (without hypotheses) :func:`run_hypothesis` accepts by name.
STUDIES: dict[str, dict[str, Any]] = {
    "theorem3": _theorem3_small(),
    "linear": {
        "study": "ibtest-testing-linear",
        "description": "linear model, Gaussian data n=3 < d=6, two Gaussian inits per dataset (Theorem 1)",
        "seed": 1,
        "model": {"name": "linear"},
        "init": {"name": "gaussian", "scale": 1.0, "count": 2},
        "datasets": [{"name": "gaussian", "n": 3, "d": 6, "count": 4, "labels": "teacher_linear"}],
        "solver": {"name": "exact", "fit_tol": 1e-20},
        "constructions": ["consistent_augmentation", "blocking_point"],
        "report": {"triples": False},
    },
    "leaky": {
        "study": "ibtest-testing-leaky",
        "description": "leaky ReLU neuron (slope 0.2), ReLU-teacher data, Gaussian inits (Theorem 1)",
        "seed": 2,
        "model": {"name": "leaky_relu_neuron", "slope": 0.2},
        "init": {"name": "gaussian", "scale": 0.5, "count": 2},
        "datasets": [{"name": "gaussian", "n": 3, "d": 5, "count": 4, "labels": "teacher_relu"}],
        "solver": {"name": "exact", "fit_tol": 1e-20},
        "constructions": ["consistent_augmentation", "blocking_point"],
        "report": {"triples": False},
    },
}


# ------------------------------------------------------------------------------------------
# Plugins and studies
# ------------------------------------------------------------------------------------------
def plugin_path(plugin: str | Path | types.ModuleType) -> str:
    """The absolute path of a plugin given as a ``.py`` path or an imported module."""
    if isinstance(plugin, types.ModuleType):
        f = getattr(plugin, "__file__", None)
        if not f:
            raise ValueError(f"module {plugin.__name__} has no file to load as a plugin")
        return str(Path(f).resolve())
    p = Path(plugin).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"plugin file {p}: no such file")
    return str(p.resolve())


def _installed_sources() -> set[Path]:
    """Files of the plugins registered without any local file (built-ins, entry points)."""
    reg = load_registry()
    out = set()
    for kind in reg.items.values():
        for item in kind.values():
            try:
                out.add(Path(item.source).resolve())
            except (OSError, ValueError):
                pass
    return out


def local_files(plugins: Iterable[str | Path | types.ModuleType]) -> list[str]:
    """Absolute paths of the plugin files to load with ``--plugin``; a file that is already
    installed (an entry-point module, e.g. a built-in) is skipped, it would register twice."""
    files = []
    installed: set[Path] | None = None
    for p in plugins:
        f = plugin_path(p)
        if installed is None:
            installed = _installed_sources()
        if Path(f) not in installed and f not in files:
            files.append(f)
    return files


def registered_names(plugin: str | Path | types.ModuleType, kind: str = "hypotheses") -> list[str]:
    """Names of the ``kind`` ("hypotheses", "models", "datasets", ...) a plugin file registers."""
    f = plugin_path(plugin)
    reg = load_registry(local_files([f]))
    return [n for n, item in reg.items[kind].items() if _same_file(item.source, f)]


def _same_file(source: str, f: str) -> bool:
    try:
        return Path(source).resolve() == Path(f).resolve()
    except (OSError, ValueError):
        return False


def builtin_study(study: str | Path | dict = "theorem3") -> dict[str, Any]:
    """A study as a dict: a built-in name of :data:`STUDIES`, a YAML path, or a dict (copied).

    Relative ``plugins:`` of a YAML file are made absolute (relative to the file).
    """
    if isinstance(study, dict):
        return copy.deepcopy(study)
    if isinstance(study, str) and study in STUDIES:
        return copy.deepcopy(STUDIES[study])
    p = Path(study)
    if not p.is_file():
        raise ValueError(f"study {study!r}: not a built-in study ({', '.join(STUDIES)}) and no such file")
    data = yaml.safe_load(p.read_text())
    base = p.resolve().parent
    data["plugins"] = [str((base / f).resolve()) if not Path(f).is_absolute() else f for f in data.get("plugins") or []]
    return data
