"""Single neurons f_w(x) = σ(⟨w, x⟩) with a piecewise-linear σ, and the linear model.

θ = w ∈ R^d (P = d). σ(z) = pos·z for z > 0 and neg·z for z < 0; gradient flow uses the
declared σ'(0) (``relu_grad_at_zero``) when a pre-activation is exactly 0, as Vardi & Shamir
do (they start at w(0) = 0 with σ'(0) = 1). The hand-written gradient follows that convention;
autograd would not.
"""
from __future__ import annotations

from typing import Literal

import torch

import ibtest
from ibtest import Option, PiecewiseLinearNeuron


class PiecewiseNeuron(ibtest.ModelBase):
    """f_w(x) = σ(⟨w, x⟩) for σ given by a :class:`PiecewiseLinearNeuron`."""

    #: a neuron's output weight is v ≡ 1 (:class:`ibtest.PiecewiseLinearUnits`, m = 1)
    train_output = False
    piecewise: PiecewiseLinearNeuron  # always declared here (ModelBase's is optional)

    def __init__(self, piecewise: PiecewiseLinearNeuron, **options):
        super().__init__(**options)
        self.piecewise = piecewise
        self.slopes = (float(piecewise.neg), float(piecewise.pos))
        self.at_zero = float(piecewise.at_zero)

    def n_params(self, d: int) -> int:
        return d

    def blocks(self, d: int) -> dict[str, slice]:
        return {"w": slice(0, d)}

    def preactivation(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """z_i = ⟨w, x_i⟩, [B, n]."""
        return torch.einsum("bnd,bd->bn", X, theta)

    # -- the kink capability (ibtest.PiecewiseLinearUnits): one unit, v ≡ 1 -----------------
    def hidden_preactivations(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """z_i1 = ⟨w, x_i⟩, [B, n, 1]."""
        return self.preactivation(theta, X).unsqueeze(-1)

    def units(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W = w [B, 1, d], v = 1 [B, 1])."""
        return theta.unsqueeze(1), torch.ones(theta.shape[0], 1, dtype=theta.dtype, device=theta.device)

    def from_units(self, W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return W[:, 0]

    def grad_on_pattern(self, theta, X, y, mask, slope):
        """∇L [B, d] with σ'(z_i) = slope_i1 and σ(z_i) = slope_i1·z_i held."""
        s = slope[..., 0]
        r = (s * self.preactivation(theta, X) - y) * mask * s
        return torch.einsum("bn,bnd->bd", r, X)

    def _slopes(self, z: torch.Tensor) -> torch.Tensor:
        """σ'(z_i) [B, n] in z's dtype (the declared σ'(0) at 0). The slopes are float64
        tensors: ``torch.where`` of Python floats is float32 (0.1 became 0.10000000149, so
        ``grad`` was not quite the gradient of ``loss``)."""
        pw = self.piecewise
        t = lambda c: torch.tensor(c, dtype=z.dtype, device=z.device)  # noqa: E731
        return torch.where(z > 0, t(pw.pos), torch.where(z < 0, t(pw.neg), t(pw.at_zero)))

    def predict(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        z = self.preactivation(theta, X)
        pw = self.piecewise
        return torch.where(z > 0, pw.pos * z, pw.neg * z)

    def grad(self, theta, X, y, mask):
        z = self.preactivation(theta, X)
        r = (self.predict(theta, X) - y) * mask * self._slopes(z)
        return torch.einsum("bn,bnd->bd", r, X)

    def loss_hessian(self, theta, X, y, mask):
        """∇²L = Σ_i mask_i s_i² x_i x_iᵀ [B, d, d] on the activation pattern of w (s_i = σ'(z_i),
        the declared σ'(0) at z_i = 0; σ'' = 0 there). Symmetric."""
        z = self.preactivation(theta, X)
        s = self._slopes(z)
        H = torch.matmul(X.transpose(1, 2) * (mask * s * s).unsqueeze(1), X)
        return 0.5 * (H + H.transpose(1, 2))

    def rotate(self, theta: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """f_{Mw}(Mx) = f_w(x) for orthogonal M."""
        return torch.einsum("bij,bj->bi", M, theta)

    def first_layer(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.unsqueeze(1)

    def zero_set(self, X, y, mask):
        """Z(D) in w, an exact polyhedron (:class:`ibtest.Polyhedron`): a positive label y_i fits
        iff ⟨w, x_i⟩ = y_i/pos; a zero label iff ⟨w, x_i⟩ ≤ 0 for ReLU (neg = 0, one inequality
        row), ⟨w, x_i⟩ = 0 otherwise; a negative label iff ⟨w, x_i⟩ = y_i/neg (unfittable by a
        ReLU: infeasible). Padded points are zero rows."""
        pos, neg = self.piecewise.pos, self.piecewise.neg
        real = mask > 0
        ub = real & (y == 0) if neg == 0 else torch.zeros_like(real)
        eq = real & ~ub
        rhs = torch.where(y > 0, y / pos, torch.where(y < 0, y / (neg if neg != 0 else 1.0), torch.zeros_like(y)))
        feasible = ~(real & (y < 0)).any(-1) if neg == 0 else torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
        e, u = eq.to(X.dtype), ub.to(X.dtype)
        return ibtest.Polyhedron("theta", X * e[..., None], rhs * e, X * u[..., None], torch.zeros_like(y), feasible)


def relu_neuron(relu_grad_at_zero: Literal[0, 1] = 1) -> PiecewiseNeuron:
    return PiecewiseNeuron(
        PiecewiseLinearNeuron(pos=1.0, neg=0.0, at_zero=float(relu_grad_at_zero)),
        relu_grad_at_zero=relu_grad_at_zero,
    )


def leaky_relu_neuron(slope: float = 0.1) -> PiecewiseNeuron:
    if not 0.0 < slope:
        raise ValueError(f"slope must be > 0 (got {slope}); slope 0 is relu_neuron")
    return PiecewiseNeuron(PiecewiseLinearNeuron(pos=1.0, neg=float(slope), at_zero=1.0), slope=slope)


def linear() -> PiecewiseNeuron:
    return PiecewiseNeuron(PiecewiseLinearNeuron(pos=1.0, neg=1.0, at_zero=1.0))


@ibtest.hookimpl
def ibtest_models():
    return [
        ibtest.Model(
            name="relu_neuron",
            factory=relu_neuron,
            doc="single ReLU neuron f(x) = max(0, <w, x>), sigma'(0) chosen by the study",
            options={
                "relu_grad_at_zero": Option(1, Literal[0, 1], "sigma'(0) used by the flow (the paper: 1)"),
            },
        ),
        ibtest.Model(
            name="leaky_relu_neuron",
            factory=leaky_relu_neuron,
            doc="single leaky ReLU neuron f(x) = <w, x> if > 0 else slope * <w, x>",
            options={"slope": Option(0.1, float, "slope for negative pre-activations (> 0)")},
        ),
        ibtest.Model(
            name="linear",
            factory=linear,
            doc="linear model f(x) = <w, x>",
        ),
    ]
