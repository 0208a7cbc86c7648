r"""The first sign change of G(t) = s·(L + Σ_k a_k e^{−λ_k t}) on t > 0, batched (exact solver).

G_i is a point's signed pre-activation along one linear piece (:mod:`ibtest.solve.solvers.exact`).
:func:`exp_sum` evaluates it with its rounding allowance NOISE·(|L| + Σ_k |a_k| e^{−λ_k t}) (a value
counts as negative only below minus that, and minus the point's defect δ); :func:`bracket_roots` and
:func:`fine_brackets` find the first grid interval on a log grid t_lo … t_hi where G changes sign,
refining discrete local minima (dips between grid points, DIP_FRAC); :func:`refine` takes a
bracket [lo, hi] with G(lo) > 0 > G(hi) to the root by Newton's method on G, safeguarded by
bisection, to ``root_tol`` relative.
"""
from __future__ import annotations

import torch

from ibtest.solve.solvers.exact_tol import DIP_FRAC, EPS, F64, NOISE, Tensor


def exp_sum(t: Tensor, s: Tensor, L: Tensor, a: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """G = s(L + Σ_k a_k e^{−λ_k t}) and its rounding allowance; t [P, m] -> [P, m]."""
    E = (-lam).unsqueeze(-1) * t.unsqueeze(1)  # [P, d, m]
    E.exp_()
    both = torch.stack([a, a.abs()], dim=1) @ E  # [P, 2, m]
    g = L.unsqueeze(-1) + both[:, 0]
    noise = NOISE * (L.abs().unsqueeze(-1) + both[:, 1])
    return s.unsqueeze(-1) * g, noise


def exp_sum_value(t: Tensor, s: Tensor, L: Tensor, a: Tensor, lam: Tensor) -> Tensor:
    return s * (L + (a * torch.exp(-lam * t.unsqueeze(-1))).sum(-1))


def log_grid(lo: Tensor, hi: Tensor, m: int) -> Tensor:
    """[P, m+1]: 0 then m log-spaced points from lo to hi."""
    f = torch.linspace(0.0, 1.0, m, dtype=F64, device=lo.device)
    g = torch.exp(torch.log(lo).unsqueeze(-1) + torch.log(hi / lo).unsqueeze(-1) * f)
    return torch.cat([torch.zeros_like(lo).unsqueeze(-1), g], dim=-1)


def bracket_roots(s, L, a, lam, t_lo, t_hi, m: int, dips: bool, defect: Tensor | None = None,
              chunk: int = 4096):
    """First bracket of a root of G on [0, t_hi] for each pair.

    Returns (found [P] bool, lo, hi, flo, fhi); with ``dips`` also discrete local minima before
    the first sign change are refined and a dip below zero yields an earlier bracket (the fine
    grid, evaluated where needed: see :func:`fine_brackets`).
    """
    if defect is None:
        defect = torch.zeros_like(L)
    if dips:
        return fine_brackets(s, L, a, lam, t_lo, t_hi, m, defect)
    P = s.shape[0]
    out_found = torch.zeros(P, dtype=torch.bool, device=s.device)
    out = torch.zeros(4, P, dtype=F64, device=s.device)
    for c0 in range(0, P, chunk):
        sl = slice(c0, min(P, c0 + chunk))
        tg = log_grid(t_lo[sl], t_hi[sl], m)
        g, nz = exp_sum(tg, s[sl], L[sl], a[sl], lam[sl])
        neg = g < -(nz + defect[sl].unsqueeze(-1))
        neg[:, 0] = False
        has = neg.any(-1)
        jf = torch.where(has, neg.to(torch.uint8).argmax(-1), torch.full_like(has, m + 1, dtype=torch.int64))
        p = torch.arange(sl.stop - sl.start, device=s.device)
        jc = jf.clamp(max=m)
        out_found[sl] = has
        out[0, sl], out[1, sl] = tg[p, jc - 1], tg[p, jc]
        out[2, sl], out[3, sl] = g[p, jc - 1].clamp_min(1e-300), g[p, jc]
    return out_found, out[0], out[1], out[2], out[3]


#: fine-grid points per interval of the certificate subgrid
STRIDE = 8


def fine_brackets(s, L, a, lam, t_lo, t_hi, m: int, defect: Tensor):
    r"""The fine-grid bracket of :func:`bracket_roots` (``dips``), evaluating the grid where needed.

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
        parts = [fine_brackets(s[c:c + chunk], L[c:c + chunk], a[c:c + chunk], lam[c:c + chunk],
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

    def times(pi, j):  # fine grid points t_j of pairs pi (identical to log_grid's values)
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
        gmin = exp_sum_value(tm, S, Lp, A_, lm)
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


def refine(s, L, a, lam, lo, hi, flo, fhi, root_tol: float, max_iter: int = 100) -> Tensor:
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


