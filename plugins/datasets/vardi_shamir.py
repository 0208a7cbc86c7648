"""The Theorem 3 family of Vardi & Shamir (COLT 2021), d = 3, n = 3.

x1 = (3, −1, 0), y1 = 16α;  x2 = (4, 2, 0), y2 = 18α;  x3 = (0, γ, γ), y3 = 0.
For a single ReLU neuron from w(0) = 0 with σ'(0) = 1, GF ends at α(5, −1, s) with s = 0 for
γ = 0 and s < 0 for γ > 0 (shared/PAPER.md). ``pad_to`` zero-pads the inputs to a larger d
(the paper's d ≥ 3 remark).
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

import ibtest
from ibtest import Option


def theorem3(rng: torch.Generator, alpha: float = 1.0, gamma: float = 0.0, pad_to: int = 3) -> ibtest.DataBatch:
    if pad_to < 3:
        raise ValueError(f"pad_to must be >= 3, got {pad_to}")
    X = torch.zeros(1, 3, pad_to, dtype=torch.float64)
    X[0, :, :3] = torch.tensor([[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, gamma, gamma]], dtype=torch.float64)
    y = torch.tensor([[16.0 * alpha, 18.0 * alpha, 0.0]], dtype=torch.float64)
    return ibtest.DataBatch(X, y, [f"alpha={alpha:g}, gamma={gamma:g}"])


@ibtest.hookimpl
def ibtest_datasets():
    return [
        ibtest.Dataset(
            name="vardi_shamir_theorem3",
            generate=theorem3,
            doc="the paper's Theorem 3 data: x1=(3,-1,0), x2=(4,2,0), x3=(0,g,g), y=(16a, 18a, 0)",
            options={
                "alpha": Option(1.0, Annotated[float, Field(gt=0)], "label scale alpha > 0", sweep=True),
                "gamma": Option(0.0, Annotated[float, Field(ge=0)], "scale gamma >= 0 of the blocking point x3",
                                sweep=True),
                "pad_to": Option(3, Annotated[int, Field(ge=3)], "zero-pad the inputs to this dimension d >= 3"),
            },
            size=lambda pad_to=3, **_: (1, 3, pad_to),
        )
    ]
