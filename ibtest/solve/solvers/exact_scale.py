"""Around the exact solver's piece loop: exact rescaling of an instance and splitting a batch.

:func:`normalize` maps (X, y, w0) to unit scale by powers of two (exact in float64; the neuron
is 1-homogeneous, so the flow maps to the flow) and :func:`denormalize` maps the result back;
:func:`workers_for` and :func:`concat_results` split a batch over threads and join the parts.
"""
from __future__ import annotations

import os

import torch

from ibtest.plugin.specs import SolveResult
from ibtest.solve.solvers.exact_tol import F64, Tensor

MAX_WORKERS = 4
MIN_SHARE = 2048


def workers_for(workers: int, B: int) -> int:
    if workers > 0:
        return max(1, min(int(workers), B))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS, B // MIN_SHARE))


def pow2(v: Tensor) -> Tensor:
    """The power of two nearest to v (1 where v is 0 or not finite): scaling by it is exact."""
    ok = torch.isfinite(v) & (v > 0)
    return torch.where(ok, torch.exp2(torch.round(torch.log2(torch.where(ok, v, torch.ones_like(v))))),
                       torch.ones_like(v))


def normalize(X: Tensor, y: Tensor, mask: Tensor | None, w0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The same flows on data of unit scale: X' = X/c, y' = y/(c·a), w0' = w0/a with c ≈ max‖x_i‖ and
    a ≈ max(|y'|∞, |w0|∞), powers of two, per instance.

    A single piecewise-linear neuron is 1-homogeneous, so GF on (X', y', w0') is GF on (X, y, w0)
    with θ = a·θ' and time t = t'/c² (L = (c·a)²·L'). Powers of two make the scaling exact in
    float64, so a study scaled by any factor solves bit for bit like the unscaled one, and the
    solver's internal tolerances (powers of A, the 1e-300 guards) never meet under- or overflow.
    """
    X, y, w0 = (torch.as_tensor(v, dtype=F64) for v in (X, y, w0))
    m = torch.ones_like(y) if mask is None else (torch.as_tensor(mask) != 0).to(F64)
    cx = pow2((X * m.unsqueeze(-1)).norm(dim=-1).amax(-1))
    ys = y / cx.unsqueeze(-1)
    a = pow2(torch.maximum((ys * m).abs().amax(-1), w0.abs().amax(-1)))
    return X / cx.view(-1, 1, 1), ys / a.unsqueeze(-1), w0 / a.unsqueeze(-1), cx, a


def denormalize(res: SolveResult, cx: Tensor, a: Tensor) -> SolveResult:
    """Undo :func:`normalize` on a result: θ = a·θ', L = (c·a)²·L', t = t'/c²."""
    info = dict(res.info)
    if "t" in info:
        info["t"] = info["t"] / (cx * cx)
    return SolveResult(res.theta * a.unsqueeze(-1), res.status, res.loss * (cx * a) ** 2, info)


def concat_results(parts: list[SolveResult]) -> SolveResult:
    keys = set().union(*[set(p.info) for p in parts])
    info = {key: torch.cat([p.info[key] for p in parts]) for key in keys
            if all(key in p.info and isinstance(p.info[key], Tensor) for p in parts)}
    return SolveResult(torch.cat([p.theta for p in parts]), torch.cat([p.status for p in parts]),
                       torch.cat([p.loss for p in parts]), info)

