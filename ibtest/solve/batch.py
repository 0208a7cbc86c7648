"""Batched containers for instances and solved triples, and padding helpers.

Datasets of different sizes n share one batch by zero-padding: X [N, n_max, d], y [N, n_max] and
mask [N, n_max] with 1.0 on real points and 0.0 on padding (padding rows are X = 0, y = 0, so
they contribute nothing to f, the loss or the flow).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor


def pad_points(X: Tensor, y: Tensor, mask: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-pad [k, m, d] / [k, m] to n ≥ m points."""
    k, m, d = X.shape
    if m == n:
        return X, y, mask
    Xp = X.new_zeros((k, n, d))
    yp = y.new_zeros((k, n))
    mp = mask.new_zeros((k, n))
    Xp[:, :m], yp[:, :m], mp[:, :m] = X, y, mask
    return Xp, yp, mp


def cat_padded(parts: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate (X, y, mask) triples of equal d along the batch, padding n to the largest."""
    n = max(p[0].shape[1] for p in parts)
    padded = [pad_points(*p, n) for p in parts]
    X, y, mask = (torch.cat([p[i] for p in padded]) for i in range(3))
    return X, y, mask


@dataclass
class Triples:
    """All solved instances of a run, original and constructed, in one growing table.

    ``origin`` says where each came from (``study``, a construction name, or ``recheck``),
    ``parent`` the index of the triple it was built from (-1 for study instances),
    ``dataset_id`` / ``init_id`` identify equal datasets / equal θ0 (ids shared only by study
    instances drawn from the same dataset / init vector; constructed ones get fresh ids).
    """

    X: Tensor
    y: Tensor
    mask: Tensor
    theta0: Tensor
    theta: Tensor
    status: Tensor
    loss: Tensor
    dataset_id: Tensor
    init_id: Tensor
    parent: Tensor
    labels: list[str]
    init_labels: list[str]
    origin: list[str]
    info: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.theta.shape[0]

    def take(self, idx: Tensor) -> Triples:
        """The triples at positions ``idx`` (a copy), in that order."""
        idx = idx.to(torch.int64)
        pick = idx.tolist()
        return Triples(
            X=self.X[idx], y=self.y[idx], mask=self.mask[idx], theta0=self.theta0[idx], theta=self.theta[idx],
            status=self.status[idx], loss=self.loss[idx], dataset_id=self.dataset_id[idx],
            init_id=self.init_id[idx], parent=self.parent[idx], labels=[self.labels[i] for i in pick],
            init_labels=[self.init_labels[i] for i in pick], origin=[self.origin[i] for i in pick],
            info={k: v[idx] for k, v in self.info.items()},
        )

    def append(self, other: Triples) -> Tensor:
        """Append ``other`` (padding n as needed); return the indices it received."""
        start = len(self)
        X, y, m = cat_padded([(self.X, self.y, self.mask), (other.X, other.y, other.mask)])
        self.X, self.y, self.mask = X, y, m
        for name in ("theta0", "theta", "status", "loss", "dataset_id", "init_id", "parent"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        self.labels += other.labels
        self.init_labels += other.init_labels
        self.origin += other.origin
        keys = set(self.info) | set(other.info)
        for k in keys:
            a = self.info.get(k, torch.full((start,), float("nan"), dtype=torch.float64))
            b = other.info.get(k, torch.full((len(other),), float("nan"), dtype=torch.float64))
            self.info[k] = torch.cat([a.to(torch.float64), b.to(torch.float64)])
        return torch.arange(start, len(self))


@dataclass
class Pairs:
    """Admissible pairs: indices a, b into :class:`Triples`, how each was found.

    ``code`` [k] int64 indexes ``names`` (where the pair came from: ``study (same init)``, a
    construction's name, ...), so selecting or concatenating pairs never touches Python strings;
    ``same_init`` [k] bool: θ0 equal on both sides (required by ``init`` hypotheses);
    ``cross_ab`` = L(θ_a; D_b), ``cross_ba`` = L(θ_b; D_a); ``distinct``: θ_a ≠ θ_b.
    """

    a: Tensor
    b: Tensor
    code: Tensor
    names: list[str]
    same_init: Tensor
    cross_ab: Tensor
    cross_ba: Tensor
    distinct: Tensor

    @staticmethod
    def empty() -> Pairs:
        z = torch.zeros(0, dtype=torch.int64)
        f = torch.zeros(0, dtype=torch.float64)
        b = torch.zeros(0, dtype=torch.bool)
        return Pairs(z, z.clone(), z.clone(), [], b, f, f.clone(), b.clone())

    def __len__(self) -> int:
        return self.a.shape[0]

    def source(self, k: int) -> str:
        """Where pair ``k`` came from."""
        return self.names[int(self.code[k])]

    def counts(self) -> dict[str, int]:
        """Number of pairs per source name (sorted by name)."""
        n = torch.bincount(self.code, minlength=len(self.names)).tolist() if len(self) else [0] * len(self.names)
        return {name: c for name, c in sorted(zip(self.names, n)) if c}

    def extend(self, other: Pairs, offset: int = 0) -> None:
        """Append ``other`` (its triple indices shifted by ``offset``), merging the source names."""
        remap = torch.tensor([self._code_of(n) for n in other.names] or [0], dtype=torch.int64)
        code = remap[other.code] if len(other) else other.code
        for name, extra in (("a", other.a + offset), ("b", other.b + offset), ("code", code)):
            setattr(self, name, torch.cat([getattr(self, name), extra]))
        for name in ("same_init", "cross_ab", "cross_ba", "distinct"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))

    def _code_of(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)

    def select(self, idx: Tensor) -> Pairs:
        idx = idx.to(torch.int64)
        return Pairs(self.a[idx], self.b[idx], self.code[idx], list(self.names),
                     self.same_init[idx], self.cross_ab[idx], self.cross_ba[idx], self.distinct[idx])
