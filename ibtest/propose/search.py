r"""Free parameters: what R is not linear in (α of Q_α, p of ℓp), found outside the linear fit.

For values p of the free parameters the linear fit gives the least-squares member λ(p) and its
scaled residual vector r(p) (:func:`residual_vector`: the KKT rows of every triple and the pair
rows, the binding one-sided rows projected out, no cone); the search minimizes ‖r(p)‖ over p
(variable projection: λ is eliminated by the inner least-squares solve).

1. a grid of GRID values per free parameter over [low, high] (log-spaced for ``log``), every
   per-coordinate entry equal, one parameter at a time from the defaults (the objective may have
   several local minima; the grid finds the basin);
   (with strict convexity asked, the least-squares member keeps the family's constraints);
2. ``scipy.optimize.least_squares`` (trust-region reflective, bounded, in log space for ``log``) on
   r(p) from the best grid point, over every free value at once (a per-coordinate parameter has Q
   of them), to tolerances at float64 resolution: where the family holds the truth, r(p*) is at the
   level of the solver error and p* is recovered to about that precision.

scipy's bounded Brent (``minimize_scalar``) would serve a scalar, but only to √eps·|p| on a
minimum of ‖r‖²; least squares on r itself reaches eps·|p| and handles vectors.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ibtest.plugin.specs import Family, Free
from ibtest.propose import program as prog_mod

Tensor = torch.Tensor
GRID = 48


@dataclass
class SearchResult:
    """The free values found, the residual norm there, the grid scanned (per parameter) and the
    number of evaluations."""

    values: dict[str, Any]
    residual: float
    grid: dict[str, list[float]] = field(default_factory=dict)
    evaluations: int = 0


def residual_vector(pb: prog_mod.Problem) -> np.ndarray:
    """The scaled residual of the least-squares member at ``pb``: unconstrained (with cᵀλ = 1), or,
    with strict convexity asked, the member of :func:`ibtest.propose.program.least_squares` (the
    family's constraints kept: a free value where no strictly convex member exists is no candidate),
    as |ρ_t|_∞/w_t per triple and |π_p|/w_p per pair."""
    if pb.strict:
        lam = prog_mod.least_squares(pb).lam
        rho, pi, _ = prog_mod.residuals(pb, lam)
        return torch.cat([rho / pb.scale, pi / pb.pairs.w.clamp_min(1e-300)]).numpy()
    return prog_mod.unconstrained(pb)[1]


def grid_of(f: Free, n: int = GRID) -> list[float]:
    """n values over [low, high], log-spaced for ``log``."""
    if f.log:
        return np.geomspace(f.low, f.high, n).tolist()
    return np.linspace(f.low, f.high, n).tolist()


def search(family: Family, base: Mapping[str, Any], Q: int,
           residual_at: Callable[[dict[str, Any]], np.ndarray]) -> SearchResult:
    """Free values minimizing the least-squares residual (see the module docstring); ``residual_at``
    gives the scaled residual vector of the least-squares member at given settings (options and
    free values; ValueError or RuntimeError where none exists)."""
    free = dict(family.free)
    settings = dict(base)
    for name, f in free.items():
        settings[name] = [f.default] * Q if f.per_coordinate else f.default
    evals = 0

    def norm_at(s: dict[str, Any]) -> float:
        nonlocal evals
        evals += 1
        try:
            r = residual_at(s)
        except (ValueError, RuntimeError):
            return math.inf
        v = float(np.linalg.norm(r))
        return v if math.isfinite(v) else math.inf

    grids: dict[str, list[float]] = {}
    for name, f in free.items():
        grids[name] = grid_of(f)
        best, best_v = math.inf, settings[name]
        for g in grids[name]:
            trial = dict(settings)
            trial[name] = [g] * Q if f.per_coordinate else g
            v = norm_at(trial)
            if v < best:
                best, best_v = v, trial[name]
        settings[name] = best_v

    names = list(free)
    sizes = [Q if free[n].per_coordinate else 1 for n in names]

    def pack(s: dict[str, Any]) -> np.ndarray:
        out = []
        for n in names:
            v = np.atleast_1d(np.asarray(s[n], dtype=float))
            out.append(np.log(v) if free[n].log else v)
        return np.concatenate(out)

    def unpack(x: np.ndarray) -> dict[str, Any]:
        s, i = dict(settings), 0
        for n, k in zip(names, sizes):
            v = x[i:i + k]
            v = np.exp(v) if free[n].log else v
            s[n] = [float(a) for a in v] if free[n].per_coordinate else float(v[0])
            i += k
        return s

    lo = np.concatenate([np.full(k, math.log(free[n].low) if free[n].log else free[n].low) for n, k in zip(names, sizes)])
    hi = np.concatenate([np.full(k, math.log(free[n].high) if free[n].log else free[n].high)
                         for n, k in zip(names, sizes)])

    def fun(x: np.ndarray) -> np.ndarray:
        nonlocal evals
        evals += 1
        try:
            r = residual_at(unpack(x))
        except (ValueError, RuntimeError):
            return np.full(n_rows, 1e6)
        return r if r.shape[0] == n_rows and np.all(np.isfinite(r)) else np.full(n_rows, 1e6)

    x0 = np.clip(pack(settings), lo, hi)
    try:
        n_rows = residual_at(unpack(x0)).shape[0]
    except (ValueError, RuntimeError):
        return SearchResult(settings, norm_at(settings), grids, evals)
    from scipy.optimize import least_squares

    res = least_squares(fun, x0, bounds=(lo, hi), method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15,
                        max_nfev=200 * (1 + len(x0)), x_scale="jac")
    found = unpack(res.x)
    v_found, v_grid = norm_at(found), norm_at(settings)
    final = found if v_found <= v_grid else settings
    return SearchResult(final, min(v_found, v_grid), grids, evals)
