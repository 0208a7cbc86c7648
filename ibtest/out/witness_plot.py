"""The figure of a witness certificate: θ∞ and θ' on Z(D), with the level sets of R.

Drawn from the certificate alone (the data, θ0, θ∞ and θ' it holds); nothing is solved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ibtest.cert.replay import model_and_hypothesis
from ibtest.judge import evaluation as ev
from ibtest.out.plot_plane import pyplot


def _t(x: Any) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def plot(cert: dict[str, Any], path: str | Path, plugins=(), grid: int = 121, dpi: int = 110) -> Path:
    """θ∞ and θ' on Z(D): the plane through θ0, θ∞ and θ' (θ0 = θ∞ or collinear: through θ∞
    along θ' − θ∞ and a second random direction), Z(D) shaded (loss ≤ fit threshold, sampled on
    a grid), the level sets {R = R(θ∞)} and {R = R(θ')}, and the two points."""
    model, spec, params = model_and_hypothesis(cert, list(plugins))
    side = cert["a"]
    X, y = _t(side["X"])[None], _t(side["y"])[None]
    mask = torch.ones_like(y)
    th0 = _t(side.get("theta0", cert["theta0"]))
    ti, tw = _t(side["theta"]), _t(cert["witness"]["theta"])
    u1 = tw - ti
    span = float(u1.norm()) or 1.0
    u1 = u1 / span
    v = th0 - ti
    v = v - (v @ u1) * u1
    if float(v.norm()) < 1e-9 * span:
        v = torch.randn(ti.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        v = v - (v @ u1) * u1
    u2 = v / v.norm()
    s = np.linspace(-0.5 * span, 1.5 * span, grid)
    S, T = np.meshgrid(s, s - s.mean())
    pts = ti[None] + _t(S.reshape(-1))[:, None] * u1[None] + _t(T.reshape(-1))[:, None] * u2[None]
    N = pts.shape[0]
    with torch.no_grad():
        loss = model.loss(pts, X.expand(N, -1, -1), y.expand(N, -1), mask.expand(N, -1)).numpy().reshape(S.shape)
        hctx = ev.context(model, spec, theta0=th0[None].expand(N, -1), X=X.expand(N, -1, -1), y=y.expand(N, -1),
                          mask=mask.expand(N, -1))
        R_pts, _ = ev.evaluate(model, spec, params, pts, hctx, grad=False)
    Rg = R_pts.numpy().reshape(S.shape)
    thr = float(cert["witness"]["fit_threshold"])
    scale = max(float(loss.max()), 1e-300)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    ax.contourf(S, T, (loss <= max(thr, 1e-6 * scale)).astype(float), levels=[0.5, 1.5], colors=["#cfe8cf"])
    ax.contour(S, T, Rg, levels=sorted({float(cert["witness"]["R"]), float(side["R"])}),
               colors=["#d62728", "#1f77b4"], linewidths=1.2)
    ax.plot([0], [0], "o", color="#1f77b4", label="θ∞ (gradient flow)")
    ax.plot([span], [0], "*", color="#d62728", ms=12, label="θ' (witness)")
    ax.set_xlabel("along θ' − θ∞")
    ax.set_ylabel("second direction (towards θ0)")
    h = cert["hypothesis"]
    ax.set_title(f"{h['name']} {h['params'] or ''}: R(θ∞) − R(θ') = {cert['gap']:.3g} > margin {cert['margin']:.2g}\n"
                 "shaded: Z(D); lines: level sets of R through θ∞ and θ'", fontsize=9)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
