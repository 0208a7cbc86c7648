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
    th0 = _t(side.get("theta0") or cert["theta0"])
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
    if hasattr(model, "split"):  # a network: its neurons, θ∞ beside the witness, in a second figure
        neurons_figure(model, X[0], [("θ∞ (gradient flow)", ti), ("θ' (witness)", tw)],
                       path.with_name(path.stem + ".neurons" + path.suffix), dpi)
    return path


def neurons_figure(model: Any, X: torch.Tensor, nets: list[tuple[str, torch.Tensor]], path: Path,
                   dpi: int = 110) -> Path:
    """The neurons of one-hidden-layer nets side by side: each neuron j an arrow along w_j/‖w_j‖
    (in the plane of the data's two main directions) of length |v_j|·‖w_j‖ (its share of the
    variation norm), red for v_j > 0, blue for v_j < 0; the data directions in grey."""
    plt = pyplot()
    U = torch.linalg.svd(X, full_matrices=True)[2][:2]  # [2, d]: the data's two main directions
    fig, axes = plt.subplots(1, len(nets), figsize=(4.2 * len(nets), 4.2), squeeze=False)
    for ax, (title, th) in zip(axes[0], nets):
        W, v = model.split(th.reshape(1, -1))
        W, v = W[0], v[0]
        norms = W.norm(dim=-1)
        share = (v.abs() * norms).numpy()
        dirs = (W / norms.clamp_min(1e-300)[:, None]) @ U.T
        top = max(float(share.max()), 1e-300)
        for k in range(X.shape[0]):
            xk = X[k] @ U.T
            xk = xk / xk.norm().clamp_min(1e-300) * top
            ax.plot([0, float(xk[0])], [0, float(xk[1])], color="#bbbbbb", lw=1, zorder=1)
        for j in range(W.shape[0]):
            c = "#d62728" if float(v[j]) > 0 else "#1f77b4"
            ax.arrow(0, 0, float(dirs[j, 0]) * share[j], float(dirs[j, 1]) * share[j], color=c, width=0.004 * top,
                     length_includes_head=True, head_width=0.04 * top, zorder=2)
        ax.set_xlim(-1.2 * top, 1.2 * top)
        ax.set_ylim(-1.2 * top, 1.2 * top)
        ax.set_aspect("equal")
        ax.set_title(f"{title}\nvariation norm Σ|v_j|‖w_j‖ = {share.sum():.6g}", fontsize=9)
        ax.set_xlabel("data direction 1")
        ax.set_ylabel("data direction 2")
    fig.suptitle("neurons: arrow = w_j/‖w_j‖ scaled by |v_j|‖w_j‖ (red v_j > 0, blue v_j < 0; grey: the inputs)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_optimum(cert: dict[str, Any], path: str | Path, plugins=(), dpi: int = 110) -> Path:
    """An optimum certificate: the certified θ∞ (its neurons, for a network; else its coordinates)."""
    model, _spec, _params = model_and_hypothesis(cert, list(plugins))
    side = cert["a"]
    ti = _t(side["theta"])
    path = Path(path)
    if hasattr(model, "split"):
        return neurons_figure(model, _t(side["X"]), [("θ∞: certified minimum over Z(D)", ti)], path, dpi)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(range(ti.numel()), ti.numpy(), color="#1f77b4")
    ax.set_xlabel("coordinate of θ∞")
    h = cert["hypothesis"]
    ax.set_title(f"{h['name']}: θ∞ is the certified minimum over Z(D) (R = {side.get('R')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
