"""Global minimum of a convex R over a polyhedral Z(D): the optimality certificate of a survivor
and, when R(θ∞) is above it, the witness itself.

Two ways, by what the hypothesis gives:

* ``Hypothesis.cvx`` (a cvxpy expression of R): min R(x) s.t. A_eq x = b_eq, A_ub x ≤ b_ub,
  solved by Clarabel, one instance per call (cvxpy has no batched form; the problem is compiled
  once per shape with cvxpy Parameters and re-solved per instance, so the cost is ≈ 10 ms a
  solve; :func:`certify` takes at most ``limit`` instances per call for that reason);
* a convex R without ``cvx`` on an *affine* Z (Q_α of a diagonal net): batched Newton's method
  in the null space of A_eq, dx = −P (P H P + (I − P))⁻¹ P ∇R with P = I − A⁺A, with a batched
  backtracking line search. Certified where the projected gradient ‖P ∇R(x*)‖ ≤ KKT_TOL·‖∇R‖
  (the KKT condition of min R on {Ax = b}).

The minimizer is polished onto Z(D) (:meth:`Polyhedron.project` with the binding rows), so a
point the verdict uses fits D to rounding; the verdict still re-checks it with ``fit.fits``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ibtest.judge.zeroset import Polyhedron
from ibtest.plugin.specs import CvxContext, Hypothesis, ModelBase

Tensor = torch.Tensor
KKT_TOL = 1e-8
CLARABEL = {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 200}


@dataclass
class Optimum:
    """For rows ``rows`` [k] of a batch: the minimizer x* [k, Q] (on Z, polished), R(x*) [k] and
    whether the solve certified it (bool [k])."""

    rows: Tensor
    x: Tensor
    R: Tensor
    certified: Tensor


def certify(spec: Hypothesis, params: Mapping[str, Any], R: Callable[[Tensor], Tensor], zs: Polyhedron,
            x0: Tensor, hctx: Any, model: ModelBase, limit: int) -> Optimum | None:
    """The global minimum of a convex R over Z for (at most ``limit`` of) the rows of x0 [B, Q].

    ``R(x [k, Q], rows) -> [k]`` evaluates R on rows ``rows`` of the batch. None when neither
    method applies (no ``cvx`` and Z not affine, or R not convex).
    """
    if not spec.convex or limit <= 0:
        return None
    if spec.cvx is not None:
        return _cvx(spec, params, R, zs, x0, hctx, model, limit)
    if zs.affine:
        try:
            return _newton(R, zs, x0)
        except RuntimeError:  # a singular Newton system (R not twice differentiable): no certificate
            return None
    return None


# ------------------------------------------------------------------------------------------
def kkt_certified(R, zs: Polyhedron, x: Tensor) -> Tensor:
    """bool [B]: x is the global minimum of a convex, differentiable R over an *affine* Z, by
    the KKT condition ‖P ∇R(x)‖ ≤ KKT_TOL·‖∇R(x)‖ (P the projector onto null(A_eq)) and
    x ∈ Z to rounding. False everywhere for a Z with one-sided rows."""
    if not zs.affine:
        return torch.zeros(x.shape[0], dtype=torch.bool)
    g, _ = _grad_hess(R, x, torch.arange(x.shape[0]), hess=False)
    if not bool(torch.isfinite(g).all()):
        return torch.isfinite(g).all(-1) & torch.zeros(x.shape[0], dtype=torch.bool)
    Pg = zs.tangent(g, x)
    inside = zs.relative_violation(x) <= 1e-12
    return (Pg.norm(dim=-1) <= KKT_TOL * g.norm(dim=-1).clamp_min(1e-300)) & inside


_PROBLEMS: dict[tuple, Any] = {}


def _problem(spec: Hypothesis, params: Mapping[str, Any], model: ModelBase, shapes: tuple, hctx: Any):
    """The cvxpy problem min cvx(x) s.t. A_eq x = b_eq, A_ub x ≤ b_ub with every datum a cvxpy
    Parameter, built once per (hypothesis, parameters, shapes) and re-solved per instance
    (cvxpy compiles a DPP problem once). Zero rows (padding) are the harmless 0 = 0, 0 ≤ 0."""
    import cvxpy as cp

    key = (spec.name, id(spec.cvx), tuple(sorted((k, float(v) if isinstance(v, (int, float)) else str(v))
                                          for k, v in params.items())), shapes, id(model))
    if key in _PROBLEMS:
        return _PROBLEMS[key]
    Q, m, k = shapes[:3]
    x = cp.Variable(Q)
    par: dict[str, Any] = {}
    for name in ("init", "init_predictor", "X", "y"):
        v = getattr(hctx, name, None)
        if v is not None:
            par[name] = cp.Parameter(tuple(v.shape[1:]))
    ctx = CvxContext(model=model, **par)
    Ae, be = cp.Parameter((m, Q)), cp.Parameter(m)
    cons = [Ae @ x == be] if m else []
    Au = bu = None
    if k:
        Au, bu = cp.Parameter((k, Q)), cp.Parameter(k)
        cons.append(Au @ x <= bu)
    if spec.cvx is None:  # certify() takes this path only for a hypothesis with a cvx form
        raise ValueError(f"hypothesis {spec.name!r} has no cvx form")
    prob = cp.Problem(cp.Minimize(spec.cvx(x, ctx, **params)), cons)
    _PROBLEMS[key] = (prob, x, par, Ae, be, Au, bu)
    if len(_PROBLEMS) > 256:
        _PROBLEMS.pop(next(iter(_PROBLEMS)))
    return _PROBLEMS[key]


def _cvx(spec, params, R, zs: Polyhedron, x0: Tensor, hctx, model, limit: int) -> Optimum:
    import cvxpy as cp

    rows = torch.nonzero(zs.feasible).flatten()[:limit]
    B, Q = x0.shape
    xs = x0[rows].clone()
    ok = torch.zeros(rows.numel(), dtype=torch.bool)
    m, k = zs.A_eq.shape[1], zs.A_ub.shape[1]
    shapes = (Q, m, k) + tuple(tuple(getattr(hctx, n).shape[1:]) if getattr(hctx, n, None) is not None else None
                               for n in ("init", "init_predictor", "X", "y"))
    try:
        prob, x, par, Ae, be, Au, bu = _problem(spec, params, model, shapes, hctx)
    except (cp.error.DCPError, ValueError, TypeError):
        return Optimum(rows, zs.take(rows).project(xs), R(zs.take(rows).project(xs), rows), ok)
    for j, i in enumerate(rows.tolist()):
        c = unit_scale(spec, params, model, x0[i], hctx, i)  # the row's problem solved at unit scale
        for name, p in par.items():
            v = getattr(hctx, name)[i].detach().cpu().numpy()
            p.value = v * c if name in _SCALED[spec.on] else v
        if m:
            Ae.value, be.value = zs.A_eq[i].numpy(), zs.b_eq[i].numpy() * c
        if k:
            Au.value, bu.value = zs.A_ub[i].numpy(), zs.b_ub[i].numpy() * c
        try:
            with warnings.catch_warnings():  # "may be inaccurate": read from prob.status below
                warnings.simplefilter("ignore")
                prob.solve(solver="CLARABEL", warm_start=False, **CLARABEL)  # no state from earlier solves
        except (cp.error.SolverError, ValueError):
            continue
        if prob.status in ("optimal", "optimal_inaccurate") and x.value is not None:
            xs[j] = torch.as_tensor(x.value, dtype=x0.dtype) / c
            ok[j] = prob.status == "optimal"
    polished = zs.take(rows).project(xs, rounds=3, active_tol=1e-7)
    return Optimum(rows, polished, R(polished, rows), ok)


#: the context fields that scale with x when the data's labels do (by the variable R reads)
_SCALED = {"theta": ("init", "y"), "predictor": ("init_predictor", "y")}


def unit_scale(spec: Hypothesis, params: Mapping[str, Any], model: ModelBase, x: Tensor, hctx: Any, i: int) -> float:
    """A power of two c that brings x (one row, [Q]) to unit size, when R is positively homogeneous
    under it: R(c·x; c·ctx) = c^p·R(x; ctx) (the labels, and θ0 or its predictor, scaled with x),
    checked at x and at a second point to 1e-12. Then min R over c·Z(D) is c·(min over Z(D)) and the
    program can be solved where Clarabel's tolerances (absolute below 1) mean what they say; 1.0
    when R is not homogeneous or x is already of unit size.

    Scaling by a power of two is exact in float64, so the problem solved is the same one."""
    from ibtest.judge import evaluation as ev

    n = float(x.norm())
    if not (n > 0 and math.isfinite(n)):
        return 1.0
    e = -round(math.log2(n))
    if abs(e) < 4:
        return 1.0
    c = 2.0 ** e
    one = ev.take(hctx, torch.tensor([i]))
    scaled = ev.take(hctx, torch.tensor([i]))
    for name in _SCALED[spec.on]:
        v = getattr(scaled, name)
        if v is not None:
            setattr(scaled, name, v * c)
    g = torch.Generator().manual_seed(0)
    pts = torch.stack([x, x + 0.25 * n * torch.randn(x.shape, generator=g, dtype=x.dtype)])
    try:
        with torch.no_grad():
            R1 = torch.stack([ev.call(spec, params, p[None], one).reshape(-1)[0] for p in pts])
            Rc = torch.stack([ev.call(spec, params, (c * p)[None], scaled).reshape(-1)[0] for p in pts])
    except Exception:
        return 1.0
    if not bool(torch.isfinite(R1).all() & torch.isfinite(Rc).all()) or bool((R1 == 0).any()):
        return 1.0
    ratio = Rc / R1
    if not bool((ratio > 0).all()):
        return 1.0
    p = round(2 * math.log2(float(ratio[0])) / e) / 2  # the degree, an integer or a half
    want = 2.0 ** (p * e)
    return c if bool(((ratio - want).abs() <= 1e-12 * want).all()) else 1.0


def _newton(R, zs: Polyhedron, x0: Tensor, iters: int = 40) -> Optimum:
    B, Q = x0.shape
    rows = torch.arange(B)
    A = zs.A_eq
    P = torch.eye(Q, dtype=x0.dtype) - torch.linalg.pinv(A) @ A  # [B, Q, Q] projector onto null(A)
    x = zs.project(x0)
    for _ in range(iters):
        g, H = _grad_hess(R, x, rows)
        Pg = torch.einsum("bij,bj->bi", P, g)
        M = P @ H @ P + (torch.eye(Q, dtype=x.dtype) - P)
        dx = -torch.einsum("bij,bj->bi", P, torch.linalg.solve(M, Pg[..., None])[..., 0])
        dx = torch.nan_to_num(dx)
        base = R(x, rows)
        best, step = base.clone(), torch.zeros(B, dtype=x.dtype)
        for t in (1.0, 0.5, 0.25, 0.1, 0.01):
            with torch.no_grad():
                v = torch.nan_to_num(R(x + t * dx, rows), nan=float("inf"))
            better = v < best
            best, step = torch.where(better, v, best), torch.where(better, torch.full_like(step, t), step)
        x = x + step[:, None] * dx
        if not bool((step > 0).any()):
            break
    g, _ = _grad_hess(R, x, rows, hess=False)
    Pg = torch.einsum("bij,bj->bi", P, g)
    cert = Pg.norm(dim=-1) <= KKT_TOL * g.norm(dim=-1).clamp_min(1e-300)
    x = zs.project(x)
    return Optimum(rows, x, R(x, rows), cert & zs.feasible)


def _grad_hess(R, x: Tensor, rows: Tensor, hess: bool = True) -> tuple[Tensor, Tensor | None]:
    """∇R [B, Q] and (with ``hess``) ∇²R [B, Q, Q] by autograd (one pass per coordinate)."""
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        Rx = R(xx, rows)
        if not Rx.requires_grad:  # a constant R
            return torch.zeros_like(x), (torch.zeros(*x.shape, x.shape[1], dtype=x.dtype) if hess else None)
        (g,) = torch.autograd.grad(Rx.sum(), xx, create_graph=hess)
        if not hess:
            return g.detach(), None
        cols = []
        for j in range(x.shape[1]):
            (h,) = torch.autograd.grad(g[:, j].sum(), xx, retain_graph=True, allow_unused=True)
            cols.append(torch.zeros_like(x) if h is None else h)
    return g.detach(), torch.stack(cols, -1).detach()
