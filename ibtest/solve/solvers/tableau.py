"""Butcher tableaux of the embedded Runge–Kutta pairs used by the ``adaptive`` solver.

Dormand–Prince 5(4) (``order=5``) and DOP853 (``order=8``, the published coefficients read from
scipy, which ships them). Each tableau is a dict: ``S`` stages, ``A`` [S, S], weights ``b`` [S],
error weights ``E`` (and ``E3`` for DOP853's 3rd-order estimate), ``err_order`` and ``order``.
"""
from __future__ import annotations

import torch


# --------------------------------------------------------------------------------------------
# Butcher tableaux
# --------------------------------------------------------------------------------------------
def _dopri5():
    A = torch.zeros(7, 7, dtype=torch.float64)
    A[1, :1] = torch.tensor([1 / 5])
    A[2, :2] = torch.tensor([3 / 40, 9 / 40])
    A[3, :3] = torch.tensor([44 / 45, -56 / 15, 32 / 9])
    A[4, :4] = torch.tensor([19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729])
    A[5, :5] = torch.tensor([9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656])
    b = torch.tensor([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84], dtype=torch.float64)
    E = torch.tensor([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40],
                     dtype=torch.float64)
    return {"S": 6, "A": A[:6, :6], "b": b, "E": E, "E3": None, "err_order": 4, "order": 5}


def _dop853():
    from scipy.integrate._ivp import dop853_coefficients as c  # the published coefficients

    S = 12
    A = torch.tensor(c.A[:S, :S], dtype=torch.float64)
    b = torch.tensor(c.A[S, :S], dtype=torch.float64)
    return {"S": S, "A": A, "b": b, "E": torch.tensor(c.E5, dtype=torch.float64),
            "E3": torch.tensor(c.E3, dtype=torch.float64), "err_order": 7, "order": 8}


_TABLEAUX: dict[int, dict] = {}


def tableau(order: int) -> dict:
    if order not in (5, 8):
        raise ValueError(f"order must be 5 (Dormand–Prince 5(4)) or 8 (DOP853), got {order}")
    if order not in _TABLEAUX:
        _TABLEAUX[order] = _dopri5() if order == 5 else _dop853()
    return _TABLEAUX[order]
