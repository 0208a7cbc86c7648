"""Drawing helpers of the certificate picture: the plane through θ0, θ_a, θ_b, values of R and of
the loss on a grid of it, zero-loss bands and level sets. matplotlib is imported lazily (Agg).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ibtest.judge.evaluation import context

Tensor = torch.Tensor

COLORS = {"a": "#1f77b4", "b": "#d62728", "init": "#2ca02c"}
HATCH = {"a": "////", "b": "\\\\\\\\"}


def pyplot():
    """matplotlib.pyplot with the Agg backend (never opens a window)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt



# ------------------------------------------------------------------------------------------
# The plane of the picture
# ------------------------------------------------------------------------------------------
def projection_plane(origin: np.ndarray, anchors: Sequence[np.ndarray], cloud: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """An orthonormal basis U [2, P] of the picture's plane through ``origin`` [P].

    Directions are taken in order from ``anchors`` − origin (the end points: the plane through
    θ0, θ_a and θ_b contains all three exactly), then from the principal components of
    ``cloud`` [K, P] − origin (the paths), by Gram–Schmidt, skipping any direction whose
    remainder is below 1e-10 of the cloud's size. Returns ``(U, spread)`` with ``spread`` [2]
    the extent of the cloud along each direction (0 for a padding direction when P = 1).
    """
    P = origin.shape[0]
    pts = cloud - origin
    size = max(float(np.abs(pts).max()) if pts.size else 0.0,
               max((float(np.abs(a - origin).max()) for a in anchors), default=0.0), 1e-300)
    cands = [a - origin for a in anchors]
    if pts.shape[0] > 1:
        _, _, vt = np.linalg.svd(pts - pts.mean(0), full_matrices=False)
        cands += list(vt)
    cands += list(np.eye(P))
    basis: list[np.ndarray] = []
    for v in cands:
        r = v.astype(np.float64).copy()
        for u in basis:
            r -= (r @ u) * u
        nr = float(np.linalg.norm(r))
        if nr > 1e-10 * size and nr > 0:
            r /= nr
            basis.append(r)
        if len(basis) == 2:
            break
    while len(basis) < 2:  # P = 1
        basis.append(np.zeros(P))
    if len(anchors) < 2 and basis[0][np.argmax(np.abs(basis[0]))] < 0:
        basis[0] = -basis[0]
    if basis[1][np.argmax(np.abs(basis[1]))] < 0:  # u2: its main coordinate increases upwards
        basis[1] = -basis[1]
    U = np.stack(basis)
    proj = pts @ U.T if pts.size else np.zeros((0, 2))
    spread = proj.max(0) - proj.min(0) if proj.shape[0] else np.zeros(2)
    return U, spread


def coord_names(model, d: int, P: int) -> list[str]:
    """Names of θ's coordinates from the model's blocks: w1, w2, ..., v1 (1-based)."""
    names = [f"θ{i + 1}" for i in range(P)]
    try:
        for block, sl in model.blocks(d).items():
            idx = range(P)[sl]
            for k, i in enumerate(idx):
                names[i] = block if len(idx) == 1 else f"{block}{k + 1}"
    except Exception:
        pass
    return names


def direction_label(u: np.ndarray, names: list[str], top: int = 3) -> str:
    """'0.981 w1 − 0.196 w2 + …' for a unit vector u."""
    order = np.argsort(-np.abs(u))
    parts = []
    for i in order[:top]:
        c = u[i]
        if abs(c) < 0.02:
            break
        sign = "−" if c < 0 else "+"
        parts.append(f"{sign} {abs(c):.3g} {names[i]}")
    if not parts:
        return "0"
    s = " ".join(parts)
    s = s[2:] if s.startswith("+ ") else "−" + s[2:]
    if np.count_nonzero(np.abs(u) >= 0.02) > top:
        s += " + …"
    return s


# ------------------------------------------------------------------------------------------
# R, loss on the plane
# ------------------------------------------------------------------------------------------
class Evaluator:
    """R_p(θ; ctx) of a certificate's hypothesis for a batch θ [B, P], as numpy [B] or [B, k].

    The context is built like :func:`ibtest.cert.certificate.verify`: ``init`` = θ0 (or its predictor)
    for ``depends_on`` "init"/"data", the side's dataset for "data".
    """

    def __init__(self, model, spec, params: dict, theta0: Tensor):
        self.model, self.spec, self.params, self.theta0 = model, spec, params, theta0

    def __call__(self, theta: np.ndarray | Tensor, X: Tensor | None = None, y: Tensor | None = None,
                 mask: Tensor | None = None, theta0: Tensor | None = None, chunk: int = 8192) -> np.ndarray:
        th_all = torch.as_tensor(np.asarray(theta), dtype=torch.float64)
        init0 = self.theta0 if theta0 is None else theta0
        out = []
        for s in range(0, th_all.shape[0], chunk):
            th = th_all[s : s + chunk]
            B = th.shape[0]
            if self.spec.depends_on == "data" and X is not None and y is not None and mask is not None:
                c = context(self.model, self.spec, theta0=init0[None].expand(B, -1), X=X[None].expand(B, -1, -1),
                            y=y[None].expand(B, -1), mask=mask[None].expand(B, -1))
            else:
                c = context(self.model, self.spec, theta0=init0[None].expand(B, -1))
            x = self.model.predictor(th) if self.spec.on == "predictor" else th
            with torch.no_grad():
                v = self.spec.fn(x, c, **self.params)
            out.append(torch.as_tensor(v, dtype=torch.float64).reshape(B, -1).numpy())
        R = np.concatenate(out) if out else np.zeros((0, 1))
        return R[:, 0] if R.shape[1] == 1 else R


def loss_on(model, theta: np.ndarray, X: Tensor, y: Tensor, mask: Tensor, chunk: int = 8192) -> np.ndarray:
    """L(θ; D) for θ [B, P] (numpy), [B]."""
    th_all = torch.as_tensor(theta, dtype=torch.float64)
    out = []
    for s in range(0, th_all.shape[0], chunk):
        th = th_all[s : s + chunk]
        B = th.shape[0]
        with torch.no_grad():
            out.append(model.loss(th, X[None].expand(B, -1, -1), y[None].expand(B, -1), mask[None].expand(B, -1)).numpy())
    return np.concatenate(out)


def plane_grid(center: np.ndarray, U: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int):
    """Plane coordinates S, T [n, n] over [lo, hi] and the points θ = center + S u1 + T u2 [n², P]."""
    s = np.linspace(lo[0], hi[0], n)
    t = np.linspace(lo[1], hi[1], n)
    S, T = np.meshgrid(s, t)
    pts = center[None] + S.reshape(-1, 1) * U[0][None] + T.reshape(-1, 1) * U[1][None]
    return S, T, pts


def zero_band(ax, S, T, loss: np.ndarray, color: str, hatch: str) -> bool:
    """Shade {θ in the plane : L(θ) ≈ 0}: residual ρ = √(2L) below 1.5 grid cells × median |∇ρ|.

    The zero-loss set is thin (an affine set for a neuron with its active points fixed), so a
    plain level set of the loss would miss it on a grid; a band of about three cells around it
    is drawn instead. Returns whether anything was drawn.
    """
    rho = np.sqrt(np.clip(2.0 * loss, 0.0, None))
    if not np.isfinite(rho).any():
        return False
    ds = abs(S[0, 1] - S[0, 0]) or 1.0
    dt = abs(T[1, 0] - T[0, 0]) or 1.0
    gt, gs = np.gradient(rho, dt, ds)
    slope = np.nanmedian(np.hypot(gs, gt))
    level = 1.5 * max(ds, dt) * slope if slope > 0 else 0.0
    level = max(level, 1e-12 * (1.0 + np.nanmax(rho)))
    if not (rho <= level).any():
        return False
    import matplotlib as mpl

    with mpl.rc_context({"hatch.color": color, "hatch.linewidth": 0.8}):
        ax.contourf(S, T, rho, levels=[-1.0, level], colors=[color], alpha=0.3, hatches=[hatch])
    return True


def level_sets(ax, S, T, R: np.ndarray, levels: list[tuple[float, str, str]], background: bool) -> None:
    """Level sets of R through given values (value, color, style); faint R contours behind."""
    if not np.isfinite(R).any():
        return
    if background:
        finite = R[np.isfinite(R)]
        lo, hi = np.percentile(finite, [2, 98])
        if hi > lo:
            ax.contour(S, T, R, levels=np.linspace(lo, hi, 12), colors="0.75", linewidths=0.5)
    for value, color, style in levels:
        if np.nanmin(R) <= value <= np.nanmax(R):
            ax.contour(S, T, R, levels=[value], colors=[color], linestyles=[style], linewidths=1.6)


def hypothesis_label(h: dict) -> str:
    params = h.get("params") or {}
    if not params:
        return h["name"]

    def fmt(v):
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:g}"
        return str(v)

    return f"{h['name']}[{', '.join(f'{k}={fmt(v)}' for k, v in params.items())}]"
