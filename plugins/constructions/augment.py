"""Consistent augmentation: add random points labelled by θ1's own predictions.

D2 = D1 ∪ {(x_new, f_θ1(x_new))}, x_new ~ N(0, (scale·u)² I) with u the data's length unit:
θ1 fits D2 by construction. The engine solves D2 from the
same θ0 and keeps the pair when the new solution θ2 fits D1 too.
"""
from __future__ import annotations

import torch

import ibtest
from ibtest import Option

from .blocking_point import data_unit


def consistent_augmentation(model: ibtest.ModelBase, triples: ibtest.TripleBatch, rng: torch.Generator,
                            count: int = 2, points: int = 1, scale: float = 1.0) -> ibtest.Partners:
    k, n, d = triples.X.shape
    src = torch.arange(k).repeat(count)
    unit = data_unit(triples.X, triples.mask)[src].view(-1, 1, 1)  # inputs on the data's own scale
    Xnew = scale * unit * torch.randn(k * count, points, d, generator=rng, dtype=torch.float64)
    ynew = model.predict(triples.theta[src], Xnew)
    X = torch.cat([triples.X[src], Xnew], dim=1)
    y = torch.cat([triples.y[src], ynew], dim=1)
    m = torch.cat([triples.mask[src], torch.ones(k * count, points, dtype=torch.float64)], dim=1)
    labels = [f"{triples.labels[i]} + {points} consistent point(s)" for i in src.tolist()]
    return ibtest.Partners(X, y, m, src, labels)


def size(sources: int, n: int, count: int = 2, points: int = 1, scale: float = 1.0) -> tuple[int, int]:
    """``count`` datasets of n + ``points`` points per triple."""
    return count * sources, n + points


@ibtest.hookimpl
def ibtest_constructions():
    return [
        ibtest.Construction(
            name="consistent_augmentation",
            build=consistent_augmentation,
            size=size,
            doc="add random points labelled by theta1's own predictions",
            options={
                "count": Option(2, int, "augmented datasets per triple"),
                "points": Option(1, int, "new points per augmented dataset"),
                "scale": Option(1.0, float,
                                "std of the new inputs, in units of the data's largest |x_i| (rounded to a power of two)"),
            },
        )
    ]
