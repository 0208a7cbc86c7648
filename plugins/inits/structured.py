"""Structured initializations with a scale ε or α (for the limits in a parameter of issue 3).

* ``scaled``: every block of θ (``model.blocks``) set to α times ones, the identity (square
  blocks) or a Gaussian of norm ≈ α. Diagonal nets: u = v = α·1 (Woodworth et al.).
* ``output_eps``: the paper's depth-2 init θ(0) = (w = 0, v = ε): input weights 0, output
  weights ε (needs blocks ``w`` and ``v``). Balancedness then gives v² = ‖w‖² + ε².
* ``balanced``: w_j random of norm ε, v_j = ±‖w_j‖ so that v_j² − ‖w_j‖² = 0 for every unit.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

import ibtest
from ibtest import Option


def scaled(model: ibtest.ModelBase, d: int, count: int, rng: torch.Generator, alpha: float = 0.1,
           shape: str = "ones") -> torch.Tensor:
    P = model.n_params(d)
    theta = torch.zeros(count, P, dtype=torch.float64)
    for name, sl in model.blocks(d).items():
        size = sl.stop - sl.start
        if shape == "ones":
            block = torch.full((count, size), alpha, dtype=torch.float64)
        elif shape == "identity":
            k = math.isqrt(size)
            if k * k != size:
                raise ValueError(f"init scaled: block {name!r} has {size} entries, not a square matrix")
            block = (alpha * torch.eye(k, dtype=torch.float64)).reshape(1, -1).expand(count, -1)
        else:
            block = alpha * torch.randn(count, size, generator=rng, dtype=torch.float64) / math.sqrt(size)
        theta[:, sl] = block
    return theta


def _wv(model: ibtest.ModelBase, d: int) -> tuple[slice, slice]:
    blocks = model.blocks(d)
    if "w" not in blocks or "v" not in blocks:
        raise ValueError(f"this init needs a model with blocks 'w' and 'v' (got {sorted(blocks)})")
    return blocks["w"], blocks["v"]


def output_eps(model: ibtest.ModelBase, d: int, count: int, rng: torch.Generator, eps: float = 0.1) -> torch.Tensor:
    w, v = _wv(model, d)
    theta = torch.zeros(count, model.n_params(d), dtype=torch.float64)
    theta[:, v] = eps
    return theta


def balanced(model: ibtest.ModelBase, d: int, count: int, rng: torch.Generator, eps: float = 0.1) -> torch.Tensor:
    w, v = _wv(model, d)
    m = v.stop - v.start
    W = torch.randn(count, m, d, generator=rng, dtype=torch.float64)
    W = eps * W / W.norm(dim=-1, keepdim=True)
    sign = torch.where(torch.rand(count, m, generator=rng) < 0.5, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(count, model.n_params(d), dtype=torch.float64)
    theta[:, w] = W.reshape(count, -1)
    theta[:, v] = sign * W.norm(dim=-1)
    return theta


@ibtest.hookimpl
def ibtest_inits():
    return [
        ibtest.Init(name="scaled", sample=scaled,
                    doc="every block alpha * ones / identity / Gaussian (diagonal nets: u = v = alpha)",
                    options={"alpha": Option(0.1, float, "scale alpha", sweep=True),
                             "shape": Option("ones", Literal["ones", "identity", "gaussian"], "block shape")}),
        ibtest.Init(name="output_eps", sample=output_eps, doc="the paper's depth-2 init theta(0) = (w = 0, v = eps)",
                    options={"eps": Option(0.1, float, "output weight eps", sweep=True)}),
        ibtest.Init(name="balanced", sample=balanced, doc="random w_j of norm eps, v_j = +-|w_j| (v_j^2 - |w_j|^2 = 0)",
                    options={"eps": Option(0.1, float, "norm eps of each w_j", sweep=True)}),
    ]
