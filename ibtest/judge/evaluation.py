"""Calling a hypothesis: the one place that builds its context and evaluates R, ∇R and R's own
evaluation noise. The rules that judge those values (margins, pair validity, verdicts) are in
:mod:`ibtest.solve.rules`.

Verdicts, certificates and ``verify``, ``shrink``, plots and :mod:`ibtest.testing` all go through
here, so a hypothesis sees the same thing wherever it is evaluated.

Context (what ``fn(theta, ctx, **params)`` may read), by the declared ``depends_on``:

* always ``ctx.model`` and ``ctx.study`` (study-level values such as the seed);
* ``"init"`` and ``"data"``: ``ctx.init`` = raw θ0 [B, P] and ``ctx.init_predictor`` = the
  model's predictor at θ0 (also for ``on="predictor"`` hypotheses: ``init`` is always raw θ0);
* ``"data"`` only: ``ctx.X`` [B, n, d], ``ctx.y`` [B, n], ``ctx.mask`` [B, n].

The tensors are the hypothesis's own copies, and a hypothesis that writes into them (or into θ)
is an error (:class:`InputWritten`): one member can never change what another member sees.

A constant R (no dependence on θ, e.g. ``torch.zeros``) is legal: its gradient is 0. A value
that is not finite (NaN, ±inf in R or ∇R) is an error, never a survival: :func:`evaluate` raises
:class:`NonFiniteValue`.

**Evaluation noise.** A gap between two values of R is evidence only beyond the float64 error of
R itself at the points compared (cancellation in a user's R, e.g. 2 − √(4 + z²) at z ≈ 1e-4,
loses 8 digits that no tolerance on θ can see). Two measures, both used:

* :func:`noise`: R re-evaluated at θ moved by a few ulps per coordinate (a fixed pattern, so a
  row's noise never depends on its batch), NOISE_FACTOR × the largest change: the jitter of a
  value under rounding of its input;
* :func:`path_noise`: the gap R(θa) − R(θb) computed a second, independent way, as the integral of
  the directional derivative ∇R·(θa − θb) along the segment (composite Gauss–Legendre, from
  autograd: derivatives of a cancelling formula rarely cancel), on 2 and on 4 panels. What the
  direct difference disagrees with the fine integral by, beyond twice the difference between the
  two quadratures (a kink of R on the segment, which quadrature does not resolve), is error of the
  direct difference: a systematic rounding offset that input perturbations cannot expose.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, overload

import numpy as np
import torch

from ibtest.base.guard import plugin_call
from ibtest.plugin.specs import Hypothesis, HypothesisContext, ModelBase
from ibtest.solve.rules import Side

Tensor = torch.Tensor

#: R's noise: re-evaluations at θ moved by up to NOISE_ULPS ulps per coordinate, NOISE_FACTOR ×
#: the largest change (NOISE_SAMPLES fixed patterns)
NOISE_SAMPLES, NOISE_ULPS, NOISE_FACTOR = 4, 4, 4.0
#: the path integral of a gap: Gauss–Legendre nodes per panel, and the coarse and fine panel counts
GL_NODES, PANELS_COARSE, PANELS_FINE = 12, 2, 4
_CTX_TENSORS = ("init", "init_predictor", "X", "y", "mask")


class NonFiniteValue(ValueError):
    """A hypothesis returned NaN or ±inf (or its gradient or margin is not finite)."""


class InputWritten(RuntimeError):
    """A hypothesis wrote into a tensor it was given (θ or its context)."""


def context(model: ModelBase, spec: Hypothesis, *, theta0: Tensor | None = None, X: Tensor | None = None,
            y: Tensor | None = None, mask: Tensor | None = None,
            study: Mapping[str, Any] | None = None) -> HypothesisContext:
    """What ``spec`` may see for a batch (its own copies): θ0 [B, P] for "init"/"data", the data
    for "data"."""
    c = HypothesisContext(model=model, study=dict(study or {}))
    if spec.depends_on in ("init", "data"):
        if theta0 is None:
            raise ValueError(f"hypothesis {spec.name!r} depends on the init, but no θ0 was given")
        c.init = theta0.detach().clone()
        with torch.no_grad():
            c.init_predictor = model.predictor(theta0.detach().clone())
    if spec.depends_on == "data":
        if X is None or y is None:
            raise ValueError(f"hypothesis {spec.name!r} depends on the data, but no dataset was given")
        c.X, c.y = X.detach().clone(), y.detach().clone()
        c.mask = torch.ones_like(c.y) if mask is None else mask.detach().clone()
    return c


def take(h: HypothesisContext, rows: Tensor) -> HypothesisContext:
    """The context of rows ``rows`` of a batch (copies)."""
    c = HypothesisContext(model=h.model, study=h.study)
    for k in _CTX_TENSORS:
        v = getattr(h, k)
        setattr(c, k, None if v is None else v[rows].clone())
    return c


@contextmanager
def guarded(spec: Hypothesis, hctx: HypothesisContext, *given: Tensor) -> Iterator[None]:
    """Around a call of ``spec.fn``: a write into the context's tensors or into ``given`` (θ)
    becomes :class:`InputWritten`."""
    watched = [(k, getattr(hctx, k)) for k in _CTX_TENSORS if getattr(hctx, k) is not None]
    watched += [("theta", t) for t in given]
    before = [t._version for _, t in watched]
    yield
    for (name, t), v in zip(watched, before):
        if t._version != v:
            raise InputWritten(f"wrote into {'its input theta' if name == 'theta' else 'ctx.' + name}: a hypothesis "
                               "must not modify the tensors it is given (compute on a copy)")


def call(spec: Hypothesis, params: Mapping[str, Any], x: Tensor, hctx: HypothesisContext) -> Any:
    """``spec.fn(x, hctx, **params)`` as a plugin call (:func:`ibtest.base.guard.plugin_call`: a
    plugin must not end the run with sys.exit or its own KeyboardInterrupt, nor hang it past the
    deadline; it raises an ordinary exception, its member gets an error row) under :func:`guarded`."""
    with guarded(spec, hctx, x):
        return plugin_call(spec.fn, x, hctx, **params)


def variable(model: ModelBase, spec: Hypothesis, theta: Tensor) -> Tensor:
    """What R reads: θ, or the model's predictor for ``on="predictor"``."""
    return model.predictor(theta) if spec.on == "predictor" else theta


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
    norms of the components' gradients summed; 0 for a constant R; None without ``grad``).

    ``on="predictor"`` hypotheses see ``model.predictor(θ)``; the gradient is still taken in θ.
    Raises TypeError for a wrong return type or shape, :class:`NonFiniteValue` if R or ∇R is
    NaN or ±inf on any row, :class:`InputWritten` if the hypothesis wrote into its inputs.
    """
    B = theta.shape[0]
    with torch.enable_grad() if grad else torch.no_grad():
        th = theta.detach().clone().requires_grad_(grad)
        x = variable(model, spec, th)
        R = call(spec, params, x, hctx)
        _check_shape(spec, R, B)
        _check_finite(R.detach(), "R")
        if not grad:
            return R.detach().to(torch.float64), None
        R2 = R.reshape(B, -1)
        gnorm = torch.zeros(B, dtype=torch.float64)
        for k in range(R2.shape[1]):  # components of an invariant (k is small)
            if not R2.requires_grad:  # a constant R: its gradient is 0
                break
            (g,) = torch.autograd.grad(R2[:, k].sum(), th, retain_graph=True, allow_unused=True)
            if g is not None:
                gnorm = gnorm + g.detach().to(torch.float64).norm(dim=-1)
    _check_finite(gnorm, "the gradient of R")
    return R.detach().to(torch.float64), gnorm


def _check_shape(spec: Hypothesis, R: Any, B: int) -> None:
    if not isinstance(R, torch.Tensor):
        raise TypeError(f"returned {type(R).__name__}, expected a tensor of shape [{B}]")
    if R.dim() == 0 or R.shape[0] != B or (spec.kind == "regularizer" and R.dim() != 1):
        raise TypeError(f"returned shape {tuple(R.shape)}, expected [{B}]"
                        + ("" if spec.kind == "regularizer" else f" or [{B}, k]"))


def _check_finite(v: Tensor, what: str) -> None:
    bad = ~torch.isfinite(v.reshape(v.shape[0], -1)).all(-1) if v.numel() else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        vals = v.reshape(v.shape[0], -1)[rows[0]]
        first = vals[~torch.isfinite(vals)][0].item()
        raise NonFiniteValue(f"{what} is not finite ({first}) on {int(bad.sum())} of {v.shape[0]} "
                             f"evaluated point(s)")


def _ulp_pattern(P: int, k: int) -> Tensor:
    """Sample k's perturbation, in ulps per coordinate, [P] integers in [−NOISE_ULPS, NOISE_ULPS]
    (a fixed pattern: the same for every row, so a row's noise never depends on its batch)."""
    j = torch.arange(P)
    return ((j * 7 + k * 5 + 3) % (2 * NOISE_ULPS + 1)) - NOISE_ULPS


def noise(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta: Tensor, hctx: HypothesisContext,
          R: Tensor | None = None) -> Tensor:
    """R's float64 evaluation noise at θ [B, P], [B]: NOISE_FACTOR × max over NOISE_SAMPLES
    re-evaluations at θ moved by a few ulps per coordinate of |R(θ') − R(θ)| (max over an
    invariant's components). ``R``: R(θ) if already known. Includes R's genuine change over the
    move (≤ ‖∇R‖·NOISE_ULPS·ulp(θ), far below the margin's rounding term)."""
    B, P = theta.shape
    with torch.no_grad():
        R0 = evaluate(model, spec, params, theta, hctx, grad=False)[0] if R is None else R
        R0 = R0.reshape(B, -1)
        ulp = torch.nextafter(theta.abs(), torch.full_like(theta, float("inf"))) - theta.abs()
        spread = torch.zeros(B, dtype=torch.float64)
        for k in range(NOISE_SAMPLES):
            moved = theta + _ulp_pattern(P, k).to(theta.dtype) * ulp
            Rk, _ = evaluate(model, spec, params, moved, hctx, grad=False)
            spread = torch.maximum(spread, (Rk.reshape(B, -1) - R0).abs().amax(-1))
    return NOISE_FACTOR * spread


def sides(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta: Tensor, hctx: HypothesisContext,
          err: Sequence[float]) -> list[Side]:
    """One :class:`~ibtest.solve.rules.Side` per row of θ [k, P]: R, ‖∇R‖, the given measured error
    and R's evaluation noise (everything a judgement of :mod:`ibtest.solve.rules` needs)."""
    R, G = evaluate(model, spec, params, theta, hctx, grad=True)
    nz = noise(model, spec, params, theta, hctx, R=R)
    k = theta.shape[0]
    Rr = R.reshape(k, -1)
    return [Side(theta[i].detach().clone(), Rr[i].clone(), float(G[i]), float(err[i]), float(nz[i])) for i in range(k)]


def repeat(h: HypothesisContext, n: int) -> HypothesisContext:
    """A T-row context with each row repeated n times (row t's copies at t·n … t·n + n − 1)."""
    c = HypothesisContext(model=h.model, study=h.study)
    for k in _CTX_TENSORS:
        v = getattr(h, k)
        setattr(c, k, None if v is None else v.repeat_interleave(n, dim=0))
    return c


def _quadrature(panels: int) -> tuple[Tensor, Tensor]:
    """Nodes in [0, 1] and weights of composite Gauss–Legendre with ``panels`` equal panels."""
    x, w = np.polynomial.legendre.leggauss(GL_NODES)
    nodes = np.concatenate([(p + (x + 1) / 2) / panels for p in range(panels)])
    weights = np.concatenate([w / (2 * panels)] * panels)
    return torch.tensor(nodes, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)


def path_integral(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta_a: Tensor, theta_b: Tensor,
                  hctx: HypothesisContext, panels: int) -> Tensor:
    """∫₀¹ ∇R(θb + s(θa − θb))·(θa − θb) ds per row, [T, k] (k components of an invariant), by
    composite Gauss–Legendre; θa, θb [T, P]; row t is evaluated in row t of ``hctx``."""
    s, w = _quadrature(panels)
    T, N = theta_a.shape[0], s.numel()
    d = theta_a - theta_b
    pts = (theta_b[:, None, :] + s[None, :, None] * d[:, None, :]).reshape(T * N, -1)
    h = repeat(hctx, N)
    with torch.enable_grad():
        th = pts.detach().clone().requires_grad_(True)
        R = call(spec, params, variable(model, spec, th), h)
        _check_shape(spec, R, T * N)
        R2 = R.reshape(T * N, -1)
        out = torch.zeros(T, R2.shape[1], dtype=torch.float64)
        if not R2.requires_grad:
            return out
        for k in range(R2.shape[1]):
            (g,) = torch.autograd.grad(R2[:, k].sum(), th, retain_graph=True, allow_unused=True)
            if g is not None:
                dd = (g.detach().to(torch.float64).reshape(T, N, -1) * d[:, None, :]).sum(-1)
                out[:, k] = (dd * w[None, :]).sum(-1)
    return out


def path_noise(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta_a: Tensor, theta_b: Tensor,
               hctx: HypothesisContext, direct: Tensor) -> Tensor:
    """How far the direct differences ``direct`` = R(θa) − R(θb) [T] (or [T, k]) are off the path
    integral of ∇R beyond the quadrature's own error (see the module docstring), [T]:
    NOISE_FACTOR × max over components of max(0, |direct − I_fine| − 2·|I_fine − I_coarse|).
    0 on a row whose integral is not finite (nothing to compare with)."""
    T = theta_a.shape[0]
    try:
        fine = path_integral(model, spec, params, theta_a, theta_b, hctx, PANELS_FINE)
        coarse = path_integral(model, spec, params, theta_a, theta_b, hctx, PANELS_COARSE)
    except (NonFiniteValue, RuntimeError):
        return torch.zeros(T, dtype=torch.float64)
    off = (direct.reshape(T, -1) - fine).abs() - 2 * (fine - coarse).abs()
    ok = torch.isfinite(off).all(-1)
    return torch.where(ok, NOISE_FACTOR * off.clamp_min(0).amax(-1), torch.zeros(T, dtype=torch.float64))


def compare(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta: Tensor, hctx: HypothesisContext,
            err: Sequence[float]) -> tuple[Side, Side, float]:
    """The two sides of a comparison of R at θ [2, P] (row 0 against row 1, each in its row of
    ``hctx``) and the path noise of their difference (R along the segment in row 0's context)."""
    a, b = sides(model, spec, params, theta, hctx, err)
    pn = path_noise(model, spec, params, theta[:1], theta[1:], take(hctx, torch.tensor([0])), (a.R - b.R)[None])
    return a, b, float(pn[0])


def constant_value(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], theta: Tensor,
                   hctx: HypothesisContext) -> float | None:
    """R's value if R does not depend on θ, else None: one value (and a zero gradient) at every row
    of θ [k, P] and at three random points around each (θ moved by its own size); a constant R
    (``torch.zeros``) is legal, and expresses no bias."""
    g = torch.Generator().manual_seed(0)
    scale = theta.norm(dim=-1, keepdim=True).clamp_min(1.0)
    probes = [theta] + [theta + scale * torch.randn(theta.shape, generator=g, dtype=theta.dtype) for _ in range(3)]
    values = []
    for p in probes:
        R, G = evaluate(model, spec, params, p, hctx, grad=True)
        if bool((G != 0).any()):
            return None
        values.append(R.reshape(-1))
    allv = torch.cat(values)
    return float(allv[0]) if bool((allv == allv[0]).all()) else None
