r"""Batched Rosenbrock (linearly implicit) steps for the flow θ' = f(θ) = −∇L(θ), with the exact
Jacobian −H (H the Hessian of the loss on the current activation pattern).

Form (Hairer & Wanner, *Solving ODEs II*, §IV.7, the "W-transformed" form that needs no
Jacobian–vector products in the stages; autonomous problem):

    (I/(hγ) + H) K_i = f(θ + Σ_{j<i} a_ij K_j) + Σ_{j<i} (c_ij/h) K_j,     i = 1..s
    θ_new = θ + Σ_i m_i K_i,      error estimate = Σ_i e_i K_i.

One factorization of I/(hγ) + H per step, s solves, and one field evaluation per stage whose row
of ``a`` is non-zero (stage 1 uses f(θ); a stage with a zero row reuses it). The systems
(:mod:`ibtest.solve.solvers.stiff_linear`): a batched LU of the dense [b, P, P] matrix (LAPACK:
an instance's answer does not depend on its batch), or, for a Hessian in parts
(:class:`ibtest.HessianParts`, wide networks), the Woodbury identity on its Gauss–Newton factor
and block-diagonal residual term with one refinement step, O(P) instead of O(P³).

Methods (coefficients as published; the tests check the orders numerically):

* ``rodas3``: Sandu et al. (1997), 4 stages, order 3 (embedded 2), stiffly accurate, L-stable.
* ``rodas5``: Di Marzo (1993), "RODAS5(4)" (as in Hairer–Wanner's RODAS code family), 8 stages,
  order 5 (embedded 4), stiffly accurate, L-stable. The last two stages are the stiffly accurate
  "u + K_7", "u + K_8" continuation: a_7j = a_6j, a_76 = 1; a_8j = a_6j, a_86 = a_87 = 1;
  m = (a_6·, 1, 1, 1); the error estimate is K_8.
* ``rodas5p``: Steinebach (2023), "Construction of Rosenbrock–Wanner method Rodas5P and numerical
  benchmarks within the Julia Differential Equations package" (BIT 63:27; the coefficients as
  OrdinaryDiffEq.jl ships them), the same 8-stage stiffly accurate structure as ``rodas5`` with
  coefficients that also satisfy the order conditions of index-1 DAEs up to order 4 (Rodas5:
  lower), i.e. of the limit of a singularly perturbed flow. The default: on W2's slow tails
  past a saddle the flow has a fast mode (λ ≈ 11–50) that tracks the slow motion, a
  singularly perturbed regime in which Rodas5's error shows order reduction. At a state of W2
  seed 0 instance 527 (t = 117) Rodas5's error estimate allows h ≈ 0.32 and Rodas5P's h ≈ 1.6
  (true errors 0.31 and 0.12 of the tolerance there); the instance took 944 Rodas5 steps and
  takes far fewer Rodas5P steps to the same limit (the W2 batch's longest instance: 1,072 →
  664 steps).

Why by hand: scipy's stiff solvers (Radau, BDF, LSODA) take one Python call per instance and
torchode has explicit methods only; a batched Rosenbrock step with a per-row step size is a few
lines on top of ``torch.linalg.lu_factor``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ibtest.plugin.specs import HessianParts
from ibtest.solve.solvers.stiff_linear import shifted_system

Tensor = torch.Tensor


@dataclass(frozen=True)
class RosenbrockTableau:
    """Coefficients of an s-stage Rosenbrock method in W-transformed form (see module doc)."""

    name: str
    gamma: float
    a: tuple[tuple[float, ...], ...]  # s rows, row i has i entries (j < i)
    c: tuple[tuple[float, ...], ...]  # same shape
    m: tuple[float, ...]
    e: tuple[float, ...]
    order: int
    err_order: int  # order of the embedded solution; step-size exponent −1/(err_order + 1)

    @property
    def stages(self) -> int:
        return len(self.m)


RODAS3 = RosenbrockTableau(
    name="rodas3", gamma=0.5,
    a=((), (0.0,), (2.0, 0.0), (2.0, 0.0, 1.0)),
    c=((), (4.0,), (1.0, -1.0), (1.0, -1.0, -8.0 / 3.0)),
    m=(2.0, 0.0, 1.0, 1.0), e=(0.0, 0.0, 0.0, 1.0), order=3, err_order=2)

_A6 = (-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405, 24.13215229196062)
RODAS5 = RosenbrockTableau(
    name="rodas5", gamma=0.19,
    a=((),
       (2.0,),
       (3.040894194418781, 1.041747909077569),
       (2.576417536461461, 1.622083060776640, -0.9089668560264532),
       (2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443),
       _A6,
       _A6 + (1.0,),
       _A6 + (1.0, 1.0)),
    c=((),
       (-10.31323885133993,),
       (-21.04823117650003, -7.234992135176716),
       (32.22751541853323, -4.943732386540191, 19.44922031041879),
       (-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146),
       (-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906, 318.3822534212147),
       (34.20013733472935, -14.15535402717690, 57.82335640988400, 25.83362985412365, 1.408950972071624,
        -6.551835421242162),
       (42.57076742291101, -13.80770672017997, 93.98938432427124, 18.77919633714503, -31.58359187223370,
        -6.685968952921985, -5.810979938412932)),
    m=_A6 + (1.0, 1.0, 1.0), e=(0.0,) * 7 + (1.0,), order=5, err_order=4)

_A6P = (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946)
RODAS5P = RosenbrockTableau(
    name="rodas5p", gamma=0.21193756319429014,
    a=((),
       (3.0,),
       (2.849394379747939, 0.45842242204463923),
       (-6.954028509809101, 2.489845061869568, -10.358996098473584),
       (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
       _A6P,
       _A6P + (1.0,),
       _A6P + (1.0, 1.0)),
    c=((),
       (-14.155112264123755,),
       (-17.97296035885952, -2.859693295451294),
       (147.12150275711716, -1.41221402718213, 71.68940251302358),
       (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
       (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125, -0.6610691825249471),
       (30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783, -19.097331116725623,
        -28.087943162872662),
       (37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047, -40.06618937091002,
        -54.66780262877968, -9.48861652309627)),
    m=_A6P + (1.0, 1.0, 1.0), e=(0.0,) * 7 + (1.0,), order=5, err_order=4)

TABLEAUS = {t.name: t for t in (RODAS3, RODAS5, RODAS5P)}


#: per (tableau, device, dtype): the rows of a and c as vectors (None for an all-zero row), m and e
_COEF: dict[tuple[str, torch.device, torch.dtype],
            tuple[list[Tensor | None], list[Tensor | None], Tensor, Tensor]] = {}


def _coefficients(tab: RosenbrockTableau, like: Tensor) -> tuple[list[Tensor | None], list[Tensor | None], Tensor, Tensor]:
    key = (tab.name, like.device, like.dtype)
    if key not in _COEF:
        def vec(row: tuple[float, ...]) -> Tensor | None:
            if not any(x != 0.0 for x in row):
                return None
            return torch.tensor(row, dtype=like.dtype, device=like.device)
        m = torch.tensor(tab.m, dtype=like.dtype, device=like.device)
        e = torch.tensor(tab.e, dtype=like.dtype, device=like.device)
        _COEF[key] = ([vec(r) for r in tab.a], [vec(r) for r in tab.c], m, e)
    return _COEF[key]


def rosenbrock_step(tab: RosenbrockTableau, field: Callable[[Tensor], Tensor], theta: Tensor, f0: Tensor,
                    h: Tensor, H: Tensor | HessianParts) -> tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
    """One step of ``tab`` for b instances. ``field(θ) -> f`` [b, P], f0 = field(θ), h [b],
    H [b, P, P] the Hessian of the loss (the Jacobian of the field is −H), or the Hessian in parts
    (:class:`ibtest.HessianParts`: its systems solved by :mod:`~ibtest.solve.solvers.stiff_linear`).

    Returns (θ_new, f(θ_new), error vector [b, P], the stage points and θ_new [list of [b, P]],
    the field at each of them [list of [b, P]], already computed by the step); rows whose matrix
    could not be factored get an infinite error.

    The sums Σ_j a_ij K_j, Σ_j c_ij K_j, Σ m_i K_i and Σ e_i K_i are one vector @ matrix product
    each on the flat [s, b·P] view of the stages (as the explicit stages: few tensor operations,
    and rounding that does not depend on the batch size)."""
    b, P = theta.shape
    hc = h.unsqueeze(-1)
    system = shifted_system(H, 1.0 / (tab.gamma * h))
    a_rows, c_rows, m, e = _coefficients(tab, theta)
    s = tab.stages
    K = torch.empty(s, b, P, dtype=theta.dtype, device=theta.device)
    Kf = K.view(s, b * P)
    points: list[Tensor] = []
    fields: list[Tensor] = []
    fi = f0
    for i in range(s):
        ai, ci = a_rows[i], c_rows[i]
        if ai is not None:
            yi = theta + (ai @ Kf[:i]).view(b, P)
            fi = field(yi)
            points.append(yi)
            fields.append(fi)
        rhs = fi if ci is None else fi + (ci @ Kf[:i]).view(b, P) / hc
        K[i] = system.solve(rhs)
    th_new = theta + (m @ Kf).view(b, P)
    err = (e @ Kf).view(b, P)
    bad = system.bad
    if bool(bad.any()):
        err = torch.where(bad.unsqueeze(-1), torch.full_like(err, float("inf")), err)
    f_new = field(th_new)
    points.append(th_new)
    fields.append(f_new)
    return th_new, f_new, err, points, fields


def observed_errors(tab: RosenbrockTableau, steps: tuple[float, ...] = (0.2, 0.1, 0.05)) -> list[float]:
    """Global errors at t = 1 of ``tab`` with the given fixed steps on θ' = −∇L for
    L = ¼Σθ⁴ + ½θᵀAθ (a smooth nonlinear gradient flow); log2 of successive ratios is the
    observed order. The reference is the same method at step 1e-3 (error ~1e-3^order)."""
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)

    def grad(t: Tensor) -> Tensor:
        return t ** 3 + t @ A

    def hess(t: Tensor) -> Tensor:
        return torch.diag_embed(3 * t * t) + A

    th0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)

    def run(h: float) -> Tensor:
        th = th0.clone()
        hh = torch.full((1,), h, dtype=torch.float64)
        for _ in range(int(round(1 / h))):
            th, _, _, _, _ = rosenbrock_step(tab, lambda u: -grad(u), th, -grad(th), hh, hess(th))
        return th

    ref = run(1e-3)
    return [float((run(h) - ref).abs().max()) for h in steps]
