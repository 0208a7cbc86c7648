"""Random Gaussian inputs x_i ~ N(0, I_d) with labels from a teacher or a fixed rule.

Labels: ``teacher_relu`` y = max(0, ⟨w*, x⟩) (w* ~ N(0, I_d), about half the labels are 0),
``teacher_linear`` y = ⟨w*, x⟩, ``teacher_leaky`` y = leaky(⟨w*, x⟩) with ``slope``,
``gaussian`` y ~ N(0, 1). ``count`` independent datasets per option value, seeded by the study.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

import ibtest
from ibtest import Option

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]


def gaussian(rng: torch.Generator, n: int = 4, d: int = 5, count: int = 1,
             labels: str = "teacher_relu", slope: float = 0.1, noise: float = 0.0) -> ibtest.DataBatch:
    X = torch.randn(count, n, d, generator=rng, dtype=torch.float64)
    w = torch.randn(count, d, generator=rng, dtype=torch.float64)
    z = torch.einsum("knd,kd->kn", X, w)
    if labels == "teacher_relu":
        y = z.clamp_min(0.0)
    elif labels == "teacher_linear":
        y = z
    elif labels == "teacher_leaky":
        y = torch.where(z > 0, z, slope * z)
    else:
        y = torch.randn(count, n, generator=rng, dtype=torch.float64)
    if noise:
        y = y + noise * torch.randn(count, n, generator=rng, dtype=torch.float64)
    return ibtest.DataBatch(X, y, [f"#{k}" for k in range(count)])


@ibtest.hookimpl
def ibtest_datasets():
    return [
        ibtest.Dataset(
            name="gaussian",
            generate=gaussian,
            doc="x ~ N(0, I_d); labels from a random teacher neuron (relu/linear/leaky) or N(0,1)",
            options={
                "n": Option(4, Positive, "points per dataset", sweep=True),
                "d": Option(5, Positive, "input dimension", sweep=True),
                "count": Option(1, Positive, "independent datasets"),
                "labels": Option("teacher_relu", Literal["teacher_relu", "teacher_linear", "teacher_leaky", "gaussian"],
                                 "how labels are made"),
                "slope": Option(0.1, float, "negative slope of the leaky teacher"),
                "noise": Option(0.0, NonNegative, "std of Gaussian label noise"),
            },
            size=lambda n=4, d=5, count=1, **_: (count, n, d),
        )
    ]
