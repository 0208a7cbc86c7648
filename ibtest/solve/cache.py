"""What the engine asks of a solve cache, and the key it files solves under.

The engine (:mod:`ibtest.solve.engine`) looks every chunk of instances up by
:func:`solve_key` before solving it and files the result after. The results store
(:class:`ibtest.run.store.Store`) is the implementation; the engine only knows this protocol, so
the solve layer never imports the run layer.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

import torch

from ibtest.plugin.specs import SolveResult


def solve_key(tensors: list[torch.Tensor], settings: dict[str, Any]) -> str:
    """SHA-256 over the inputs of a solver call (tensor bytes and shapes, settings as JSON)."""
    h = hashlib.sha256()
    for t in tensors:
        a = t.detach().cpu().contiguous().numpy()
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


class SolveCache(Protocol):
    """Solves filed by key: ``get_solve`` returns None on a miss; ``n_solves`` counts the solves
    filed (a run's driver asks it to tell a resumed run)."""

    def get_solve(self, key: str) -> SolveResult | None: ...

    def put_solve(self, key: str, phase: str, res: SolveResult, seconds: float) -> None: ...

    def n_solves(self) -> int: ...
