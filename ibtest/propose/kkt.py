r"""The KKT data of a family at a table of triples: everything the fit program needs, batched.

For T triples (D_t, θ0_t, θ∞_t) and a family R_λ(x) = Σ_k λ_k φ_k(x) (:class:`ibtest.Family`):

* the **KKT variable** z: the model's polyhedral Z(D) lives in θ or in the predictor
  (``ModelBase.zero_set``); where that is the family's variable, z is it and

      Z(D) = {z : A_eq z = b_eq,  A_ub z ≤ b_ub};

  otherwise z = θ and Z(D) = {θ : r(θ) = 0}, linearized at θ∞ by the residual Jacobian J (A_eq = J);
* **G_t** [Q, K]: column k is ∇_z φ_k(z∞_t) (autograd, through the predictor where the family reads
  it and z = θ), so ∇R_λ(z∞_t) = G_t λ;
* **P_t** [Q, Q]: the projector onto null(A_eq) (the tangent space of the equalities), rank by the
  float64 tolerance max(m, Q)·eps·σ_max (σ_max·√eps for an autograd J, as the fit rule uses);
* **A_b,t** [k, Q]: the one-sided rows binding at z∞_t (slack ≤ safety·‖a‖·err + rounding), unit norm;

so that θ∞_t is a KKT point of min R_λ over Z(D_t) iff, for some μ_t ≥ 0,

      ρ_t(λ, μ_t) = P_t (G_t λ + A_b,tᵀ μ_t) = 0.                                         (KKT)

Scales (so that residuals are relative, and the study may be scaled): d_t = z∞_t − z0_t, w_t = ‖d_t‖.
The normalization ``c`` = mean_t G_tᵀ d_t / ‖d_t‖² makes cᵀλ = 1 mean "R_λ grows from z0 to z∞ at the
rate of ½‖z − z0‖², on average": it excludes λ = 0, constants and members flat along the flow.
Triples with d_t = 0 (the init already fits) carry no growth and are left out of it.

What the measured solver error can do to ρ (the tolerance, :func:`tolerance`): a solution off by
err_t moves ∇φ_k by ‖∇²φ_k‖·err_t and, on a Gauss–Newton Z, the tangent space by curv_t·err_t
(curv_t = ‖∂P/∂z‖, by a finite difference); rounding adds ROUNDING·cond_t·‖∇φ_k‖. Per coefficient:

      a_tk = safety·err_t·(‖∇²φ_k‖_F + curv_t·‖∇φ_k‖) + ROUNDING·cond_t·‖∇φ_k‖,   |ρ_t| ≤ Σ_k |λ_k| a_tk.

For a pair: R_λ(z_a) − R_λ(z_b) = Δφᵀλ with the engine's margin, per coefficient
(safety·(‖∇φ_k(a)‖ err_a + ‖∇φ_k(b)‖ err_b) + rtol·max|φ_k| + ROUNDING·(‖∇φ_k(a)‖‖z_a‖ + ‖∇φ_k(b)‖‖z_b‖)).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ibtest.judge import evaluation as ev_mod
from ibtest.judge.zeroset import Polyhedron
from ibtest.plugin.specs import Family, ModelBase
from ibtest.solve.batch import Pairs, Triples
from ibtest.solve.fit import GN_RTOL, residual_jacobian
from ibtest.solve.rules import ROUNDING

Tensor = torch.Tensor
EPS = float(torch.finfo(torch.float64).eps)


class FamilyError(ValueError):
    """A family's features are not usable at these triples (wrong shape, not finite)."""


@dataclass
class KKT:
    """The KKT data of T triples (see the module docstring). ``var``: "theta", "predictor" or "gn"
    (θ with the Gauss–Newton Z)."""

    var: str
    z: Tensor  # [T, Q]
    d: Tensor  # [T, Q] z∞ − z0
    phi: Tensor  # [T, K] φ_k(z∞)
    G: Tensor  # [T, Q, K] ∇φ_k(z∞)
    P: Tensor  # [T, Q, Q] projector onto null(A_eq)
    Ab: Tensor  # [T, k, Q] binding one-sided rows, unit norm (zero rows: not binding)
    gnorm: Tensor  # [T, K] ‖∇φ_k‖
    hnorm: Tensor  # [T, K] ‖∇²φ_k‖_F
    curv: Tensor  # [T] ‖∂P/∂z‖ (0 on a polyhedral Z)
    cond: Tensor  # [T] condition number of the equality rows
    has_h: Tensor | None = None  # [T] bool: hnorm computed (else 0 so far: see :meth:`hessian`)
    src: Source | None = None  # where the rows came from (to re-bind rows and add Hessians)

    @property
    def T(self) -> int:
        return self.z.shape[0]

    @property
    def K(self) -> int:
        return self.phi.shape[1]

    @property
    def w(self) -> Tensor:
        """[T] the residual scale ‖d_t‖."""
        return self.d.norm(dim=-1)

    @property
    def moved(self) -> Tensor:
        """bool [T]: z∞ ≠ z0 (the triple says something about R's growth)."""
        return self.w > 1e-12 * torch.maximum(self.z.norm(dim=-1), (self.z - self.d).norm(dim=-1)).clamp_min(1e-300)

    def normalization(self, rows: Tensor | None = None) -> Tensor:
        """c [K] = mean over the (moved) triples ``rows`` of G_tᵀ d_t / ‖d_t‖²."""
        idx = torch.arange(self.T) if rows is None else rows
        idx = idx[self.moved[idx]]
        if idx.numel() == 0:
            return torch.zeros(self.K, dtype=torch.float64)
        d = self.d[idx]
        v = torch.einsum("tqk,tq->tk", self.G[idx], d) / (d * d).sum(-1, keepdim=True)
        return v.mean(0)

    def take(self, idx: Tensor) -> KKT:
        return KKT(self.var, self.z[idx], self.d[idx], self.phi[idx], self.G[idx], self.P[idx], self.Ab[idx],
                   self.gnorm[idx], self.hnorm[idx], self.curv[idx], self.cond[idx],
                   None if self.has_h is None else self.has_h[idx], None if self.src is None else self.src.take(idx))

    def rebind(self, err: Tensor, safety: float) -> None:
        """The binding one-sided rows again, for new errors ``err`` [T] (measured ones)."""
        if self.src is not None and self.src.zs is not None and self.var != "gn":
            self.Ab = _binding(self.src.zs, self.z, err, safety)

    def hessian(self, rows: Tensor, err: Tensor) -> None:
        """‖∇²φ_k‖ on the rows ``rows`` that lack it (K·Q backward passes over those rows only)."""
        if self.has_h is None or self.src is None:
            return
        rows = rows[~self.has_h[rows]]
        if rows.numel() == 0:
            return
        src = self.src.take(rows)
        fn = feature_fn(src.model, src.family, src.settings, src.t, src.idx, self.var)
        _, G, H = derivatives(fn, self.z[rows], True)
        self.hnorm[rows] = _finite_hessian(fn, self.z[rows], G, H, err[rows])
        self.has_h[rows] = True


@dataclass
class Source:
    """The triples ``idx`` of ``t`` a KKT table was built from, with the family's settings and the
    model's polyhedral Z(D) of those rows (None: Gauss–Newton)."""

    model: ModelBase
    family: Family
    settings: Mapping[str, Any]
    t: Triples
    idx: Tensor
    zs: Polyhedron | None

    def take(self, rows: Tensor) -> Source:
        return Source(self.model, self.family, self.settings, self.t, self.idx[rows],
                      None if self.zs is None else self.zs.take(rows))


def kkt_variable(model: ModelBase, family: Family, zs: Polyhedron | None) -> str:
    """Where the KKT condition is written: the model's polyhedral Z(D) when it lives in the family's
    variable (or in θ for a predictor family of a model whose predictor is θ), else θ with the
    Gauss–Newton Z."""
    if zs is None:
        return "gn"
    identity = type(model).predictor is ModelBase.predictor
    if zs.on == "predictor":
        return "predictor" if family.on == "predictor" else "gn"
    return "theta" if (family.on == "theta" or identity) else "gn"


def feature_fn(model: ModelBase, family: Family, settings: Mapping[str, Any], t: Triples, idx: Tensor,
               var: str) -> Callable[[Tensor], Tensor]:
    """z [T, Q] ↦ Φ [T, K] at the triples ``idx`` (their contexts), through the predictor where
    the family reads it and z = θ."""
    spec = family.hypotheses()[0]
    hctx = ev_mod.context(model, spec, theta0=t.theta0[idx], X=t.X[idx], y=t.y[idx], mask=t.mask[idx])
    through = family.on == "predictor" and var != "predictor"

    def fn(z: Tensor) -> Tensor:
        x = model.predictor(z) if through else z
        with ev_mod.guarded(spec, hctx, x):
            phi = family.features(x, hctx, **settings)
        if not isinstance(phi, Tensor) or phi.dim() != 2 or phi.shape[0] != z.shape[0]:
            shape = tuple(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
            raise FamilyError(f"family {family.name!r}: features returned {shape}, expected [{z.shape[0]}, K]")
        return phi.to(torch.float64)

    return fn


def derivatives(fn: Callable[[Tensor], Tensor], z: Tensor, hess: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Φ [T, K], G [T, Q, K] (∇φ_k) and ‖∇²φ_k‖_F [T, K] at z [T, Q] by autograd: K backward passes
    for the gradients, K·Q more for the Hessians (batched over the T rows)."""
    T, Q = z.shape
    with torch.enable_grad():
        zz = z.detach().clone().requires_grad_(True)
        phi = fn(zz)
        K = phi.shape[1]
        G = torch.zeros(T, Q, K, dtype=torch.float64)
        H = torch.zeros(T, K, dtype=torch.float64)
        for k in range(K if phi.requires_grad else 0):
            (g,) = torch.autograd.grad(phi[:, k].sum(), zz, retain_graph=True, create_graph=hess, allow_unused=True)
            if g is None:
                continue
            G[:, :, k] = g.detach()
            if not (hess and g.requires_grad):
                continue
            sq = torch.zeros(T, dtype=torch.float64)
            for q in range(Q):
                (h,) = torch.autograd.grad(g[:, q].sum(), zz, retain_graph=True, allow_unused=True)
                if h is not None:
                    sq = sq + (h.detach() ** 2).sum(-1)
            H[:, k] = sq.sqrt()
    phi = phi.detach()
    for name, v in (("features", phi), ("their gradients", G)):
        bad = ~torch.isfinite(v.reshape(T, -1)).all(-1)
        if bool(bad.any()):
            raise FamilyError(f"{name} are not finite at {int(bad.sum())} of {T} triples (first: row {int(bad.nonzero()[0])})")
    return phi, G, H


def projector(A: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    """(P [T, Q, Q] onto null(A), cond [T]) for A [T, m, Q]: rank by max(m, Q)·eps·σ_max (or
    ``rtol``·σ_max); cond = σ_max / σ_min over the kept singular values (1 without rows)."""
    T, m, Q = A.shape
    eye = torch.eye(Q, dtype=torch.float64).expand(T, Q, Q)
    if m == 0:
        return eye.clone(), torch.ones(T, dtype=torch.float64)
    _, S, Vh = torch.linalg.svd(A, full_matrices=True)
    smax = S.amax(-1, keepdim=True)
    tol = smax * (max(m, Q) * EPS if rtol is None else rtol)
    keep = (S > tol) & (smax > 0)
    mask = torch.zeros(T, Q, dtype=torch.float64)
    mask[:, : S.shape[1]] = keep.to(torch.float64)
    P = eye - Vh.transpose(1, 2) @ (mask[..., None] * Vh)
    smin = torch.where(keep, S, torch.full_like(S, float("inf"))).amin(-1)
    cond = torch.where(keep.any(-1), smax[:, 0] / smin, torch.ones(T, dtype=torch.float64))
    return P, cond


def build(model: ModelBase, family: Family, settings: Mapping[str, Any], t: Triples, idx: Tensor, err: Tensor,
          safety: float, hess: bool = True) -> KKT:
    """The KKT data of triples ``idx`` of ``t`` (their first solutions), ``err`` [T] the error of
    each θ∞ (measured or estimated) that decides which one-sided rows bind; without ``hess`` the
    Hessian norms are 0 until :meth:`KKT.hessian` adds them on the rows that need them."""
    idx = idx.to(torch.int64)
    X, y, mask, th, th0 = t.X[idx], t.y[idx], t.mask[idx], t.theta[idx], t.theta0[idx]
    zs = model.zero_set(X, y, mask)
    var = kkt_variable(model, family, zs)
    if var == "predictor":
        z, z0 = model.predictor(th), model.predictor(th0)
    else:
        z, z0 = th.clone(), th0.clone()
    fn = feature_fn(model, family, settings, t, idx, var)
    phi, G, H = derivatives(fn, z, hess)
    T, Q = z.shape
    if hess:
        H = _finite_hessian(fn, z, G, H, err)
    curv = torch.zeros(T, dtype=torch.float64)
    if var == "gn" or zs is None:
        _, J = residual_jacobian(model, th, X, y, mask)
        P, cond = projector(J, GN_RTOL)
        curv = _curvature(model, th, X, y, mask, P)
        Ab = torch.zeros(T, 0, Q, dtype=torch.float64)
    else:
        P, cond = projector(zs.A_eq.to(torch.float64))
        Ab = _binding(zs, z, err, safety)
    gnorm = G.norm(dim=1)
    src = Source(model, family, settings, t, idx, None if var == "gn" else zs)
    return KKT(var, z, z - z0, phi, G, P, Ab, gnorm, H, curv, cond, torch.full((T,), bool(hess)), src)


def _finite_hessian(fn: Callable[[Tensor], Tensor], z: Tensor, G: Tensor, H: Tensor, err: Tensor) -> Tensor:
    """Where a feature's Hessian is not finite (|u|^p with p < 2 at u = 0) the change of its gradient
    over the error is measured instead: ‖∇φ_k(z + δ) − ∇φ_k(z)‖/‖δ‖ with δ = err·(1, …, 1)/√Q (a
    secant, which is what the tolerance multiplies by err again)."""
    bad = ~torch.isfinite(H)
    rows = bad.any(-1).nonzero().flatten()
    if rows.numel() == 0:
        return H
    Q = z.shape[1]
    h = err[rows].clamp_min(EPS) * torch.maximum(z[rows].norm(dim=-1), torch.ones(rows.numel(), dtype=torch.float64))
    delta = h[:, None] * torch.ones(rows.numel(), Q, dtype=torch.float64) / Q ** 0.5
    full = torch.zeros_like(z)
    full[rows] = delta
    _, G2, _ = derivatives(fn, z + full, hess=False)
    sec = (G2[rows] - G[rows]).norm(dim=1) / h[:, None]
    H = H.clone()
    H[rows] = torch.where(bad[rows], sec, H[rows])
    return H


def _binding(zs: Polyhedron, z: Tensor, err: Tensor, safety: float) -> Tensor:
    """The one-sided rows binding at z (slack ≤ safety·‖a‖·err + ROUNDING·row scale), unit norm; others 0."""
    A, b = zs.A_ub.to(torch.float64), zs.b_ub.to(torch.float64)
    if A.shape[1] == 0:
        return A
    norm = A.norm(dim=-1)
    slack = b - (A * z[:, None, :]).sum(-1)
    scale = zs.row_scale(A, b, z)
    bind = (norm > 0) & (slack <= safety * norm * err[:, None] + ROUNDING * scale)
    return A / norm.clamp_min(1e-300)[..., None] * bind.to(torch.float64)[..., None]


def _curvature(model: ModelBase, th: Tensor, X: Tensor, y: Tensor, mask: Tensor, P: Tensor) -> Tensor:
    """‖∂P/∂θ‖ along a fixed unit direction, by a forward difference of step 1e-6·‖θ‖ (how fast the
    tangent space of {r = 0} turns: the solver error moves the normal space by this times err)."""
    T, Pn = th.shape
    u = torch.cos(torch.arange(Pn, dtype=torch.float64) * 1.7 + 0.3)
    u = u / u.norm()
    h = 1e-6 * th.norm(dim=-1).clamp_min(1e-300)
    _, J = residual_jacobian(model, th + h[:, None] * u, X, y, mask)
    P2, _ = projector(J, GN_RTOL)
    return (P2 - P).flatten(1).norm(dim=-1) / h


# ------------------------------------------------------------------------------------------
# residuals and tolerances
# ------------------------------------------------------------------------------------------
def tolerance(k: KKT, err: Tensor, safety: float) -> Tensor:
    """a [T, K]: |ρ_t|_∞ may reach Σ_k |λ_k| a_tk from the solver error and rounding alone."""
    return (safety * err[:, None] * (k.hnorm + k.curv[:, None] * k.gnorm)
            + ROUNDING * k.cond[:, None] * k.gnorm)


@dataclass
class PairData:
    """Distinct admissible pairs eligible for the family, as positions (into the KKT rows) and the
    feature difference Δφ [p, K], its tolerance coefficients [p, K] and scale [p]."""

    a: Tensor
    b: Tensor
    dphi: Tensor
    coef: Tensor
    w: Tensor
    source: list[str]

    @staticmethod
    def empty(K: int) -> PairData:
        z = torch.zeros(0, dtype=torch.int64)
        return PairData(z, z.clone(), torch.zeros(0, K, dtype=torch.float64), torch.zeros(0, K, dtype=torch.float64),
                        torch.zeros(0, dtype=torch.float64), [])

    def __len__(self) -> int:
        return self.a.shape[0]

    def take(self, idx: Tensor) -> PairData:
        return PairData(self.a[idx], self.b[idx], self.dphi[idx], self.coef[idx], self.w[idx],
                        [self.source[i] for i in idx.tolist()])


def pair_data(k: KKT, pairs: Pairs, pos: Tensor, err: Tensor, safety: float, rtol: float, family: Family) -> PairData:
    """The pairs of ``pairs`` (indices into the triples table) whose two sides are both KKT rows
    (``pos`` maps a triple index to its KKT row, −1 if none), distinct and valid for the family's
    ``depends_on`` (:func:`ibtest.solve.rules.eligible`)."""
    from ibtest.solve.rules import eligible

    if len(pairs) == 0:
        return PairData.empty(k.K)
    ra, rb = pos[pairs.a], pos[pairs.b]
    ok = (ra >= 0) & (rb >= 0) & pairs.distinct & eligible(family.depends_on, pairs.same_init)
    sel = ok.nonzero().flatten()
    if sel.numel() == 0:
        return PairData.empty(k.K)
    a, b = ra[sel], rb[sel]
    dphi = k.phi[a] - k.phi[b]
    za, zb = k.z[a].norm(dim=-1), k.z[b].norm(dim=-1)
    coef = (safety * (k.gnorm[a] * err[a, None] + k.gnorm[b] * err[b, None])
            + rtol * torch.maximum(k.phi[a].abs(), k.phi[b].abs())
            + ROUNDING * (k.gnorm[a] * za[:, None] + k.gnorm[b] * zb[:, None]))
    w = torch.maximum(k.w[a], k.w[b]) * (k.z[a] - k.z[b]).norm(dim=-1)
    return PairData(a, b, dphi, coef, w, [pairs.source(int(i)) for i in sel.tolist()])
