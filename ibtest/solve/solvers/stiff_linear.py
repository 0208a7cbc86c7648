r"""The linear systems of the Rosenbrock step: (c·I + H) x = b for b rows at once, c = 1/(γh) [b]
and H the (projected) Hessian of the loss [b, P, P], either dense or in parts.

* :class:`DenseSystem`: one batched LU of c·I + H (``torch.linalg.lu_factor_ex``, a LAPACK call
  per matrix: a row's answer does not depend on its batch). O(P³) per row and step: at width 256
  (P = 2,816) 0.6 s per row on this box's core, more than the rest of the step.
* :class:`PartsSystem`: H = JᵀJ + Σ_u E_uᵀR_uE_u (:class:`ibtest.HessianParts`: the Gauss–Newton
  factor J [b, n, P], n data points, and block-diagonal residual terms R_u [k, k]). With the
  block-diagonal D = c·I + Σ_u E_uᵀR_uE_u the Woodbury identity gives

      (D + JᵀJ)⁻¹ b = D⁻¹b − Y (I_n + J Y)⁻¹ J D⁻¹b,   Y = D⁻¹Jᵀ [b, P, n],

  i.e. u LU factorizations of [k, k] blocks and one of [n, n]: O(u·k³ + n²P) per row instead of
  O(P³). Why not a library routine: scipy's and torch's structured solvers (banded, sparse LU,
  ``torch.linalg.solve``) do not take a low-rank-plus-block-diagonal matrix, and a sparse LU of
  the assembled matrix fills in (JᵀJ is dense).

  Numerics. D is indefinite when the residual term outweighs c (a plateau with large residuals
  and a long step): the identity is exact in exact arithmetic as long as D and I + JY are
  invertible, but loses accuracy as they approach singularity. So every solve is followed by one
  step of iterative refinement with the exact product (c·I + H)x (O(nP)), and a row whose
  backward error ‖b − (c·I + H)x‖∞ / (‖c·I + H‖∞‖x‖∞ + ‖b‖∞) stays above ``BACKWARD_TOL``
  is solved again by the dense LU (:class:`DenseSystem` on the assembled matrix of that row),
  for this and every later stage of the step. The dense LU's own backward error is ~P·eps.

Bits. An instance's answer must not depend on its batch: factorizations and solves are LAPACK
calls per matrix, matrix products of [b, ·, ·] operands batched GEMMs, and matrix–vector
products are written as a product and a sum over the last axis (a batched ``A @ x[..., None]``
rounds differently for one instance and for a batch).
"""
from __future__ import annotations

import torch

from ibtest.plugin.specs import HessianParts

Tensor = torch.Tensor
#: the backward error a structured solve must reach (after one refinement) to be kept; a dense
#: LU with partial pivoting reaches ~P·eps (1.6e-13 at P = 704); measured on the width-64 stiff
#: tails: ~1e-17 to 1e-16 after refinement (the dense fallback never triggered there)
BACKWARD_TOL = 1e-13
#: below this many parameters the dense LU is cheaper than the structured solve's extra tensor
#: operations. Measured (one core; a factorization and 8 solves, as in a Rodas5P step; d = 10,
#: n = 20; 1 row / 4 rows): P = 176: dense 0.91 / 3.58 ms, parts 4.98 / 6.39 ms; P = 264: 1.55 /
#: 8.79 against 4.73 / 7.80; P = 352: 2.77 / 19.47 against 5.41 / 8.56. Width 64 (P = 704): a
#: dense factorization alone took 22 ms per call in a solve
PARTS_MIN_P = 200


class DenseSystem:
    """(c·I + H) x = rhs by one batched LU (module docstring). ``bad`` [b]: rows whose matrix is
    singular to working precision (LU ``info`` ≠ 0)."""

    def __init__(self, H: Tensor, c: Tensor) -> None:
        b, P, _ = H.shape
        Mat = H + torch.diag_embed(c.unsqueeze(-1).expand(b, P))
        self.LU, self.piv, info = torch.linalg.lu_factor_ex(Mat)
        self.bad = info != 0

    def solve(self, rhs: Tensor) -> Tensor:
        """x [b, P] for rhs [b, P]."""
        return torch.linalg.lu_solve(self.LU, self.piv, rhs.unsqueeze(-1)).squeeze(-1)


class PartsSystem:
    """(c·I + JᵀJ + Σ_u E_uᵀR_uE_u) x = rhs by the Woodbury identity with one refinement step,
    the dense LU for rows it does not solve to ``BACKWARD_TOL`` (module docstring). ``bad`` [b]:
    rows that are singular to working precision for the dense LU too. ``fallback`` [b]: rows
    solved densely."""

    def __init__(self, parts: HessianParts, c: Tensor) -> None:
        J, R, idx = parts
        b, n, P = J.shape
        u, k = idx.shape
        self.parts, self.c = parts, c
        self.flat = flat = idx.reshape(-1)
        self.has_free = flat.numel() < P  # positions in no block (idx disjoint): D = c there
        D = R + c.view(b, 1, 1, 1) * torch.eye(k, dtype=J.dtype, device=J.device)
        self.DLU, self.Dpiv, info_d = torch.linalg.lu_factor_ex(D)  # [b, u, k, k]
        Y = self._dinv(J.transpose(1, 2))  # [b, P, n]
        Yt = Y.transpose(1, 2)  # [b, n, P]; J Y as a product and a sum over P (a batched GEMM with
        # an inner dimension of P rounds differently for one row and for a batch)
        S = torch.eye(n, dtype=J.dtype, device=J.device) + (J.unsqueeze(2) * Yt.unsqueeze(1)).sum(-1)
        self.SLU, self.Spiv, info_s = torch.linalg.lu_factor_ex(S)
        self.Y = Y
        self.Jt = J.transpose(1, 2).contiguous()  # [b, P, n]
        # ‖c·I + H‖∞ bounded by c + max_p Σ_l |R|_pl + max_p Σ_i |J_ip| Σ_l |J_il|
        rowJ = (self.Jt.abs() * J.abs().sum(-1).unsqueeze(1)).sum(-1)  # [b, P]
        rowR = torch.zeros(b, P, dtype=J.dtype, device=J.device)
        rowR[:, flat] = R.abs().sum(-1).reshape(b, -1)
        self.norm = c + (rowJ + rowR).amax(-1)
        self.fallback = (info_d != 0).any(-1) | (info_s != 0)
        self.dense: DenseSystem | None = None
        self.dense_rows = torch.zeros(0, dtype=torch.long, device=J.device)
        self.bad = torch.zeros(b, dtype=torch.bool, device=J.device)
        if bool(self.fallback.any()):
            self._go_dense(self.fallback)

    def _dinv(self, V: Tensor) -> Tensor:
        """D⁻¹V for V [b, P, q] (block solves; c⁻¹ on the positions in no block)."""
        b, P, q = V.shape
        u, k = self.parts.idx.shape
        out = V / self.c.view(b, 1, 1) if self.has_free else torch.empty_like(V)
        Vb = V[:, self.flat].reshape(b, u, k, q)
        out[:, self.flat] = torch.linalg.lu_solve(self.DLU, self.Dpiv, Vb).reshape(b, u * k, q)
        return out

    def matvec(self, x: Tensor) -> Tensor:
        """(c·I + H) x [b, P], H in parts, for x [b, P]."""
        J, R, idx = self.parts
        b, P = x.shape
        u, k = idx.shape
        flat = self.flat
        Jx = (J * x.unsqueeze(1)).sum(-1)  # [b, n]
        out = self.c.unsqueeze(-1) * x + (self.Jt * Jx.unsqueeze(1)).sum(-1)
        xb = x[:, flat].reshape(b, u, 1, k)
        out[:, flat] += (R * xb).sum(-1).reshape(b, u * k)
        return out

    def _woodbury(self, r: Tensor) -> Tensor:
        # matrix–vector products as products and sums (module docstring: batch-independent bits)
        z = self._dinv(r.unsqueeze(-1)).squeeze(-1)  # [b, P]
        t = torch.linalg.lu_solve(self.SLU, self.Spiv, (self.parts.J * z.unsqueeze(1)).sum(-1).unsqueeze(-1))
        return z - (self.Y * t.transpose(1, 2)).sum(-1)

    def backward_error(self, rhs: Tensor, x: Tensor) -> Tensor:
        """‖rhs − (c·I + H)x‖∞ / (‖c·I + H‖∞‖x‖∞ + ‖rhs‖∞) [b]."""
        res = (rhs - self.matvec(x)).abs().amax(-1)
        den = self.norm * x.abs().amax(-1) + rhs.abs().amax(-1)
        return torch.where(den > 0, res / den.clamp_min(1e-300), res)

    def solve(self, rhs: Tensor) -> Tensor:
        """x [b, P] for rhs [b, P]: Woodbury, one refinement step, the dense LU where the backward
        error stays above ``BACKWARD_TOL`` (those rows stay dense for later solves)."""
        x = self._woodbury(rhs)
        x = x + self._woodbury(rhs - self.matvec(x))
        eta = self.backward_error(rhs, x)
        worse = ~(eta <= BACKWARD_TOL) & ~self.fallback
        if bool(worse.any()):
            self._go_dense(worse)
        if self.dense is not None:
            x[self.dense_rows] = self.dense.solve(rhs[self.dense_rows])
        return x

    def _go_dense(self, rows: Tensor) -> None:
        """Solve the rows ``rows`` [b] (bool) densely from now on."""
        self.fallback = self.fallback | rows
        idx = self.fallback.nonzero().squeeze(-1)
        J, R, ix = self.parts
        H = HessianParts(J[idx], R[idx], ix).dense()
        self.dense = DenseSystem(H, self.c[idx])
        self.dense_rows = idx
        self.bad = torch.zeros_like(self.bad)
        self.bad[idx] = self.dense.bad


def shifted_system(H: Tensor | HessianParts, c: Tensor) -> DenseSystem | PartsSystem:
    """The system c·I + H for the Rosenbrock step (c [b]); parts below ``PARTS_MIN_P``
    parameters are assembled and solved densely."""
    if isinstance(H, HessianParts):
        if H.J.shape[-1] < PARTS_MIN_P:
            return DenseSystem(H.dense(), c)
        return PartsSystem(H, c)
    return DenseSystem(H, c)


__all__ = ["BACKWARD_TOL", "PARTS_MIN_P", "DenseSystem", "PartsSystem", "shifted_system"]
