"""The box QP of the Filippov field (:func:`ibtest.solve.solvers.kinks.box_qp`): its one-entry fast
path gives the bits of the general path on a padded batch (an instance's answer must not depend on
the batch it is in, issue 12), and solves the problem."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as hs

from ibtest.solve.solvers.kinks import box_qp

F64 = torch.float64
finite = hs.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = hs.floats(min_value=1e-8, max_value=1e8, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.tuples(positive, finite, hs.booleans()), min_size=1, max_size=6), hs.integers(2, 5))
def test_one_entry_path_equals_padded_general_path(rows, k):
    M = torch.tensor([r[0] for r in rows], dtype=F64).view(-1, 1, 1)
    q = torch.tensor([r[1] for r in rows], dtype=F64).view(-1, 1)
    valid = torch.tensor([r[2] for r in rows]).view(-1, 1)
    fast = box_qp(M, q, valid)
    b = M.shape[0]
    Mk = torch.zeros(b, k, k, dtype=F64)
    Mk[:, 0, 0] = M[:, 0, 0]
    qk = torch.cat([q, torch.zeros(b, k - 1, dtype=F64)], 1)
    vk = torch.cat([valid, torch.zeros(b, k - 1, dtype=torch.bool)], 1)
    slow = box_qp(Mk, qk, vk)
    assert torch.equal(fast, slow[:, :1])
    assert bool((slow[:, 1:] == 0).all())


def test_one_entry_minimizes_on_the_box():
    M = torch.tensor([[[2.0]], [[2.0]], [[2.0]], [[0.5]]], dtype=F64)
    q = torch.tensor([[-1.0], [1.0], [-10.0], [-0.25]], dtype=F64)
    lam = box_qp(M, q, torch.ones(4, 1, dtype=torch.bool))
    # −q/M = 0.5, −0.5 → 0, 5 → 1, 0.5
    assert torch.allclose(lam.squeeze(-1), torch.tensor([0.5, 0.0, 1.0, 0.5], dtype=F64), rtol=1e-14)
    assert torch.equal(box_qp(M, q, torch.zeros(4, 1, dtype=torch.bool)), torch.zeros(4, 1, dtype=F64))
