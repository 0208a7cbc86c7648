"""Initializations θ0: zeros, Gaussian with a given norm scale, or a fixed vector."""
from __future__ import annotations

from collections.abc import Sequence

import torch

import ibtest
from ibtest import Option


def zeros(model: ibtest.ModelBase, d: int, count: int, rng: torch.Generator) -> torch.Tensor:
    return torch.zeros(count, model.n_params(d), dtype=torch.float64)


def gaussian(model: ibtest.ModelBase, d: int, count: int, rng: torch.Generator, scale: float = 0.1) -> torch.Tensor:
    """θ0 ~ N(0, I_P) · scale/√P, so that E‖θ0‖² = scale²."""
    P = model.n_params(d)
    return torch.randn(count, P, generator=rng, dtype=torch.float64) * (scale / P**0.5)


def fixed(model: ibtest.ModelBase, d: int, count: int, rng: torch.Generator, value: Sequence[float] = ()) -> torch.Tensor:
    P = model.n_params(d)
    v = torch.tensor(list(value), dtype=torch.float64)
    if v.numel() != P:
        raise ValueError(f"init 'fixed': value has {v.numel()} entries, the model has P = {P} parameters")
    return v.expand(count, P).clone()


@ibtest.hookimpl
def ibtest_inits():
    return [
        ibtest.Init(name="zeros", sample=zeros, doc="theta0 = 0 (the paper's w(0) = 0)"),
        ibtest.Init(name="gaussian", sample=gaussian, doc="theta0 ~ N(0, I) scaled so that E|theta0| ~ scale",
                    options={"scale": Option(0.1, float, "norm scale of theta0", sweep=True)}),
        ibtest.Init(name="fixed", sample=fixed, doc="a given vector theta0",
                    options={"value": Option(None, list[float], "theta0, P numbers", required=True)}),
    ]
