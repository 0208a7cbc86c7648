"""Linear-regression style datasets: sparse regression (n < d) and orthogonal inputs."""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

import ibtest
from ibtest import Option

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]


def sparse_regression(rng: torch.Generator, n: int = 5, d: int = 10, k: int = 2, count: int = 1,
                      noise: float = 0.0) -> ibtest.DataBatch:
    """x ~ N(0, I_d), y = ⟨β*, x⟩ with β* k-sparse (random support, N(0, 1) entries)."""
    if not 0 < k <= d:
        raise ValueError(f"sparse_regression needs 0 < k <= d, got k={k}, d={d}")
    X = torch.randn(count, n, d, generator=rng, dtype=torch.float64)
    beta = torch.zeros(count, d, dtype=torch.float64)
    for c in range(count):  # generation only, not a hot path
        support = torch.randperm(d, generator=rng)[:k]
        beta[c, support] = torch.randn(k, generator=rng, dtype=torch.float64)
    y = torch.einsum("cnd,cd->cn", X, beta) + noise * torch.randn(count, n, generator=rng, dtype=torch.float64)
    return ibtest.DataBatch(X, y, [f"#{c}" for c in range(count)])


def orthogonal(rng: torch.Generator, n: int = 3, d: int = 5, count: int = 1, scale: float = 1.0,
               labels: str = "teacher_relu") -> ibtest.DataBatch:
    """n ≤ d orthogonal inputs of norm ``scale`` (random orthonormal frame), teacher labels."""
    if n > d:
        raise ValueError(f"orthogonal needs n <= d, got n={n}, d={d}")
    Q, _ = torch.linalg.qr(torch.randn(count, d, d, generator=rng, dtype=torch.float64))
    X = scale * Q[:, :, :n].transpose(1, 2)
    w = torch.randn(count, d, generator=rng, dtype=torch.float64)
    z = torch.einsum("cnd,cd->cn", X, w)
    y = z.clamp_min(0) if labels == "teacher_relu" else (z if labels == "teacher_linear" else z.abs())
    return ibtest.DataBatch(X, y, [f"#{c}" for c in range(count)])


@ibtest.hookimpl
def ibtest_datasets():
    return [
        ibtest.Dataset(
            name="sparse_regression",
            generate=sparse_regression,
            doc="x ~ N(0, I_d), y = <beta*, x> with a k-sparse teacher beta* (n < d)",
            options={
                "n": Option(5, Positive, "points", sweep=True),
                "d": Option(10, Positive, "dimension"),
                "k": Option(2, Positive, "non-zeros of the teacher (k <= d)"),
                "count": Option(1, Positive, "independent datasets"),
                "noise": Option(0.0, NonNegative, "label noise std"),
            },
            size=lambda n=5, d=10, count=1, **_: (count, n, d),
        ),
        ibtest.Dataset(
            name="orthogonal",
            generate=orthogonal,
            doc="n <= d orthogonal inputs of a given norm, labels from a random teacher",
            options={
                "n": Option(3, Positive, "points (n <= d)"),
                "d": Option(5, Positive, "dimension"),
                "count": Option(1, Positive, "independent datasets"),
                "scale": Option(1.0, float, "norm of every input", sweep=True),
                "labels": Option("teacher_relu", Literal["teacher_relu", "teacher_linear", "abs"], "labels"),
            },
            size=lambda n=3, d=5, count=1, **_: (count, n, d),
        ),
    ]
