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
refined by Illinois with bisection safeguards to ``root_tol`` relative.  A grid value counts as
negative only below −64·eps·(|L| + Σ|a_ik| e^{−λ_k t}), so rounding never triggers a switch.

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
inconsistent points flip, repeatedly.  No consistent pattern: Filippov sliding, status SLIDING.
Points with x_i = 0 (padding included) never switch.

Result: θ = w∞ of the last piece (exact limit), status CONVERGED (loss ≤ fit_tol), STALLED,
BUDGET (max_pieces pieces used; θ = the current iterate), SLIDING, or DIVERGED (non-finite);
info: ``t`` time of the last switch, ``pieces`` linear pieces traversed, ``drift`` zeros.
"""
from __future__ import annotations

from typing import Any

import torch

from ..specs import PiecewiseLinearNeuron, SolveResult
from ..status import BUDGET, CONVERGED, DIVERGED, SLIDING, STALLED

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


def _leave_dir(A: Tensor, r: Tensor, Xw: Tensor, xn: Tensor) -> Tensor:
    """Sign of the first significant derivative of z_i(t) − z_i(0) under dw/dt = r − A(w − w0)."""
    d = A.shape[-1]
    an = torch.linalg.matrix_norm(A)
    scale = r.norm(dim=-1)
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
    E = torch.exp(-lam.unsqueeze(-1) * t.unsqueeze(1))  # [P, d, m]
    g = L.unsqueeze(-1) + (a.unsqueeze(1) @ E).squeeze(1)
    noise = NOISE * (L.abs().unsqueeze(-1) + (a.abs().unsqueeze(1) @ E).squeeze(1))
    return s.unsqueeze(-1) * g, noise


def _G1(t: Tensor, s: Tensor, L: Tensor, a: Tensor, lam: Tensor) -> Tensor:
    return s * (L + (a * torch.exp(-lam * t.unsqueeze(-1))).sum(-1))


def _dG1(t: Tensor, s: Tensor, a: Tensor, lam: Tensor) -> Tensor:
    return -s * (a * lam * torch.exp(-lam * t.unsqueeze(-1))).sum(-1)


def _log_grid(lo: Tensor, hi: Tensor, m: int) -> Tensor:
    """[P, m+1]: 0 then m log-spaced points from lo to hi."""
    f = torch.linspace(0.0, 1.0, m, dtype=F64, device=lo.device)
    g = torch.exp(torch.log(lo).unsqueeze(-1) + torch.log(hi / lo).unsqueeze(-1) * f)
    return torch.cat([torch.zeros_like(lo).unsqueeze(-1), g], dim=-1)


def _brackets(s, L, a, lam, t_lo, t_hi, m: int, dips: bool, chunk: int = 4096):
    """First bracket of a root of G on [0, t_hi] for each pair.

    Returns (found [P] bool, lo, hi, flo, fhi); with ``dips`` also discrete local minima before
    the first sign change are refined and a dip below zero yields an earlier bracket.
    """
    P = s.shape[0]
    out_found = torch.zeros(P, dtype=torch.bool)
    out = torch.zeros(4, P, dtype=F64)
    for c0 in range(0, P, chunk):
        sl = slice(c0, min(P, c0 + chunk))
        tg = _log_grid(t_lo[sl], t_hi[sl], m)
        g, nz = _G(tg, s[sl], L[sl], a[sl], lam[sl])
        neg = g < -nz
        neg[:, 0] = False
        has = neg.any(-1)
        jf = torch.where(has, neg.to(torch.uint8).argmax(-1), torch.full_like(has, m + 1, dtype=torch.int64))
        p = torch.arange(sl.stop - sl.start)
        jc = jf.clamp(max=m)
        lo = tg[p, jc - 1]
        hi = tg[p, jc]
        flo = g[p, jc - 1].clamp_min(1e-300)
        fhi = g[p, jc]
        if dips:
            gm, gj, gp = g[:, :-2], g[:, 1:-1], g[:, 2:]
            nj = nz[:, 1:-1]
            mag = nj / NOISE
            jj = torch.arange(1, m, device=g.device)
            cand = ((gm > gj + nj) & (gp >= gj) & (gj >= -nj) & (gj <= DIP_FRAC * mag)
                    & (jj.unsqueeze(0) < jf.unsqueeze(-1)))
            if bool(cand.any()):
                pi, ji = cand.nonzero(as_tuple=True)
                j = ji + 1
                a_, b_ = tg[pi, j - 1], tg[pi, j + 1]
                S, Lp, A_, lm = s[sl][pi], L[sl][pi], a[sl][pi], lam[sl][pi]
                for _ in range(48):  # bisection on G' (G' < 0 left of the minimum)
                    mid = 0.5 * (a_ + b_)
                    up = _dG1(mid, S, A_, lm) >= 0
                    b_ = torch.where(up, mid, b_)
                    a_ = torch.where(up, a_, mid)
                tm = 0.5 * (a_ + b_)
                gmin = _G1(tm, S, Lp, A_, lm)
                nmin = NOISE * (Lp.abs() + (A_.abs() * torch.exp(-lm * tm.unsqueeze(-1))).sum(-1))
                dip = gmin < -nmin
                if bool(dip.any()):
                    pi, j, tm, gmin = pi[dip], j[dip], tm[dip], gmin[dip]
                    # earliest dip per pair (ji ascending within a pair after nonzero())
                    key = torch.full((sl.stop - sl.start,), m + 2, dtype=torch.int64)
                    key.scatter_reduce_(0, pi, j, reduce="amin")
                    first = j == key[pi]
                    pi, j, tm, gmin = pi[first], j[first], tm[first], gmin[first]
                    # j < jf: the dip bracket [t_{j-1}, t_min] precedes the first sign change
                    has[pi] = True
                    lo[pi] = tg[pi, j - 1]
                    hi[pi] = tm
                    flo[pi] = g[pi, j - 1].clamp_min(1e-300)
                    fhi[pi] = gmin
        out_found[sl] = has
        out[0, sl], out[1, sl], out[2, sl], out[3, sl] = lo, hi, flo, fhi
    return out_found, out[0], out[1], out[2], out[3]


def _refine(s, L, a, lam, lo, hi, flo, fhi, root_tol: float, max_iter: int = 100) -> Tensor:
    """Root of G in [lo, hi] (G(lo) > 0 > G(hi)): Newton safeguarded by the bracket.

    A Newton step that leaves the bracket is replaced by a bisection (in log t while the
    bracket spans more than a factor 2).  Stops when the step or the bracket is below
    ``root_tol`` relative; returns the last iterate.
    """
    x = torch.where(lo > 0, torch.sqrt(lo * hi), 0.5 * (lo + hi))
    done = torch.zeros_like(lo, dtype=torch.bool)
    for _ in range(max_iter):
        E = torch.exp(-lam * x.unsqueeze(-1))
        aE = a * E
        f = s * (L + aE.sum(-1))
        fp = -s * (aE * lam).sum(-1)
        neg = f < 0
        hi = torch.where(neg & ~done, x, hi)
        lo = torch.where(~neg & ~done, x, lo)
        xn = x - f / fp
        ok = torch.isfinite(xn) & (xn > lo) & (xn < hi)
        bis = torch.where((lo > 0) & (hi > 2 * lo), torch.sqrt(lo * hi), 0.5 * (lo + hi))
        xn = torch.where(ok, xn, bis)
        conv = ((xn - x).abs() <= root_tol * x.abs()) | ((hi - lo) <= root_tol * hi) | (f == 0)
        conv = conv & ok | ((hi - lo) <= root_tol * hi) | (f == 0)
        x = torch.where(done, x, torch.where(f == 0, x, xn))
        done |= conv
        if bool(done.all()):
            break
    return x


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
        s_, L_, A_, lm = side[bi, pi], Lt[bi, pi], At[bi, pi], Lam[bi, pi]
        lpos = torch.where(A_ != 0, lm, float("nan"))
        fast = torch.nan_to_num(lpos, nan=0.0).amax(-1)
        slow_ = torch.nan_to_num(lpos, nan=float("inf")).amin(-1)
        found, lo, hi, flo, fhi = _brackets(s_, L_, A_, lm, T_LO / fast, T_HI / slow_, m, dips)
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
                max_pieces: int = 64, grid: int = 192) -> SolveResult:
    """Exact GF limit of B single-neuron instances (see the module docstring)."""
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
                ell = _leave_dir(A[J], r, Xw[J], xn[J])
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
            lam, Q = torch.linalg.eigh(A[go])
            lmax = lam[:, -1:].clamp_min(0.0)
            posk = lam > EIG_TOL * lmax
            posk &= lmax > 0
            wg = w[go]
            u0 = _bmv(Q.transpose(1, 2), wg)
            beta = _bmv(Q.transpose(1, 2), b[go])
            uinf = torch.where(posk, beta / torch.where(posk, lam, 1.0), u0)
            du = u0 - uinf
            wi = _bmv(Q, uinf)
            winf[go] = wi
            if can_switch:
                XQ = Xw[go] @ Q
                a = XQ * du.unsqueeze(1)
                zg = z[go]
                zeta = torch.where(zero[go], 0.0, zg)
                L = zeta - a.sum(-1)
                scale = xn[go] * (wg.norm(dim=-1) + wi.norm(dim=-1)).unsqueeze(-1) + 1e-300
                cand = live[go] & (a != 0).any(-1)
                # a point never crosses if s·L + Σ min(s·a_k, 0) > 0 (every e^{−λt} ∈ (0, 1])
                sd = side[go]
                lb = sd * L + torch.clamp(sd.unsqueeze(-1) * a, max=0.0).sum(-1)
                cand &= ~(lb > 0)
                tstar = torch.full((go.numel(),), float("inf"), dtype=F64, device=dev)
                sw = torch.zeros_like(cand)
                ci = cand.any(1).nonzero().squeeze(1)
                if ci.numel():
                    ts, swc = _next_switch(lam[ci], posk[ci], a[ci], L[ci], sd[ci], zero[go][ci],
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
    unset = status < 0
    status = torch.where(unset & (loss <= fit_tol), CONVERGED, status)
    status = torch.where(unset & (loss > fit_tol), STALLED, status)
    bad = ~torch.isfinite(theta).all(-1) | ~torch.isfinite(loss)
    status = torch.where(bad, DIVERGED, status)
    info = {"t": t_out, "pieces": pieces_out, "drift": torch.zeros(B, dtype=F64, device=dev)}
    return SolveResult(theta=theta, status=status, loss=loss, info=info)


__all__ = ["solve_exact", "tighten"]
