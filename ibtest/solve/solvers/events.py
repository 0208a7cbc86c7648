r"""Dense output of the ``adaptive`` solver's Runge–Kutta steps and event location on it.

Dense output. A step of size h from θ_old with stages K_s has the interpolant

    θ(x) = θ_old + Σ_{k=1}^{deg} x^k C_k,      C_k = h Σ_s U_ks K_s,      x ∈ [0, 1],

in monomial form: DOP853's 7th-order interpolant (three extra stages, Hairer's ``CONTD8``
coefficients as scipy ships them, rewritten from the nested x/(1 − x) form into monomials) and
Dormand–Prince 5(4)'s free 4th-order one (scipy's ``RK45.P``). θ(0) = θ_old and θ(1) = θ_new
to rounding.

Events. A kink z_e = ⟨w_j, x_i⟩ is linear in θ, so along the interpolant it is the polynomial
z_e(x) = z_e(0) + Σ_k x^k z_e(C_k): its coefficients cost one pre-activation product per
coefficient vector, and locating where it changes sign needs no field evaluation.
:func:`first_crossing` samples the signed polynomials at ``SAMPLES`` points, takes per row the
first sample interval in which an entry is past its kink beyond rounding, and refines the
entries of that interval by the Illinois method (each row iterates until its own bracket is at
rounding, at most a fixed number of times, so that a row's answer does not depend on the other
rows of its batch). :func:`first_root` does the same for a
function that needs evaluating (the held kinks' conditions, one field evaluation per iteration).

Why by hand: scipy's ``solve_ivp`` locates events per instance (one Python call per instance
and step), and torchode has no event location; the batched interpolant and root finding are a
few tensor operations on top of the stages the step already has.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Tensor = torch.Tensor
EPS = torch.finfo(torch.float64).eps
#: sample points of the interpolant per step at which sign changes are looked for
SAMPLES = 16
#: Illinois iterations of a root refinement (superlinear: a simple root to rounding from a
#: bracket of 1/SAMPLES of the step; the result is the right end of the last bracket, past the root)
ILLINOIS = 8


def _dop853_dense() -> tuple[np.ndarray, np.ndarray]:
    """(U [7, 16], A_extra [3, 16]) of DOP853's dense output in monomial form."""
    from scipy.integrate._ivp import dop853_coefficients as c

    P = np.polynomial.polynomial
    # θ(x) − θ_old = x(F0 + (1−x)(F1 + x(F2 + (1−x)(F3 + x(F4 + (1−x)(F5 + x F6)))))),
    # expanded per F_j into monomials x^1..x^7: T [7, 7] (row k − 1: the coefficient of x^k)
    T = np.zeros((7, 7))
    for j in range(7):
        poly: np.ndarray = np.zeros(1)
        for i in range(6, -1, -1):  # innermost first: F6, F5, ..., F0
            poly = np.asarray(P.polyadd(poly, [1.0] if i == j else [0.0]))
            poly = np.asarray(P.polymul(poly, [0.0, 1.0] if (6 - i) % 2 == 0 else [1.0, -1.0]))
        coef = np.zeros(8)
        coef[: len(poly)] = poly
        T[:, j] = coef[1:]
    n_ext = c.N_STAGES_EXTENDED  # 16
    b = np.zeros(n_ext)
    b[: c.N_STAGES] = c.B  # Δθ = h Σ b_s K_s
    f_old = np.zeros(n_ext)
    f_old[0] = 1.0
    f_new = np.zeros(n_ext)
    f_new[c.N_STAGES] = 1.0
    # F0 = Δθ, F1 = h f_old − Δθ, F2 = 2Δθ − h(f_new + f_old), F3..F6 = h D K (all over h)
    Fs = [b, f_old - b, 2 * b - f_new - f_old] + [c.D[k] for k in range(4)]
    U = T @ np.stack(Fs)
    A_extra = c.A[c.N_STAGES + 1: n_ext, :n_ext]
    return U, A_extra


def _dopri5_dense() -> np.ndarray:
    """U [4, 7] of Dormand–Prince 5(4)'s dense output (scipy's ``RK45.P``, already monomial)."""
    from scipy.integrate._ivp.rk import RK45

    return np.asarray(RK45.P).T.copy()


class DenseOutput:
    """The interpolant of one method (``order`` 8: DOP853, 5: Dormand–Prince 5(4))."""

    def __init__(self, order: int, device: torch.device | None = None) -> None:
        if order == 8:
            U, A_extra = _dop853_dense()
        else:
            U, A_extra = _dopri5_dense(), np.zeros((0, 7))
        f64 = torch.float64
        self.U = torch.tensor(U, dtype=f64, device=device)  # [deg, S_ext]
        self.deg = self.U.shape[0]
        #: rows of the extra stages: A_extra[e, :s] for stage s = S + 1 + e
        self.A_extra = [torch.tensor(A_extra[e, : A_extra.shape[1] - A_extra.shape[0] + e], dtype=f64, device=device)
                        for e in range(A_extra.shape[0])]

    def extend(self, F: Callable[[Tensor], Tensor], th: Tensor, K: Tensor, h: Tensor) -> Tensor:
        """The stages K [S+1, b, P] extended by the interpolant's extra stages (field F of θ
        [b, P] on these rows), [S_ext, b, P]."""
        if not self.A_extra:
            return K
        S1, b, P = K.shape
        Ke = torch.empty(S1 + len(self.A_extra), b, P, dtype=K.dtype, device=K.device)
        Ke[:S1] = K
        hc = h.unsqueeze(-1)
        for e, a in enumerate(self.A_extra):
            s = S1 + e
            dy = (a @ Ke[:s].reshape(s, b * P)).view(b, P)
            Ke[s] = F(torch.addcmul(th, hc, dy))
        return Ke

    def coefficients(self, Ke: Tensor, h: Tensor) -> Tensor:
        """C [deg, b, P]: θ(x) = θ_old + Σ_k x^k C_k (k = 1..deg)."""
        S, b, P = Ke.shape
        flat = Ke.reshape(S, b * P)
        # one vector @ matrix per coefficient (a matrix product's rounding may depend on the
        # batch size, and an instance's bits must not)
        C = torch.stack([(u @ flat).view(b, P) for u in self.U])
        return C * h.view(1, b, 1)


def horner(c0: Tensor, C: Tensor, x: Tensor) -> Tensor:
    """c0 + Σ_{k=1}^{deg} x^k C_k for coefficients C [deg, ...] and x broadcastable to c0."""
    acc = C[-1]
    for k in range(C.shape[0] - 2, -1, -1):
        acc = C[k] + x * acc
    return c0 + x * acc


def first_crossing(z0: Tensor, Zc: Tensor, side: Tensor, cand: Tensor, tol: Tensor) -> tuple[Tensor, Tensor]:
    """The first time each row's candidate kink entries cross against their side.

    z0 [b, E] pre-activations at x = 0, Zc [deg, b, E] their interpolant coefficients, side
    [b, E] ±1 (the side of the kink each entry's pattern says it is on), cand [b, E] the entries
    to watch (free entries seen past their kink at a stage point or at the end of the step), tol
    [b, E] the rounding allowance of z. An entry is past its kink where side·z < −tol. Returns
    (x_event [b] in [0, 1], inf where no candidate crosses; hit [b, E]: the entries at their kink
    at x_event, i.e. whose own root is at x_event to the refinement's resolution). An entry
    already past its kink within rounding at the start of its interval crosses at that start."""
    b, E = z0.shape
    dev = z0.device
    x_ev = torch.full((b,), float("inf"), dtype=z0.dtype, device=dev)
    hit = torch.zeros(b, E, dtype=torch.bool, device=dev)
    ri, ei = cand.nonzero(as_tuple=True)
    if ri.numel() == 0:
        return x_ev, hit
    s = side[ri, ei]
    c0 = z0[ri, ei]
    cc = Zc[:, ri, ei]  # [deg, c]
    tl = tol[ri, ei]
    xs = torch.arange(1, SAMPLES + 1, dtype=z0.dtype, device=dev) / SAMPLES  # [Q]
    gz = s * horner(c0, cc.unsqueeze(1), xs.view(-1, 1))  # [Q, c]
    past = gz < -tl
    qi = torch.arange(SAMPLES, device=dev).view(-1, 1)
    q_e = torch.where(past, qi, SAMPLES).amin(0)  # [c] first sample past its kink
    q_r = torch.full((b,), SAMPLES, dtype=q_e.dtype, device=dev).scatter_reduce(0, ri, q_e, reduce="amin")
    # the row's earliest interval: refine the candidates past their kink first in it
    keep = (q_e == q_r[ri]) & (q_e < SAMPLES)
    if not bool(keep.any()):
        return x_ev, hit
    ri, ei, s, c0, cc, q = ri[keep], ei[keep], s[keep], c0[keep], cc[:, keep], q_e[keep]
    a = q.to(z0.dtype) / SAMPLES
    bb = (q + 1).to(z0.dtype) / SAMPLES

    def g(x: Tensor) -> Tensor:
        return s * horner(c0, cc, x)

    root = illinois(g, a, bb, g(a), g(bb))
    x_ev.scatter_reduce_(0, ri, root, reduce="amin")
    # simultaneous: the entries whose root is the row's event time to the refinement's resolution
    same = root <= x_ev[ri] * (1.0 + 1e-12) + 1e-15
    hit[ri[same], ei[same]] = True
    return x_ev, hit


def illinois(g: Callable[..., Tensor], a: Tensor, b: Tensor, ga: Tensor, gb: Tensor,
             iters: int = ILLINOIS, partial: bool = False, xtol: float = 0.0) -> Tensor:
    """A point x ∈ (a, b] with g(x) ≤ 0 within the refinement's resolution of g's first root
    after a, for g(a) > 0 ≥ g(b) (elementwise; where g(a) ≤ 0 already, a itself). Illinois
    (modified regula falsi) for at most ``iters`` iterations; returns the right end of the final
    bracket, so that g ≤ 0 there (the event has happened).

    A row whose bracket has shrunk to rounding (hi − lo ≤ max(2·eps·hi, ``xtol``)) or whose
    right end is an exact root is *frozen*: it takes no further update, so its answer depends on
    its own iterations only (not on how long the other rows of the batch need), and the loop ends
    when every row is frozen: a simple root takes ~5–10 evaluations of g, not ``iters``. Near
    the root g is rounding noise, where the bracket can creep: ``xtol`` stops a row whose bracket
    is that narrow (the leave roots: 1e-13 of the step).

    ``partial``: g is called as g(x_rows, rows) on the rows not frozen only (rows [k] ascending
    indices): for a g that costs a field evaluation per row (a held kink's conditions), the
    rows that have converged are not evaluated again."""
    at_a = ga <= 0
    lo, hi, glo, ghi = a.clone(), b.clone(), ga.clone(), gb.clone()
    side = torch.zeros_like(a)  # +1: the last two updates moved lo; −1: hi
    tiny = torch.finfo(a.dtype).tiny

    def small(lo: Tensor, hi: Tensor) -> Tensor:
        return hi - lo <= torch.clamp_min(2 * EPS * hi.abs(), max(xtol, tiny))

    done = at_a | small(lo, hi)
    for _ in range(iters):
        if bool(done.all()):
            break
        den = glo - ghi
        x = torch.where(den > 0, lo + (hi - lo) * (glo / den.clamp_min(1e-300)), 0.5 * (lo + hi))
        x = torch.minimum(torch.maximum(x, lo), hi)
        if partial:
            act = (~done).nonzero().squeeze(-1)
            gx = torch.zeros_like(x)
            gx[act] = g(x[act], act)
        else:
            gx = g(x)
        up = (gx > 0) & ~done
        dn = ~(gx > 0) & ~done
        lo = torch.where(up, x, lo)
        glo = torch.where(up, gx, glo)
        hi = torch.where(dn, x, hi)
        ghi = torch.where(dn, gx, ghi)
        # Illinois: halve the value of the end that stayed twice in a row
        glo = torch.where(dn & (side < 0), 0.5 * glo, glo)
        ghi = torch.where(up & (side > 0), 0.5 * ghi, ghi)
        side = torch.where(up, torch.ones_like(side), torch.where(dn, -torch.ones_like(side), side))
        done = done | small(lo, hi) | (ghi == 0)
    return torch.where(at_a, a, hi)


def first_root(g: Callable[[Tensor], Tensor], g1: Tensor, iters: int = ILLINOIS) -> Tensor:
    """x ∈ (0, 1] with g(x) ≤ 0 at the first root of g on the row's interval, for rows with
    g(0) > 0 ≥ g(1) = ``g1`` [r] (:func:`illinois`; g(0) is evaluated here)."""
    a = torch.zeros_like(g1)
    b = torch.ones_like(g1)
    return illinois(g, a, b, g(a), g1, iters)
