"""Matrix completion as linear measurements: x_i is the flattened one-hot k×k matrix of entry (r, c).

f(x_i) = ⟨W, x_i⟩ = W[r, c] for the end-to-end matrix W, so d = k². ``preset: razin_cohen`` is the
2×2 problem of Razin & Cohen (NeurIPS 2020): observed (1,2) = 1, (2,1) = 1, (2,2) = 0 (1-based),
(1,1) free. From an init with det W > 0 the determinant cannot change sign under GF, so the loss
can only go to 0 with |W₁₁| → ∞: the flow diverges.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

import ibtest
from ibtest import Option

PRESETS = {"razin_cohen": (2, [[1, 2, 1.0], [2, 1, 1.0], [2, 2, 0.0]])}


def matrix_completion(rng: torch.Generator, preset: str = "razin_cohen", size: int = 2,
                      entries: list[list[float]] | None = None) -> ibtest.DataBatch:
    if preset != "custom":
        size, entries = PRESETS[preset]
    if not entries:
        raise ValueError("matrix_completion: give 'entries' as [[row, col, value], ...] (1-based) with preset: custom")
    X = torch.zeros(1, len(entries), size * size, dtype=torch.float64)
    y = torch.zeros(1, len(entries), dtype=torch.float64)
    for i, (r, c, v) in enumerate(entries):
        r, c = int(r), int(c)
        if not (1 <= r <= size and 1 <= c <= size):
            raise ValueError(f"matrix_completion: entry ({r}, {c}) outside a {size}x{size} matrix")
        X[0, i, (r - 1) * size + (c - 1)] = 1.0
        y[0, i] = float(v)
    return ibtest.DataBatch(X, y, [preset])


def _size(preset: str = "razin_cohen", size: int = 2, entries: list | None = None) -> tuple[int, int, int]:
    if preset != "custom":
        size, entries = PRESETS[preset]
    return 1, len(entries or ()), size * size


@ibtest.hookimpl
def ibtest_datasets():
    return [
        ibtest.Dataset(
            name="matrix_completion",
            generate=matrix_completion,
            doc="observed entries of a k x k matrix as one-hot measurements (preset razin_cohen: the 2x2 problem)",
            options={
                "preset": Option("razin_cohen", Literal["razin_cohen", "custom"], "a named problem or custom"),
                "size": Option(2, Annotated[int, Field(ge=1)], "k (custom only)"),
                "entries": Option(None, list[Annotated[list[float], Field(min_length=3, max_length=3)]],
                                  "[[row, col, value], ...], 1-based (custom only)"),
            },
            size=_size,
        )
    ]
