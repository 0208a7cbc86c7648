"""Calling a hypothesis: the one place that builds its context, evaluates R and ∇R, sets the
margin and says which pairs may be compared.

Verdicts, certificates and ``verify``, plots and :mod:`ibtest.testing` all go through here, so a
hypothesis sees the same thing wherever it is evaluated.

Context (what ``fn(theta, ctx, **params)`` may read), by the declared ``depends_on``:

* always ``ctx.model`` and ``ctx.study`` (study-level values such as the seed);
* ``"init"`` and ``"data"``: ``ctx.init`` = raw θ0 [B, P] and ``ctx.init_predictor`` = the
  model's predictor at θ0 (also for ``on="predictor"`` hypotheses: ``init`` is always raw θ0);
* ``"data"`` only: ``ctx.X`` [B, n, d], ``ctx.y`` [B, n], ``ctx.mask`` [B, n].

Margin. Two values R_a, R_b (or C(θ∞), C(θ0) of an invariant, or B(θ∞) and a bound) differ
beyond doubt when their gap exceeds

    margin = floor + safety · (‖∇R(θa)‖·err_a + ‖∇R(θb)‖·err_b)
    floor  = max(atol, rtol · max(|R_a|, |R_b|), ROUNDING · (‖∇R(θa)‖·‖θa‖ + ‖∇R(θb)‖·‖θb‖))

with err the *measured* solver error of each side (‖θ∞ − θ∞'‖, θ∞' re-solved at tighter
settings). Every term scales with the problem: rtol·|R| with R, the rounding term with
‖∇R‖·‖θ‖ (≈ the size of the terms R sums, so it stays meaningful where R itself is ≈ 0), the
error term with R's sensitivity to θ. ``atol`` is an optional absolute floor, 0 unless a
hypothesis or a study sets it; with atol = 0 the same study scaled by any factor gets the same
verdicts. A value that is not finite (NaN, ±inf in R, ∇R or the margin) is an error, never a
survival: :func:`evaluate` raises :class:`NonFiniteValue`.

Pair validity (which admissible pairs may refute a regularizer), by ``depends_on``:
``params`` every admissible pair; ``init`` only pairs whose two sides share θ0; ``data`` none.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, overload

import torch

from ibtest.base.guard import plugin_call
from ibtest.plugin.specs import Hypothesis, HypothesisContext, ModelBase

Tensor = torch.Tensor

#: multiple of float64 round-off in the rounding term of the floor
ROUNDING = 64 * torch.finfo(torch.float64).eps


class NonFiniteValue(ValueError):
    """A hypothesis returned NaN or ±inf (or its gradient or margin is not finite)."""


class PluginExit(RuntimeError):
    """A plugin called ``sys.exit`` (SystemExit is not an Exception: caught here, reported in its row)."""


def context(model: ModelBase, spec: Hypothesis, *, theta0: Tensor | None = None, X: Tensor | None = None,
            y: Tensor | None = None, mask: Tensor | None = None,
            study: Mapping[str, Any] | None = None) -> HypothesisContext:
    """What ``spec`` may see for a batch: θ0 [B, P] for "init"/"data", the data for "data"."""
    c = HypothesisContext(model=model, study=dict(study or {}))
    if spec.depends_on in ("init", "data"):
        if theta0 is None:
            raise ValueError(f"hypothesis {spec.name!r} depends on the init, but no θ0 was given")
        c.init = theta0
        c.init_predictor = model.predictor(theta0)
    if spec.depends_on == "data":
        if X is None or y is None:
            raise ValueError(f"hypothesis {spec.name!r} depends on the data, but no dataset was given")
        c.X, c.y = X, y
        c.mask = torch.ones_like(y) if mask is None else mask
    return c


@overload
def evaluate(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta: Tensor,
             hctx: HypothesisContext, grad: Literal[True] = ...) -> tuple[Tensor, Tensor]: ...
@overload
def evaluate(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta: Tensor,
             hctx: HypothesisContext, grad: Literal[False]) -> tuple[Tensor, None]: ...
@overload
def evaluate(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta: Tensor,
             hctx: HypothesisContext, grad: bool) -> tuple[Tensor, Tensor | None]: ...
def evaluate(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta: Tensor,
             hctx: HypothesisContext, grad: bool = True) -> tuple[Tensor, Tensor | None]:
    """R [B] (an invariant's C may be [B, k]) at θ [B, P], and with ``grad`` ‖∇_θ R‖ [B] (the
    norms of the components' gradients summed; None without ``grad``).

    ``on="predictor"`` hypotheses see ``model.predictor(θ)``; the gradient is still taken in θ.
    Raises TypeError for a wrong return type or shape, :class:`NonFiniteValue` if R or ∇R is
    NaN or ±inf on any row.
    """
    B = theta.shape[0]
    with torch.enable_grad() if grad else torch.no_grad():
        th = theta.detach().clone().requires_grad_(grad)
        x = model.predictor(th) if spec.on == "predictor" else th
        # a plugin must not end the run (sys.exit, its own KeyboardInterrupt) or hang it (the deadline):
        # PluginFailure, an ordinary exception, gives its member an error row
        R = plugin_call(spec.fn, x, hctx, **params)
        if not isinstance(R, torch.Tensor):
            raise TypeError(f"returned {type(R).__name__}, expected a tensor of shape [{B}]")
        if R.dim() == 0 or R.shape[0] != B or (spec.kind == "regularizer" and R.dim() != 1):
            raise TypeError(f"returned shape {tuple(R.shape)}, expected [{B}]"
                            + ("" if spec.kind == "regularizer" else f" or [{B}, k]"))
        _check_finite(R.detach(), "R")
        if not grad:
            return R.detach().to(torch.float64), None
        R2 = R.reshape(B, -1)
        gnorm = torch.zeros(B, dtype=torch.float64)
        for k in range(R2.shape[1]):  # components of an invariant (k is small)
            if not R2.requires_grad:
                break
            (g,) = torch.autograd.grad(R2[:, k].sum(), th, retain_graph=True, allow_unused=True)
            if g is not None:
                gnorm = gnorm + g.detach().to(torch.float64).norm(dim=-1)
    _check_finite(gnorm, "the gradient of R")
    return R.detach().to(torch.float64), gnorm


def _check_finite(v: Tensor, what: str) -> None:
    bad = ~torch.isfinite(v.reshape(v.shape[0], -1)).all(-1) if v.numel() else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        vals = v.reshape(v.shape[0], -1)[rows[0]]
        first = vals[~torch.isfinite(vals)][0].item()
        raise NonFiniteValue(f"{what} is not finite ({first}) on {int(bad.sum())} of {v.shape[0]} "
                             f"evaluated point(s)")


def floor(atol: float, rtol: float, Ra: Tensor, Rb: Tensor, ga: Tensor | None = None, gb: Tensor | None = None,
          tha: Tensor | None = None, thb: Tensor | None = None) -> Tensor:
    """The tolerance floor of a gap between R_a and R_b (shapes broadcast; [B] or [B, k] values are
    reduced over k): max(atol, rtol·max|R|, ROUNDING·(‖∇R_a‖‖θ_a‖ + ‖∇R_b‖‖θ_b‖))."""
    Ra2, Rb2 = _rows(Ra), _rows(Rb)
    scale = torch.maximum(Ra2.abs().amax(-1), Rb2.abs().amax(-1))
    out = torch.clamp(rtol * scale, min=float(atol))
    if ga is not None and tha is not None:
        rnd = ga * tha.norm(dim=-1)
        if gb is not None and thb is not None:
            rnd = rnd + gb * thb.norm(dim=-1)
        out = torch.maximum(out, ROUNDING * rnd)
    return out


def margin(atol: float, rtol: float, safety: float, Ra: Tensor, Rb: Tensor, ga: Tensor, gb: Tensor | None,
           tha: Tensor, thb: Tensor | None, err_a: Tensor | float, err_b: Tensor | float = 0.0) -> Tensor:
    """floor (see :func:`floor`) + safety · (‖∇R(θa)‖·err_a + ‖∇R(θb)‖·err_b).

    ``gb``/``thb`` None: one-sided (an invariant or bound, whose reference C(θ0) or bound is not
    re-solved). Raises :class:`NonFiniteValue` if the margin is not finite.
    """
    f = floor(atol, rtol, Ra, Rb, ga, gb, tha, thb)
    m = f + safety * ga * torch.as_tensor(err_a, dtype=torch.float64)
    if gb is not None:
        m = m + safety * gb * torch.as_tensor(err_b, dtype=torch.float64)
    if not bool(torch.isfinite(m).all()):
        raise NonFiniteValue(f"the margin is not finite ({m.flatten()[~torch.isfinite(m.flatten())][0].item()}): "
                             "check the tolerances (atol, rtol, safety) and the measured solver error")
    return m


def _rows(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1) if v.dim() else v.reshape(1, 1)


def eligible(depends_on: str, same_init: Tensor) -> Tensor:
    """Which admissible pairs may refute a regularizer with this dependence: bool like ``same_init``.

    ``params``: all; ``init``: those whose sides share θ0 (two inits give two different R);
    ``data``: none (R may differ across datasets; only a witness inside one Z(D) refutes it).
    """
    if depends_on == "params":
        return torch.ones_like(same_init, dtype=torch.bool)
    if depends_on == "init":
        return same_init.to(torch.bool).clone()
    return torch.zeros_like(same_init, dtype=torch.bool)


def pair_rule(depends_on: str) -> str:
    """The pair-validity rule in words (for reasons and ``verify``)."""
    return {"params": "any admissible pair", "init": "only admissible pairs that share θ0",
            "data": "no cross-dataset pair (a data-dependent R is refuted only inside one Z(D))"}[depends_on]
