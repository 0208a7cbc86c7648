"""Rotations of an admissible pair (the paper's Theorem 5 tool, never assumed, always re-solved).

For an admissible pair (D_a, D_b) from θ0 and a random orthogonal M (Haar, QR of a Gaussian
matrix with sign fix), the new pair is (X_a Mᵀ, y_a), (X_b Mᵀ, y_b) from θ0' = model.rotate(θ0, M).
By equivariance GF should end at the rotated solutions, but the engine solves both sides again
and checks admissibility: equivariance is evidence, not an assumption. Norms blind to one pair
(ℓ∞ rates (5, −1, 0) and (5, −1, s) alike) are seldom blind to its rotations.
"""
from __future__ import annotations

import torch

import ibtest
from ibtest import Option


def haar_orthogonal(k: int, d: int, rng: torch.Generator) -> torch.Tensor:
    """k Haar-distributed orthogonal matrices [k, d, d]."""
    A = torch.randn(k, d, d, generator=rng, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)


def rotate(model: ibtest.ModelBase, pairs: ibtest.PairBatch, rng: torch.Generator,
           count: int = 3, max_pairs: int = 64) -> ibtest.NewPairs | None:
    k = min(pairs.theta0.shape[0], max_pairs)
    if k == 0:
        return None
    d = pairs.Xa.shape[-1]
    src = torch.arange(k).repeat(count)
    M = haar_orthogonal(src.numel(), d, rng)

    def rot(X: torch.Tensor) -> torch.Tensor:  # x -> M x
        return torch.einsum("knd,ked->kne", X, M)

    try:
        th0 = model.rotate(pairs.theta0[src], M)
    except NotImplementedError:
        return None
    out = ibtest.PairBatch(rot(pairs.Xa[src]), pairs.ya[src], pairs.maska[src], rot(pairs.Xb[src]), pairs.yb[src],
                           pairs.maskb[src], th0, [f"rotation {r} of ({pairs.labels[i]})" for r, i in enumerate(src.tolist())])
    return ibtest.NewPairs(out, src)


def size(sources: int, n: int, count: int = 3, max_pairs: int = 64) -> tuple[int, int]:
    """Two new instances (a pair) per rotation, ``count`` rotations of at most ``max_pairs`` pairs."""
    return 2 * count * min(sources, max_pairs), n


@ibtest.hookimpl
def ibtest_constructions():
    return [
        ibtest.Construction(
            name="rotate",
            build=rotate,
            stage="pair",
            size=size,
            doc="re-solve admissible pairs under random rotations M of the inputs (and of theta0)",
            options={
                "count": Option(3, int, "random rotations per pair"),
                "max_pairs": Option(64, int, "at most this many pairs are rotated"),
            },
        )
    ]
