"""Tolerances of the exact single-neuron solver (:mod:`ibtest.solve.solvers.exact`).

All relative: each is a multiple of a scale the module docstring of ``exact`` names (‖x_i‖‖w‖,
λ_max, ‖x_i‖(‖w0‖ + ‖w∞‖), the magnitude of a sum's terms), so a problem scaled by a power of two
solves bit for bit like the unscaled one.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor
F64 = torch.float64
EPS = torch.finfo(F64).eps

#: |z_i| ≤ START_ZERO·‖x_i‖‖w‖ at a piece start: the point sits on the kink
START_ZERO = 1e-14
#: eigenvalues ≤ EIG_TOL·λ_max are null (the reference solver's eigendecomposition)
EIG_TOL = 1e-12
#: singular values of M = diag(c) X at most SV_TOL·max(n, d)·σ_max are null (rounding of the SVD)
SV_TOL = 8 * EPS
#: eigenvalues within CLUSTER_TOL·λ_max are one cluster (one exponential rate)
CLUSTER_TOL = 1e-11
#: |z_i(∞)| (and slow coefficients) ≤ LIMIT_TOL·‖x_i‖(‖w0‖ + ‖w∞‖): on the kink / insignificant
LIMIT_TOL = 1e-11
#: derivative D_j significant when |D_j| > DERIV_TOL·‖x_i‖‖A‖^{j−1}‖b − Aw‖
DERIV_TOL = 1e-9
#: rounding error of the velocity r = b − A w, in units of ‖b‖ + ‖A‖‖w‖ (d-term sums, twice)
ROUND_R = 256 * EPS
#: rounding allowance of G on the grid, in units of the sum of the magnitudes of its terms
NOISE = 64 * EPS
#: discrete local minima of G at or below this fraction of its term magnitude are refined
DIP_FRAC = 0.05
#: grid ends (per pair): t_lo = T_LO/λ_fast, t_hi = T_HI/λ_slow
T_LO, T_HI = 1e-9, 50.0
COARSE = 24

