r"""Exact gradient flow of a single piecewise-linear neuron, batched over instances (float64).

Model and flow
--------------
f_w(x) = σ(⟨w, x⟩) with σ(z) = pos·z (z > 0), neg·z (z < 0) and the convention σ'(0) = at_zero;
L(w) = ½ Σ_i m_i (σ(z_i) − y_i)², z_i = ⟨x_i, w⟩, GF: dw/dt = −∇L(w).  Shapes: X [B, n, d],
y [B, n], mask m [B, n] (1 real point, 0 padding), w0 [B, d].

One linear piece
----------------
Every point with x_i ≠ 0 sits on a side s_i ∈ {+1, −1} with slope c_i = pos or neg.  Then
dw/dt = −A w + b with A = Xᵀ diag(m c²) X (PSD) and b = Xᵀ diag(m c) y ∈ range(A).  With
A = Q Λ Qᵀ and u = Qᵀ w: u_k(t) = u∞_k + (u_k(0) − u∞_k) e^{−λ_k t}, u∞_k = (Qᵀb)_k/λ_k for
λ_k > 0 and u∞_k = u_k(0) on the null space, so

    z_i(t) = L_i + Σ_k a_ik e^{−λ_k t},   a_ik = (XQ)_ik (u_k(0) − u∞_k),   L_i = z_i(∞).

Switches
--------
The piece ends at the first t > 0 where some G_i(t) = s_i z_i(t) becomes negative.  Per point the
generalized Descartes rule (zeros of an exponential sum ≤ sign changes of its coefficients
ordered by rate, constant first) bounds the number of roots ν; a point whose z_i starts on the
kink (just switched, or exactly 0) has a root at t = 0 and ν−1 roots left.  ν' = 0: no crossing.
Exactly one root possible (ν' = 1, or ν' = 2 with G(∞) < 0): bracketed on a coarse log grid.
Otherwise a log grid of ``grid`` points brackets the first sign change, and each discrete local
minimum before it is refined (bisection on G') to catch dips between grid points.  Brackets are
refined by Newton with bisection safeguards to ``root_tol`` relative.  A grid value counts as
negative only below −64·eps·(|L| + Σ|a_ik| e^{−λ_k t}) − δ_i, so rounding never triggers a
switch; δ_i = |G_i(0)| for a point that starts on the kink (0 in exact arithmetic: the error of
its coefficients), else 0.

Limits on the kink (touching, never switching)
----------------------------------------------
If |L_i| ≤ 1e-11·‖x_i‖(‖w(0)‖ + ‖w∞‖) the limit is taken to lie on the kink: L_i := 0 and the
slowest significant term (eigenvalue clusters within 1e-11·λ_max summed; insignificant slower
clusters dropped) decides: if it has the sign of s_i the point approaches the kink from its own
side (a limit, no switch); otherwise it crosses at a finite time.  Such a point is evaluated as
e^{λ_slow t} G_i(t), whose constant term is the slowest cluster, so late crossings stay finite.

Points on the kink at a piece start
-----------------------------------
Points that just switched keep the side they crossed to; other points with z_i = 0 (e.g. w0 = 0)
take the side of ⟨x_i, v⟩ where v is the velocity with σ'(0) = at_zero for them (v = 0: w is a
stationary point under that convention and the flow stays; a tie goes to the side whose slope is
nearer to at_zero).  The pattern is then made consistent: under the chosen pattern, the first
significant derivative D_j = ⟨x_i, (−A)^{j−1}(b − A w)⟩ must have the sign of s_i (or all vanish);
inconsistent points flip, repeatedly.  A derivative counts only above the rounding error of the
computed velocity b − A w (``ROUND_R``·(‖b‖ + ‖A‖‖w‖)): near the limit of a piece the velocity
is itself round-off, and a sign read from it flipped points back and forth (issue 12: 55 of 10^6
W1 instances ended SLIDING); an undecided point keeps its side.  No consistent pattern: Filippov
sliding, status SLIDING (for labels ≥ 0 a single ReLU neuron cannot slide, and with this rule
it is never reported there: tests/test_exact_ties.py).
Points with x_i = 0 (padding included) never switch.

Result: θ = w∞ of the last piece (exact limit), status CONVERGED (loss ≤ fit_tol · s, s the loss
scale max(½‖y‖², L(w0)) of :mod:`ibtest.solve.fit`), STALLED,
BUDGET (max_pieces pieces used; θ = the current iterate), SLIDING, or DIVERGED (non-finite);
info: ``t`` time of the last switch, ``pieces`` linear pieces traversed, ``drift`` zeros.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ibtest.plugin.specs import PiecewiseLinearNeuron, SolveResult
from ibtest.base.status import BUDGET, CONVERGED, DIVERGED, SLIDING, STALLED

Tensor = torch.Tensor
F64 = torch.float64
EPS = torch.finfo(F64).eps

#: |z_i| ≤ START_ZERO·‖x_i‖‖w‖ at a piece start: the point sits on the kink
START_ZERO = 1e-14
#: eigenvalues ≤ EIG_TOL·λ_max are null
EIG_TOL = 1e-12
#: eigenvalues within CLUSTER_TOL·λ_max are one cluster (one exponential rate)
CLUSTER_TOL = 1e-11
#: |z_i(∞)| (and slow coefficients) ≤ LIMIT_TOL·‖x_i‖(‖w0‖ + ‖w∞‖): on the kink / insignificant
LIMIT_TOL = 1e-11
#: derivative D_j significant when |D_j| > DERIV_TOL·‖x_i‖‖A‖^{j−1}‖b − Aw‖
DERIV_TOL = 1e-9
#: rounding error of the velocity r = b − A w, in units of ‖b‖ + ‖A‖‖w‖ (d-term sums, twice)
ROUND_R = 256 * EPS
#: rounding allowance of G on the grid, in units of the sum of the magnitudes of its terms
NOISE = 64 * EPS
#: discrete local minima of G at or below this fraction of its term magnitude are refined
DIP_FRAC = 0.05
#: grid ends (per pair): t_lo = T_LO/λ_fast, t_hi = T_HI/λ_slow
T_LO, T_HI = 1e-9, 50.0
COARSE = 24


def tighten(options: dict[str, Any]) -> dict[str, Any]:
    """Settings of a re-solve with a smaller error (used to measure the solver error)."""
    out = dict(options)
    out["root_tol"] = max(float(out.get("root_tol", 1e-14)) / 1e3, 1e-16)
    out["grid"] = int(out.get("grid", 192)) * 2
    return out


# ----------------------------------------------------------------------------------------------
# small batched helpers
# ----------------------------------------------------------------------------------------------
def _bmv(M: Tensor, v: Tensor) -> Tensor:
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def _slope(side: Tensor, pos: float, neg: float) -> Tensor:
    """pos where side > 0, else neg (float64)."""
    return torch.where(side > 0, torch.tensor(pos, dtype=F64), torch.tensor(neg, dtype=F64))


def _system(Xw: Tensor, yw: Tensor, mw: Tensor, side: Tensor, pos: float, neg: float):
    c = _slope(side, pos, neg) * mw
    Xc = Xw * c.unsqueeze(-1)
    A = Xc.transpose(1, 2) @ Xc
    b = _bmv(Xc.transpose(1, 2), yw)
    return A, b


def _leave_dir(A: Tensor, r: Tensor, Xw: Tensor, xn: Tensor, r_round: Tensor | None = None) -> Tensor:
    """Sign of the first significant derivative of z_i(t) − z_i(0) under dw/dt = r − A(w − w0).

    D_j = ⟨x_i, (−A)^{j−1} r⟩ is significant when |D_j| > ‖x_i‖‖A‖^{j−1}·max(DERIV_TOL·‖r‖,
    ``r_round``): ``r_round`` [b] is the rounding error of the computed velocity r = b − A w
    (:data:`ROUND_R`·(‖b‖ + ‖A‖‖w‖)), so a derivative at round-off level (the flow at its
    limit, r itself noise) never decides a side: it returns 0 (undecided) there.
    """
    d = A.shape[-1]
    an = torch.linalg.matrix_norm(A)
    scale = r.norm(dim=-1)
    if r_round is not None:
        scale = torch.maximum(DERIV_TOL * scale, r_round) / DERIV_TOL
    v = r
    ell = torch.zeros(Xw.shape[:2], dtype=F64, device=Xw.device)
    decided = torch.zeros(Xw.shape[:2], dtype=torch.bool, device=Xw.device)
    for _ in range(d):
        D = _bmv(Xw, v)
        sig = (D.abs() > DERIV_TOL * xn * scale.unsqueeze(-1)) & ~decided
        ell = torch.where(sig, torch.sign(D), ell)
        decided |= sig
        v = -_bmv(A, v)
        scale = scale * an
    return ell


def _G(t: Tensor, s: Tensor, L: Tensor, a: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """G = s(L + Σ_k a_k e^{−λ_k t}) and its rounding allowance; t [P, m] -> [P, m]."""
    E = (-lam).unsqueeze(-1) * t.unsqueeze(1)  # [P, d, m]
    E.exp_()
    both = torch.stack([a, a.abs()], dim=1) @ E  # [P, 2, m]
    g = L.unsqueeze(-1) + both[:, 0]
    noise = NOISE * (L.abs().unsqueeze(-1) + both[:, 1])
    return s.unsqueeze(-1) * g, noise


def _G1(t: Tensor, s: Tensor, L: Tensor, a: Tensor, lam: Tensor) -> Tensor:
    return s * (L + (a * torch.exp(-lam * t.unsqueeze(-1))).sum(-1))


def _log_grid(lo: Tensor, hi: Tensor, m: int) -> Tensor:
    """[P, m+1]: 0 then m log-spaced points from lo to hi."""
    f = torch.linspace(0.0, 1.0, m, dtype=F64, device=lo.device)
    g = torch.exp(torch.log(lo).unsqueeze(-1) + torch.log(hi / lo).unsqueeze(-1) * f)
    return torch.cat([torch.zeros_like(lo).unsqueeze(-1), g], dim=-1)


def _brackets(s, L, a, lam, t_lo, t_hi, m: int, dips: bool, defect: Tensor | None = None,
              chunk: int = 4096):
    """First bracket of a root of G on [0, t_hi] for each pair.

    Returns (found [P] bool, lo, hi, flo, fhi); with ``dips`` also discrete local minima before
    the first sign change are refined and a dip below zero yields an earlier bracket (the fine
    grid, evaluated where needed: see :func:`_fine_brackets`).
    """
    if defect is None:
        defect = torch.zeros_like(L)
    if dips:
        return _fine_brackets(s, L, a, lam, t_lo, t_hi, m, defect)
    P = s.shape[0]
    out_found = torch.zeros(P, dtype=torch.bool)
    out = torch.zeros(4, P, dtype=F64)
    for c0 in range(0, P, chunk):
        sl = slice(c0, min(P, c0 + chunk))
        tg = _log_grid(t_lo[sl], t_hi[sl], m)
        g, nz = _G(tg, s[sl], L[sl], a[sl], lam[sl])
        neg = g < -(nz + defect[sl].unsqueeze(-1))
        neg[:, 0] = False
        has = neg.any(-1)
        jf = torch.where(has, neg.to(torch.uint8).argmax(-1), torch.full_like(has, m + 1, dtype=torch.int64))
        p = torch.arange(sl.stop - sl.start)
        jc = jf.clamp(max=m)
        out_found[sl] = has
        out[0, sl], out[1, sl] = tg[p, jc - 1], tg[p, jc]
        out[2, sl], out[3, sl] = g[p, jc - 1].clamp_min(1e-300), g[p, jc]
    return out_found, out[0], out[1], out[2], out[3]


#: fine-grid points per interval of the certificate subgrid
STRIDE = 8


def _fine_brackets(s, L, a, lam, t_lo, t_hi, m: int, defect: Tensor):
    r"""The fine-grid bracket of :func:`_brackets` (``dips``), evaluating the grid where needed.

    The fine grid is t_0 = 0, t_j = t_lo·r^{j−1} (j = 1 … m).  A grid point j matters only if it
    can be negative (g_j < −noise_j) or a dip candidate (a discrete local minimum with
    g_j ≤ DIP_FRAC·mag_j).  On a subgrid (every STRIDE-th point) each interval I = [t_a, t_b]
    is first certified free of both, from bounds that hold for every t in I (each term
    a_k e^{−λ_k t} is monotone in t), with an allowance ``err`` ≥ 4× the rounding error of a
    grid value:

    * value: min_I G − err > DIP_FRAC·max_I mag — no point of I is low;
    * rising: min_I G' · (smallest grid spacing in I) > 2·err and g(t_a) ≥ −½·noise — G rises
      by more than the rounding between consecutive grid points, so none is a local minimum
      and none is negative;
    * falling: the same with max G' < 0 on I and the next interval (every point of I has a
      lower right neighbour, so none is a local minimum) and g(t_b) ≥ 2·err.

    Only uncertified intervals, up to the first subgrid point with a sign change, are evaluated
    point by point; the bracket is then the one the full fine grid gives.
    """
    P, d = a.shape
    dev = a.device
    chunk = max(256, (1 << 22) // ((m // STRIDE + 3) * max(d, 1)))  # ~32 MB per subgrid tensor
    if P > chunk:
        parts = [_fine_brackets(s[c:c + chunk], L[c:c + chunk], a[c:c + chunk], lam[c:c + chunk],
                                t_lo[c:c + chunk], t_hi[c:c + chunk], m, defect[c:c + chunk])
                 for c in range(0, P, chunk)]
        return tuple(torch.cat(x) for x in zip(*parts))
    found = torch.zeros(P, dtype=torch.bool, device=dev)
    out = torch.zeros(4, P, dtype=F64, device=dev)
    if P == 0:
        return found, out[0], out[1], out[2], out[3]
    f = torch.linspace(0.0, 1.0, m, dtype=F64, device=dev)
    llo = torch.log(t_lo)
    lr = torch.log(t_hi / t_lo)
    sL = s * L
    aL = L.abs()
    sa = s.unsqueeze(-1) * a
    aa = a.abs()
    sum_aa = aa.sum(-1)

    def times(pi, j):  # fine grid points t_j of pairs pi (identical to _log_grid's values)
        tj = torch.exp(llo[pi] + lr[pi] * f[(j - 1).clamp_min(0)])
        return torch.where(j > 0, tj, 0.0)

    def values(pi, t):  # g = s·G and its term magnitude at times t [N, K] of pairs pi [N]
        Ek = torch.exp(-lam[pi].unsqueeze(1) * t.unsqueeze(-1))  # [N, K, d]
        gm = Ek @ torch.stack([sa[pi], aa[pi]], dim=-1)  # [N, K, 2]
        return sL[pi].unsqueeze(-1) + gm[..., 0], aL[pi].unsqueeze(-1) + gm[..., 1]

    # -- certificate on the subgrid ----------------------------------------------------------
    C = [0] + list(range(1, m + 1, STRIDE))
    if C[-1] != m:
        C.append(m)
    Ci = torch.tensor(C, dtype=torch.int64, device=dev)
    nI = len(C) - 1
    ar = torch.arange(P, device=dev)
    tc = times(ar.unsqueeze(-1), Ci.unsqueeze(0))  # [P, nI+1]
    # Each term T_k = s·a_k e^{−λ_k t} is monotone (λ_k ≥ 0): falling if s·a_k > 0, rising
    # if s·a_k < 0, so over I = [t_a, t_b]: min_I G = s·L + P(t_b) + N(t_a), with P (N) the sum
    # of the positive (negative) terms; for G' = Σ −λ_k T_k: min_I G' = DP(t_a) + DN(t_b) and
    # max G' over [t_a, t_c] = DP(t_c) + DN(t_a).
    Ec = torch.exp(-lam.unsqueeze(1) * tc.unsqueeze(-1))  # [P, nI+1, d]
    sp, sn = sa.clamp_min(0.0), sa.clamp_max(0.0)
    W = torch.stack([sp, sn, -lam * sp, -lam * sn], dim=-1)  # [P, d, 4]
    R = Ec @ W  # [P, nI+1, 4]
    Pc, Nc, DP, DN = R.unbind(-1)
    gc = sL.unsqueeze(-1) + (Pc + Nc)
    magc = aL.unsqueeze(-1) + (Pc - Nc)
    lbG = sL.unsqueeze(-1) + (Pc[:, 1:] + Nc[:, :-1])
    ub_mag = magc[:, :-1]
    err = (4 * EPS) * ((d + 3) * ub_mag + sum_aa.unsqueeze(-1))
    cert = lbG - err > DIP_FRAC * (1 + 1e-9) * ub_mag
    guard = (1e-10 + EPS) * (a * lam).abs().sum(-1, keepdim=True)
    lbD = DP[:, :-1] + DN[:, 1:] - guard
    rm1 = torch.expm1(lr / max(m - 1, 1)).unsqueeze(-1)
    h = torch.cat([tc[:, 1:2], 0.5 * tc[:, 1:-1] * rm1], dim=-1)
    rising = (lbD * h > 2 * err) & (gc[:, :-1] >= -0.5 * NOISE * magc[:, 1:]) & (rm1 > 1e-6)
    # falling through t_{jb+1} (the right neighbour of the last point of I): over the
    # interval and the next one (the last interval has no candidate at its right end)
    DPn = torch.cat([DP[:, 2:], DP[:, -1:]], dim=1)
    ubD = DPn + DN[:, :-1] + guard
    hf = 0.5 * torch.cat([tc[:, 1:2], tc[:, 1:-1]], dim=-1) * rm1  # t_{j+1} − t_j, j ≥ max(ja, 1)
    falling = (ubD * hf < -2 * err) & (gc[:, 1:] >= 2 * err) & (rm1 > 1e-6)
    cert |= rising | falling
    # intervals to evaluate: uncertified ones up to the first subgrid sign change
    negc = gc[:, 1:] < -(NOISE * magc[:, 1:] + defect.unsqueeze(-1))
    ii = torch.arange(nI, device=dev)
    first_c = torch.where(negc.any(-1), negc.to(torch.uint8).argmax(-1), nI)
    todo = ~cert & (ii.unsqueeze(0) <= first_c.unsqueeze(-1))
    if not bool(todo.any()):
        return found, out[0], out[1], out[2], out[3]

    # -- fine points of those intervals (windows t_{ja} … t_{jb+1}) -------------------------
    wp, wi = todo.nonzero(as_tuple=True)
    ja, jb = Ci[wi], Ci[wi + 1]
    K = max(C[i + 1] - C[i] for i in range(nI)) + 2
    q = torch.arange(K, device=dev)
    jw = ja.unsqueeze(-1) + q  # [N, K] fine indices
    valid = jw <= torch.clamp(jb + 1, max=m).unsqueeze(-1)
    jw = torch.where(valid, jw, jb.unsqueeze(-1))
    tw = times(wp.unsqueeze(-1), jw)
    g, mag = values(wp, tw)
    nz = NOISE * mag + defect[wp].unsqueeze(-1)
    inI = valid & (q > 0) & (jw <= jb.unsqueeze(-1))
    neg = inI & (g < -nz)
    hasw = neg.any(-1)
    qf = neg.to(torch.uint8).argmax(-1)
    jfw = torch.where(hasw, ja + qf, m + 1)
    jf = torch.full((P,), m + 1, dtype=torch.int64, device=dev)
    jf.scatter_reduce_(0, wp, jfw, reduce="amin")
    sel = hasw & (jfw == jf[wp])
    if bool(sel.any()):
        n_ = sel.nonzero().squeeze(1)
        pi, qq = wp[n_], qf[n_]
        found[pi] = True
        out[0, pi], out[1, pi] = tw[n_, qq - 1], tw[n_, qq]
        out[2, pi], out[3, pi] = g[n_, qq - 1].clamp_min(1e-300), g[n_, qq]
    # dip candidates before the first sign change
    gm, gj, gp = g[:, :-2], g[:, 1:-1], g[:, 2:]
    nj = nz[:, 1:-1]
    jj = jw[:, 1:-1]
    cand = (inI[:, 1:-1] & (jj <= m - 1) & (gm > gj + nj) & (gp >= gj) & (gj >= -nj)
            & (gj <= DIP_FRAC * mag[:, 1:-1]) & (jj < jf[wp].unsqueeze(-1)))
    if bool(cand.any()):
        n_, qi = cand.nonzero(as_tuple=True)
        q1 = qi + 1
        pi, j = wp[n_], jw[n_, q1]
        a_, b_ = tw[n_, q1 - 1], tw[n_, q1 + 1]
        S, Lp, A_, lm = s[pi], L[pi], a[pi], lam[pi]
        cD, nl = -S.unsqueeze(-1) * A_ * lm, -lm  # G'(t) = Σ cD_k e^{−λ_k t}
        for _ in range(48):  # bisection on G' (G' < 0 left of the minimum)
            mid = 0.5 * (a_ + b_)
            up = (cD * torch.exp(nl * mid.unsqueeze(-1))).sum(-1) >= 0
            b_ = torch.where(up, mid, b_)
            a_ = torch.where(up, a_, mid)
        tm = 0.5 * (a_ + b_)
        gmin = _G1(tm, S, Lp, A_, lm)
        nmin = NOISE * (Lp.abs() + (A_.abs() * torch.exp(-lm * tm.unsqueeze(-1))).sum(-1)) + defect[pi]
        dip = gmin < -nmin
        if bool(dip.any()):
            n_, q1, pi, j, tm, gmin = n_[dip], q1[dip], pi[dip], j[dip], tm[dip], gmin[dip]
            key = torch.full((P,), m + 2, dtype=torch.int64, device=dev)
            key.scatter_reduce_(0, pi, j, reduce="amin")
            first = j == key[pi]
            n_, q1, pi, tm, gmin = n_[first], q1[first], pi[first], tm[first], gmin[first]
            # j < jf: the dip bracket [t_{j-1}, t_min] precedes the first sign change
            found[pi] = True
            out[0, pi], out[1, pi] = tw[n_, q1 - 1], tm
            out[2, pi], out[3, pi] = g[n_, q1 - 1].clamp_min(1e-300), gmin
    return found, out[0], out[1], out[2], out[3]


def _refine(s, L, a, lam, lo, hi, flo, fhi, root_tol: float, max_iter: int = 100) -> Tensor:
    """Root of G in [lo, hi] (G(lo) > 0 > G(hi)): Newton safeguarded by the bracket.

    A Newton step that leaves the bracket is replaced by a bisection (in log t while the
    bracket spans more than a factor 2).  Stops when the step or the bracket is below
    ``root_tol`` relative; returns the last iterate.  Converged pairs leave the working set.
    """
    x = torch.where(lo > 0, torch.sqrt(lo * hi), 0.5 * (lo + hi))
    out = x.clone()
    act = torch.arange(x.shape[0], device=x.device)
    for _ in range(max_iter):
        if act.numel() == 0:
            break
        E = torch.exp(-lam * x.unsqueeze(-1))
        aE = a * E
        f = s * (L + aE.sum(-1))
        fp = -s * (aE * lam).sum(-1)
        neg = f < 0
        hi = torch.where(neg, x, hi)
        lo = torch.where(neg, lo, x)
        xn = x - f / fp
        inb = torch.isfinite(xn) & (xn >= lo) & (xn <= hi)
        # a Newton step below the tolerance converges, also when it lands on the bracket end
        # that x has just become (else bisection would go on until the bracket is narrow)
        small = inb & ((xn - x).abs() <= root_tol * x.abs())
        ok = small | (inb & (xn > lo) & (xn < hi))
        bis = torch.where((lo > 0) & (hi > 2 * lo), torch.sqrt(lo * hi), 0.5 * (lo + hi))
        xn = torch.where(ok, xn, bis)
        f0 = f == 0
        conv = small | ((hi - lo) <= root_tol * hi) | f0
        x = torch.where(f0, x, xn)
        if bool(conv.any()):
            out[act[conv]] = x[conv]
            k = (~conv).nonzero().squeeze(1)
            act, x, lo, hi = act[k], x[k], lo[k], hi[k]
            s, L, a, lam = s[k], L[k], a[k], lam[k]
    out[act] = x
    return out


# ----------------------------------------------------------------------------------------------
# the next switch of one piece
# ----------------------------------------------------------------------------------------------
def _next_switch(lam, posk, a, L, side, zero, cand, scale, grid: int, root_tol: float):
    """First switch time t* [J] (inf: none) and the switching points [J, n] of one piece."""
    J, n, d = a.shape
    dev = a.device
    lmax = lam[:, -1:].clamp_min(0.0)
    # clusters of eigenvalues (one exponential rate): cluster sums at the leader (first) index
    close = ((lam.unsqueeze(-1) - lam.unsqueeze(-2)).abs() <= CLUSTER_TOL * lmax.unsqueeze(-1))
    close &= posk.unsqueeze(-1) & posk.unsqueeze(-2)
    tri = torch.tril(torch.ones(d, d, dtype=torch.bool, device=dev), diagonal=-1)
    leader = posk & ~(close & tri).any(-1)
    S = a @ close.to(F64)  # S[:, i, k] = Σ_{l ~ k} a_il
    S = S * leader.unsqueeze(1)
    sig = S.abs() > LIMIT_TOL * scale.unsqueeze(-1)
    kink = L.abs() <= LIMIT_TOL * scale
    # kink points: G·e^{λ_slow t}, constant = slowest significant cluster
    has_sig = sig.any(-1)
    slow = sig.to(torch.uint8).argmax(-1)  # [J, n]
    lam_s = lam.gather(1, slow)  # [J, n]
    S_s = S.gather(2, slow.unsqueeze(-1)).squeeze(-1)
    kk = torch.arange(d, device=dev)
    faster = sig & (kk.view(1, 1, d) > slow.unsqueeze(-1))
    a_k = torch.where(faster, S, 0.0)
    lam_k = (lam.unsqueeze(1) - lam_s.unsqueeze(-1)).clamp_min(0.0)
    Lt = torch.where(kink, S_s, L)
    At = torch.where(kink.unsqueeze(-1), a_k, a)
    Lam = torch.where(kink.unsqueeze(-1), lam_k, torch.where(posk, lam, 0.0).unsqueeze(1).expand(J, n, d))
    At = torch.where(Lam > 0, At, 0.0)
    ok = cand & ~(kink & ~has_sig)
    # a point on the kink at the start has G(0) = 0 by construction: the computed value
    # measures the error of its coefficients (with a limit on the kink it includes the z(∞)
    # set to 0) and widens the rounding allowance of every grid value of that point
    defect = torch.where(zero, (Lt + At.sum(-1)).abs(), 0.0)
    # Descartes count on the sequence (s·Lt, s·At by ascending rate)
    seq = torch.cat([Lt.unsqueeze(-1), At], dim=-1) * side.unsqueeze(-1)
    sg = torch.sign(seq)
    last = torch.zeros_like(Lt)
    first = torch.zeros_like(Lt)
    changes = torch.zeros_like(Lt)
    for k in range(d + 1):
        g = sg[..., k]
        nzk = g != 0
        changes += (nzk & (last != 0) & (g != last)).to(F64)
        last = torch.where(nzk, g, last)
        first = torch.where((first == 0) & nzk, g, first)
    nu = changes - zero.to(F64)
    one = ok & (first < 0) & (nu >= 1) & (nu <= 2)
    fine = ok & (nu >= 2) & ~one
    tstar = torch.full((J,), float("inf"), dtype=F64, device=dev)
    switch = torch.zeros(J, n, dtype=torch.bool, device=dev)
    parts = []
    for sel, m, dips in ((one, COARSE, False), (fine, grid, True)):
        if not bool(sel.any()):
            continue
        bi, pi = sel.nonzero(as_tuple=True)
        s_, L_, A_, lm, df = side[bi, pi], Lt[bi, pi], At[bi, pi], Lam[bi, pi], defect[bi, pi]
        lpos = torch.where(A_ != 0, lm, float("nan"))
        fast = torch.nan_to_num(lpos, nan=0.0).amax(-1)
        slow_ = torch.nan_to_num(lpos, nan=float("inf")).amin(-1)
        found, lo, hi, flo, fhi = _brackets(s_, L_, A_, lm, T_LO / fast, T_HI / slow_, m, dips, df)
        f = found
        parts.append((bi[f], pi[f], s_[f], L_[f], A_[f], lm[f], lo[f], hi[f], flo[f], fhi[f]))
    if parts:
        bi, pi, s_, L_, A_, lm, lo, hi, flo, fhi = (torch.cat(c) for c in zip(*parts))
        # only brackets that can hold the first root of their instance
        minhi = torch.full((J,), float("inf"), dtype=F64, device=dev)
        minhi.scatter_reduce_(0, bi, hi, reduce="amin")
        k = lo <= minhi[bi]
        bi, pi = bi[k], pi[k]
        r = _refine(s_[k], L_[k], A_[k], lm[k], lo[k], hi[k], flo[k], fhi[k], root_tol)
        tstar.scatter_reduce_(0, bi, r, reduce="amin")
        sw = r <= tstar[bi] * (1 + 8 * root_tol) + 1e-300
        switch[bi[sw], pi[sw]] = True
    return tstar, switch


# ----------------------------------------------------------------------------------------------
# the solver
# ----------------------------------------------------------------------------------------------
def solve_exact(X: Tensor, y: Tensor, mask: Tensor | None, w0: Tensor,
                neuron: PiecewiseLinearNeuron, *, fit_tol: float = 1e-20, root_tol: float = 1e-14,
                max_pieces: int = 64, grid: int = 192, threads: int = 1, workers: int = 1) -> SolveResult:
    """Exact GF limit of B single-neuron instances (see the module docstring).

    ``threads``: torch intra-op threads during the solve (restored afterwards; 0 leaves the
    setting alone).  The tensors are small: on a 2-core box shared with other jobs, W1 ran
    ~50× slower with 2 threads than with 1 (OpenMP hand-offs under contention).
    ``workers``: Python threads, each solving a contiguous share of the batch (torch releases
    the GIL inside its kernels, so large batches overlap); 0 = the CPUs this process may use,
    at most :data:`MAX_WORKERS`, and one worker for batches under :data:`MIN_SHARE` per worker.
    Default 1: on a 2-core box where another job holds a core, 2 workers ran W1 at 0.6–0.95×
    the speed of one (benchmarks/RESULTS.md has the comparison on the day's machine).
    Every instance's result is that of a single-worker solve up to round-off (a batched
    kernel's summation order may depend on the batch size: ~1e-16).
    """
    B = int(X.shape[0])
    k = _workers(workers, B)
    prev = torch.get_num_threads()
    change = bool(threads) and threads != prev
    if change:
        torch.set_num_threads(int(threads))
    opts = dict(fit_tol=fit_tol, root_tol=root_tol, max_pieces=max_pieces, grid=grid)

    def part(sl: slice) -> SolveResult:
        with torch.no_grad():
            ms = None if mask is None else mask[sl]
            Xs, ys, ws, cx, a = _normalize(X[sl], y[sl], ms, w0[sl])
            return _denormalize(_solve_exact(Xs, ys, ms, ws, neuron, **opts), cx, a)

    try:
        if k <= 1:
            return part(slice(0, B))
        from concurrent.futures import ThreadPoolExecutor

        cuts = [B * i // k for i in range(k + 1)]
        with ThreadPoolExecutor(k) as ex:
            parts = list(ex.map(part, [slice(cuts[i], cuts[i + 1]) for i in range(k)]))
        return _concat(parts)
    finally:
        if change:
            torch.set_num_threads(prev)


#: most worker threads ``workers=0`` picks, and the smallest share of the batch worth a thread
MAX_WORKERS = 4
MIN_SHARE = 2048


def _workers(workers: int, B: int) -> int:
    if workers > 0:
        return max(1, min(int(workers), B))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS, B // MIN_SHARE))


def _pow2(v: Tensor) -> Tensor:
    """The power of two nearest to v (1 where v is 0 or not finite): scaling by it is exact."""
    ok = torch.isfinite(v) & (v > 0)
    return torch.where(ok, torch.exp2(torch.round(torch.log2(torch.where(ok, v, torch.ones_like(v))))),
                       torch.ones_like(v))


def _normalize(X: Tensor, y: Tensor, mask: Tensor | None, w0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The same flows on data of unit scale: X' = X/c, y' = y/(c·a), w0' = w0/a with c ≈ max‖x_i‖ and
    a ≈ max(|y'|∞, |w0|∞), powers of two, per instance.

    A single piecewise-linear neuron is 1-homogeneous, so GF on (X', y', w0') is GF on (X, y, w0)
    with θ = a·θ' and time t = t'/c² (L = (c·a)²·L'). Powers of two make the scaling exact in
    float64, so a study scaled by any factor solves bit for bit like the unscaled one, and the
    solver's internal tolerances (powers of A, the 1e-300 guards) never meet under- or overflow.
    """
    X, y, w0 = (torch.as_tensor(v, dtype=F64) for v in (X, y, w0))
    m = torch.ones_like(y) if mask is None else (torch.as_tensor(mask) != 0).to(F64)
    cx = _pow2((X * m.unsqueeze(-1)).norm(dim=-1).amax(-1))
    ys = y / cx.unsqueeze(-1)
    a = _pow2(torch.maximum((ys * m).abs().amax(-1), w0.abs().amax(-1)))
    return X / cx.view(-1, 1, 1), ys / a.unsqueeze(-1), w0 / a.unsqueeze(-1), cx, a


def _denormalize(res: SolveResult, cx: Tensor, a: Tensor) -> SolveResult:
    """Undo :func:`_normalize` on a result: θ = a·θ', L = (c·a)²·L', t = t'/c²."""
    info = dict(res.info)
    if "t" in info:
        info["t"] = info["t"] / (cx * cx)
    return SolveResult(res.theta * a.unsqueeze(-1), res.status, res.loss * (cx * a) ** 2, info)


def _concat(parts: list[SolveResult]) -> SolveResult:
    keys = set().union(*[set(p.info) for p in parts])
    info = {key: torch.cat([p.info[key] for p in parts]) for key in keys
            if all(key in p.info and isinstance(p.info[key], Tensor) for p in parts)}
    return SolveResult(torch.cat([p.theta for p in parts]), torch.cat([p.status for p in parts]),
                       torch.cat([p.loss for p in parts]), info)


def _solve_exact(X: Tensor, y: Tensor, mask: Tensor | None, w0: Tensor,
                 neuron: PiecewiseLinearNeuron, *, fit_tol: float, root_tol: float,
                 max_pieces: int, grid: int) -> SolveResult:
    X = torch.as_tensor(X, dtype=F64)
    y = torch.as_tensor(y, dtype=F64)
    w0 = torch.as_tensor(w0, dtype=F64)
    B, n, d = X.shape
    dev = X.device
    m = torch.ones_like(y) if mask is None else (torch.as_tensor(mask) != 0).to(F64)
    Xm = X * m.unsqueeze(-1)
    ym = y * m
    pos, neg, az = float(neuron.pos), float(neuron.neg), float(neuron.at_zero)
    can_switch = pos != neg
    default_side = 1.0 if abs(az - pos) <= abs(az - neg) else -1.0

    theta = w0.clone()
    status = torch.full((B,), -1, dtype=torch.int64, device=dev)
    t_out = torch.zeros(B, dtype=F64, device=dev)
    pieces_out = torch.zeros(B, dtype=torch.int64, device=dev)

    idx = torch.arange(B, device=dev)
    Xw, yw, mw = Xm, ym, m
    xn = Xw.norm(dim=-1)
    live = xn > 0
    w = w0.clone()
    z = _bmv(Xw, w)
    zero = live & (z.abs() <= START_ZERO * xn * w.norm(dim=-1, keepdim=True))
    side = _slope(z, 1.0, -1.0)
    fresh = zero.clone()
    tacc = torch.zeros(B, dtype=F64, device=dev)
    npc = torch.zeros(B, dtype=torch.int64, device=dev)

    for _piece in range(max_pieces):
        Ba = idx.shape[0]
        if Ba == 0:
            break
        done = torch.zeros(Ba, dtype=torch.bool, device=dev)
        th_new = w.clone()
        code = torch.full((Ba,), -1, dtype=torch.int64, device=dev)

        # -- points on the kink with no known side: the σ'(0) convention ---------------------
        fi = fresh.any(1)
        if bool(fi.any()):
            J = fi.nonzero().squeeze(1)
            fJ = fresh[J]
            c = torch.where(fJ, az, _slope(side[J], pos, neg)) * mw[J]
            res = c * (yw[J] - c * z[J])
            v = _bmv(Xw[J].transpose(1, 2), res)
            vn = v.norm(dim=-1)
            stat = vn <= 1e-13 * (res.abs() * xn[J]).sum(-1)
            vz = _bmv(Xw[J], v)
            sg = torch.where(vz.abs() > DERIV_TOL * xn[J] * vn.unsqueeze(-1), torch.sign(vz),
                             torch.full_like(vz, default_side))
            side[J] = torch.where(fJ, sg, side[J])
            done[J[stat]] = True
            fresh = torch.zeros_like(fresh)

        # -- the pattern of this piece, made consistent on the kink -------------------------
        A, b = _system(Xw, yw, mw, side, pos, neg)
        if can_switch:
            J = (zero.any(1) & ~done).nonzero().squeeze(1)
            kmax = 2 * n + 2
            for it in range(kmax + 1):
                if J.numel() == 0:
                    break
                r = b[J] - _bmv(A[J], w[J])
                r_round = ROUND_R * (b[J].norm(dim=-1)
                                     + torch.linalg.matrix_norm(A[J]) * w[J].norm(dim=-1))
                ell = _leave_dir(A[J], r, Xw[J], xn[J], r_round)
                inc = zero[J] & (ell != 0) & (ell != side[J])
                bad = inc.any(1)
                J, inc = J[bad], inc[bad]
                if J.numel() == 0:
                    break
                if it == kmax:
                    done[J] = True
                    code[J] = SLIDING
                    break
                if it > n:  # flip one point at a time to escape cycles
                    first = inc.to(torch.uint8).argmax(-1)
                    inc = torch.zeros_like(inc)
                    inc[torch.arange(J.numel()), first] = True
                side[J] = torch.where(inc, -side[J], side[J])
                A[J], b[J] = _system(Xw[J], yw[J], mw[J], side[J], pos, neg)

        # -- closed form of the piece ------------------------------------------------------
        go = (~done).nonzero().squeeze(1)
        winf = w.clone()
        if go.numel():
            allgo = go.numel() == Ba

            def G(t: Tensor) -> Tensor:  # rows of the instances that go on
                return t if allgo else t[go]

            lam, Q = torch.linalg.eigh(G(A))
            lmax = lam[:, -1:].clamp_min(0.0)
            posk = lam > EIG_TOL * lmax
            posk &= lmax > 0
            wg = G(w)
            ub = Q.transpose(1, 2) @ torch.stack([wg, G(b)], dim=-1)
            u0, beta = ub[..., 0], ub[..., 1]
            uinf = torch.where(posk, beta / torch.where(posk, lam, 1.0), u0)
            du = u0 - uinf
            wi = _bmv(Q, uinf)
            if allgo:
                winf = wi
            else:
                winf[go] = wi
            if can_switch:
                XQ = G(Xw) @ Q
                a = XQ * du.unsqueeze(1)
                zg, zr = G(z), G(zero)
                zeta = torch.where(zr, 0.0, zg)
                L = zeta - a.sum(-1)
                scale = G(xn) * (wg.norm(dim=-1) + wi.norm(dim=-1)).unsqueeze(-1) + 1e-300
                cand = G(live) & (a != 0).any(-1)
                # a point never crosses if s·L + Σ min(s·a_k, 0) > 0 (every e^{−λt} ∈ (0, 1])
                sd = G(side)
                lb = sd * L + torch.clamp(sd.unsqueeze(-1) * a, max=0.0).sum(-1)
                cand &= ~(lb > 0)
                tstar = torch.full((go.numel(),), float("inf"), dtype=F64, device=dev)
                sw = torch.zeros_like(cand)
                ci = cand.any(1).nonzero().squeeze(1)
                if ci.numel() == go.numel():
                    tstar, sw = _next_switch(lam, posk, a, L, sd, zr, cand, scale, grid, root_tol)
                elif ci.numel():
                    ts, swc = _next_switch(lam[ci], posk[ci], a[ci], L[ci], sd[ci], zr[ci],
                                           cand[ci], scale[ci], grid, root_tol)
                    tstar[ci] = ts
                    sw[ci] = swc
                fin = ~torch.isfinite(tstar)
                done[go[fin]] = True
                th_new[go[fin]] = wi[fin]
                mv = (~fin).nonzero().squeeze(1)
                if mv.numel():
                    gi = go[mv]
                    e = torch.expm1(-torch.where(posk[mv], lam[mv], 0.0) * tstar[mv].unsqueeze(-1))
                    w[gi] = wg[mv] + _bmv(Q[mv], du[mv] * e)
                    z[gi] = _bmv(Xw[gi], w[gi])
                    swm = sw[mv]
                    side[gi] = torch.where(swm, -side[gi], side[gi])
                    zero[gi] = swm
                    tacc[gi] += tstar[mv]
                    npc[gi] += 1
            else:
                done[go] = True
                th_new[go] = wi

        # -- retire finished instances ------------------------------------------------------
        if bool(done.any()):
            di = done.nonzero().squeeze(1)
            gidx = idx[di]
            theta[gidx] = th_new[di]
            status[gidx] = code[di]
            t_out[gidx] = tacc[di]
            pieces_out[gidx] = npc[di] + 1
            keep = (~done).nonzero().squeeze(1)
            idx, Xw, yw, mw, xn, live = idx[keep], Xw[keep], yw[keep], mw[keep], xn[keep], live[keep]
            w, z, zero, side, fresh = w[keep], z[keep], zero[keep], side[keep], fresh[keep]
            tacc, npc = tacc[keep], npc[keep]

    if idx.numel():  # piece budget exhausted
        theta[idx] = w
        status[idx] = BUDGET
        t_out[idx] = tacc
        pieces_out[idx] = npc

    zf = _bmv(Xm, theta)
    f = torch.where(zf > 0, pos * zf, neg * zf)
    r = (f - ym) * m
    loss = 0.5 * (r * r).sum(-1)
    # fit_tol is relative to the loss scale max(½‖y‖², L(w0)) (ibtest.solve.fit)
    z0 = _bmv(Xm, w0)
    r0 = (torch.where(z0 > 0, pos * z0, neg * z0) - ym) * m
    scale = torch.maximum(0.5 * (ym * ym * m).sum(-1), 0.5 * (r0 * r0).sum(-1))
    fitted = loss <= fit_tol * scale
    unset = status < 0
    status = torch.where(unset & fitted, CONVERGED, status)
    status = torch.where(unset & ~fitted, STALLED, status)
    bad = ~torch.isfinite(theta).all(-1) | ~torch.isfinite(loss)
    status = torch.where(bad, DIVERGED, status)
    info = {"t": t_out, "pieces": pieces_out, "drift": torch.zeros(B, dtype=F64, device=dev)}
    return SolveResult(theta=theta, status=status, loss=loss, info=info)


__all__ = ["solve_exact", "tighten"]
