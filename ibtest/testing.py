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

import copy
import types
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import yaml

from ibtest.plugin.manager import Registry, load_registry
from ibtest.study.builtin import THEOREM3, study_data

__all__ = [
    "STUDIES", "builtin_study", "plugin_path", "registered_names", "run_hypothesis", "run_model",
    "run_dataset", "check_hypothesis", "check_model", "check_dataset", "verdict_of", "assert_verdict",
    "assert_falsified", "assert_survives", "assert_inconclusive", "ibtest_registry", "ibtest_run",
]

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


def _local_files(plugins: Iterable[str | Path | types.ModuleType]) -> list[str]:
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
    reg = load_registry(_local_files([f]))
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
    files = _local_files(([plugin] if plugin is not None else []) + list(plugins))
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
    files = _local_files(([plugin] if plugin is not None else []) + list(plugins))
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
    files = _local_files(([plugin] if plugin is not None else []) + list(plugins))
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


# ------------------------------------------------------------------------------------------
# Well-formedness checks (no solving)
# ------------------------------------------------------------------------------------------
def _registry(plugin) -> Registry:
    return load_registry(_local_files([plugin] if plugin is not None else []))


def check_hypothesis(plugin: str | Path | types.ModuleType | None, name: str, params: dict[str, Any] | None = None, *,
                     model: str = "relu_neuron", d: int = 3, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """Evaluate hypothesis ``name`` on a random batch θ [B, P] of ``model`` and check the contract.

    Checks: ``fn(theta, ctx, **params)`` returns a float tensor of shape [B] (an invariant may
    return [B, k]), finite values, the same values for each row evaluated alone (no mixing across
    the batch), and a finite gradient by autograd (the margin uses ‖∇R‖). ``ctx`` is built by
    :func:`ibtest.judge.evaluation.context`, exactly as the engine builds it: ``init`` (a random raw θ0)
    for "init"/"data" hypotheses, a random dataset for "data" ones. Returns R [B].
    """
    reg = _registry(plugin)
    spec = reg.get("hypotheses", name)
    m = reg.get("models", model).factory()
    g = torch.Generator().manual_seed(seed)
    P = m.n_params(d)
    theta = torch.randn(batch, P, generator=g, dtype=torch.float64)
    theta0 = torch.randn(batch, P, generator=g, dtype=torch.float64)
    X = torch.randn(batch, 3, d, generator=g, dtype=torch.float64)
    y = torch.randn(batch, 3, generator=g, dtype=torch.float64)
    pv = {**dict(spec.params), **(params or {})}
    on_pred = spec.on == "predictor"

    def call(th, th0, Xs, ys):
        from ibtest.judge.evaluation import context

        # the context the engine builds (raw θ0 as ctx.init, also for on="predictor")
        ctx = context(m, spec, theta0=th0, X=Xs, y=ys, mask=torch.ones_like(ys))
        return spec.fn(m.predictor(th) if on_pred else th, ctx, **pv)

    R = call(theta, theta0, X, y)
    assert isinstance(R, torch.Tensor), f"{name} returned {type(R).__name__}, expected a torch.Tensor"
    if spec.kind == "regularizer":
        assert R.shape == (batch,), f"{name} returned shape {tuple(R.shape)}, expected [B] = [{batch}]"
    else:
        assert R.dim() in (1, 2) and R.shape[0] == batch, f"{name} returned shape {tuple(R.shape)}, expected [B] or [B, k]"
    assert R.is_floating_point(), f"{name} returned dtype {R.dtype}, expected a float tensor"
    assert bool(torch.isfinite(R).all()), f"{name} returned non-finite values {R.tolist()}"
    for i in range(batch):
        Ri = call(theta[i : i + 1], theta0[i : i + 1], X[i : i + 1], y[i : i + 1])
        assert torch.allclose(Ri.reshape(-1).double(), R[i].reshape(-1).double(), rtol=1e-10, atol=1e-12), (
            f"{name}: row {i} evaluated alone gives {Ri.tolist()}, in the batch {R[i].tolist()} (rows must not mix)")
    th = theta.clone().requires_grad_(True)
    Rg = call(th, theta0, X, y)
    if Rg.requires_grad:
        (gr,) = torch.autograd.grad(Rg.sum(), th, allow_unused=True)
        if gr is not None:
            assert bool(torch.isfinite(gr).all()), f"{name}: the gradient of R is not finite"
    return R.detach()


def check_model(plugin: str | Path | types.ModuleType | None, name: str, options: dict[str, Any] | None = None, *,
                d: int = 3, n: int = 4, batch: int = 3, seed: int = 0, rtol: float = 1e-5) -> Any:
    """Build model ``name`` and check the :class:`~ibtest.ModelBase` contract on random inputs.

    Checks: ``n_params(d)`` = P > 0; ``blocks(d)`` slices cover [0, P) without overlap;
    ``predict`` gives [B, n]; ``loss`` equals ½ Σ (f − y)² (masked) and is [B]; ``grad`` [B, P]
    matches central finite differences of ``loss`` (relative error ≤ ``rtol``, at a random θ
    where no pre-activation sits on a kink); ``predictor`` returns a [B, Q] tensor. Returns the
    model instance.
    """
    reg = _registry(plugin)
    m = reg.get("models", name).factory(**(options or {}))
    g = torch.Generator().manual_seed(seed)
    P = m.n_params(d)
    assert isinstance(P, int) and P > 0, f"{name}: n_params({d}) = {P!r}, expected a positive int"
    covered = torch.zeros(P, dtype=torch.int64)
    for bname, sl in m.blocks(d).items():
        covered[sl] += 1
    assert bool((covered == 1).all()), f"{name}: blocks({d}) must cover 0..{P - 1} exactly once, got {m.blocks(d)}"
    theta = torch.randn(batch, P, generator=g, dtype=torch.float64)
    X = torch.randn(batch, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(batch, n, generator=g, dtype=torch.float64)
    mask = torch.ones(batch, n, dtype=torch.float64)
    mask[0, -1] = 0.0  # padding must not count
    f = m.predict(theta, X)
    assert f.shape == (batch, n), f"{name}: predict returned shape {tuple(f.shape)}, expected [B, n] = [{batch}, {n}]"
    L = m.loss(theta, X, y, mask)
    assert L.shape == (batch,), f"{name}: loss returned shape {tuple(L.shape)}, expected [{batch}]"
    want = 0.5 * (((f - y) * mask) ** 2).sum(-1)
    assert torch.allclose(L, want, rtol=1e-10, atol=1e-12), f"{name}: loss {L.tolist()} != ½Σ mask·(f−y)² {want.tolist()}"
    G = m.grad(theta, X, y, mask)
    assert G.shape == (batch, P), f"{name}: grad returned shape {tuple(G.shape)}, expected [{batch}, {P}]"
    h = 1e-6
    fd = torch.zeros_like(theta)
    for j in range(P):
        e = torch.zeros(P, dtype=torch.float64)
        e[j] = h
        fd[:, j] = (m.loss(theta + e, X, y, mask) - m.loss(theta - e, X, y, mask)) / (2 * h)
    err = float((G - fd).norm() / max(float(fd.norm()), 1e-12))
    assert err <= rtol, f"{name}: grad differs from finite differences of loss by {err:.3g} (relative)"
    pr = m.predictor(theta)
    assert isinstance(pr, torch.Tensor) and pr.dim() == 2 and pr.shape[0] == batch, (
        f"{name}: predictor returned {getattr(pr, 'shape', pr)!r}, expected [B, Q]")
    return m


def check_dataset(plugin: str | Path | types.ModuleType | None, name: str, options: dict[str, Any] | None = None, *,
                  seed: int = 0) -> Any:
    """Generate dataset ``name`` twice from the same seed and check the :class:`~ibtest.DataBatch`.

    Checks: X [k, n, d], y [k, n], mask [k, n] float64, one label per dataset, finite values,
    mask entries in {0, 1}, and the same output for the same seed (studies must be
    reproducible). Returns the DataBatch.
    """
    reg = _registry(plugin)
    spec = reg.get("datasets", name)
    opts = {k: o.default for k, o in spec.options.items() if o.default is not None}
    opts.update(options or {})
    b1 = spec.generate(torch.Generator().manual_seed(seed), **opts)
    b2 = spec.generate(torch.Generator().manual_seed(seed), **opts)
    X, y, mask = b1.X, b1.y, b1.mask
    assert X.dim() == 3, f"{name}: X has shape {tuple(X.shape)}, expected [k, n, d]"
    k, n, _ = X.shape
    assert y.shape == (k, n), f"{name}: y has shape {tuple(y.shape)}, expected [{k}, {n}]"
    assert mask.shape == (k, n), f"{name}: mask has shape {tuple(mask.shape)}, expected [{k}, {n}]"
    for t, what in ((X, "X"), (y, "y"), (mask, "mask")):
        assert t.dtype == torch.float64, f"{name}: {what} is {t.dtype}, expected torch.float64"
        assert bool(torch.isfinite(t).all()), f"{name}: {what} has non-finite entries"
    assert bool(((mask == 0) | (mask == 1)).all()), f"{name}: mask entries must be 0 or 1"
    assert len(b1.labels) == k, f"{name}: {len(b1.labels)} labels for {k} datasets"
    assert torch.equal(b1.X, b2.X) and torch.equal(b1.y, b2.y), f"{name}: not reproducible from the same seed (use rng)"
    return b1


# ------------------------------------------------------------------------------------------
# Assertions on results
# ------------------------------------------------------------------------------------------
def _members(result, name: str) -> list:
    results = result if isinstance(result, (list, tuple)) else [result]
    out = [m for r in results for m in r.members if m.label == name or m.hypothesis == name]
    if not out:
        labels = sorted({m.label for r in results for m in r.members})
        raise AssertionError(f"no hypothesis member {name!r} in the result (members: {', '.join(labels)})")
    return out


def verdict_of(result, name: str) -> str | dict[str, str]:
    """The verdict of member ``name`` (a label such as ``lp_norm[p=1]``), or {label: verdict}
    for every member of hypothesis ``name``."""
    ms = _members(result, name)
    exact = [m for m in ms if m.label == name]
    if len(exact) == 1:
        return exact[0].verdict
    return {m.label: m.verdict for m in ms}


def _explain(result) -> str:
    results = result if isinstance(result, (list, tuple)) else [result]
    return "\n\n".join(r.table() + "\n" + r.summary() for r in results)


def assert_verdict(result, name: str, verdict: str) -> None:
    """Every member of hypothesis ``name`` (or the member with that label) got ``verdict``.

    On failure the message holds each member's verdict and reason and the run's table."""
    bad = [m for m in _members(result, name) if m.verdict != verdict]
    if bad:
        lines = [f"expected {name} to be {verdict}:"]
        lines += [f"  {m.label}: {m.verdict} ({m.reason}{'; ' + m.error if m.error else ''})" for m in bad]
        raise AssertionError("\n".join(lines) + "\n\n" + _explain(result))


def assert_falsified(result, name: str) -> None:
    """Every member of ``name`` was falsified (a certified witness)."""
    assert_verdict(result, name, "falsified")


def assert_survives(result, name: str) -> None:
    """Every member of ``name`` survived every admissible pair."""
    assert_verdict(result, name, "survives")


def assert_inconclusive(result, name: str) -> None:
    """Every member of ``name`` is inconclusive (too few pairs, or a data-dependent R)."""
    assert_verdict(result, name, "inconclusive")


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - ibtest.testing is only useful under pytest
    pytest = None

if pytest is not None:

    @pytest.fixture
    def ibtest_registry() -> Registry:
        """The registry of every installed plugin (built-ins and the ``ibtest`` entry points)."""
        return load_registry()

    @pytest.fixture
    def ibtest_run():
        """:func:`run_hypothesis` as a fixture: ``ibtest_run("my_reg.py", "theorem3")``."""
        return run_hypothesis
