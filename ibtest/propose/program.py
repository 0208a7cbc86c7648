r"""The fit program: one convex program over every triple and pair (see :mod:`ibtest.propose.kkt`).

Unknowns: the coefficients λ [K] and, per triple, the multipliers μ_t ≥ 0 of its binding one-sided
rows (ν of the equalities is eliminated by the projector P_t). Residuals (absolute):

      ρ_t = P_t (G_t λ + A_b,tᵀ μ_t)   [Q per triple],        π_p = Δφ_pᵀ λ   [one per pair],

with the normalization cᵀλ = 1, the family's cone (``Family.cone``: M ⪰ 0) and, with ``strict`` μ,
its strict convexity constraints (``Family.strict``).

* :func:`least_squares`: min Σ_t ‖ρ_t‖²/w_t² + Σ_p π_p²/w_p² (w: the scales of
  :mod:`ibtest.propose.kkt`). Without an active cone or sign it is a linear least-squares problem,
  solved by LAPACK (``scipy.linalg.lstsq``, QR-precise: a known R is recovered to rounding) with μ
  eliminated (the binding rows projected out like equalities); where that μ or λ breaks a sign or a
  cone, the same objective is solved by cvxpy + Clarabel with the constraints. It also says how
  many dimensions of members fit equally well (``null_dim``).
* :func:`minimax`: min s s.t. |ρ_t|_∞ ≤ τ_t + s·w_t, |π_p| ≤ τ_p + s·w_p, the box |λ_k| ≤ Λ_k,
  cᵀλ = 1, the cone and strictness (an LP, or an SDP for M ⪰ 0), with τ the most the measured
  solver error and rounding can do to a member of the box (τ_t = Σ_k Λ_k a_tk). A family whose
  ``magnitude`` bounds |λ_k| by a linear function of λ on its cone (|2M_ij| ≤ M_ii + M_jj for
  M ⪰ 0) needs no box: τ_t = Σ_k a_tk·magnitude_k(λ), linear in λ, and the claim covers every member. s* ≤ 0: some member
  in the box fits within the solver error; s* > 0 (beyond the program's own error, measured by
  solving it at two tolerances): **no member of the box fits**, and the multipliers of the rows
  (Farkas) name the triples and pairs the infeasibility rests on.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch

from ibtest.plugin.specs import Family
from ibtest.propose.kkt import KKT, PairData, projector

Tensor = torch.Tensor
#: the box of the no-fit claim, relative to the least-squares member (scaled units): wide, so that the
#: claim covers every reasonable member; its tolerance (BOX × the member's) stays far below a real misfit
BOX = 1e3
#: a row is in the infeasibility's support when its multiplier is at least this fraction of the largest
SUPPORT_RTOL = 1e-6
#: the program's s* must exceed this multiple of its own measured error to count
PROGRAM_SAFETY = 10.0
#: triples with a wrong-signed free μ solved by the exact NNLS one by one (more: batched clipping)
NNLS_MAX = 64
#: what an "optimal_inaccurate" solve still guarantees: Clarabel's reduced tolerances (reduced_tol_feas
#: 1e-4, reduced_tol_gap_abs 5e-5 by default), the least error of s* from such a solve
REDUCED_TOL = 1e-4
#: Clarabel tolerances of the two solves that measure the program's error
TOLS = (1e-8, 1e-10)


@dataclass
class Problem:
    """The rows of a fit: KKT data of T triples, p pairs, the family and its settings, ``strict`` μ
    (None: no strict convexity asked) and ``span`` (the box |z − z0| ≤ span where strictness is asked)."""

    kkt: KKT
    pairs: PairData
    family: Family
    settings: Mapping[str, Any]
    strict: float | None = None

    @property
    def span(self) -> float:
        return float(2 * self.kkt.d.abs().max()) if self.kkt.T else 1.0

    @property
    def scale(self) -> Tensor:
        """[T] the residual scale of each triple (‖d_t‖; ‖z_t‖ where the init already fits)."""
        w = self.kkt.w
        return torch.where(self.kkt.moved, w, self.kkt.z.norm(dim=-1).clamp_min(1e-300))

    def take(self, rows: Tensor, pair_rows: Tensor) -> Problem:
        """The problem on triples ``rows`` and pairs ``pair_rows`` (pairs re-indexed)."""
        pos = torch.full((self.kkt.T,), -1, dtype=torch.int64)
        pos[rows] = torch.arange(rows.numel())
        p = self.pairs.take(pair_rows)
        p.a, p.b = pos[p.a], pos[p.b]
        if bool(((p.a < 0) | (p.b < 0)).any()):
            raise ValueError("a pair whose side is not among the kept triples")
        return Problem(self.kkt.take(rows), p, self.family, self.settings, self.strict)


# ------------------------------------------------------------------------------------------
# residuals at a given λ
# ------------------------------------------------------------------------------------------
def residuals(pb: Problem, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(|ρ_t|_∞ [T] with μ_t ≥ 0, |π_p| [p], μ of every binding row [T, k]) at λ [K]. μ_t by least
    squares, then, where a sign is wrong, by NNLS (scipy) on few triples or, batched, by clipping the
    wrong signs to 0 and solving again on the rest (a feasible μ: |ρ_t| is then an upper bound)."""
    k = pb.kkt
    g = torch.einsum("tqk,k->tq", k.G, lam)
    B = torch.einsum("tqr,tjr->tqj", k.P, k.Ab)  # P_t A_bᵀ [T, Q, kb]
    r0 = torch.einsum("tqr,tr->tq", k.P, g)
    mu = torch.zeros(k.T, k.Ab.shape[1], dtype=torch.float64)
    if k.Ab.shape[1]:
        live = (B.abs().sum(1) > 0).to(torch.float64)  # [T, kb]
        for _ in range(4):
            Bm = B * live[:, None, :]
            mu = -(torch.linalg.pinv(Bm) @ r0[..., None])[..., 0] * live
            neg = mu < 0
            if not bool(neg.any()):
                break
            live = live * (~neg).to(torch.float64)
        mu = mu.clamp_min(0)
        bad = (-(torch.linalg.pinv(B) @ r0[..., None])[..., 0] < 0).any(-1) & (B.abs().sum((1, 2)) > 0)
        rows = bad.nonzero().flatten().tolist()
        if len(rows) <= NNLS_MAX:  # few: the exact NNLS
            for t in rows:
                mu[t] = torch.as_tensor(_nnls(B[t].numpy(), -r0[t].numpy()), dtype=torch.float64)
    rho = r0 + (B @ mu[..., None])[..., 0]
    pi = pb.pairs.dphi @ lam if len(pb.pairs) else torch.zeros(0, dtype=torch.float64)
    return rho.abs().amax(-1) if k.T else torch.zeros(0, dtype=torch.float64), pi.abs(), mu


def _nnls(B: np.ndarray, r: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(B, r)[0]


# ------------------------------------------------------------------------------------------
# least squares
# ------------------------------------------------------------------------------------------
@dataclass
class LSFit:
    """The least-squares member: λ [K], its relative residual (√objective / √rows), how many
    dimensions of members fit as well (``null_dim``) and how it was solved."""

    lam: Tensor
    objective: float
    null_dim: int
    method: str


def _rows(pb: Problem, project_binding: bool) -> tuple[np.ndarray, np.ndarray]:
    """The scaled rows of λ: triples (P_t G_t / w_t, binding rows projected out with
    ``project_binding``) stacked [T·Q, K] and pairs Δφ_p / w_p [p, K]."""
    k = pb.kkt
    P = k.P
    if project_binding and k.Ab.shape[1]:
        B = torch.einsum("tqr,tjr->tjq", P, k.Ab)  # rows of (P A_bᵀ)ᵀ
        NB, _ = projector(B)
        P = P + NB - torch.eye(P.shape[-1], dtype=torch.float64)
    C = torch.einsum("tqr,trk->tqk", P, k.G) / pb.scale[:, None, None]
    D = pb.pairs.dphi / pb.pairs.w.clamp_min(1e-300)[:, None] if len(pb.pairs) else torch.zeros(0, k.K,
                                                                                                 dtype=torch.float64)
    return C.reshape(-1, k.K).numpy(), D.numpy()


def col_scale(pb: Problem) -> np.ndarray:
    """σ_k: the mean size of feature k's gradient over the triples, relative to their scale,
    mean_t ‖∇φ_k(z_t)‖ / w_t (1 for a feature flat everywhere): λ_k σ_k is then feature k's part of
    ∇R_λ, and the program is solved in the unknowns λ_k σ_k (every column of comparable size)."""
    v = (pb.kkt.gnorm / pb.scale[:, None]).mean(0) if pb.kkt.T else torch.zeros(pb.kkt.K, dtype=torch.float64)
    s = v.numpy()
    return np.where((s > 0) & np.isfinite(s), s, 1.0)


def unconstrained(pb: Problem) -> tuple[Tensor, np.ndarray, int]:
    """The least-squares member without cone or signs (the binding rows projected out like
    equalities): (λ [K], the scaled residual vector, null_dim). ValueError when cᵀλ = 1 has no
    solution (c = 0: no triple moved, or every feature is flat along the flow)."""
    c = pb.kkt.normalization().numpy()
    C, D = _rows(pb, project_binding=True)
    A = np.vstack([C, D])
    if not np.any(c):
        raise ValueError("the normalization is 0: no member grows from theta0 to theta_inf on these triples")
    if not np.all(np.isfinite(A)):
        raise ValueError("the KKT rows are not finite")
    sig = col_scale(pb)
    As, cs = A / sig, c / sig  # λ = λs / σ
    lam0 = cs / (cs @ cs)
    Z = scipy.linalg.null_space(cs[None, :])  # [K, K-1]
    lam_s, null_dim = lam0, 0
    if Z.shape[1]:
        AZ = As @ Z
        zsol, _, _, sv = scipy.linalg.lstsq(AZ, -As @ lam0, lapack_driver="gelsd")
        lam_s = lam0 + Z @ zsol
        top = sv.max() if sv.size else 0.0
        tol = max(max(AZ.shape) * np.finfo(float).eps, 1e-10) * top
        null_dim = int(Z.shape[1] - np.sum(sv > tol))
    return torch.as_tensor(lam_s / sig, dtype=torch.float64), As @ lam_s, null_dim


def least_squares(pb: Problem) -> LSFit:
    """The least-squares member (see the module docstring)."""
    lam, _, null_dim = unconstrained(pb)
    method = "least squares (LAPACK)"
    if needs_constraints(pb, lam):
        lam = _constrained_ls(pb, pb.kkt.normalization().numpy(), col_scale(pb))
        method = "least squares with the family's constraints (cvxpy + Clarabel)"
    rho, pi, _ = residuals(pb, lam)
    rows = max(1, pb.kkt.T + len(pb.pairs))
    obj = float(((rho / pb.scale) ** 2).sum() + ((pi / pb.pairs.w.clamp_min(1e-300)) ** 2).sum()) / rows
    return LSFit(lam, math.sqrt(obj), null_dim, method)


def needs_constraints(pb: Problem, lam: Tensor) -> bool:
    """Does λ (solved without them) break a sign of μ, the family's cone or its strictness?"""
    if pb.kkt.Ab.shape[1]:
        _, _, mu_free = _free_mu(pb, lam)
        if bool((mu_free < -1e-9 * mu_free.abs().amax().clamp_min(1e-300)).any()):
            return True
    cons = constraints_at(pb, lam)
    return any(v > 1e-9 for v in cons)


def _free_mu(pb: Problem, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    k = pb.kkt
    B = torch.einsum("tqr,tjr->tqj", k.P, k.Ab)
    r0 = torch.einsum("tqr,tr->tq", k.P, torch.einsum("tqk,k->tq", k.G, lam))
    mu = -(torch.linalg.pinv(B) @ r0[..., None])[..., 0]
    return B, r0, mu


def constraints_at(pb: Problem, lam: Tensor) -> list[float]:
    """The violation of each of the family's cone and strictness constraints at λ (relative to ‖λ‖)."""
    import cvxpy as cp

    var = cp.Variable(pb.kkt.K)
    cons = family_constraints(pb, var)
    if not cons:
        return []
    var.value = lam.numpy()
    scale = float(lam.abs().max()) or 1.0
    return [float(np.max(np.atleast_1d(con.violation()))) / scale for con in cons]


def family_constraints(pb: Problem, lam: Any) -> list[Any]:
    """The family's cone (always) and strict-convexity constraints (with ``strict``) on λ (cvxpy)."""
    Q = pb.kkt.z.shape[1]
    out = list(pb.family.cone(lam, Q, **pb.settings) if pb.family.cone is not None else [])
    if pb.strict is not None and pb.strict > 0:
        if pb.family.strict is None:
            raise NoStrictMember(pb.family.name)
        out += list(pb.family.strict(lam, float(pb.strict), pb.span, Q, **pb.settings))
    return out


class NoStrictMember(ValueError):
    """The family declares no strictly convex member (``Family.strict`` is None)."""

    def __init__(self, name: str):
        super().__init__(f"family {name!r} has no strictly convex member (it declares no strictness constraint)")


def _solve(prob: Any, tol: float) -> str:
    """Solve with Clarabel at ``tol`` (retried 1000× looser when it fails); its status, or
    "solver_error" when both fail."""
    import cvxpy as cp

    opts = {"tol_gap_abs": tol, "tol_gap_rel": tol, "tol_feas": tol, "max_iter": 500}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for scale in (1.0, 1e3):
            try:
                prob.solve(solver="CLARABEL", **{**opts, "tol_gap_abs": scale * tol, "tol_gap_rel": scale * tol,
                                                  "tol_feas": scale * tol})
                return str(prob.status) if scale == 1.0 else "optimal_inaccurate"
            except cp.error.SolverError:
                continue
    return "solver_error"


def _mu_matrix(pb: Problem) -> tuple[sp.csr_matrix, int]:
    """The sparse block of the binding rows' multipliers: column j of triple t is P_t a_tj / w_t."""
    k = pb.kkt
    T, Q = k.T, k.z.shape[1]
    B = torch.einsum("tqr,tjr->tjq", k.P, k.Ab) / pb.scale[:, None, None]  # [T, kb, Q]
    live = (k.Ab.abs().sum(-1) > 0).nonzero()
    n = live.shape[0]
    if n == 0:
        return sp.csr_matrix((T * Q, 0)), 0
    tt, jj = live[:, 0], live[:, 1]
    vals = B[tt, jj].numpy()  # [n, Q]
    rows = (tt[:, None] * Q + torch.arange(Q)[None, :]).numpy()
    cols = np.repeat(np.arange(n)[:, None], Q, 1)
    return sp.csr_matrix((vals.ravel(), (rows.ravel(), cols.ravel())), shape=(T * Q, n)), n


def _constrained_ls(pb: Problem, c: np.ndarray, sig: np.ndarray) -> Tensor:
    import cvxpy as cp

    C, D = _rows(pb, project_binding=False)
    M, n = _mu_matrix(pb)
    lam_s = cp.Variable(pb.kkt.K)
    lam = cp.multiply(1.0 / sig, lam_s)
    terms = [C @ lam]
    mu = cp.Variable(n) if n else None
    cons = [(c / sig) @ lam_s == 1] + family_constraints(pb, lam)
    if mu is not None:
        terms = [C @ lam + M @ mu]
        cons.append(mu >= 0)
    obj = cp.sum_squares(terms[0]) + (cp.sum_squares(D @ lam) if D.shape[0] else 0)
    prob = cp.Problem(cp.Minimize(obj), cons)
    status = _solve(prob, TOLS[1])
    if lam_s.value is None or status not in ("optimal", "optimal_inaccurate"):
        raise ValueError(f"the constrained least-squares program ended '{status}'")
    return torch.as_tensor(lam_s.value / sig, dtype=torch.float64)


# ------------------------------------------------------------------------------------------
# minimax: does any member of the box fit within the tolerance?
# ------------------------------------------------------------------------------------------
@dataclass
class Minimax:
    """The minimax program's answer: s* (relative: the least excess of every row over its tolerance,
    in units of its scale), its measured error, λ there, the multipliers' mass per triple [T] and
    per pair [p], whether the box binds, and the solver status."""

    s: float
    s_err: float
    lam: Tensor | None
    dual_t: Tensor
    dual_p: Tensor
    box_binds: bool
    status: str

    @property
    def fits(self) -> bool:
        """Some member of the box fits: s* ≤ 0, or within the program's own (finite) error of it."""
        return math.isfinite(self.s) and (self.s <= 0 or self.s <= self.s_err)

    @property
    def infeasible(self) -> bool:
        """No member of the box fits: s* > 0 beyond PROGRAM_SAFETY × the program's own error, or no
        member meets the constraints at all (Clarabel's certificate of primal infeasibility)."""
        if self.status == "infeasible":
            return True
        return math.isfinite(self.s) and self.s > 0 and self.s > PROGRAM_SAFETY * self.s_err

    @property
    def infeasible_once(self) -> bool:
        """The screen of a single solve (the deletion search): solved to Clarabel's tolerance and
        s* > PROGRAM_SAFETY × that tolerance."""
        if self.status == "infeasible":
            return True
        return self.status == "optimal" and math.isfinite(self.s) and self.s > PROGRAM_SAFETY * TOLS[1]

    def support(self) -> tuple[Tensor, Tensor]:
        """The triples and pairs whose rows carry multiplier mass (what the infeasibility rests on)."""
        top = max(float(self.dual_t.max()) if self.dual_t.numel() else 0.0,
                  float(self.dual_p.max()) if self.dual_p.numel() else 0.0)
        cut = SUPPORT_RTOL * top
        return (self.dual_t > cut).nonzero().flatten(), (self.dual_p > cut).nonzero().flatten()


def tolerances(pb: Problem, a: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
    """(τ_t [T], τ_p [p]) for every member of the box |λ_k| ≤ box_k: Σ_k box_k a_tk (a from
    :func:`ibtest.propose.kkt.tolerance`) and Σ_k box_k coef_pk."""
    tp = pb.pairs.coef @ box if len(pb.pairs) else torch.zeros(0, dtype=torch.float64)
    return a @ box, tp


def minimax(pb: Problem, a: Tensor, box: Tensor | None) -> Minimax:
    """Solve the minimax program (see the module docstring) at the two tolerances of TOLS: s* and
    the multipliers from the tighter solve, its error the difference of the two."""
    prog = Program(pb, a, box)
    out = [prog.solve(tol) for tol in TOLS]
    lo, hi = out
    err = abs(hi.s - lo.s) if math.isfinite(hi.s) and math.isfinite(lo.s) else math.inf
    if any(m.status != "optimal" for m in out):  # "optimal_inaccurate": only Clarabel's reduced tolerances hold
        err = max(err, REDUCED_TOL)
    hi.s_err = err
    return hi


def _minimax_once(pb: Problem, a: Tensor, box: Tensor | None, tol: float) -> Minimax:
    """One solve of the minimax program at Clarabel tolerance ``tol`` (its error not measured)."""
    return Program(pb, a, box).solve(tol)


#: the offset that takes a row out of the compiled program (rows are O(1) in the scaled unknowns)
OFF = 1e6


class Program:
    """The minimax program of one problem, compiled once by cvxpy (every datum that changes between
    solves a Parameter: DPP), solved for all its rows or a subset of them (the deletion search): a
    left-out row gets the offset OFF on its tolerance and the normalization is the subset's.

    ``box`` None: the family's ``magnitude`` bounds |λ| on its cone linearly, so the tolerance
    Σ_k a_tk·magnitude_k(λ) is linear in λ and no box is needed."""

    def __init__(self, pb: Problem, a: Tensor, box: Tensor | None):
        import cvxpy as cp

        self.pb = pb
        k = pb.kkt
        T, Q, K = k.T, k.z.shape[1], k.K
        C, D = _rows(pb, project_binding=False)
        M, n = _mu_matrix(pb)
        self.sig = col_scale(pb)
        self.lam_s = lam_s = cp.Variable(K)
        lam = cp.multiply(1.0 / self.sig, lam_s)
        self.s = s = cp.Variable()
        self.c = cp.Parameter(K)
        self.roff = cp.Parameter(T * Q, nonneg=True)
        self.poff = cp.Parameter(len(pb.pairs), nonneg=True)
        w_t, pw = pb.scale, pb.pairs.w.clamp_min(1e-300)
        self.box_con = None
        if box is None:
            if pb.family.magnitude is None:
                raise ValueError(f"family {pb.family.name!r} declares no magnitude: the minimax program needs a box")
            mag = pb.family.magnitude(lam, Q, **pb.settings)
            rep = sp.kron(sp.eye(T), np.ones((Q, 1))).tocsr()
            ttol: Any = rep @ ((a / w_t[:, None]).numpy() @ mag)
            ptol: Any = (pb.pairs.coef / pw[:, None]).numpy() @ mag if len(pb.pairs) else 0
            cons = []
        else:
            tau_t, tau_p = tolerances(pb, a, box)
            ttol = np.repeat((tau_t / w_t).numpy(), Q)
            ptol = (tau_p / pw).numpy() if len(pb.pairs) else np.zeros(0)
            self.box_con = cp.abs(lam) <= box.numpy()
            cons = [self.box_con]
        expr = C @ lam + (M @ cp.Variable(n, nonneg=True) if n else 0)
        self.up, self.down = expr <= ttol + self.roff + s, -expr <= ttol + self.roff + s
        cons += [self.up, self.down, self.c @ lam_s == 1]
        self.pu = self.pd = None
        if D.shape[0]:
            self.pu, self.pd = D @ lam <= ptol + self.poff + s, -(D @ lam) <= ptol + self.poff + s
            cons += [self.pu, self.pd]
        cons += family_constraints(pb, lam)
        self.prob = cp.Problem(cp.Minimize(s), cons)

    def solve(self, tol: float, rows: Tensor | None = None, pairs: Tensor | None = None) -> Minimax:
        """Solve at Clarabel tolerance ``tol`` on the rows ``rows`` and pairs ``pairs`` (all: None)."""
        pb, k = self.pb, self.pb.kkt
        T, Q = k.T, k.z.shape[1]
        on = torch.ones(T, dtype=torch.bool) if rows is None else torch.zeros(T, dtype=torch.bool).index_fill(0, rows, True)
        pon = torch.ones(len(pb.pairs), dtype=torch.bool) if pairs is None else \
            torch.zeros(len(pb.pairs), dtype=torch.bool).index_fill(0, pairs, True)
        self.c.value = k.normalization(on.nonzero().flatten()).numpy() / self.sig
        self.roff.value = np.repeat(np.where(on.numpy(), 0.0, OFF), Q)
        self.poff.value = np.where(pon.numpy(), 0.0, OFF)
        status = _solve(self.prob, tol)
        if self.s.value is None or status not in ("optimal", "optimal_inaccurate"):
            inf = math.inf if status in ("infeasible", "infeasible_inaccurate") else math.nan
            return Minimax(inf, math.inf, None, torch.zeros(T, dtype=torch.float64), torch.zeros(len(pb.pairs),
                           dtype=torch.float64), False, status)
        dual = np.abs(np.asarray(self.up.dual_value)) + np.abs(np.asarray(self.down.dual_value))
        dual_t = torch.as_tensor(dual.reshape(T, Q).sum(-1), dtype=torch.float64) * on
        dual_p = torch.zeros(len(pb.pairs), dtype=torch.float64)
        if self.pu is not None and self.pd is not None:
            dual_p = torch.as_tensor(np.abs(np.asarray(self.pu.dual_value)) + np.abs(np.asarray(self.pd.dual_value)),
                                     dtype=torch.float64) * pon
        top = max(float(dual_t.max()) if T else 0.0, float(dual_p.max()) if dual_p.numel() else 0.0)
        binds = False
        if self.box_con is not None:
            bd = np.abs(np.asarray(self.box_con.dual_value))
            binds = bool(bd.size and bd.max() > SUPPORT_RTOL * max(top, 1e-300))
        lam_v = torch.as_tensor(np.asarray(self.lam_s.value) / self.sig, dtype=torch.float64)
        return Minimax(float(self.s.value), 0.0, lam_v, dual_t, dual_p, binds, status)


def default_box(lam: Tensor, pb: Problem) -> Tensor | None:
    """Λ_k = BOX · max_j |λ_j| σ_j / σ_k: the least-squares member's largest scaled coefficient,
    times BOX, in every scaled coordinate (σ: :func:`col_scale`); None for a family whose
    ``magnitude`` bounds |λ| on its cone (no box needed)."""
    if pb.family.magnitude is not None:
        return None
    sig = torch.as_tensor(col_scale(pb), dtype=torch.float64)
    top = float((lam.abs() * sig).max())
    return BOX * top / sig
