r"""One linear piece of the exact single-neuron flow, and where it ends (exact solver).

With every point on a side s_i (slope c_i = pos or neg), GF is dw/dt = −A w + b with
A = Xᵀ diag(m c²) X and b = Xᵀ diag(m c) y (:func:`piece_system`). Along the piece
z_i(t) = L_i + Σ_k a_ik e^{−λ_k t}; :func:`next_switch` finds the first t > 0 where some
G_i(t) = s_i z_i(t) turns negative (Descartes' rule of signs bounds the roots; limits on the kink
are decided by the slowest significant term), and :func:`leave_dir` the side a point on the kink
leaves to: the sign of the first significant derivative ⟨x_i, (−A)^{j−1} r⟩. The full statement
is the docstring of :mod:`ibtest.solve.solvers.exact`.
"""
from __future__ import annotations

import torch

from ibtest.solve.solvers.exact_roots import bracket_roots, refine
from ibtest.solve.solvers.exact_tol import CLUSTER_TOL, COARSE, DERIV_TOL, F64, LIMIT_TOL, T_HI, T_LO, Tensor


def bmv(M: Tensor, v: Tensor) -> Tensor:
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def side_slope(side: Tensor, pos: float, neg: float) -> Tensor:
    """pos where side > 0, else neg (float64)."""
    return torch.where(side > 0, torch.tensor(pos, dtype=F64, device=side.device),
                       torch.tensor(neg, dtype=F64, device=side.device))


def piece_system(Xw: Tensor, yw: Tensor, mw: Tensor, side: Tensor, pos: float, neg: float):
    c = side_slope(side, pos, neg) * mw
    Xc = Xw * c.unsqueeze(-1)
    A = Xc.transpose(1, 2) @ Xc
    b = bmv(Xc.transpose(1, 2), yw)
    return A, b


def leave_dir(A: Tensor, r: Tensor, Xw: Tensor, xn: Tensor, r_round: Tensor | None = None) -> Tensor:
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
        D = bmv(Xw, v)
        sig = (D.abs() > DERIV_TOL * xn * scale.unsqueeze(-1)) & ~decided
        ell = torch.where(sig, torch.sign(D), ell)
        decided |= sig
        v = -bmv(A, v)
        scale = scale * an
    return ell



def next_switch(lam, posk, a, L, side, zero, cand, scale, grid: int, root_tol: float):
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
        found, lo, hi, flo, fhi = bracket_roots(s_, L_, A_, lm, T_LO / fast, T_HI / slow_, m, dips, df)
        f = found
        parts.append((bi[f], pi[f], s_[f], L_[f], A_[f], lm[f], lo[f], hi[f], flo[f], fhi[f]))
    if parts:
        bi, pi, s_, L_, A_, lm, lo, hi, flo, fhi = (torch.cat(c) for c in zip(*parts))
        # only brackets that can hold the first root of their instance
        minhi = torch.full((J,), float("inf"), dtype=F64, device=dev)
        minhi.scatter_reduce_(0, bi, hi, reduce="amin")
        near = lo <= minhi[bi]
        bi, pi = bi[near], pi[near]
        r = refine(s_[near], L_[near], A_[near], lm[near], lo[near], hi[near], flo[near], fhi[near], root_tol)
        tstar.scatter_reduce_(0, bi, r, reduce="amin")
        sw = r <= tstar[bi] * (1 + 8 * root_tol) + 1e-300
        switch[bi[sw], pi[sw]] = True
    return tstar, switch


