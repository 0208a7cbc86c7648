"""Witness search inside one zero-loss set: θ' ∈ Z(D) with R(θ') < R(θ∞) − margin.

For each converged triple (D, θ0, θ∞) of a batch and one regularizer member R (batched over the
triples):

1. **Variable.** When the model declares an exact polyhedral Z(D) in the variable R sees (θ, or
   the predictor for ``on="predictor"``), the search moves x in that variable and maps back with
   ``model.from_predictor``; otherwise x = θ and Z(D) = {r(θ) = 0} (Gauss–Newton).
2. **Local search** from x∞ (θ∞ or its predictor, projected onto Z): K projected subgradient
   steps x ← Π_Z(x − s_k · t/‖t‖), t the (sub)gradient of R projected onto the tangent of Z
   (the equalities and the binding one-sided rows), s_k = S0·scale·(1e-5)^(k/K) with scale =
   ‖x∞‖ (a geometric schedule: non-smooth R such as ℓ1 or ℓ∞ get ever finer steps). The best
   point of each row is kept.
3. **Global minimum** for a convex R over a polyhedral Z (:mod:`ibtest.judge.optimality`): certified
   (``certified`` True); its minimizer is itself a candidate witness.
4. **Fresh check.** θ' is evaluated afresh in float64: it must fit D (the rules' fit rule) and
   beat R(θ∞) by more than the tolerance floor plus R's evaluation noise at both points
   (:func:`ibtest.solve.rules.floor`, :func:`ibtest.judge.evaluation.noise`) to be a candidate;
   the verdict re-checks the candidate against the full margin on θ∞ re-solved at tighter
   settings, as for pairs.
5. **Power.** Where Z(D) is a single point in the variable R reads
   (:func:`ibtest.judge.zeroset.single_point`), every R is minimized at θ∞: such a triple is
   ``vacuous``, never support for a survival.

Relative suboptimality per triple: sub = (R(θ∞) − R_best)/|R(θ∞)| where that gap beats the floor
and R's noise (else 0), R_best the least R of a point that fits D: the certified minimum where
``certified``, else a lower bound on the true suboptimality (local search).
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ibtest.judge import evaluation as ev
from ibtest.judge.optimality import certify, kkt_certified
from ibtest.judge.zeroset import Polyhedron, gauss_newton_project, gn_tangent, single_point, zero_set
from ibtest.plugin.specs import Hypothesis, ModelBase
from ibtest.solve.rules import Rules, Tolerance, floor

Tensor = torch.Tensor
S0 = 0.1
POLISH_S0, POLISH_STEPS = 1e-4, 30  # the polish of a convex optimum: short steps on Z
TIE = 4 * torch.finfo(torch.float64).eps


@dataclass
class SearchResult:
    """Per searched triple [T]: R(θ∞), the best point θ' [T, P] found on Z(D) and R(θ'), whether
    θ' fits D, the tolerance floor of the gap (with R's evaluation noise at both points), the
    relative suboptimality (0 inside the floor), whether it is certified (global minimum of a
    convex R on a polyhedral Z) and whether Z(D) is a single point in R's variable."""

    R_inf: Tensor
    theta: Tensor
    R: Tensor
    fits: Tensor
    floor: Tensor
    sub: Tensor
    certified: Tensor
    method: str
    vacuous: Tensor  # [T] Z(D) is a single point in the variable R reads: no power on this triple

    @property
    def gap(self) -> Tensor:
        """R(θ∞) − R(θ') where θ' fits D, else 0."""
        return torch.where(self.fits, self.R_inf - self.R, torch.zeros_like(self.R))

    @property
    def found(self) -> Tensor:
        """Candidate witnesses: θ' fits D and R(θ∞) − R(θ') exceeds the floor."""
        return self.fits & (self.gap > self.floor)


@contextmanager
def _one_thread():
    """Run torch on one intra-op thread: the search is many tiny batched ops ([T, n, Q] with n, Q of a
    few units) that threads cannot speed up, and on a busy machine an OpenMP team waiting for a
    core makes each of them ≈ 10-20× slower."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def search(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], X: Tensor, y: Tensor, mask: Tensor,
           theta0: Tensor, theta: Tensor, rules: Rules, tol: Tolerance, *, steps: int = 100,
           certify_limit: int = 16, study: Mapping[str, Any] | None = None) -> SearchResult:
    """Search Z(D) of every row (triple) for a point with smaller R (see the module docstring).

    X [T, n, d], y / mask [T, n], theta0 / theta [T, P] (θ∞ of converged triples); ``rules``: the
    fit rule a point must meet; ``tol``: the member's tolerance floors.
    """
    with _one_thread():
        return _search(model, spec, params, X, y, mask, theta0, theta, rules, tol, steps=steps,
                       certify_limit=certify_limit, study=study)


def _search(model: ModelBase, spec: Hypothesis, params: Mapping[str, Any], X: Tensor, y: Tensor, mask: Tensor,
            theta0: Tensor, theta: Tensor, rules: Rules, tol: Tolerance, *, steps: int,
            certify_limit: int, study: Mapping[str, Any] | None) -> SearchResult:
    T = theta.shape[0]
    hctx = ev.context(model, spec, theta0=theta0, X=X, y=y, mask=mask, study=study)
    R_inf, G_inf = ev.evaluate(model, spec, params, theta, hctx, grad=True)
    zs_all = zero_set(model, X, y, mask)
    identity = type(model).predictor is ModelBase.predictor
    # the model's exact Z(D), when it lives in the space R is evaluated in; else None
    zs = zs_all if zs_all is not None and ((zs_all.on == "theta" and (spec.on == "theta" or identity)) or
                                           (zs_all.on == "predictor" and spec.on == "predictor")) else None
    if zs is not None:
        x_inf = theta if zs.on == "theta" else model.predictor(theta)
        to_theta = (lambda x: x) if zs.on == "theta" else model.from_predictor

        def R(x: Tensor, rows: Tensor | None = None) -> Tensor:
            return ev.call(spec, params, x, hctx if rows is None else ev.take(hctx, rows))
        method = "exact Z(D)"
    else:
        x_inf, to_theta = theta, (lambda x: x)

        def R(x: Tensor, rows: Tensor | None = None) -> Tensor:
            c = hctx if rows is None else ev.take(hctx, rows)
            return ev.call(spec, params, ev.variable(model, spec, x), c)
        method = "Gauss-Newton on r(θ) = 0"

    certified = torch.zeros(T, dtype=torch.bool)
    none = torch.zeros(0, dtype=torch.int64)
    polish = (none, x_inf[:0], R_inf[:0])
    x_best = x_inf.detach().clone()
    R_best = torch.full((T,), float("inf"), dtype=torch.float64)
    if zs is not None and spec.convex:
        # the global minimum first: rows it certifies need no local search
        opt = certify(spec, params, R, zs, x_inf, hctx, model, certify_limit)
        if opt is not None and opt.rows.numel():
            Ro = torch.nan_to_num(opt.R, nan=float("inf"))
            x_best[opt.rows] = opt.x
            R_best[opt.rows] = Ro
            certified[opt.rows] = opt.certified
            # the solver's minimizer (accurate to ≈ √tol in x for a smooth R) is polished by short
            # steps on Z, in the local pass below, only where it beats θ∞ (a candidate witness);
            # elsewhere θ∞ is the argmin to the solver's accuracy and the polish cannot change sub = 0
            need = Ro < R_inf[opt.rows]
            polish = (opt.rows[need], opt.x[need], Ro[need])
            method = "exact Z(D), convex optimum"
        # a differentiable convex R at θ∞ on an affine Z: the KKT condition certifies θ∞ itself
        try:
            kkt = kkt_certified(R, zs, x_inf)
            certified |= kkt
            R_best = torch.where(kkt & ~torch.isfinite(R_best), R_inf, R_best)
            x_best = torch.where((kkt & (R_best == R_inf))[:, None], x_inf, x_best)
        except RuntimeError:
            pass
    if zs is None and spec.optimum is not None and certify_limit > 0:
        # a model that certifies the global minimum of this quantity over Z(D) (a convex
        # reformulation, e.g. min-norm two-layer nets): certified rows need no search, a beaten
        # row's cheaper net is a candidate witness
        rows = torch.arange(min(T, certify_limit))
        checks = model.certified_optimum(spec.optimum, theta[rows], X[rows], y[rows], mask[rows],
                                         atol=tol.atol, rtol=tol.rtol)
        if checks is not None:
            method = "model's certified optimum"
            beaten: list[int] = []
            for r, c in zip(rows.tolist(), checks):
                if c.status == "certified":
                    certified[r], R_best[r], x_best[r] = True, R_inf[r], x_inf[r]
                elif c.status == "beaten" and c.witness is not None:
                    # the certified minimum is known and below θ∞: its net is the candidate witness,
                    # polished by short steps on Z like a convex optimum
                    certified[r] = bool(c.exact)
                    x_best[r] = c.witness.to(x_best.dtype).reshape(-1)
                    beaten.append(r)
            if beaten:
                br = torch.tensor(beaten)
                R_best[br] = torch.nan_to_num(R(x_best[br], br).detach(), nan=float("inf"))
                polish = (br, x_best[br].clone(), R_best[br].clone())
    rest = (~certified).nonzero().flatten()
    # one local pass over both kinds of rows (its cost is per step, hardly per row): the rest from
    # x∞ (``steps`` steps from S0) and the polish of optima from x* (POLISH_STEPS from POLISH_S0)
    pr, px, pR = polish
    if rest.numel() or pr.numel():
        rows = torch.cat([rest, pr])
        nr = rest.numel()
        x0 = torch.cat([x_inf[rest], px])
        s0 = torch.cat([torch.full((nr, 1), S0, dtype=x0.dtype), torch.full((pr.numel(), 1), POLISH_S0, dtype=x0.dtype)])
        K = torch.cat([torch.full((nr, 1), max(0, int(steps))), torch.full((pr.numel(), 1), POLISH_STEPS)])
        xl, Rl = _local(lambda x: R(x, rows), zs.take(rows) if zs is not None else None, model, X[rows], y[rows],
                        mask[rows], x0, K, s0=s0)
        if nr:
            xr, Rr = xl[:nr], Rl[:nr]
            better = Rr < R_best[rest]
            x_best[rest] = torch.where(better[:, None], xr, x_best[rest])
            R_best[rest] = torch.where(better, Rr, R_best[rest])
        if pr.numel():
            xp, Rp = xl[nr:], Rl[nr:]
            # the polished point where it is no worse than x* (ties to rounding go to it), as before;
            # a row also searched from x∞ (uncertified optimum) keeps the better of both
            take = (Rp <= pR + TIE * pR.abs()) & (Rp <= R_best[pr] + TIE * R_best[pr].abs())
            x_best[pr] = torch.where(take[:, None], xp, x_best[pr])
            R_best[pr] = torch.minimum(Rp, R_best[pr])
    theta_w = to_theta(x_best)
    ok = rules.fits(model, theta_w, X, y, mask, theta0)
    Rw, _ = ev.evaluate(model, spec, params, theta_w, hctx, grad=False)  # afresh, on θ'
    Rw = torch.where(ok, Rw, torch.full_like(Rw, float("inf")))
    # the floor with its rounding term (ROUNDING·‖∇R(θ∞)‖·‖θ∞‖): a gap below it is rounding of θ∞
    fl = floor(tol, R_inf, torch.where(ok, Rw, R_inf), G_inf, None, theta, None)
    # R's own float64 noise at both points: a gap inside it is no evidence (and no suboptimality)
    nz = ev.noise(model, spec, params, theta, hctx, R=R_inf) + torch.where(
        ok, ev.noise(model, spec, params, theta_w, hctx, R=torch.where(ok, Rw, R_inf)), torch.zeros_like(R_inf))
    fl = fl + nz
    gap = torch.where(ok, R_inf - Rw, torch.zeros_like(Rw))
    # where θ' looks better, the gap computed a second way (the path integral of ∇R): a systematic
    # rounding offset of R is no suboptimality (the candidate still goes to the verdict's re-check,
    # which says "within R's evaluation noise")
    rows = (ok & (gap > fl)).nonzero().flatten()
    pn = torch.zeros_like(fl)
    if rows.numel():
        pn[rows] = ev.path_noise(model, spec, params, theta[rows], theta_w[rows], ev.take(hctx, rows),
                                 (R_inf - Rw)[rows])
    sub = torch.where(gap > fl + pn, gap / R_inf.abs().clamp_min(1e-300), torch.zeros_like(gap)).clamp_min(0)
    # a certified minimum that does not re-check as a fit is no certificate
    certified = certified & ok
    vacuous = single_point(model, zs, spec.on, theta, X, y, mask)
    return SearchResult(R_inf, theta_w, Rw, ok, fl, sub, certified, method, vacuous)


def _local(R, zs: Polyhedron | None, model, X, y, mask, x0: Tensor, steps: int | Tensor,
           s0: float | Tensor = S0) -> tuple[Tensor, Tensor]:
    """Projected subgradient descent on Z from x0 [T, Q]; the best point of each row and its R.
    Step k has length s0·‖x0‖·(1e-5)^(k/(K−1)); ``steps`` (K) and ``s0`` may be per row ([T, 1]):
    a row stops moving after its K steps."""
    def project(x):
        return zs.fast_project(x) if zs is not None else gauss_newton_project(model, x, X, y, mask, steps=3)

    x = zs.project(x0.detach().clone()) if zs is not None else project(x0.detach().clone())
    with torch.no_grad():
        best_R = torch.nan_to_num(R(x).detach(), nan=float("inf"))
    best_x = x.clone()
    scale = x0.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    Kr = torch.as_tensor(steps).reshape(-1, 1).clamp_min(0) if isinstance(steps, Tensor) else None
    K = int(Kr.max()) if Kr is not None and Kr.numel() else (0 if Kr is not None else max(0, int(steps)))
    for k in range(K):
        with torch.enable_grad():
            xx = x.detach().clone().requires_grad_(True)
            Rx = R(xx)
            if not Rx.requires_grad:  # a constant R: nothing to descend
                break
            (g,) = torch.autograd.grad(Rx.sum(), xx, allow_unused=True)
        if g is None:
            break
        g = torch.nan_to_num(g.detach())
        t = zs.eq_tangent(g) if zs is not None else gn_tangent(model, g, x, X, y, mask)
        tn = t.norm(dim=-1, keepdim=True)
        if Kr is None:
            s = s0 * scale * (1e-5) ** (k / max(1, K - 1))
        else:  # per row: its own schedule, no step past its K
            s = torch.where(k < Kr, s0 * scale * (1e-5) ** (k / (Kr - 1).clamp_min(1)), torch.zeros_like(scale))
        x = project(x - torch.where(tn > 0, s * t / tn.clamp_min(1e-300), torch.zeros_like(t)))
        with torch.no_grad():
            v = torch.nan_to_num(R(x).detach(), nan=float("inf"))
        if zs is not None:
            v = torch.where(zs.relative_violation(x) <= 1e-7, v, torch.full_like(v, float("inf")))
        # ties at rounding level go to the later iterate (smaller steps: closer to the minimizer)
        better = v <= best_R + TIE * best_R.abs()
        best_R = torch.where(better, torch.minimum(v, best_R), best_R)
        best_x = torch.where(better[:, None], x, best_x)
    if zs is not None and zs.A_ub.shape[1]:  # finish on Z exactly (binding one-sided rows as equalities)
        best_x = zs.project(best_x, rounds=3, active_tol=1e-7)
        with torch.no_grad():
            best_R = torch.nan_to_num(R(best_x).detach(), nan=float("inf"))
    return best_x, best_R
