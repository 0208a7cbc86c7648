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

Modules
-------
This module holds the piece loop (:func:`solve_exact`). Its parts: the tolerances
(:mod:`~ibtest.solve.solvers.exact_tol`), the first sign change of an exponential sum
(:mod:`~ibtest.solve.solvers.exact_roots`), one piece's system, leave directions and next switch
(:mod:`~ibtest.solve.solvers.exact_piece`), and exact rescaling and batch splitting
(:mod:`~ibtest.solve.solvers.exact_scale`).
"""
from __future__ import annotations

from typing import Any

import torch

from ibtest.base.status import BUDGET, CONVERGED, DIVERGED, SLIDING, STALLED
from ibtest.plugin.specs import DEFAULT_FIT_TOL, PiecewiseLinearNeuron, SolveResult
from ibtest.solve.fit import scale_of
from ibtest.solve.solvers.exact_piece import bmv, leave_dir, next_switch, piece_system, side_slope
from ibtest.solve.solvers.exact_scale import concat_results, denormalize, normalize, workers_for
from ibtest.solve.solvers.exact_spec import DEFAULTS
from ibtest.solve.solvers.exact_tol import (
    DERIV_TOL,
    F64,
    ROUND_R,
    START_ZERO,
    SV_TOL,
    Tensor,
)


def _spectrum(Xw: Tensor, yw: Tensor, mw: Tensor, side: Tensor, pos: float, neg: float
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A piece's rates and directions from the SVD of M = diag(c) X (c = slope·mask; A = MᵀM,
    b = Mᵀy): λ = σ² ascending [B, d], Q = V [B, d, d], which are moving (σ > SV_TOL·σ_max) and
    (Uᵀy)_k [B, d] so that u∞_k = (Uᵀy)_k / σ_k on them. The SVD of M resolves σ down to
    eps·σ_max, where an eigendecomposition of A resolves λ only down to eps·λ_max: data with a
    direction of σ = 1e-10·σ_max (A's λ = 1e-20·λ_max) still flows to its exact limit along it."""
    c = side_slope(side, pos, neg) * mw
    M = Xw * c.unsqueeze(-1)
    n, d = M.shape[-2:]
    U, S, Vh = torch.linalg.svd(M, full_matrices=True)
    k = S.shape[-1]
    sig = torch.cat([S, S.new_zeros(S.shape[0], d - k)], -1) if k < d else S
    ry = bmv(U.transpose(1, 2), yw)[:, :k]
    ry = torch.cat([ry, ry.new_zeros(ry.shape[0], d - k)], -1) if k < d else ry
    smax = sig[:, :1]
    posk = (sig > SV_TOL * max(n, d) * smax) & (smax > 0)
    # ascending, as eigh orders them (the slowest rate first)
    return sig.flip(-1) ** 2, Vh.transpose(1, 2).flip(-1), posk.flip(-1), ry.flip(-1)


def tighten(options: dict[str, Any]) -> dict[str, Any]:
    """Settings of a re-solve with a smaller error (used to measure the solver error)."""
    out = dict(options)
    out["root_tol"] = max(float(out.get("root_tol", DEFAULTS["root_tol"])) / 1e3, 1e-16)
    out["grid"] = int(out.get("grid", DEFAULTS["grid"])) * 2
    return out



# ----------------------------------------------------------------------------------------------
# the solver
# ----------------------------------------------------------------------------------------------
def solve_exact(X: Tensor, y: Tensor, mask: Tensor | None, w0: Tensor,
                neuron: PiecewiseLinearNeuron, *, fit_tol: float = DEFAULT_FIT_TOL,
                root_tol: float = DEFAULTS["root_tol"], max_pieces: int = DEFAULTS["max_pieces"],
                grid: int = DEFAULTS["grid"], threads: int = 1, workers: int = DEFAULTS["workers"]) -> SolveResult:
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
    k = workers_for(workers, B)
    prev = torch.get_num_threads()
    change = bool(threads) and threads != prev
    if change:
        torch.set_num_threads(int(threads))

    def part(sl: slice) -> SolveResult:
        with torch.no_grad():
            ms = None if mask is None else mask[sl]
            Xs, ys, ws, cx, a = normalize(X[sl], y[sl], ms, w0[sl])
            res = _solve_exact(Xs, ys, ms, ws, neuron, fit_tol=fit_tol, root_tol=root_tol, max_pieces=max_pieces, grid=grid)
            return denormalize(res, cx, a)

    try:
        if k <= 1:
            return part(slice(0, B))
        from concurrent.futures import ThreadPoolExecutor

        cuts = [B * i // k for i in range(k + 1)]
        with ThreadPoolExecutor(k) as ex:
            parts = list(ex.map(part, [slice(cuts[i], cuts[i + 1]) for i in range(k)]))
        return concat_results(parts)
    finally:
        if change:
            torch.set_num_threads(prev)


#: most worker threads ``workers=0`` picks, and the smallest share of the batch worth a thread

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
    z = bmv(Xw, w)
    zero = live & (z.abs() <= START_ZERO * xn * w.norm(dim=-1, keepdim=True))
    side = side_slope(z, 1.0, -1.0)
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
            c = torch.where(fJ, az, side_slope(side[J], pos, neg)) * mw[J]
            res = c * (yw[J] - c * z[J])
            v = bmv(Xw[J].transpose(1, 2), res)
            vn = v.norm(dim=-1)
            stat = vn <= 1e-13 * (res.abs() * xn[J]).sum(-1)
            vz = bmv(Xw[J], v)
            sg = torch.where(vz.abs() > DERIV_TOL * xn[J] * vn.unsqueeze(-1), torch.sign(vz),
                             torch.full_like(vz, default_side))
            side[J] = torch.where(fJ, sg, side[J])
            done[J[stat]] = True
            fresh = torch.zeros_like(fresh)

        # -- the pattern of this piece, made consistent on the kink -------------------------
        A, b = piece_system(Xw, yw, mw, side, pos, neg)
        if can_switch:
            J = (zero.any(1) & ~done).nonzero().squeeze(1)
            kmax = 2 * n + 2
            for it in range(kmax + 1):
                if J.numel() == 0:
                    break
                r = b[J] - bmv(A[J], w[J])
                r_round = ROUND_R * (b[J].norm(dim=-1)
                                     + torch.linalg.matrix_norm(A[J]) * w[J].norm(dim=-1))
                ell = leave_dir(A[J], r, Xw[J], xn[J], r_round)
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
                    inc[torch.arange(J.numel(), device=inc.device), first] = True
                side[J] = torch.where(inc, -side[J], side[J])
                A[J], b[J] = piece_system(Xw[J], yw[J], mw[J], side[J], pos, neg)

        # -- closed form of the piece ------------------------------------------------------
        go = (~done).nonzero().squeeze(1)
        winf = w.clone()
        if go.numel():
            allgo = go.numel() == Ba

            def G(t: Tensor, allgo: bool = allgo, go: Tensor = go) -> Tensor:  # rows of the instances that go on
                return t if allgo else t[go]

            lam, Q, posk, ry = _spectrum(G(Xw), G(yw), G(mw), G(side), pos, neg)
            wg = G(w)
            u0 = bmv(Q.transpose(1, 2), wg)
            uinf = torch.where(posk, ry / torch.where(posk, lam.sqrt(), 1.0), u0)
            du = u0 - uinf
            wi = bmv(Q, uinf)
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
                    tstar, sw = next_switch(lam, posk, a, L, sd, zr, cand, scale, grid, root_tol)
                elif ci.numel():
                    ts, swc = next_switch(lam[ci], posk[ci], a[ci], L[ci], sd[ci], zr[ci],
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
                    w[gi] = wg[mv] + bmv(Q[mv], du[mv] * e)
                    z[gi] = bmv(Xw[gi], w[gi])
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

    zf = bmv(Xm, theta)
    f = torch.where(zf > 0, pos * zf, neg * zf)
    r = (f - ym) * m
    loss = 0.5 * (r * r).sum(-1)
    # the study's fit rule: fit_tol relative to the loss scale max(½‖y‖², L(w0)) (ibtest.solve.fit)
    z0 = bmv(Xm, w0)
    r0 = (torch.where(z0 > 0, pos * z0, neg * z0) - ym) * m
    fitted = loss <= fit_tol * scale_of(ym, m, 0.5 * (r0 * r0).sum(-1))
    unset = status < 0
    status = torch.where(unset & fitted, CONVERGED, status)
    status = torch.where(unset & ~fitted, STALLED, status)
    bad = ~torch.isfinite(theta).all(-1) | ~torch.isfinite(loss)
    status = torch.where(bad, DIVERGED, status)
    info = {"t": t_out, "pieces": pieces_out, "drift_estimate": torch.zeros(B, dtype=F64, device=dev)}
    return SolveResult(theta=theta, status=status, loss=loss, info=info)


__all__ = ["solve_exact", "tighten"]
