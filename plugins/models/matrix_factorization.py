"""Deep matrix factorization W = W_D ⋯ W_1 with k×k factors (Razin & Cohen, NeurIPS 2020).

θ = (W_1, …, W_D), each flattened row-major, P = D·k²; blocks ``W1`` … ``WD``. A dataset encodes
observed entries as measurements: x_i is the flattened one-hot k×k matrix of entry (r, c), so
f(x_i) = ⟨W, x_i⟩ = W_rc and d = k². The predictor is W flattened [B, k²]. The gradient is
hand-written: ∂L/∂W_j = (W_D⋯W_{j+1})ᵀ G (W_{j−1}⋯W_1)ᵀ with G = Σ_i r_i x_i (as a k×k matrix).
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

import ibtest
from ibtest import Option


class MatrixFactorization(ibtest.ModelBase):
    def __init__(self, depth: int = 2, size: int = 2):
        if int(depth) < 1 or int(size) < 1:
            raise ValueError(f"depth and size must be >= 1 (got depth={depth}, size={size})")
        super().__init__(depth=int(depth), size=int(size))
        self.D = int(depth)
        self.k = int(size)

    def _check_d(self, d: int) -> None:
        if d != self.k * self.k:
            raise ValueError(f"matrix_factorization(size={self.k}) needs d = {self.k ** 2} (got {d})")

    def n_params(self, d: int) -> int:
        self._check_d(d)
        return self.D * d

    def blocks(self, d: int) -> dict[str, slice]:
        self._check_d(d)
        return {f"W{j + 1}": slice(j * d, (j + 1) * d) for j in range(self.D)}

    def factors(self, theta: torch.Tensor) -> list[torch.Tensor]:
        k = self.k
        return [theta[:, j * k * k:(j + 1) * k * k].reshape(-1, k, k) for j in range(self.D)]

    def product(self, theta: torch.Tensor) -> torch.Tensor:
        """W = W_D ⋯ W_1, [B, k, k]."""
        Ws = self.factors(theta)
        W = Ws[0]
        for Wj in Ws[1:]:
            W = Wj @ W
        return W

    def predictor(self, theta: torch.Tensor) -> torch.Tensor:
        return self.product(theta).reshape(theta.shape[0], -1)

    def predict(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnd,bd->bn", X, self.predictor(theta))

    def grad(self, theta, X, y, mask):
        B, k, D = theta.shape[0], self.k, self.D
        Ws = self.factors(theta)
        # prefix[j] = W_j ⋯ W_1 (prefix[0] = I); suffix[j] = W_D ⋯ W_{j+1}
        eye = torch.eye(k, dtype=theta.dtype, device=theta.device).expand(B, k, k)
        prefix = [eye]
        for Wj in Ws:
            prefix.append(Wj @ prefix[-1])
        W = prefix[-1]
        r = (torch.einsum("bnd,bd->bn", X, W.reshape(B, -1)) - y) * mask
        G = torch.einsum("bn,bnd->bd", r, X).reshape(B, k, k)
        grads: list[torch.Tensor] = [eye] * D
        suffix = eye
        for j in range(D - 1, -1, -1):
            grads[j] = suffix.transpose(-1, -2) @ G @ prefix[j].transpose(-1, -2)
            suffix = suffix @ Ws[j]
        return torch.cat([g.reshape(B, -1) for g in grads], dim=-1)


def matrix_factorization(depth: int = 2, size: int = 2) -> MatrixFactorization:
    return MatrixFactorization(depth=depth, size=size)


@ibtest.hookimpl
def ibtest_models():
    return [
        ibtest.Model(
            name="matrix_factorization",
            factory=matrix_factorization,
            doc="deep matrix factorization W = W_D ... W_1 (k x k), measurements f(x) = <W, x>",
            options={
                "depth": Option(2, Annotated[int, Field(ge=1)], "number D of factors"),
                "size": Option(2, Annotated[int, Field(ge=1)], "side k of the square matrices (inputs have d = k*k)"),
            },
        )
    ]
