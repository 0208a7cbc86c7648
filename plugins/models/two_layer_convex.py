"""Certified minimum-norm interpolant of a one-hidden-layer ReLU net without bias.

For f_θ(x) = Σ_j v_j σ(⟨w_j, x⟩) (σ = ReLU, θ = (W row-major [m·d], v [m]) as in
:class:`~plugins.models.two_layer_relu.TwoLayerReLU`) and data X [n, d], y [n]:

    min_{m, θ} ½‖θ‖²  s.t. f_θ(X) = y   =   min_{m, θ} Σ_j |v_j| ‖w_j‖  s.t. f_θ(X) = y        (P)

(rescaling w_j → c w_j, v_j → v_j / c leaves f unchanged, and ½(‖w‖² + v²) ≥ |v|‖w‖ with
equality iff |v| = ‖w‖). Pilanci & Ergen (ICML 2020, "Neural networks are convex regularizers")
turn (P) into a convex group lasso over the activation patterns D = diag(1[X u ≥ 0]):

    min Σ_i ‖u_i‖ + ‖u'_i‖  s.t.  Σ_i D_i X (u_i − u'_i) = y,
                                  (2D_i − I) X u_i ≥ 0,  (2D_i − I) X u'_i ≥ 0.               (C)

Why (C) = (P), and what exactness means here. Write K_D = {u : (2D − I) X u ≥ 0}. For *any*
0/1 diagonal D and u ∈ K_D, σ(X u) = D X u (a point with D_kk = 1 has ⟨x_k, u⟩ ≥ 0, one with
D_kk = 0 has ⟨x_k, u⟩ ≤ 0). So every feasible point of (C) *is* a net (one neuron
w = u/√‖u‖, v = ±√‖u‖ per nonzero group) whose path norm is the objective: (C) ≥ (P) for any
set of patterns. Conversely a neuron u lies in K_D for its own pattern D = 1[X u ≥ 0], and
neurons of one pattern and sign merge (K_D is a convex cone, ‖·‖ is subadditive): (C) ≤ (P) as
soon as the cones K_{D_i} of the listed patterns **cover R^d**. That is the exactness criterion
used below. Extra patterns never hurt (each is still a set of real nets); a missing one can only
raise the value, which is why a sampled program is an upper bound on (P).

The closures of the full-dimensional cells of the arrangement {u : ⟨x_k, u⟩ = 0} cover R^d, and
the closure of the cell with sign vector D is exactly K_D. So the patterns of the open cells
suffice: a lower-dimensional cell's pattern D' (u on a boundary) adds nothing, since every
u ∈ K_{D'} lies in some closed full cell K_D and D X u = D' X u there (where D and D' differ,
⟨x_k, u⟩ = 0). :func:`activation_patterns` therefore lists the distinct sign vectors of the
open cells (one interior witness direction each), and drops the all-inactive pattern (D X = 0).

Every routine takes torch tensors or numpy arrays and works in float64 numpy inside: the
arrangement and the conic program are per instance (cvxpy has no batch), so there is no torch
graph to keep.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Clarabel settings of the program (10× tighter than :mod:`ibtest.judge.optimality`: the
#: certificate's gap follows the duals' accuracy). The certificate does not rely on them, nor on
#: the status ("optimal_inaccurate" is common at this tolerance and accepted): the bracket
#: [lower_bound, value] is re-derived from the duals and the recovered net (see
#: :func:`min_norm_interpolant`).
CLARABEL = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "max_iter": 200}
#: angle (radians) below which two data hyperplanes are one, and distance below which a
#: hyperplane passes through a vertex of the arrangement (unit normals): data degenerate up to
#: this are treated as exactly degenerate (small-integer data, duplicates, collinear points)
ARRANGEMENT_TOL = 1e-9


# ------------------------------------------------------------------------------------------
# activation patterns
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patterns:
    """Activation patterns of the data X [n, d].

    ``D`` [p, n] bool: D[i, k] = 1[⟨x_k, u⟩ ≥ 0] on pattern i's cell (a zero or masked row is
    always 1: it plays no part). ``witnesses`` [p, d]: a direction u with that pattern (for an
    enumerated cell, strictly inside it: ⟨x_k, u⟩ ≠ 0 for every nonzero x_k). ``exact``: the
    cones K_{D_i} cover R^d (every open cell is listed), so the program over ``D`` equals (P).
    ``method``: "arrangement" (rank ≤ 3, geometric), "incremental" (cells by linear programs),
    "independent" (linearly independent hyperplanes: all 2^L sign vectors) or "sampled".
    ``rank``: rank of X (numpy's default tolerance); the arrangement lives in its row space.
    """

    D: BoolArray
    witnesses: Array
    exact: bool
    method: str
    rank: int

    @property
    def count(self) -> int:
        return int(self.D.shape[0])


def activation_patterns(X: Any, mask: Any = None, *, method: Literal["auto", "exact", "sample"] = "auto",
                        n_samples: int = 1000, seed: int = 0, max_patterns: int = 512,
                        directions: Any = None) -> Patterns:
    """The patterns {1[X u ≥ 0] : u ∈ R^d} of X [n, d] (rows with ``mask`` 0 are ignored).

    Exact enumeration, in the row space of X (coordinates Z = X V_r, r = rank X; the component of
    u orthogonal to the row space changes no ⟨x_k, u⟩). Points on one line through 0 share a
    hyperplane (the sign of ⟨x_k, u⟩ then follows the point's orientation on the line), so the
    arrangement is built on the L distinct lines, with unit normals h_1..h_L:

    * r = 1: two cells, u = ±h.
    * r = 2: the lines h_l^⊥ cut the circle at the angles atan2(h_l) ± π/2; one cell per arc
      between consecutive cuts, its witness the arc's midpoint.
    * r = 3: the great circles h_l^⊥ of the sphere. Every region touches a vertex
      p = ±h_a × h_b (r = 3 leaves no common line, so there are at least three distinct
      circles); the regions at p are the arcs of the circles through p, seen in the tangent
      plane p^⊥ (the r = 2 case), with the signs of the other circles read at p. Each vertex's
      regions are listed, then de-duplicated: O(L³) work, O(L²) cells.
    * r > 3: if the hyperplanes are linearly independent (L = r, e.g. orthogonal inputs) every
      one of the 2^L sign vectors is a cell (u = H⁺ s). Otherwise the cells are built by adding
      hyperplanes one at a time: a cell with interior point u is on one side of the new
      hyperplane; a linear program {s_k ⟨h_k, u⟩ ≥ 1} decides whether its other side is empty.
      This runs only when the general-position bound on the cell count,
      2 Σ_{k<r} C(L−1, k) (2^L for independent ones), is at most ``max_patterns``; rank ≤ 3 is
      always enumerated (O(n²) cells). The default 512 keeps a program at d = 10 near 1 s.

    There is no library routine for enumerating a hyperplane arrangement's cells (scipy and
    cvxpy have none), hence the hand-written geometry; the linear programs are scipy's HiGHS.

    Elsewhere (``method="sample"``, or "auto" past ``max_patterns``) the patterns of
    ``n_samples`` Gaussian directions (numpy ``default_rng(seed)``), plus those of the rows of
    ``directions`` [k, d] (e.g. the neurons of a net to compare: the sampled program then
    contains that net), are returned with ``exact=False``. ``method="exact"`` raises
    ValueError instead of sampling.

    Degeneracy: lines within ARRANGEMENT_TOL (radians) are merged, a circle that passes within
    ARRANGEMENT_TOL of a vertex goes through it, and singular values below numpy's rank
    tolerance are 0; exactness is up to these tolerances (a cell thinner than them may be
    missed, which can only raise the program's value).
    """
    Xn = _masked(_np(X), None if mask is None else _np(mask))
    n, d = Xn.shape
    if n == 0 or not np.isfinite(Xn).all():
        raise ValueError("activation_patterns: X must be a finite, non-empty [n, d] array")
    r, V = _row_space(Xn)
    Z = Xn @ V  # [n, r]
    H, group, orient = _lines(Z)
    if method != "sample":
        cells = _cells(H, r, max_patterns)
        if cells is not None:
            signs, reps, how = cells
            D, keep = _signs_to_patterns(signs, group, orient)
            return Patterns(D, reps[keep] @ V.T, True, how, r)
        if method == "exact":
            raise ValueError(f"activation_patterns: rank {r} with {H.shape[0]} distinct hyperplanes "
                             f"exceeds max_patterns={max_patterns} for exact enumeration")
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n_samples, d))
    if directions is not None:
        U = np.concatenate([U, _np(directions).reshape(-1, d)], 0)
    real: BoolArray = np.asarray(Xn.any(1), dtype=bool)
    S: BoolArray = (U @ Xn.T) >= 0  # [s, n]
    S[:, ~real] = True
    Ds, first = np.unique(S, axis=0, return_index=True)
    nonzero = (Ds & real[None, :]).any(1)
    return Patterns(Ds[nonzero], U[first][nonzero], False, "sampled", r)


def _np(a: Any) -> Array:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _masked(X: Array, mask: Array | None) -> Array:
    """X with its masked rows (mask 0) set to 0: a zero row is in every pattern and in no fit."""
    if mask is None:
        return X.copy()
    return X * (mask.reshape(-1, 1) > 0)


def _row_space(X: Array) -> tuple[int, Array]:
    """(r, V_r [d, r]): rank (numpy's matrix_rank tolerance) and an orthonormal row-space basis."""
    if not X.any():
        return 0, np.zeros((X.shape[1], 0))
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    r = int((s > s[0] * max(X.shape) * np.finfo(np.float64).eps).sum())
    return r, Vt[:r].T


def _lines(Z: Array) -> tuple[Array, npt.NDArray[np.int64], Array]:
    """Distinct lines through the nonzero rows of Z [n, r]: unit normals H [L, r], the line of
    each row (−1 for a zero row) and its orientation (±1) on it."""
    nrm = np.linalg.norm(Z, axis=1)
    group = np.full(Z.shape[0], -1, dtype=np.int64)
    orient = np.ones(Z.shape[0])
    reps: list[Array] = []
    for k in np.flatnonzero(nrm > 0):
        h = Z[k] / nrm[k]
        for g, c in enumerate(reps):
            dot = float(h @ c)
            if np.linalg.norm(h - np.sign(dot) * c) <= ARRANGEMENT_TOL:
                group[k], orient[k] = g, np.sign(dot)
                break
        else:
            group[k] = len(reps)
            reps.append(h)
    H = np.array(reps).reshape(len(reps), Z.shape[1])
    return H, group, orient


def _signs_to_patterns(signs: Array, group: npt.NDArray[np.int64], orient: Array) -> tuple[BoolArray, npt.NDArray[np.intp]]:
    """Cell sign vectors [c, L] (±1 on each line) -> distinct nonzero patterns [p, n] and, for
    each, the index of a cell that has it."""
    D = np.ones((signs.shape[0], group.shape[0]), dtype=bool)
    real = group >= 0
    D[:, real] = signs[:, group[real]] * orient[real] > 0
    D, first = np.unique(D, axis=0, return_index=True)
    nonzero = (D[:, real].any(1)) if real.any() else np.zeros(D.shape[0], dtype=bool)
    return D[nonzero], first[nonzero]


def _cells(H: Array, r: int, max_patterns: int) -> tuple[Array, Array, str] | None:
    """Sign vectors [c, L] and interior points [c, r] of the open cells of the central
    arrangement {u : ⟨h_l, u⟩ = 0} in R^r; None when it is too large to enumerate."""
    L = H.shape[0]
    if L == 0:  # X = 0: one cell, every pattern the same
        return np.zeros((1, 0)), np.zeros((1, r)), "arrangement"
    if r == 1:
        return np.array([[1.0] * L, [-1.0] * L]) * np.sign(H[:, 0]), np.array([[1.0], [-1.0]]), "arrangement"
    if r == 2:
        Q = _arcs(H)
        return np.sign(Q @ H.T), Q, "arrangement"
    if r == 3:
        return _cells_sphere(H) + ("arrangement",)
    if L == r:  # independent normals: every sign vector (u = H⁻¹ s)
        if 2 ** L > max_patterns:
            return None
        S = np.array(np.meshgrid(*[[1.0, -1.0]] * L, indexing="ij")).reshape(L, -1).T
        return S, np.linalg.solve(H, S.T).T, "independent"
    bound = 2 * sum(_comb(L - 1, k) for k in range(r))
    if bound > max_patterns:
        return None
    return _cells_incremental(H) + ("incremental",)


def _comb(a: int, b: int) -> int:
    from math import comb

    return comb(a, b) if 0 <= b <= a else 0


def _arcs(A: Array) -> Array:
    """Midpoints [2L, 2] of the arcs into which the lines a_l^⊥ (A [L, 2], distinct directions)
    cut the unit circle."""
    phi = np.arctan2(A[:, 1], A[:, 0])
    cuts = np.sort(np.mod(np.concatenate([phi + np.pi / 2, phi - np.pi / 2]), 2 * np.pi))
    nxt = np.append(cuts[1:], cuts[0] + 2 * np.pi)
    keep = nxt - cuts > ARRANGEMENT_TOL
    mid = 0.5 * (cuts + nxt)[keep]
    return np.stack([np.cos(mid), np.sin(mid)], 1)


def _cells_sphere(H: Array) -> tuple[Array, Array]:
    """Cells of the arrangement of great circles h_l^⊥ on S² (H [L, 3], rank 3), by vertices."""
    L = H.shape[0]
    a, b = np.triu_indices(L, 1)
    P = np.cross(H[a], H[b])
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    P = np.concatenate([P, -P])
    first = np.concatenate([a, a])
    M = P @ H.T  # [v, L]: ⟨h_l, p⟩
    through = np.abs(M) <= ARRANGEMENT_TOL
    key = np.where(through, 0.0, np.sign(M))
    _, uniq = np.unique(key, axis=0, return_index=True)
    signs, reps = [], []
    for v in uniq:
        p, on = P[v], through[v]
        e1 = H[first[v]] - (H[first[v]] @ p) * p
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(p, e1)
        E = np.stack([e1, e2], 1)  # [3, 2] basis of p^⊥
        Q = _arcs(H[on] @ E) @ E.T  # [c, 3] tangent directions, one per local cell
        s = np.tile(np.sign(M[v]), (Q.shape[0], 1))
        s[:, on] = np.sign(Q @ H[on].T)
        off = ~on
        if off.any():  # step from p along q short enough to keep every circle off p on its side
            ratio = np.abs(M[v, off])[None, :] / np.maximum(np.abs(Q @ H[off].T), 1e-300)
            delta = 0.5 * np.minimum(1.0, ratio.min(1))
        else:
            delta = np.full(Q.shape[0], 0.5)
        signs.append(s)
        reps.append(p[None, :] + delta[:, None] * Q)
    S, R = np.concatenate(signs), np.concatenate(reps)
    S, idx = np.unique(S, axis=0, return_index=True)
    return S, R[idx]


def _cells_incremental(H: Array) -> tuple[Array, Array]:
    """Cells of {⟨h_l, u⟩ = 0} in R^r, adding one hyperplane at a time (an LP per split test)."""
    from scipy.optimize import linprog

    r = H.shape[1]
    cells: list[tuple[list[float], Array]] = [([], np.zeros(r))]
    for l in range(H.shape[0]):
        h, out = H[l], []
        for s, u in cells:
            z = float(h @ u)
            sides = [np.sign(z)] if z != 0 else []
            for side in (1.0, -1.0):
                if side in sides:
                    out.append((s + [side], u))
                    continue
                A = -np.array(s + [side])[:, None] * H[: l + 1]
                res = linprog(np.zeros(r), A_ub=A, b_ub=-np.ones(l + 1), bounds=[(None, None)] * r, method="highs")
                if res.status == 0:
                    out.append((s + [side], np.asarray(res.x, dtype=np.float64)))
        cells = out
    return np.array([c[0] for c in cells]), np.array([c[1] for c in cells])


# ------------------------------------------------------------------------------------------
# the recovered net
# ------------------------------------------------------------------------------------------
class WidthError(ValueError):
    """A width below the number m* of neurons of the certified net."""


@dataclass(frozen=True)
class Neurons:
    """A one-hidden-layer ReLU net W [m, d], v [m], balanced (|v_j| = ‖w_j‖), so that
    ½‖θ‖² = Σ_j |v_j| ‖w_j‖."""

    W: Array
    v: Array

    @property
    def width(self) -> int:
        return int(self.v.shape[0])

    def path_norm(self) -> float:
        return float((np.abs(self.v) * np.linalg.norm(self.W, axis=1)).sum())

    def half_sq_norm(self) -> float:
        return 0.5 * float((self.W ** 2).sum() + (self.v ** 2).sum())

    def predict(self, X: Any) -> Array:
        return np.maximum(_np(X) @ self.W.T, 0.0) @ self.v

    def theta(self, width: int) -> torch.Tensor:
        """θ [P] (float64) of a :class:`TwoLayerReLU` of width ``width`` ≥ m*: W row-major, then
        v; neurons m*+1..width are zero. Raises :class:`WidthError` when width < m*."""
        m, d = self.width, self.W.shape[1]
        if width < m:
            raise WidthError(f"the certified minimum-norm net has m* = {m} neurons; width {width} < m* "
                             "cannot hold it (a narrower net may need a larger norm)")
        W = np.zeros((width, d))
        v = np.zeros(width)
        W[:m], v[:m] = self.W, self.v
        return torch.from_numpy(np.concatenate([W.reshape(-1), v]))


# ------------------------------------------------------------------------------------------
# the program
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MinNorm:
    """The certified minimum of (P) on (X, y).

    * ``value``: Σ|v_j|‖w_j‖ = ½‖θ‖² of the recovered net ``net`` (an upper bound on (P) for any
      patterns, since the net interpolates y, to ``residual``).
    * ``lower_bound``: yᵀ``dual``, a lower bound on the program over ``patterns`` that rests on
      no solver claim (``dual`` [n] is dual-feasible by construction); a lower bound on (P) when
      ``exact``.
    * ``gap`` = value − lower_bound ≥ 0: the width of the bracket that holds (P) when ``exact``.
    * ``program_value``: the solver's objective; ``status``: cvxpy's status ("optimal",
      "optimal_inaccurate", "infeasible", ...) or "trivial" (y = 0); ``reason``: why there is no
      net, where there is none.
    * ``residual``: max_k |f_net(x_k) − y_k| / max_k |y_k|.

    Without a solution (``net`` None): value = gap = inf, and lower_bound = inf where the solver
    found the exact program infeasible (Clarabel's infeasibility certificate, not re-checked
    here), else 0.
    """

    value: float
    lower_bound: float
    gap: float
    program_value: float
    status: str
    exact: bool
    patterns: Patterns
    dual: Array
    net: Neurons | None
    residual: float
    solve_time: float
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.net is not None

    @property
    def m_star(self) -> int:
        """Neurons of the recovered net (≤ n: it is a vertex of the LP over its directions)."""
        return -1 if self.net is None else self.net.width

    def theta(self, width: int) -> torch.Tensor:
        """θ [P] of the recovered net laid out for a width-``width`` TwoLayerReLU (zero-padded);
        :class:`WidthError` when width < m*, ValueError when there is no net."""
        if self.net is None:
            raise ValueError(f"no certified net: {self.reason or self.status}")
        return self.net.theta(width)


def min_norm_interpolant(X: Any, y: Any, mask: Any = None, *, patterns: Patterns | None = None,
                         **pattern_options: Any) -> MinNorm:
    """Solve (C) for X [n, d], y [n] (rows with ``mask`` 0 dropped: set to x = 0, y = 0, which is
    the same as leaving them out) and recover the net.

    Steps:

    1. Scale: X̂ = X / s_X, ŷ = y / s_y (s_X = max_k ‖x_k‖, s_y = max_k |y_k|). (P) is
       homogeneous, value(aX, by) = (b / a)·value(X, y) for a > 0, so the solver always sees
       unit-size data and its absolute tolerances mean the same at every scale.
    2. Solve (C) over ``patterns`` (default :func:`activation_patterns` with
       ``pattern_options``) with cvxpy + Clarabel. The problem is built per call: compiling it
       costs ≈ 30 ms, small next to the solve, and a cvxpy Parameter form would have to pad the
       pattern count (it varies per dataset), which slows the solve more than it saves.
    3. Certify. From the duals λ (of the fit) and μ_i, μ'_i ≥ 0 (of the cone constraints), for
       every u ∈ K_{D_i}: λᵀσ(Xu) = λᵀD_iXu ≤ (X̂ᵀ(D_iλ + S_iμ_i))ᵀu ≤ ρ_i‖u‖ (S_i = 2D_i − I),
       likewise −λᵀσ(Xu) ≤ ρ'_i‖u‖. With ρ = max_i max(ρ_i, ρ'_i), ``dual`` = λ / (ρ s_X) has
       |dualᵀσ(Xu)| ≤ ‖u‖ for every u in the listed cones, so any net with neurons there has
       path norm ≥ Σ_j v_j dualᵀσ(Xw_j) = dualᵀf(X): the lower bound yᵀ·dual, and for any other
       net θ the bound f_θ(X)ᵀ·dual on the norm of the cheapest net with θ's own outputs.
    4. Recover: every group with u_i ≠ 0 gives a direction; the LP min Σ t_j s.t.
       Σ_j ±t_j σ(X̂ û_j) = ŷ, t ≥ 0 (scipy HiGHS dual simplex) returns a vertex, ≤ n neurons
       (Carathéodory), costing at most the program's value (t_j = ‖û_j‖ is feasible). The
       vertex's weights are then polished by least squares on its own columns (directions, hence
       patterns, fixed), so the net fits y to rounding. Neurons whose weight is at the solver's
       noise level are then dropped and the rest nudged to refit (see :func:`_recover`); the
       smaller net is kept only if it fits as well and stays in the bracket.
       w_j = √t_j û_j, v_j = ±√t_j (balanced).
    """
    Xn = _masked(_np(X), None if mask is None else _np(mask))
    yn = _np(y).reshape(-1) * (1.0 if mask is None else (_np(mask).reshape(-1) > 0))
    n, d = Xn.shape
    if yn.shape[0] != n or not (np.isfinite(Xn).all() and np.isfinite(yn).all()):
        raise ValueError(f"min_norm_interpolant: X [n, d] and y [n] must be finite (got {Xn.shape}, {yn.shape})")
    pats = patterns if patterns is not None else activation_patterns(Xn, **pattern_options)
    t0 = time.perf_counter()
    zero_d = np.zeros(n)
    if not yn.any():
        return MinNorm(0.0, 0.0, 0.0, 0.0, "trivial", pats.exact, pats, zero_d, Neurons(np.zeros((0, d)), np.zeros(0)),
                       0.0, 0.0)
    sx, sy = float(np.linalg.norm(Xn, axis=1).max()), float(np.abs(yn).max())
    fail = lambda status, why: MinNorm(np.inf, np.inf if status == "infeasible" and pats.exact else 0.0,  # noqa: E731
                                       np.inf, np.inf, status, pats.exact, pats, zero_d, None, np.inf,
                                       time.perf_counter() - t0, why)
    if sx == 0 or pats.count == 0:
        return fail("infeasible", "every pattern is inactive on the data (X = 0) but y ≠ 0")
    Xh, yh = Xn / sx, yn / sy
    sol = _solve(Xh, yh, pats.D)
    if sol is None or sol[0] not in ("optimal", "optimal_inaccurate"):
        status = "solver_error" if sol is None else sol[0]
        why = ("no net in these patterns fits y (no net at all: the patterns are exact)" if pats.exact
               else "no net in the sampled patterns fits y") if status == "infeasible" else f"solver status {status}"
        return fail(status, why)
    status, pval, U, U2, lam, mu, mu2 = sol
    dual = _feasible_dual(Xh, pats.D, lam, mu, mu2) / sx
    lower = max(0.0, float(yn @ dual))
    net = _recover(Xh, yh, np.concatenate([U, U2]), np.concatenate([np.ones(len(U)), -np.ones(len(U2))]), dual * sx)
    net = Neurons(net.W * np.sqrt(sy / sx), net.v * np.sqrt(sy / sx))
    value = net.path_norm()
    residual = float(np.abs(net.predict(Xn) - yn).max() / sy)
    return MinNorm(value, lower, max(0.0, value - lower), pval * sy / sx, status, pats.exact, pats, dual, net, residual,
                   time.perf_counter() - t0)


def _solve(Xh: Array, yh: Array, D: BoolArray) -> tuple[str, float, Array, Array, Array, Array, Array] | None:
    """(status, value, U [p, d], U' [p, d], λ [n], μ [n, p], μ' [n, p]) of (C), or None when the
    solver fails. λ is the multiplier with Lagrangian Σ‖u‖ − λᵀ(Σ D_iX(u_i − u'_i) − y) − ...,
    so that the dual objective is yᵀλ."""
    import cvxpy as cp

    p, n = D.shape
    d = Xh.shape[1]
    Dt = D.T.astype(np.float64)  # [n, p]
    St = 2.0 * Dt - 1.0
    U, U2 = cp.Variable((p, d)), cp.Variable((p, d))
    G, G2 = Xh @ U.T, Xh @ U2.T  # [n, p]: ⟨x_k, u_i⟩
    fit = cp.sum(cp.multiply(Dt, G - G2), axis=1) == yh
    cone, cone2 = cp.multiply(St, G) >= 0, cp.multiply(St, G2) >= 0
    prob = cp.Problem(cp.Minimize(cp.sum(cp.norm(U, 2, axis=1)) + cp.sum(cp.norm(U2, 2, axis=1))), [fit, cone, cone2])
    try:
        with warnings.catch_warnings():  # "solution may be inaccurate": read from prob.status
            warnings.simplefilter("ignore")
            prob.solve(solver="CLARABEL", **CLARABEL)
    except (cp.error.SolverError, ValueError):
        return None
    if U.value is None:
        return str(prob.status), np.inf, np.zeros((p, d)), np.zeros((p, d)), np.zeros(n), np.zeros((n, p)), np.zeros((n, p))
    # cvxpy's multiplier of `a == b` enters the Lagrangian as +ν(a − b): λ = −ν
    lam = -np.asarray(fit.dual_value, dtype=np.float64).reshape(n)
    mu = np.maximum(np.asarray(cone.dual_value, dtype=np.float64).reshape(n, p), 0.0)
    mu2 = np.maximum(np.asarray(cone2.dual_value, dtype=np.float64).reshape(n, p), 0.0)
    return (str(prob.status), float(prob.value), np.asarray(U.value, dtype=np.float64),
            np.asarray(U2.value, dtype=np.float64), lam, mu, mu2)


def _feasible_dual(Xh: Array, D: BoolArray, lam: Array, mu: Array, mu2: Array) -> Array:
    """λ / ρ with ρ = max_i max(‖X̂ᵀ(D_iλ + S_iμ_i)‖, ‖X̂ᵀ(−D_iλ + S_iμ'_i)‖) (see
    :func:`min_norm_interpolant`, step 3), inflated by the rounding of the products."""
    Dt = D.T.astype(np.float64)
    St = 2.0 * Dt - 1.0
    rho = max(float(np.linalg.norm(Xh.T @ (Dt * lam[:, None] + St * mu), axis=0).max()),
              float(np.linalg.norm(Xh.T @ (-Dt * lam[:, None] + St * mu2), axis=0).max()))
    rho *= 1.0 + 4 * (Xh.shape[0] + Xh.shape[1]) * np.finfo(np.float64).eps
    return lam / rho if rho > 0 else np.zeros_like(lam)


def _recover(Xh: Array, yh: Array, U: Array, sign: Array, dual: Array) -> Neurons:
    """The net of the groups U [g, d] with signs ``sign`` [g] on the scaled data (see
    :func:`min_norm_interpolant`, step 4): the LP vertex with its weights polished, then, when
    some of its neurons are at the solver's noise level (weight below √tol_feas of the largest),
    the net without them, its neurons nudged by the least-norm change that restores the fit and
    keeps every binding ⟨x_k, w_j⟩ = 0, if that net fits as well and stays in the certificate's
    bracket (norm − yᵀdual at most twice the vertex's)."""
    from scipy.optimize import linprog

    norms = np.linalg.norm(U, axis=1)
    nz = norms > 0
    dirs, sgn, t0 = U[nz] / norms[nz, None], sign[nz], norms[nz]
    C = sgn[None, :] * np.maximum(Xh @ dirs.T, 0.0)  # [n, g]: the output of each unit neuron
    tight = {"primal_feasibility_tolerance": CLARABEL["tol_feas"], "dual_feasibility_tolerance": CLARABEL["tol_feas"]}
    res = linprog(np.ones(len(t0)), A_eq=C, b_eq=yh, bounds=(0, None), method="highs-ds", options=tight)
    t = np.asarray(res.x, dtype=np.float64) if res.status == 0 else t0.copy()
    support = t > 0
    tb, *_ = np.linalg.lstsq(C[:, support], yh, rcond=None)
    if (tb >= 0).all() and np.abs(C[:, support] @ tb - yh).max() <= np.abs(C[:, support] @ t[support] - yh).max():
        t[support] = tb
    support = t > 0
    full = _net(dirs[support] * t[support, None], sgn[support])
    big = support & (t >= np.sqrt(CLARABEL["tol_feas"]) * t.max())
    if big.sum() == support.sum():
        return full
    sparse = _nudge(Xh, yh, dirs[big] * t[big, None], sgn[big])
    if sparse is None:
        return full
    lower = float(yh @ dual)
    r_full, r_sparse = (float(np.abs(net.predict(Xh) - yh).max()) for net in (full, sparse))
    noise = Xh.shape[0] * np.finfo(np.float64).eps
    fits = r_sparse <= 10 * max(r_full, noise)
    tight_enough = sparse.path_norm() - lower <= 2 * max(full.path_norm() - lower, 0.0) + noise * full.path_norm()
    return sparse if fits and tight_enough else full


def _net(U: Array, sign: Array) -> Neurons:
    """Balanced neurons w = u/√‖u‖, v = ±√‖u‖ of the groups U [k, d] with signs [k]."""
    s = np.sqrt(np.linalg.norm(U, axis=1))
    return Neurons(U / s[:, None], sign * s)


def _nudge(Xh: Array, yh: Array, U: Array, sign: Array) -> Neurons | None:
    """Neurons U + δ with the least-norm δ that fits ŷ exactly with each neuron's pattern held:
    ⟨x_k, u_j + δ_j⟩ = 0 where |⟨x_k, u_j⟩| ≤ η‖x_k‖‖u_j‖ (η = √tol_feas: binding), the fit
    Σ_j ±⟨x_k, u_j + δ_j⟩ over the active ones = y_k. None when a sign would change."""
    k, d = U.shape
    n = Xh.shape[0]
    Zp = Xh @ U.T  # [n, k]
    thr = np.sqrt(CLARABEL["tol_feas"]) * np.linalg.norm(Xh, axis=1)[:, None] * np.linalg.norm(U, axis=1)[None, :]
    bind, act = np.abs(Zp) <= thr, Zp > thr
    fit = (sign[None, :] * act)[:, :, None] * Xh[:, None, :]  # [n, k, d]
    rows_b, cols_b = np.nonzero(bind)
    B = np.zeros((len(rows_b), k, d))
    B[np.arange(len(rows_b)), cols_b] = Xh[rows_b]
    A = np.concatenate([fit.reshape(n, k * d), B.reshape(-1, k * d)])
    rhs = np.concatenate([yh - (sign[None, :] * act * Zp).sum(1), -Zp[rows_b, cols_b]])
    delta, *_ = np.linalg.lstsq(A, rhs, rcond=None)
    U2 = U + delta.reshape(k, d)
    Z2 = Xh @ U2.T
    if (Z2[act] <= 0).any() or (Z2[~act & ~bind] >= 0).any():
        return None
    return _net(U2, sign)


# ------------------------------------------------------------------------------------------
# checking a net against the certified minimum
# ------------------------------------------------------------------------------------------
Status = Literal["certified", "beaten", "inconclusive", "uncertified"]


@dataclass(frozen=True)
class Verdict:
    """One quantity R(θ) (½‖θ‖² or Σ|v_j|‖w_j‖) against the certified minimum.

    ``value`` = R(θ); ``minimum`` = the recovered net's norm; ``excess`` = R(θ) − yᵀdual, a
    bound on R(θ) − min over Z(D) when exact (up to θ's misfit, see ``Check.misfit_bound``);
    ``tol`` = the certificate's gap (plus the caller's atol/rtol). ``status``:

    * certified: exact patterns, excess ≤ tol (+ the rounding of R and yᵀdual, 4ε(P·R +
      n·Σ|y_k dual_k|)), and θ's misfit moves the bound by at most tol (``Check.misfit_bound``):
      θ attains the minimum within tol;
    * beaten: the recovered net (fits y, width ≤ θ's) is below R(θ) − tol: ``Check.witness``;
    * inconclusive: exact, but neither (the difference is within the gap, or the cheaper net
      needs more neurons than θ has);
    * uncertified: sampled patterns (the program is only an upper bound) and not beaten, θ's
      misfit too large to certify, or no solution.
    """

    status: Status
    value: float
    minimum: float
    excess: float
    tol: float
    reason: str


@dataclass(frozen=True)
class Check:
    """θ [P] of a width-m net on (X, y) against :class:`MinNorm` ``optimum``: a :class:`Verdict`
    for ``half_sq_norm`` and for ``path_norm``; ``witness`` θ' [P] (width m, fits y) where one of
    them is beaten; ``lower_bound`` the certified lower bound for θ's outputs; ``misfit_bound``
    = ‖f_θ(X) − y‖·‖dual‖ ≥ |(f_θ(X) − y)ᵀdual|, how far θ's misfit moves that bound;
    ``fit_residual`` = max_k |f_θ(x_k) − y_k| / max_k |y_k|."""

    half_sq_norm: Verdict
    path_norm: Verdict
    witness: torch.Tensor | None
    lower_bound: float
    misfit_bound: float
    fit_residual: float
    optimum: MinNorm


def check_theta(theta: Any, X: Any, y: Any, mask: Any = None, *, optimum: MinNorm | None = None,
                atol: float = 0.0, rtol: float = 0.0, **pattern_options: Any) -> Check:
    """Compare θ [P] of a :class:`TwoLayerReLU` (width m = P / (d + 1)) on X [n, d], y [n] with
    the certified minimum (computed here, the sampled patterns then including θ's own neurons,
    unless ``optimum`` is given).

    The tolerance is the certificate's own gap (value − lower bound, both derived from the
    solve) plus max(atol, rtol·minimum) from the caller (0 by default): no fixed constant. The
    lower bound for θ is f_θ(X)ᵀ·dual, valid whatever θ's fit residual (it bounds the norm of
    any net with θ's outputs), so a θ that fits y only to the solver's tolerance is still judged
    soundly; a certificate further needs the misfit's effect ‖f_θ(X) − y‖·‖dual‖ ≤ tol (θ = 0 is
    optimal for its own outputs, 0, but not on Z(D)). "beaten" compares R(θ) with a net that fits
    y; whether θ itself fits well enough to be in Z(D) is the caller's fit rule (``fit_residual``).
    """
    th = _np(theta).reshape(-1)
    Xn = _masked(_np(X), None if mask is None else _np(mask))
    yn = _np(y).reshape(-1) * (1.0 if mask is None else (_np(mask).reshape(-1) > 0))
    n, d = Xn.shape
    if th.shape[0] % (d + 1):
        raise ValueError(f"check_theta: θ has {th.shape[0]} entries, not a multiple of d + 1 = {d + 1}")
    m = th.shape[0] // (d + 1)
    W, v = th[: m * d].reshape(m, d), th[m * d:]
    if optimum is None:
        optimum = min_norm_interpolant(Xn, yn, directions=W, **pattern_options)
    out = np.maximum(Xn @ W.T, 0.0) @ v
    fit_residual = float(np.abs(out - yn).max() / max(float(np.abs(yn).max()), np.finfo(np.float64).tiny))
    lower = max(0.0, float(out @ optimum.dual)) if optimum.ok else 0.0
    misfit = float(np.linalg.norm(out - yn) * np.linalg.norm(optimum.dual)) if optimum.ok else np.inf
    values = {"half_sq_norm": 0.5 * float(th @ th), "path_norm": float((np.abs(v) * np.linalg.norm(W, axis=1)).sum())}
    tol = optimum.gap + (max(atol, rtol * abs(optimum.value)) if optimum.ok else 0.0)
    eps = 4 * np.finfo(np.float64).eps  # rounding of R(θ) and of yᵀdual: eps·(P·R + n·Σ|y_k dual_k|)
    verdicts: dict[str, Verdict] = {}
    for name, R in values.items():
        status: Status
        if not optimum.ok:
            status, why = "uncertified", f"no certified minimum: {optimum.reason or optimum.status}"
        elif optimum.value < R - tol and optimum.m_star <= m:
            status, why = "beaten", f"a net of width {optimum.m_star} fits y with norm {optimum.value:.6g} < {R:.6g} − tol"
        elif optimum.value < R - tol:
            status, why = ("inconclusive" if optimum.exact else "uncertified"), \
                f"the cheaper net needs m* = {optimum.m_star} > {m} neurons"
        elif not optimum.exact:
            status, why = "uncertified", "sampled patterns: the program's value is only an upper bound on the minimum"
        elif misfit > tol:
            status, why = "uncertified", (f"θ fits y only to {fit_residual:.2e} (relative): its outputs may move the "
                                          f"minimum by up to {misfit:.2e} > tol")
        elif R - optimum.lower_bound <= tol + eps * (th.shape[0] * R + n * float(np.abs(yn * optimum.dual).sum())):
            status, why = "certified", "R(θ) is within tol of the certified lower bound"
        else:
            status, why = "inconclusive", "R(θ) − lower bound exceeds tol but the minimum does not beat R(θ) by tol"
        verdicts[name] = Verdict(status, R, optimum.value, R - optimum.lower_bound, tol, why)
    beaten = "beaten" in (verdicts["half_sq_norm"].status, verdicts["path_norm"].status)
    witness = optimum.theta(m) if beaten else None
    return Check(verdicts["half_sq_norm"], verdicts["path_norm"], witness, lower, misfit, fit_residual, optimum)
