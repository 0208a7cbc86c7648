"""Repelling releases followed both ways: branches of a solve, and the verdict on uniqueness.

Past a held kink that turned concave (α_e < 0, both one-sided fields pointing away) the Filippov
flow is not unique: it may stay, or leave above or below (:mod:`~ibtest.solve.solvers.kinks`).
Gradient descent leaves on the side it happens to be on when the kink turns, which depends on
its step size: as lr → 0 it approaches the branch it takes, but which branch that is need not
settle (W2 seed 9001, instance 142: GD at lr 1e-3 and 1e-4 ends 1.52 from the solver's limit, at
1e-5 within 1.5e-7). The solver releases such a kink at once on the side gradient descent is more
likely on, and, while the instance has branches left (option ``branches``), opens a *branch*:
a copy of the row with the released entries on the other side, solved on in the same batch
(its own output slot, :meth:`Outputs.alloc`). When everything has finished,
:func:`fold_branches` compares each instance with its branches:

* same status, and the converged ones within ``BRANCH_TOL``·(1 + ‖θ‖) of each other: the choice
  did not matter; the instance keeps its status (``info["branches"]`` counts them,
  ``info["branch_spread"]`` is the largest distance);
* otherwise the flow is not unique: status AMBIGUOUS, ``info["ambiguous"]`` = 1 (reason:
  branches of a repelling release end apart);
* a repelling release with no branch left to check it: ``info["ambiguous"]`` = 2 (reason:
  unchecked repelling release), and a converged instance becomes AMBIGUOUS — its limit is the
  solver's choice of branch, not the flow's;
* events piling up at one instant (``ZENO_EVENTS`` within ``ZENO_DT``, see
  :mod:`~ibtest.solve.solvers.adaptive_sliding`): ``info["ambiguous"]`` = 3 (reason: the event
  rule cycles at a tangent kink configuration; the row ended there, AMBIGUOUS).

An AMBIGUOUS triple is never judged (only CONVERGED ones are).
"""
from __future__ import annotations

from typing import Any

import torch

from ibtest.base import status as st
from ibtest.solve.solvers.adaptive_sliding import RELEASE_OFFSET, Sliding
from ibtest.solve.solvers.adaptive_state import Outputs, WorkingSet

Tensor = torch.Tensor
#: branches whose converged limits are within BRANCH_TOL·(1 + ‖θ‖) agree (the solver's error is
#: ~1e-9; a limit that depends on the branch differs by far more)
BRANCH_TOL = 1e-6


def open_branches(model: Any, w: WorkingSet, out: Outputs, sl: Sliding) -> None:
    """Open the branches the last iteration's repelling releases asked for (``sl.repelled``: the
    output slots of the rows and the entries released). A row whose instance has a branch left
    gets a copy with those entries on the other side of their kinks, appended to the working
    set; one without counts an unchecked release."""
    kf = sl.kf
    if kf is None or not sl.repelled:
        sl.repelled.clear()
        return
    slots = torch.cat([s for s, _ in sl.repelled])
    flips = torch.cat([f for _, f in sl.repelled])
    sl.repelled.clear()
    # the rows still in the working set (a row may have finished in the same iteration)
    pos = torch.searchsorted(w.idx, slots).clamp_max(max(w.idx.numel() - 1, 0))
    live = (w.idx.numel() > 0) & (w.idx[pos] == slots) if w.idx.numel() else torch.zeros_like(slots, dtype=torch.bool)
    inst = out.parent[slots]
    # one branch per instance per iteration, while its budget lasts
    first = torch.ones_like(live)
    if inst.numel() > 1:
        order = torch.argsort(inst, stable=True)
        dup = torch.zeros_like(live)
        dup[order[1:]] = inst[order[1:]] == inst[order[:-1]]
        first = ~dup
    can = live & first & (out.branch_left[inst] > 0)
    out.unchecked.index_add_(0, inst[~can & live], torch.ones_like(inst[~can & live]))
    if not bool(can.any()):
        return
    rows, flip, inst = pos[can], flips[can], inst[can]
    out.branch_left.index_add_(0, inst, -torch.ones_like(inst))
    child = w.take(rows)
    child.idx = out.alloc(inst)
    above = torch.where(flip, child.slope != kf.hi, child.slope == kf.hi)
    child.slope = torch.where(child.S_hold, kf.lo, kf.slope_of(above)).to(child.slope.dtype)
    mag = kf.scale(child.th, child.Xa)
    target = torch.where(above, 1.0, -1.0).to(mag.dtype) * RELEASE_OFFSET * mag
    child.th = kf.project(child.th, child.Xa, flip, target)
    b = w.idx.numel()
    w.append(child)
    sl.setup(w)
    new = torch.arange(b, b + rows.numel(), device=rows.device)
    w.f[new] = sl.field_at(w, new)
    w.loss[new] = model.loss(w.th[new], w.Xa[new], w.ya[new], w.ma[new])


def fold_branches(out: Outputs, B: int) -> dict[str, Tensor]:
    """Fold the branch slots into their instances (module docstring): sets ``out.status[:B]`` to
    AMBIGUOUS where the flow is not unique; returns ``branches``, ``branch_spread`` and
    ``ambiguous`` [B] for ``info``."""
    dev = out.parent.device
    n_br = torch.ones(B, dtype=torch.int64, device=dev)
    spread = torch.zeros(B, dtype=out.theta.dtype, device=dev)
    reason = torch.zeros(B, dtype=torch.int64, device=dev)
    S = out.parent.numel()
    if S > B:
        sl = torch.arange(B, S, device=dev)
        par = out.parent[sl]
        n_br.index_add_(0, par, torch.ones_like(par))
        d = (out.theta[sl] - out.theta[par]).norm(dim=-1)
        both_conv = (out.status[sl] == st.CONVERGED) & (out.status[par] == st.CONVERGED)
        d = torch.where(both_conv, d, torch.zeros_like(d))
        spread.scatter_reduce_(0, par, d, reduce="amax")
        apart = (out.status[sl] != out.status[par]) | (d > BRANCH_TOL * (1.0 + out.theta[par].norm(dim=-1)))
        reason.index_put_((par[apart],), torch.ones_like(par[apart]))
    unchecked = (out.unchecked[:B] > 0) & (reason == 0)
    reason = torch.where(unchecked, torch.full_like(reason, 2), reason)
    # an instance the loop ended AMBIGUOUS itself: its events piled up at one instant (zeno)
    zeno = (out.status[:B] == st.AMBIGUOUS) & (reason == 0)
    reason = torch.where(zeno, torch.full_like(reason, 3), reason)
    amb = (reason == 1) | ((reason == 2) & (out.status[:B] == st.CONVERGED))
    out.status[:B] = torch.where(amb, torch.full_like(out.status[:B], st.AMBIGUOUS), out.status[:B])
    return {"branches": n_br, "branch_spread": spread, "ambiguous": reason}
