"""One-hidden-layer ReLU network f(x) = Σ_j v_j σ(⟨w_j, x⟩).

θ = (W flattened row-major [m·d], v [m]), P = m·d + m; blocks ``w`` and ``v``. The gradient is
hand-written so that it follows the declared σ'(0) (``relu_grad_at_zero``) at a pre-activation
that is exactly 0 (autograd would not). With ``train_output=False`` the output weights are
frozen (their gradient is 0). The model declares the capabilities the ``adaptive`` solver
uses (:class:`ibtest.PiecewiseLinearUnits`: pre-activations, units, slopes, σ'(0) and the
gradient with the activation pattern held, with which it follows kinks; :class:`ibtest.LossHessian`:
the analytic Hessian on the activation pattern, for the Rosenbrock step of its stiff tail).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

import ibtest
from ibtest import Option


def _out(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Σ_j a_ij v_j [B, n] for a [B, n, m], v [B, m], as a product and a sum over j: the batched
    matrix–vector product ``a @ v[..., None]`` rounds differently for one instance and for a
    batch from m = 64 on (a batched GEMM against a GEMV), and an instance's bits must not
    depend on its batch (width 64: the same instance stopped at t = 5.79 in a batch of 8 and
    6.05 alone)."""
    return (a * v.unsqueeze(1)).sum(-1)


class TwoLayerReLU(ibtest.ModelBase):
    """f(x) = Σ_j v_j max(0, ⟨w_j, x⟩) with width m."""

    def __init__(self, width: int = 1, train_output: bool = True, relu_grad_at_zero: int = 1):
        if int(width) < 1:
            raise ValueError(f"width must be >= 1 (got {width})")
        if relu_grad_at_zero not in (0, 1):
            raise ValueError(f"relu_grad_at_zero must be 0 or 1 (got {relu_grad_at_zero})")
        super().__init__(width=int(width), train_output=bool(train_output),
                         relu_grad_at_zero=int(relu_grad_at_zero))
        self.m = int(width)
        self.train_output = bool(train_output)
        self.at_zero = float(relu_grad_at_zero)
        self.slopes = (0.0, 1.0)

    # -- structure -----------------------------------------------------------------------
    def n_params(self, d: int) -> int:
        return self.m * d + self.m

    def blocks(self, d: int) -> dict[str, slice]:
        return {"w": slice(0, self.m * d), "v": slice(self.m * d, self.m * d + self.m)}

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [B, m, d], v [B, m]) views of θ."""
        m = self.m
        d = (theta.shape[-1] - m) // m
        return theta[:, : m * d].reshape(-1, m, d), theta[:, m * d:]

    def units(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [B, m, d], v [B, m]) (:class:`ibtest.PiecewiseLinearUnits`)."""
        return self.split(theta)

    def from_units(self, W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """θ [B, P] from W [B, m, d] and v [B, m]."""
        return torch.cat([W.flatten(1), v], -1)

    # -- maths ---------------------------------------------------------------------------
    def hidden_preactivations(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """z_ij = ⟨w_j, x_i⟩, [B, n, m]."""
        W, _ = self.split(theta)
        return torch.matmul(X, W.transpose(1, 2))

    def predict(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        W, v = self.split(theta)
        z = torch.matmul(X, W.transpose(1, 2))
        return _out(z.clamp_min(0.0), v)

    def grad(self, theta, X, y, mask):
        # matmul rather than einsum: these tensors are tiny and per-call overhead dominates
        W, v = self.split(theta)
        z = torch.matmul(X, W.transpose(1, 2))  # [B, n, m]
        a = z.clamp_min(0.0)
        r = (_out(a, v) - y) * mask  # [B, n]
        s = (z >= 0) if self.at_zero == 1.0 else (z > 0)  # σ'(z) with the declared σ'(0)
        c = r.unsqueeze(-1) * s * v.unsqueeze(1)  # [B, n, m]
        gW = torch.matmul(c.transpose(1, 2), X)  # [B, m, d]
        if self.train_output:
            gv = torch.matmul(r.unsqueeze(1), a).squeeze(1)
        else:
            gv = torch.zeros_like(v)
        return torch.cat([gW.flatten(1), gv], dim=-1)

    def grad_on_pattern(self, theta, X, y, mask, slope):
        """∇L [B, P] with the activation pattern held: σ'(z_ij) = slope_ij and σ(z_ij) =
        slope_ij·z_ij (:class:`ibtest.PiecewiseLinearUnits`); equal to :meth:`grad` where the
        slope is the ReLU's own (1 above the kink, 0 below, the declared σ'(0) at it)."""
        W, v = self.split(theta)
        z = torch.matmul(X, W.transpose(1, 2))  # [B, n, m]
        a = slope * z
        r = (_out(a, v) - y) * mask  # [B, n]
        c = r.unsqueeze(-1) * slope * v.unsqueeze(1)  # [B, n, m]
        gW = torch.matmul(c.transpose(1, 2), X)  # [B, m, d]
        gv = torch.matmul(r.unsqueeze(1), a).squeeze(1) if self.train_output else torch.zeros_like(v)
        return torch.cat([gW.flatten(1), gv], dim=-1)

    def loss_hessian(self, theta, X, y, mask):
        """∇²L [B, P, P] on the activation pattern of θ (s_ij = σ'(z_ij), declared σ'(0) at 0).

        With r_i = mask_i (f(x_i) − y_i) (as in :meth:`grad`), J_i = ∂f(x_i)/∂θ
        = (v_j s_ij x_i for w_j, a_ij = σ(z_ij) for v_j): H = Σ_i mask_i J_iᵀJ_i plus the residual
        term ∂²/∂w_j∂v_j = Σ_i r_i s_ij x_i (the only non-zero second derivative of f). With
        ``train_output=False`` the v rows and columns are 0 (v is frozen). Symmetric."""
        W, v = self.split(theta)
        B, m, d = W.shape
        md = m * d
        z = torch.matmul(X, W.transpose(1, 2))  # [B, n, m]
        s = ((z >= 0) if self.at_zero == 1.0 else (z > 0)).to(z.dtype)
        Jw = ((s * v.unsqueeze(1)).unsqueeze(-1) * X.unsqueeze(2)).flatten(2)  # [B, n, m·d]
        if not self.train_output:
            H = torch.matmul(Jw.transpose(1, 2) * mask.unsqueeze(1), Jw)
            Hf = torch.zeros(B, md + m, md + m, dtype=z.dtype, device=z.device)
            Hf[:, :md, :md] = H
            return 0.5 * (Hf + Hf.transpose(1, 2))
        J = torch.cat([Jw, z.clamp_min(0.0)], dim=-1)  # [B, n, P]
        H = torch.matmul(J.transpose(1, 2) * mask.unsqueeze(1), J)
        r = (_out(z.clamp_min(0.0), v) - y) * mask  # [B, n]
        C = torch.matmul((r.unsqueeze(-1) * s).transpose(1, 2), X)  # [B, m, d]: Σ_i r_i s_ij x_i
        # the w_j, v_j block: 2·C into the upper block only, the symmetrization halves it into both
        R = (2.0 * C).unsqueeze(-1) * torch.eye(m, dtype=z.dtype, device=z.device).unsqueeze(1)  # [B, m, d, m]
        H[:, :md, md:] += R.reshape(B, md, m)
        return 0.5 * (H + H.transpose(1, 2))

    def loss_hessian_parts(self, theta, X, y, mask):
        """:meth:`loss_hessian` in parts (:class:`ibtest.LossHessianParts`): J [B, n, P] with rows
        √mask_i J_i, and the residual term as one block per unit j on (w_j, v_j) [d + 1]:
        [[0, C_j], [C_jᵀ, 0]], C_j = Σ_i r_i s_ij x_i (0 with ``train_output=False``)."""
        W, v = self.split(theta)
        B, m, d = W.shape
        z = torch.matmul(X, W.transpose(1, 2))  # [B, n, m]
        s = ((z >= 0) if self.at_zero == 1.0 else (z > 0)).to(z.dtype)
        a = z.clamp_min(0.0)
        sq = mask.clamp_min(0.0).sqrt().unsqueeze(-1)  # [B, n, 1]
        Jw = ((s * v.unsqueeze(1)).unsqueeze(-1) * X.unsqueeze(2)).flatten(2)  # [B, n, m·d]
        Jv = a if self.train_output else torch.zeros_like(a)
        J = torch.cat([Jw, Jv], -1) * sq
        R = torch.zeros(B, m, d + 1, d + 1, dtype=z.dtype, device=z.device)
        if self.train_output:
            r = (_out(a, v) - y) * mask  # [B, n]
            C = torch.matmul((r.unsqueeze(-1) * s).transpose(1, 2), X)  # [B, m, d]
            R[..., :d, d] = C
            R[..., d, :d] = C
        ar = torch.arange(m, device=z.device)
        idx = torch.cat([(ar * d).unsqueeze(-1) + torch.arange(d, device=z.device), (m * d + ar).unsqueeze(-1)], -1)
        return ibtest.HessianParts(J, R, idx)

    def predictor(self, theta: torch.Tensor) -> torch.Tensor:
        """u = v·w [B, d] for m = 1; the concatenation of v_j·w_j [B, m·d] for m > 1."""
        W, v = self.split(theta)
        return (v.unsqueeze(-1) * W).reshape(theta.shape[0], -1)

    def rotate(self, theta: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """w_j → M w_j (v unchanged): f_θ'(M x) = f_θ(x) for orthogonal M [B, d, d]."""
        W, v = self.split(theta)
        W2 = torch.einsum("bij,bmj->bmi", M, W)
        return torch.cat([W2.reshape(theta.shape[0], -1), v], dim=-1)

    def first_layer(self, theta: torch.Tensor) -> torch.Tensor:
        return self.split(theta)[0]

    def balancedness(self, theta: torch.Tensor) -> torch.Tensor:
        """v_j² − ‖w_j‖², [B, m] (conserved by gradient flow)."""
        W, v = self.split(theta)
        return v * v - (W * W).sum(-1)

    def certified_min_norm(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                           **options) -> list:
        """θ [B, P] against the certified min of ½‖θ‖² (= min Σ|v_j|‖w_j‖) over all nets that fit
        (X [B, n, d], y [B, n], mask [B, n]): one :class:`two_layer_convex.Check` per instance
        (verdicts, a width-m witness θ' when beaten, the optimum and whether it is exact).
        ``options`` go to :func:`two_layer_convex.check_theta` (atol, rtol, pattern options)."""
        from .two_layer_convex import check_theta

        if not self.train_output:
            raise ValueError("certified_min_norm: the convex program needs trained output weights (train_output=True)")
        return [check_theta(theta[b], X[b], y[b], mask[b], **options) for b in range(theta.shape[0])]

    def certified_optimum(self, name: str, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                          mask: torch.Tensor, atol: float = 0.0, rtol: float = 0.0) -> list[ibtest.OptimumCheck] | None:
        """``half_sq_norm`` (½‖θ‖²) and ``path_norm`` (Σ|v_j|‖w_j‖): both have the same certified
        minimum over all interpolating nets, the group-lasso program of :mod:`two_layer_convex`
        (Pilanci & Ergen 2020); exact where the data's activation patterns are enumerated."""
        if name not in ("half_sq_norm", "path_norm") or not self.train_output:
            return None
        out = []
        for c in self.certified_min_norm(theta, X, y, mask, atol=atol, rtol=rtol):
            v = c.half_sq_norm if name == "half_sq_norm" else c.path_norm
            out.append(ibtest.OptimumCheck(v.status, v.value, v.minimum, c.optimum.lower_bound, v.tol,
                                           c.optimum.exact, v.reason,
                                           None if v.status != "beaten" or c.witness is None
                                           else torch.as_tensor(c.witness, dtype=theta.dtype)))
        return out


def two_layer_relu(width: int = 1, train_output: bool = True,
                   relu_grad_at_zero: Literal[0, 1] = 1) -> TwoLayerReLU:
    return TwoLayerReLU(width=width, train_output=train_output, relu_grad_at_zero=relu_grad_at_zero)


@ibtest.hookimpl
def ibtest_models():
    return [
        ibtest.Model(
            name="two_layer_relu",
            factory=two_layer_relu,
            doc="one-hidden-layer ReLU net f(x) = sum_j v_j max(0, <w_j, x>)",
            options={
                "width": Option(1, Annotated[int, Field(ge=1)], "number m of hidden units"),
                "train_output": Option(True, bool, "train the output weights v (False: v frozen)"),
                "relu_grad_at_zero": Option(1, Literal[0, 1], "sigma'(0) used by the flow"),
            },
        )
    ]
