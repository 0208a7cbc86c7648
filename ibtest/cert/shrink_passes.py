r"""The passes of ``ibtest shrink`` (:mod:`ibtest.cert.shrink`): each maps a case to candidates.

In the order tried: drop a data point (from both sides when they share it), project onto the span
of the data or drop a coordinate, θ0 → 0 (or θ0 rounded to one or two significant digits), rebuild
the construction's added point for the new θ0, rescale and round X, y toward small integers (then
halves, then tenths, point by point), zero or decrement integer entries, divide by a common
factor. A pass only proposes; :func:`ibtest.cert.shrink_judge.judge` decides.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.cert.shrink_judge import Case, Judge
from ibtest.study.checks import call_solver

Tensor = torch.Tensor

# ------------------------------------------------------------------------------------------
# candidates: (description, case), in the order they are tried
# ------------------------------------------------------------------------------------------
Cand = tuple[str, Case]


def valid(c: Case) -> bool:
    """Each side keeps a point and the sides still differ (in data or θ0)."""
    if c.d < 1 or not bool(c.sides.any(-1).all()):
        return False
    if c.sides.shape[0] == 1:
        return True
    same_data = torch.equal(c.sides[0], c.sides[1])
    return not (same_data and torch.equal(c.theta0[0], c.theta0[1]))


def pass_drop_points(c: Case, J: Judge) -> list[Cand]:
    out = []
    for i in range(c.m):
        keep = torch.ones(c.m, dtype=torch.bool)
        keep[i] = False
        out.append((f"drop point {i + 1}", Case(c.X[keep], c.y[keep], c.sides[:, keep], c.theta0)))
    return out


def _theta0_without(c: Case, J: Judge, keep: Tensor) -> Tensor | None:
    """θ0 for fewer input dimensions, ``keep`` the kept columns (bool [d]) or a basis ([d2, d]) to
    project onto: the same coordinates (or their projection) when θ = w (P = d); zeros when θ0 = 0;
    None when the model's θ cannot follow."""
    cols = keep.dtype == torch.bool
    d2 = int(keep.sum()) if cols else int(keep.shape[0])
    if J.n_params(c.d) == c.d and J.n_params(d2) == d2:
        return c.theta0[:, keep] if cols else c.theta0 @ keep.T
    if bool((c.theta0 == 0).all()):
        return torch.zeros(c.theta0.shape[0], J.n_params(d2), dtype=torch.float64)
    return None


def pass_dimensions(c: Case, J: Judge) -> list[Cand]:
    out = []
    if c.d > 1:
        _, S, Vh = torch.linalg.svd(c.X, full_matrices=False)
        r = int((S > 1e-10 * S[0]).sum()) if S.numel() and float(S[0]) > 0 else 0
        if 0 < r < c.d:
            B = Vh[:r]
            th0 = _theta0_without(c, J, B)
            if th0 is not None:
                out.append((f"project onto the {r}-dimensional span of the data", Case(c.X @ B.T, c.y, c.sides, th0)))
        for j in range(c.d):
            cols = torch.ones(c.d, dtype=torch.bool)
            cols[j] = False
            th0 = _theta0_without(c, J, cols)
            if th0 is not None:
                out.append((f"drop coordinate {j + 1}", Case(c.X[:, cols], c.y, c.sides, th0)))
    return out


def _stationary_at_zero(model: Any) -> bool:
    pw = getattr(model, "piecewise", None)
    return pw is not None and pw.neg == 0.0 and pw.at_zero == 0.0


def _sig(v: Tensor, digits: int) -> Tensor:
    """v rounded to ``digits`` significant digits of its largest entry (a short rational vector)."""
    top = float(v.abs().max())
    if top == 0:
        return v.clone()
    e = math.floor(math.log10(top)) - digits + 1
    return torch.round(v * 10.0**-e) / 10.0**-e + 0.0 if e < 0 else torch.round(v / 10.0**e) * 10.0**e + 0.0


def pass_theta0(c: Case, J: Judge) -> list[Cand]:
    if bool((c.theta0 == 0).all()):
        return []
    out = []
    if not _stationary_at_zero(J.model):
        out.append(("theta0 = 0", replace(c, theta0=torch.zeros_like(c.theta0))))
    for k in (1, 2):
        th = torch.stack([_sig(t, k) for t in c.theta0])
        out.append((f"theta0 to {k} significant digit{'s' * (k > 1)}", replace(c, theta0=th)))
    return out


def pass_rebuild(c: Case, J: Judge) -> list[Cand]:
    """θ0 = 0 where plain θ0 → 0 failed: the construction's added point was built for the flow from the
    old θ0, so rebuild it for the flow from 0. For every subset of D_a's points (D_a ⊂ D_b, the
    construction's shape), solve D_a from 0 (one batched call) and let the registered
    ``blocking_point`` construction add its point to each converged solution."""
    if J.construction is None or J.witness or bool((c.theta0 == 0).all()) or _stationary_at_zero(J.model):
        return []
    a, b = c.sides[0], c.sides[1]
    if not bool((b | ~a).all()) or torch.equal(a, b):
        return []
    base = a.nonzero().flatten().tolist()
    if len(base) > 6:
        return []
    subsets = [S for r in range(len(base), 0, -1) for S in itertools.combinations(base, r)]
    k, n, P = len(subsets), len(base), J.n_params(c.d)
    X = torch.zeros(k, n, c.d, dtype=torch.float64)
    y = torch.zeros(k, n, dtype=torch.float64)
    mask = torch.zeros(k, n, dtype=torch.float64)
    for r, S in enumerate(subsets):
        X[r, : len(S)], y[r, : len(S)], mask[r, : len(S)] = c.X[list(S)], c.y[list(S)], 1.0
    th0 = torch.zeros(k, P, dtype=torch.float64)
    if J.used + k > J.budget:
        return []
    J.used += k
    J.calls += 1
    try:
        res = call_solver(J.solver, J.model, X, y, mask, th0, J.opts)
        ok = (res.status == st.CONVERGED).nonzero().flatten()
        if ok.numel() == 0:
            return []
        from ibtest.plugin.specs import TripleBatch

        tb = TripleBatch(X[ok], y[ok], mask[ok], th0[ok], res.theta[ok].to(torch.float64), [str(i) for i in ok.tolist()])
        parts = J.construction(J.model, tb, torch.Generator().manual_seed(0))
    except Exception:
        return []
    if parts is None:
        return []
    out = []
    for r in range(parts.X.shape[0]):
        keep = parts.mask[r] > 0
        Xr, yr = parts.X[r][keep], parts.y[r][keep]
        na = int(mask[int(ok[int(parts.source[r])])].sum())
        sides = torch.zeros(2, len(yr), dtype=torch.bool)
        sides[0, :na], sides[1] = True, True
        out.append((f"theta0 = 0 with {na} of D_a's points and a rebuilt blocking point",
                    Case(Xr.clone(), yr.clone(), sides, torch.zeros(2, P, dtype=torch.float64))))
    return out


def _is_grid(v: Tensor, q: float) -> bool:
    return bool((_rnd(v, q) == v).all())


def _rnd(v: Tensor, q: float) -> Tensor:
    inv = round(1 / q)  # q = 1/inv: dividing by the integer inv gives the shortest decimal (0.3, not 0.30000000000000004)
    return torch.round(v * inv) / inv + 0.0  # + 0.0: no negative zeros in the file


def pass_scale_round(c: Case, J: Judge) -> list[Cand]:
    """X → round(X·K/max|X|), y → round(y·L/max|y|) for small K, L (θ0 scaled along: the flow of a
    1-homogeneous neuron follows exactly); smallest integers first."""
    if _is_grid(c.X, 1) and _is_grid(c.y, 1):
        return []
    mx, my = float(c.X.abs().max()), float(c.y.abs().max())
    if mx == 0 or my == 0:
        return []
    out = []
    for top in range(1, 11):
        for K, L in sorted({(top, l) for l in range(1, top + 1)} | {(k, top) for k in range(1, top + 1)}):
            X = _rnd(c.X * (K / mx), 1)
            y = _rnd(c.y * (L / my), 1)
            th0 = c.theta0 * ((L / my) / (K / mx))
            out.append((f"scale X to max {K}, y to max {L}, round to integers", Case(X, y, c.sides, th0)))
    return out


def pass_rescale(c: Case, J: Judge) -> list[Cand]:
    """Rescale so the largest coordinate of X (of y) is 10, without rounding."""
    mx, my = float(c.X.abs().max()), float(c.y.abs().max())
    out = []
    if mx > 0 and not (_is_grid(c.X, 1) and mx <= 10):
        out.append(("rescale X to max 10", Case(c.X * (10 / mx), c.y, c.sides, c.theta0 * (mx / 10))))
    if my > 0 and not (_is_grid(c.y, 1) and my <= 10):
        out.append(("rescale y to max 10", Case(c.X, c.y * (10 / my), c.sides, c.theta0 * (10 / my))))
    return out


def pass_round_points(c: Case, J: Judge) -> list[Cand]:
    out = []
    for q, word in ((1.0, "integers"), (0.5, "halves"), (0.1, "tenths")):
        for i in range(c.m):
            if not (_is_grid(c.X[i], q) and _is_grid(c.y[i : i + 1], q)):
                X, y = c.X.clone(), c.y.clone()
                X[i], y[i] = _rnd(X[i], q), _rnd(y[i : i + 1], q)
                out.append((f"round point {i + 1} to {word}", Case(X, y, c.sides, c.theta0)))
        if not _is_grid(c.theta0, q) and not _is_grid(c.theta0, 1):
            out.append((f"round theta0 to {word}", replace(c, theta0=_rnd(c.theta0, q))))
    return out


def pass_entries(c: Case, J: Judge) -> list[Cand]:
    """On integer data: divide by a common factor, halve, zero an entry, move an entry toward 0."""
    out = []
    for name, v in (("X", c.X), ("y", c.y)):
        if not _is_grid(v, 1) or not bool((v != 0).any()):
            continue
        g = 0
        for e in v.abs().flatten().tolist():
            g = math.gcd(g, int(e))
        scale = (lambda t, f: Case(t, c.y, c.sides, c.theta0 * f)) if name == "X" else \
                (lambda t, f: Case(c.X, t, c.sides, c.theta0 / f))
        if g > 1:
            out.append((f"divide {name} by {g}", scale(v / g, g)))
        if float(v.abs().max()) > 1:
            out.append((f"halve {name} and round", scale(_rnd(v / 2, 1), 2.0)))
    if _is_grid(c.X, 0.5) and not _is_grid(c.X, 1):
        out.append(("double X", Case(c.X * 2, c.y, c.sides, c.theta0 / 2)))
    for i in range(c.m):  # a zero-label point keeps its zero-loss set at any positive scale
        if c.y[i] == 0 and not _is_grid(c.X[i], 1) and float(c.X[i].abs().max()) > 0:
            for K in range(1, 11):
                X = c.X.clone()
                X[i] = _rnd(X[i] * (K / float(X[i].abs().max())), 1)
                out.append((f"scale x{i + 1} to max {K} and round", Case(X, c.y, c.sides, c.theta0)))
    for i in range(c.m):
        g = 0
        for e in c.X[i].abs().tolist():
            g = math.gcd(g, int(e))
        if g > 1 and c.y[i] == 0 and _is_grid(c.X[i], 1):  # a zero-label point: same zero-loss set at any positive scale
            X = c.X.clone()
            X[i] = X[i] / g
            out.append((f"divide x{i + 1} by {g}", Case(X, c.y, c.sides, c.theta0)))
    for i in range(c.m):
        for j in range(c.d):
            if c.X[i, j] != 0:
                X = c.X.clone()
                X[i, j] = 0.0
                out.append((f"zero x{i + 1}[{j + 1}]", Case(X, c.y, c.sides, c.theta0)))
    for i in range(c.m):
        for j in range(c.d):
            if abs(float(c.X[i, j])) > 1 and float(c.X[i, j]).is_integer():
                X = c.X.clone()
                X[i, j] -= torch.sign(X[i, j])
                out.append((f"move x{i + 1}[{j + 1}] toward 0", Case(X, c.y, c.sides, c.theta0)))
    if _is_grid(c.y, 1):
        for i in range(c.m):
            if abs(float(c.y[i])) > 1:
                y = c.y.clone()
                y[i] -= torch.sign(y[i])
                out.append((f"move y{i + 1} toward 0", Case(c.X, y, c.sides, c.theta0)))
    return out


PASSES: list[tuple[str, Callable[[Case, Judge], list[Cand]]]] = [
    ("theta0", pass_theta0),  # first: the paper's form starts at 0, which a smaller case may no longer allow
    ("rebuild", pass_rebuild),
    ("drop_point", pass_drop_points),
    ("dimension", pass_dimensions),
    ("scale_round", pass_scale_round),
    ("rescale", pass_rescale),
    ("round_points", pass_round_points),
    ("entries", pass_entries),
]

