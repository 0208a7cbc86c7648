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
    z_t: Tensor  # [b] flow time of the first of the row's latest run of events at one instant
    z_n: Tensor  # [b] int64 events in that run (ZENO_EVENTS of them end the row AMBIGUOUS)

    def keep(self, mask: Tensor) -> None:
        """Index every field by the bool mask [b] (the rows that stay)."""
        for name in _FIELDS:
            setattr(self, name, getattr(self, name)[mask])

    def take(self, rows: Tensor) -> WorkingSet:
        """A copy of the rows ``rows`` [k] (every field indexed; tensors not shared)."""
        return WorkingSet(**{name: getattr(self, name)[rows] for name in _FIELDS})

    def append(self, other: WorkingSet) -> None:
        """Append the rows of ``other`` after this set's (a branch of a row: its ``idx`` is a new
        output slot, larger than every slot here, so ``idx`` stays ascending)."""
        for name in _FIELDS:
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))


_FIELDS = tuple(fd.name for fd in fields(WorkingSet))


@dataclass(slots=True, eq=False)
class Outputs:
    """The per-slot results, written when a row leaves the working set. Slots 0..B−1 are the
    instances; a branch of an instance (a repelling release followed both ways:
    :mod:`~ibtest.solve.solvers.adaptive_branches`) gets a slot B, B+1, ... with its instance in
    ``parent``. :meth:`result` folds the branches into their instances."""

    theta: Tensor  # [S, P]
    status: Tensor  # [S] int64
    t: Tensor
    steps: Tensor  # [S] int64
    drift: Tensor
    gnorm: Tensor
    rate: Tensor
    tslide: Tensor
    episodes: Tensor  # [S] int64
    stiff: Tensor  # [S] int64
    events: Tensor  # [S] int64
    repel: Tensor  # [S] int64
    t_repel: Tensor
    parent: Tensor  # [S] int64: the instance of each slot
    branch_left: Tensor  # [B] int64: branches an instance may still open
    unchecked: Tensor  # [B] int64: repelling releases not followed both ways (no branch left)

    @classmethod
    def start(cls, theta0: Tensor, branches: int = 0) -> Outputs:
        """Outputs of B instances before any finished: θ0 [B, P], status BUDGET; each instance may
        open ``branches`` branches."""
        B = theta0.shape[0]
        i64 = torch.int64
        dev = theta0.device
        slots = {name: torch.full((B,), fill, dtype=dtype if dtype is not None else theta0.dtype, device=dev)
                 for name, (dtype, fill) in _SLOT_DEFAULTS.items()}
        return cls(theta=theta0.clone(), parent=torch.arange(B, device=dev),
                   branch_left=torch.full((B,), int(branches), dtype=i64, device=dev),
                   unchecked=torch.zeros(B, dtype=i64, device=dev), **slots)

    def alloc(self, parents: Tensor) -> Tensor:
        """New slots [k] for branches of the instances ``parents`` [k]; returns their indices."""
        k = parents.numel()
        S = self.parent.numel()
        self.theta = torch.cat([self.theta, self.theta[parents]])
        for name, (_, fill) in _SLOT_DEFAULTS.items():
            cur = getattr(self, name)
            setattr(self, name, torch.cat([cur, torch.full((k,), fill, dtype=cur.dtype, device=cur.device)]))
        self.parent = torch.cat([self.parent, parents])
        return torch.arange(S, S + k, device=parents.device)

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
        """The ``info`` dict of the instances' slots [B] (``growth`` [B]: ‖θ‖/‖θ0‖)."""
        B = growth.shape[0]
        return {"t": self.t[:B], "steps": self.steps[:B], "grad_norm": self.gnorm[:B],
                "growth": growth, "growth_rate": self.rate[:B], "drift_estimate": self.drift[:B],
                "slid": (self.episodes[:B] > 0).long(), "t_sliding": self.tslide[:B],
                "sliding_episodes": self.episodes[:B], "stiff_steps": self.stiff[:B],
                "kink_events": self.events[:B], "repelling_releases": self.repel[:B],
                "t_repelling": self.t_repel[:B]}


#: the per-slot fields of :class:`Outputs` other than θ and parent: (dtype (None: θ's), fill)
_SLOT_DEFAULTS: dict[str, tuple[torch.dtype | None, float]] = {
    "status": (torch.int64, st.BUDGET), "t": (None, 0.0), "steps": (torch.int64, 0), "drift": (None, math.inf),
    "gnorm": (None, 0.0), "rate": (None, 0.0), "tslide": (None, 0.0), "episodes": (torch.int64, 0),
    "stiff": (torch.int64, 0), "events": (torch.int64, 0), "repel": (torch.int64, 0), "t_repel": (None, math.inf),
}
