"""The Theorem 3 family of Vardi & Shamir (COLT 2021), d = 3, n = 3.

x1 = (3, −1, 0), y1 = 16α;  x2 = (4, 2, 0), y2 = 18α;  x3 = (0, γ, γ), y3 = 0.
For a single ReLU neuron from w(0) = 0 with σ'(0) = 1, GF ends at α(5, −1, s) with s = 0 for
γ = 0 and s < 0 for γ > 0 (shared/PAPER.md). ``pad_to`` zero-pads the inputs to a larger d
(the paper's d ≥ 3 remark); ``x_scale`` multiplies X (with α = x_scale the data scale together
and the limit stays α-free: the scale-invariance tests use it).
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

import ibtest
from ibtest import Option


def theorem3(rng: torch.Generator, alpha: float = 1.0, gamma: float = 0.0, pad_to: int = 3,
             x_scale: float = 1.0) -> ibtest.DataBatch:
    if pad_to < 3:
        raise ValueError(f"pad_to must be >= 3, got {pad_to}")
    X = torch.zeros(1, 3, pad_to, dtype=torch.float64)
    X[0, :, :3] = torch.tensor([[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, gamma, gamma]], dtype=torch.float64)
    y = torch.tensor([[16.0 * alpha, 18.0 * alpha, 0.0]], dtype=torch.float64)
    if x_scale != 1.0:  # X -> cX with y -> cy (alpha = c) keeps the flow's limit: time runs c² faster
        X = X * x_scale
    label = f"alpha={alpha:g}, gamma={gamma:g}" + (f", x_scale={x_scale:g}" if x_scale != 1.0 else "")
    return ibtest.DataBatch(X, y, [label])


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
                "x_scale": Option(1.0, Annotated[float, Field(gt=0)], "multiply every input by this factor "
                                  "(with alpha equal to it, X and y scale together and GF keeps its limit)"),
            },
            size=lambda pad_to=3, **_: (1, 3, pad_to),
        )
    ]
