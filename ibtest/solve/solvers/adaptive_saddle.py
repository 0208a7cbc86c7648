r"""Plateaus and saddles in the ``adaptive`` solver: is a row whose gradient is dying out at a
stationary point it stays at, or near a saddle it is about to leave?

Small-init flows pass near saddles: the gradient decays toward the saddle along its stable
directions, the loss stands still (a plateau), and the flow leaves along the unstable direction
once its component, growing like e^{|λ_min| t}, becomes visible. The stall rule of the solver (the
loss the decaying gradient could still remove is negligible) cannot tell that apart from the end
of the flow. Here the Hessian decides, on the activation pattern and projected onto the tangent
space of the held kinks (the space the flow moves in):

* no direction of negative curvature (λ_min ≥ −``NEG_CURV``·λ_max): a minimum of the pattern's
  loss — the flow ends there: stalled;
* negative curvature λ_min < 0 along u: near θ* the flow is θ' = −H(θ − θ*), so the offset of θ
  from the saddle along u is δ = ⟨u, θ'⟩ / |λ_min| and grows like e^{|λ_min| t}. Where |δ| is above
  the rounding of θ (``ON_MANIFOLD``·‖θ‖) the flow will leave: a plateau, not a stall (the solver
  goes on; its steps grow on the plateau, and the Rosenbrock step covers the long ones). Where it
  is at rounding the row sits on the saddle's stable manifold: the flow ends there: stalled,
  whatever the time horizon.

Why a dense ``eigh``: it runs only for rows the stall rule flags, at most once per doubling of t;
the Hessian is the model's analytic one (or forward-mode AD of its gradient).
"""
from __future__ import annotations

from typing import Any

import torch

from ibtest.solve.solvers.kinks import KinkField
from ibtest.solve.solvers.stiff import hessian

Tensor = torch.Tensor
#: λ_min below −NEG_CURV·λ_max is negative curvature (rounding of H is ~1e-16·λ_max)
NEG_CURV = 1e-10
#: |δ| ≤ ON_MANIFOLD·(1 + ‖θ‖): the row is on the saddle's stable manifold to rounding
ON_MANIFOLD = 1e-12


def leaves_saddle(model: Any, kf: KinkField | None, theta: Tensor, f: Tensor, X: Tensor, y: Tensor, mask: Tensor,
                  held: Tensor | None) -> Tensor:
    """For rows θ [r, P] with field f [r, P] (the Filippov field where kinks are held, ``held``
    [r, n, m]): True where the flow is near a saddle it will leave (module docstring), bool [r]."""
    H = hessian(model, theta, X, y, mask)
    if kf is not None and held is not None and bool(held.any()):
        H = kf.project_hessian(X, held, H)
    H = 0.5 * (H + H.transpose(1, 2))
    ev, U = torch.linalg.eigh(H)
    lmin, lmax = ev[:, 0], ev[:, -1].abs()
    neg = lmin < -NEG_CURV * lmax.clamp_min(1e-300)
    delta = (U[:, :, 0] * f).sum(-1).abs() / lmin.abs().clamp_min(1e-300)
    return neg & (delta > ON_MANIFOLD * (1.0 + theta.norm(dim=-1)))
