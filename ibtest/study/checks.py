"""Checks on what plugins hand to the engine.

A dataset or init plugin that raises, calls ``sys.exit``, runs past its deadline, or returns
something the engine cannot use (a wrong type, a wrong shape, no points, ragged or non-finite
numbers), ends the run with a :class:`~ibtest.base.errors.PluginError` naming the plugin and the
study field that uses it, before anything is solved: a one-line message and exit code 2, never a
traceback from deep inside the engine. A solver's result is checked by :func:`check_solve_result`
(:func:`call_solver` calls and checks in one step): the engine marks a chunk whose solver failed
``failed`` and goes on.

* a dataset: a :class:`~ibtest.plugin.specs.DataBatch` with real tensors X [k, n, d], y [k, n] and
  mask [k, n], k, n, d ≥ 1, every number finite, mask entries 0 or 1 with at least one real
  point per dataset, and ``labels`` a list (or tuple) of strings;
* an init: θ0 with ``count · P`` finite real numbers (any shape holding them, as before);
* a solver: a :class:`~ibtest.plugin.specs.SolveResult` with θ [B, P] (B, P as given), status [B]
  of known integer codes, loss [B], real numbers, θ and loss finite where it says converged;
  ``info`` entries that are not [B] real tensors are dropped (they are diagnostics).
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.base.errors import PluginError
from ibtest.base.guard import describe, plugin_call
from ibtest.plugin.specs import DataBatch, SolveResult
from ibtest.study.yamlpos import format_path

Tensor = torch.Tensor


def who(use: Any) -> str:
    """``dataset 'gaussian' (datasets[1])``: the plugin and the study field that uses it."""
    kind = {"datasets": "dataset", "inits": "init", "models": "model"}.get(use.kind, use.kind)
    return f"{kind} {use.name!r} ({format_path(use.path)})"


def call_plugin(use: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` under the deadline (:func:`ibtest.base.guard.plugin_call`); any
    exception, ``sys.exit``, the plugin's own KeyboardInterrupt or the deadline becomes a
    PluginError naming ``use``."""
    return call_named(who(use), fn, *args, **kwargs)


def call_named(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """:func:`call_plugin` for a plugin named in words (``"model 'relu_neuron'"``)."""
    try:
        return plugin_call(fn, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the plugin's failure, named
        raise PluginError(f"{name} {describe(exc)}") from None


def _real(t: Any, what: str, name: str) -> Tensor:
    if not isinstance(t, torch.Tensor):
        raise PluginError(f"{name} returned {what} of type {type(t).__name__}, expected a torch.Tensor")
    if t.is_complex() or t.dtype == torch.bool:
        raise PluginError(f"{name} returned {what} of dtype {t.dtype}, expected real numbers")
    return t.to(torch.float64)


def _finite(t: Tensor, what: str, name: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise PluginError(f"{name} returned {what} with {int(bad.sum())} non-finite entries "
                          f"(first: {what}{list(idx)} = {t[idx].item()})")


def check_data(batch: Any, use: Any) -> DataBatch:
    """The validated float64 batch a dataset plugin returned (see the module doc)."""
    name = who(use)
    if not isinstance(batch, DataBatch):
        raise PluginError(f"{name} returned {type(batch).__name__}, expected ibtest.DataBatch(X, y, labels)")
    X = _real(batch.X, "X", name)
    y = _real(batch.y, "y", name)
    mask = _real(batch.mask, "mask", name)
    if X.dim() != 3:
        raise PluginError(f"{name} returned X of shape {list(X.shape)}, expected [k, n, d] (3 dimensions)")
    k, n, d = X.shape
    if k < 1 or n < 1 or d < 1:
        raise PluginError(f"{name} returned X of shape {list(X.shape)}: no "
                          f"{'datasets' if k < 1 else 'points' if n < 1 else 'input dimensions'} "
                          "(k, n and d must be at least 1)")
    for what, t in (("y", y), ("mask", mask)):
        if list(t.shape) != [k, n]:
            raise PluginError(f"{name} returned {what} of shape {list(t.shape)}, expected [k, n] = [{k}, {n}] "
                              f"to match X of shape {list(X.shape)}")
    for what, t in (("X", X), ("y", y), ("mask", mask)):
        _finite(t, what, name)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise PluginError(f"{name} returned a mask with entries other than 0 and 1")
    if not bool((mask.sum(-1) > 0).all()):
        raise PluginError(f"{name} returned a dataset whose mask has no real point")
    labels = batch.labels
    if not isinstance(labels, (list, tuple)) or not all(isinstance(s, str) for s in labels):
        raise PluginError(f"{name} returned labels of type {type(labels).__name__}, expected a list of strings")
    return DataBatch(X, y, list(labels), mask)


def check_theta0(theta0: Any, use: Any, count: int, P: int) -> Tensor:
    """θ0 [count, P] float64 from what an init plugin returned (see the module doc)."""
    name = who(use)
    if not isinstance(theta0, torch.Tensor):
        try:
            theta0 = torch.as_tensor(theta0, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise PluginError(f"{name} returned {type(theta0).__name__} that is not an array of numbers "
                              f"({exc}); expected a tensor [count, P] = [{count}, {P}]") from None
    th = _real(theta0, "theta0", name)
    if th.numel() != count * P:
        raise PluginError(f"{name} returned theta0 of shape {list(th.shape)}, expected [count, P] = [{count}, {P}]")
    th = th.reshape(count, P)
    _finite(th, "theta0", name)
    return th


def check_n_params(P: Any, model_name: str, d: int) -> int:
    """The model's P for inputs of dimension d, which must be a positive integer."""
    try:
        value = operator.index(P) if not isinstance(P, bool) else None
    except TypeError:
        value = None
    if value is None or value < 1:
        raise PluginError(f"model {model_name!r}: n_params({d}) returned {P!r}, expected a positive integer")
    return int(value)


def call_solver(spec: Any, model: Any, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor,
                options: dict[str, Any]) -> SolveResult:
    """``spec.solve(model, X, y, mask, theta0, **options)`` guarded and checked
    (:func:`check_solve_result`); every failure is a PluginError naming the solver."""
    name = f"solver {spec.name!r}"
    res = call_named(name, spec.solve, model, X, y, mask, theta0, **options)
    return check_solve_result(res, theta0, name)


def check_solve_result(res: Any, theta0: Tensor, name: str) -> SolveResult:
    """What a solver returned for θ0 [B, P], as a SolveResult the engine can use (module doc)."""
    B, P = theta0.shape
    if not isinstance(res, SolveResult):
        raise PluginError(f"{name} returned {type(res).__name__}, expected ibtest.SolveResult(theta, status, loss)")
    theta = _real(res.theta, "theta", name)
    loss = _real(res.loss, "loss", name)
    if list(theta.shape) != [B, P]:
        raise PluginError(f"{name} returned theta of shape {list(theta.shape)}, expected [B, P] = [{B}, {P}]")
    if list(loss.shape) != [B]:
        raise PluginError(f"{name} returned loss of shape {list(loss.shape)}, expected [B] = [{B}]")
    status = res.status
    if not isinstance(status, torch.Tensor) or status.is_complex() or list(status.shape) != [B]:
        shape = list(status.shape) if isinstance(status, torch.Tensor) else type(status).__name__
        raise PluginError(f"{name} returned status {shape}, expected an integer tensor [B] = [{B}]")
    if status.is_floating_point():
        if not bool(torch.isfinite(status).all()) or not bool((status == status.round()).all()):
            raise PluginError(f"{name} returned status codes that are not integers")
    status = status.to(torch.int64)
    known = torch.tensor(sorted(st.NAMES))
    if not bool(torch.isin(status, known).all()):
        bad = status[~torch.isin(status, known)][0].item()
        raise PluginError(f"{name} returned status code {bad}, not one of {sorted(st.NAMES)} (ibtest.base.status)")
    conv = status == st.CONVERGED
    finite = torch.isfinite(theta).all(-1) & torch.isfinite(loss)
    if bool((conv & ~finite).any()):
        i = int((conv & ~finite).nonzero()[0])
        raise PluginError(f"{name} returned status converged for instance {i} with a non-finite theta or loss")
    info = res.info if isinstance(res.info, dict) else {}
    kept = {str(k): v for k, v in info.items() if isinstance(v, torch.Tensor) and not v.is_complex()
            and list(v.shape) == [B]}
    return SolveResult(theta, status, loss, kept)
