"""Per-row state of the ``adaptive`` solver: the working set and the outputs.

The working set holds one row per instance still being integrated (b ≤ B rows); an instance that
finishes is written to the outputs (:meth:`Outputs.retire`) and its row is indexed out of every
working-set tensor at once (:meth:`WorkingSet.keep`), so it costs nothing afterwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ibtest.base import status as st

Tensor = torch.Tensor


@dataclass(slots=True, eq=False)
class WorkingSet:
    """The per-row tensors of the instances still being integrated (b rows; P parameters,
    n points, m units: pre-activation entries [b, n, m], [b, 0, 0] for models without kinks).

    Every field is indexed by :meth:`keep`; the loop reassigns fields (``w.th = ...``) or writes
    them in place, never rebuilds the object.
    """

    idx: Tensor  # [b] int64: the instance (row of the inputs) of each working-set row
    th: Tensor  # [b, P] θ
    f: Tensor  # [b, P] the field at θ (−∇L, Filippov where kinks are held)
    t: Tensor  # [b] flow time
    h: Tensor  # [b] the next step size
    loss: Tensor  # [b] L(θ)
    Xa: Tensor  # [b, n, d]
    ya: Tensor  # [b, n]
    ma: Tensor  # [b, n]
    growth_lim: Tensor  # [b] largest step-size factor (1 after a rejected step)
    fit: Tensor  # [b] the absolute fit threshold
    next_check: Tensor  # [b] run the drift check when loss ≤ this
    h_cap: Tensor  # [b] stability cap 2/λ_max from the drift check
    drift: Tensor  # [b] drift estimate (inf where not established)
    ck_next: Tensor  # [b] flow time of the next doubling checkpoint
    ck_hist: Tensor  # [b, W+1, 4] ring of (log t, log‖θ‖, log L, log‖g‖) at checkpoints
    ck_n: Tensor  # [b] int64 checkpoints taken
    rate: Tensor  # [b] fitted power-law exponent of ‖θ‖
    slope: Tensor  # [b, n, m] the activation pattern: σ' of the side of its kink each entry is on (σ'₋ on held entries)
    S_hold: Tensor  # [b, n, m] bool kink entries held (Filippov following)
    t_slide: Tensor  # [b] flow time with some entry held
    episodes: Tensor  # [b] int64 sliding episodes
    events: Tensor  # [b] int64 kink events (crossings, arrivals, releases) the steps were cut at
    repel: Tensor  # [b] int64 repelling releases: a held kink turned concave, or one pressed on from neither side
    t_repel: Tensor  # [b] flow time of the first repelling release (inf: none)
    stiff: Tensor  # [b] bool rows on the Rosenbrock step
    h_ex: Tensor  # [b] explicit step size to return to from the Rosenbrock step
    st_cnt: Tensor  # [b] int64 stability-limited explicit steps
    st_non: Tensor  # [b] int64 unlimited steps since the last limited one
    st_block: Tensor  # [b] int64 no switch to the Rosenbrock step before this iteration
    st_steps: Tensor  # [b] int64 Rosenbrock steps taken

    def keep(self, mask: Tensor) -> None:
        """Index every field by the bool mask [b] (the rows that stay)."""
        for name in _FIELDS:
            setattr(self, name, getattr(self, name)[mask])


_FIELDS = tuple(fd.name for fd in fields(WorkingSet))


@dataclass(slots=True, eq=False)
class Outputs:
    """The per-instance results [B], written when an instance leaves the working set."""

    theta: Tensor  # [B, P]
    status: Tensor  # [B] int64
    t: Tensor
    steps: Tensor  # [B] int64
    drift: Tensor
    gnorm: Tensor
    rate: Tensor
    tslide: Tensor
    episodes: Tensor  # [B] int64
    stiff: Tensor  # [B] int64
    events: Tensor  # [B] int64
    repel: Tensor  # [B] int64
    t_repel: Tensor

    @classmethod
    def start(cls, theta0: Tensor) -> Outputs:
        """Outputs of B instances before any finished: θ0 [B, P], status BUDGET."""
        B = theta0.shape[0]
        dt = theta0.dtype
        i64 = torch.int64
        dev = theta0.device

        def z(dtype: torch.dtype) -> Tensor:
            return torch.zeros(B, dtype=dtype, device=dev)
        return cls(theta0.clone(), torch.full((B,), st.BUDGET, dtype=i64, device=dev), z(dt), z(i64),
                   torch.full((B,), math.inf, dtype=dt, device=dev), z(dt), z(dt), z(dt), z(i64), z(i64), z(i64),
                   z(i64), torch.full((B,), math.inf, dtype=dt, device=dev))

    def retire(self, w: WorkingSet, sel: Tensor, code: Tensor | int, n_iter: int) -> None:
        """Write the working-set rows ``sel`` (bool [b]) with status ``code`` ([b] or one code)."""
        gi = w.idx[sel]
        self.theta[gi] = w.th[sel]
        self.status[gi] = code if isinstance(code, int) else code[sel]
        self.t[gi] = w.t[sel]
        self.steps[gi] = n_iter
        self.drift[gi] = w.drift[sel]
        self.gnorm[gi] = w.f[sel].norm(dim=-1)
        self.rate[gi] = w.rate[sel]
        self.tslide[gi] = w.t_slide[sel]
        self.episodes[gi] = w.episodes[sel]
        self.stiff[gi] = w.st_steps[sel]
        self.events[gi] = w.events[sel]
        self.repel[gi] = w.repel[sel]
        self.t_repel[gi] = w.t_repel[sel]

    def info(self, growth: Tensor) -> dict[str, Tensor]:
        """The ``info`` dict of the :class:`SolveResult` (``growth`` [B]: ‖θ‖/‖θ0‖)."""
        return {"t": self.t, "steps": self.steps, "drift": self.drift, "grad_norm": self.gnorm,
                "growth": growth, "growth_rate": self.rate, "drift_estimate": self.drift,
                "slid": (self.episodes > 0).long(), "t_sliding": self.tslide,
                "sliding_episodes": self.episodes, "stiff_steps": self.stiff, "kink_events": self.events,
                "repelling_releases": self.repel, "t_repelling": self.t_repel}
