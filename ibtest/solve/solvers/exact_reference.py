"""Per-instance numpy reference of the ``exact`` solver (tests and benchmarks only).

Same maths as :mod:`ibtest.solve.solvers.exact` (see its docstring), written one instance and one point
at a time for clarity: closed form per linear piece from ``numpy.linalg.eigh``; the first sign
change of each z_i(t) is bracketed on a fine log grid (no Descartes routing: every point is
scanned, and every discrete local minimum is refined with ``scipy.optimize.minimize_scalar``),
then solved with ``scipy.optimize.brentq``.  Kink limits, the σ'(0) convention and the
consistency of the pattern on the kink use the same thresholds as the batched solver.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from ibtest.base.status import BUDGET, CONVERGED, DIVERGED, SLIDING, STALLED
from ibtest.solve.solvers.exact_tol import CLUSTER_TOL, DERIV_TOL, DIP_FRAC, EIG_TOL, LIMIT_TOL, NOISE, START_ZERO, T_HI, T_LO


def piece_system(X, y, side, pos, neg):
    c = np.where(side > 0, pos, neg)
    Xc = X * c[:, None]
    return Xc.T @ Xc, Xc.T @ y


def leave_dir(A, r, x):
    """Sign of the first significant derivative of ⟨x, w(t)⟩ at t = 0 (0: none)."""
    an = np.linalg.norm(A)
    v, scale, xn = r.copy(), np.linalg.norm(r), np.linalg.norm(x)
    for _ in range(A.shape[0]):
        D = x @ v
        if abs(D) > DERIV_TOL * xn * scale:
            return float(np.sign(D))
        v = -A @ v
        scale *= an
    return 0.0


def _point_function(lam, posk, a_i, L_i, scale_i, lmax):
    """(L, a, rates) of a function with the same zeros as z_i(t) on (0, ∞), or None if z_i ≡ z_i(∞).

    Off the kink this is z_i itself; with a limit on the kink it is e^{λ_slow t} z_i(t), whose
    constant term is the slowest significant cluster of terms.
    """
    d = lam.shape[0]
    if abs(L_i) > LIMIT_TOL * scale_i:
        return L_i, np.where(posk, a_i, 0.0), np.where(posk, lam, 0.0)
    # clusters of (numerically) equal eigenvalues
    sums, rates = [], []
    used = np.zeros(d, bool)
    for k in range(d):
        if not posk[k] or used[k]:
            continue
        members = posk & (np.abs(lam - lam[k]) <= CLUSTER_TOL * lmax)
        used |= members
        sums.append(a_i[members].sum())
        rates.append(lam[k])
    sig = [(S, r) for S, r in zip(sums, rates) if abs(S) > LIMIT_TOL * scale_i]
    if not sig:
        return None
    S0, r0 = sig[0]
    a = np.zeros(d)
    rt = np.zeros(d)
    for j, (S, r) in enumerate(sig[1:]):
        a[j], rt[j] = S, r - r0
    return S0, a, rt


def _first_root(s, L, a, rates, root_tol, grid, zero=False):
    """First t > 0 with s·(L + Σ a e^{−rate t}) < 0, or inf.

    ``zero``: the point starts on the kink, so G(0) = 0 in exact arithmetic; the computed |G(0)|
    widens the rounding allowance of every grid value.
    """
    nzr = rates[(a != 0) & (rates > 0)]
    if nzr.size == 0:
        return np.inf

    def G(t):
        return s * (L + np.sum(a * np.exp(-rates * t)))

    defect = abs(G(0.0)) if zero else 0.0

    def noise(t):
        return NOISE * (abs(L) + np.sum(np.abs(a) * np.exp(-rates * t))) + defect

    ts = np.concatenate([[0.0], np.geomspace(T_LO / nzr.max(), T_HI / nzr.min(), grid)])
    E = np.exp(-np.outer(ts, rates))
    g = s * (L + E @ a)
    mag = abs(L) + E @ np.abs(a)
    nz = NOISE * mag + defect
    brackets = []
    neg = np.nonzero(g[1:] < -nz[1:])[0]
    jf = neg[0] + 1 if neg.size else len(ts)
    if neg.size:
        brackets.append((ts[jf - 1], ts[jf]))
    for j in range(1, min(jf, len(ts) - 1)):
        if (g[j - 1] > g[j] + nz[j] and g[j + 1] >= g[j] and g[j] >= -nz[j]
                and g[j] <= DIP_FRAC * mag[j]):
            res = minimize_scalar(G, bounds=(ts[j - 1], ts[j + 1]), method="bounded",
                                  options={"xatol": 1e-14 * ts[j + 1]})
            if res.fun < -noise(res.x):
                brackets.insert(0, (ts[j - 1], res.x))
                break
    if not brackets:
        return np.inf
    lo, hi = brackets[0]
    # G(lo) may round to ≤ 0 on the kink: the left end counts as the positive side
    return brentq(lambda t: G(t) if t > lo else max(G(t), 1e-300), lo, hi,
                  xtol=1e-300, rtol=max(root_tol, 4 * np.finfo(float).eps), maxiter=500)


def solve_exact_reference(X, y, w0, pos: float = 1.0, neg: float = 0.0, at_zero: float = 1.0,
                          fit_tol: float = 1e-20, max_pieces: int = 64, root_tol: float = 1e-15,
                          grid: int = 2000):
    """Exact GF limit of one instance: X [n, d], y [n], w0 [d] -> (w_inf [d], status code)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.array(w0, dtype=float)
    n, d = X.shape
    xn = np.linalg.norm(X, axis=1)
    live = xn > 0
    can_switch = pos != neg
    default_side = 1.0 if abs(at_zero - pos) <= abs(at_zero - neg) else -1.0

    z = X @ w
    zero = live & (np.abs(z) <= START_ZERO * xn * np.linalg.norm(w))
    side = np.where(z > 0, 1.0, -1.0)
    fresh = zero.copy()

    def finish(theta, code=None):
        zf = X @ theta
        f = np.where(zf > 0, pos * zf, neg * zf)
        loss = 0.5 * np.sum((f - y) ** 2)
        if not (np.all(np.isfinite(theta)) and np.isfinite(loss)):
            return theta, DIVERGED
        if code is not None:
            return theta, code
        z0 = X @ np.asarray(w0, dtype=float)
        r0 = np.where(z0 > 0, pos * z0, neg * z0) - y
        scale = max(0.5 * np.sum(y ** 2), 0.5 * np.sum(r0 ** 2))  # fit_tol is relative (ibtest.solve.fit)
        return theta, CONVERGED if loss <= fit_tol * scale else STALLED

    for _ in range(max_pieces):
        if fresh.any():
            c = np.where(fresh, at_zero, np.where(side > 0, pos, neg))
            res = c * (y - c * z)
            v = X.T @ res
            if np.linalg.norm(v) <= 1e-13 * np.sum(np.abs(res) * xn):
                return finish(w)
            for j in np.nonzero(fresh)[0]:
                vz = X[j] @ v
                big = abs(vz) > DERIV_TOL * xn[j] * np.linalg.norm(v)
                side[j] = np.sign(vz) if big else default_side
            fresh[:] = False
        A, b = piece_system(X, y, side, pos, neg)
        if can_switch and zero.any():
            kmax = 2 * n + 2
            for it in range(kmax + 1):
                r = b - A @ w
                inc = [i for i in np.nonzero(zero)[0]
                       if (ell := leave_dir(A, r, X[i])) != 0 and ell != side[i]]
                if not inc:
                    break
                if it == kmax:
                    return finish(w, SLIDING)
                if it > n:
                    inc = inc[:1]
                side[inc] = -side[inc]
                A, b = piece_system(X, y, side, pos, neg)

        lam, Q = np.linalg.eigh(A)
        lmax = max(lam[-1], 0.0)
        posk = (lam > EIG_TOL * lmax) & (lmax > 0)
        u0 = Q.T @ w
        uinf = np.where(posk, (Q.T @ b) / np.where(posk, lam, 1.0), u0)
        du = u0 - uinf
        winf = Q @ uinf
        if not can_switch:
            return finish(winf)
        a = (X @ Q) * du[None, :]
        zeta = np.where(zero, 0.0, z)
        L = zeta - a.sum(1)
        scale = xn * (np.linalg.norm(w) + np.linalg.norm(winf)) + 1e-300
        roots = np.full(n, np.inf)
        for i in range(n):
            if not live[i] or not np.any(a[i] != 0):
                continue
            fn = _point_function(lam, posk, a[i], L[i], scale[i], lmax)
            if fn is None:
                continue
            L_fn, a_fn, rates_fn = fn
            roots[i] = _first_root(side[i], L_fn, a_fn, rates_fn, root_tol, grid, bool(zero[i]))
        tstar = roots.min()
        if not np.isfinite(tstar):
            return finish(winf)
        e = np.expm1(-np.where(posk, lam, 0.0) * tstar)
        w = w + Q @ (du * e)
        z = X @ w
        sw = roots <= tstar * (1 + 8 * root_tol) + 1e-300
        side[sw] = -side[sw]
        zero = sw
    return finish(w, BUDGET)


__all__ = ["solve_exact_reference"]
