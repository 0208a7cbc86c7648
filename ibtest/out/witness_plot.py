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
from ibtest.out.plot_plane import hypothesis_label, pyplot, wrap_title


def _t(x: Any) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def plot(cert: dict[str, Any], path: str | Path, plugins=(), grid: int = 121, dpi: int = 110) -> Path:
    """The refutation by a witness, readable without the text: θ∞ (where gradient flow ends) and
    θ' (the witness), both on Z(D), and R lower at θ'.

    Left, the plane through θ∞ along θ' − θ∞ and a second direction (towards θ0, or a random one
    when θ0 is on that line): the loss as a grey background (log scale, white = zero), Z(D) where
    it meets the plane as a bold green line (sampled along the line through θ∞ and θ') and a green
    outline (on the grid), the level sets {R = R(θ∞)} and {R = R(θ')}, both points labelled.
    Right, R along the line through θ∞ and θ': the stretch inside Z(D) in green, both points and
    their R values, the gap against the margin. Nothing is solved: all comes from the certificate."""
    model, spec, params = model_and_hypothesis(cert, list(plugins))
    side = cert["a"]
    X, y = _t(side["X"])[None], _t(side["y"])[None]
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
    field = _Field(model, spec, params, X, y, th0, ti, u1, u2)
    s = np.linspace(-0.5 * span, 1.5 * span, grid)
    S, T = np.meshgrid(s, np.linspace(-0.5 * span, 0.5 * span, grid))
    loss, Rg = field(S, T)
    thr = max(float(cert["witness"]["fit_threshold"]), 1e-12 * max(float(loss.max()), 1e-300))
    line = np.linspace(-0.5 * span, 1.5 * span, 20 * grid)
    loss_line, R_line = field(line, np.zeros_like(line))
    on_z = loss_line <= thr
    R_inf, R_w = float(side["R"]), float(cert["witness"]["R"])

    plt = pyplot()
    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(12, 5.6), layout="constrained")
    shade = ax.contourf(S, T, np.log10(np.maximum(loss, 1e-300) + 1e-16), levels=12, cmap="Greys", alpha=0.4)
    fig.colorbar(shade, ax=ax, label="log10 loss (white: zero)", shrink=0.8)
    if (loss <= thr).any() and (loss > thr).any():
        ax.contour(S, T, (loss <= thr).astype(float), levels=[0.5], colors=[Z_COLOR], linewidths=1.0)
    for k, seg in enumerate(_runs(line, on_z)):
        ax.plot(seg, np.zeros_like(seg), color=Z_COLOR, lw=5, alpha=0.8, solid_capstyle="butt",
                label="Z(D): zero loss (where it meets the plane)" if k == 0 else None, zorder=2)
    for value, color, at in ((R_inf, INF_COLOR, "θ∞"), (R_w, W_COLOR, "θ'")):
        ax.contour(S, T, Rg, levels=[value], colors=[color], linewidths=1.2, linestyles="--")
        ax.plot([], [], ls="--", color=color, label=f"level set R = R({at}) = {value:.6g}")
    ax.plot([0], [0], "o", color=INF_COLOR, ms=10, mec="k", zorder=5, label="θ∞: where gradient flow ends")
    ax.plot([span], [0], "*", color=W_COLOR, ms=16, mec="k", zorder=5, label="θ': witness, also on Z(D)")
    ax.annotate("θ∞", (0, 0), xytext=(0, 12), textcoords="offset points", ha="center", fontsize=11, color=INF_COLOR)
    ax.annotate("θ'", (span, 0), xytext=(0, 12), textcoords="offset points", ha="center", fontsize=11, color=W_COLOR)
    ax.set_xlim(S.min(), S.max())
    ax.set_ylim(T.min(), T.max())
    ax.set_xlabel("s: distance from θ∞ along θ' − θ∞")
    ax.set_ylabel("second direction" + (" (towards θ0)" if float((th0 - ti).norm()) > 1e-9 * span else ""))
    ax.set_title(wrap_title("the plane through θ∞ and θ': both fit D (on Z(D))", 55))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, framealpha=0.9)

    ax_r.plot(line, R_line, color="0.6", lw=1, label="R off Z(D)")
    for k, seg in enumerate(_runs(line, on_z)):
        m = (line >= seg[0]) & (line <= seg[-1])
        ax_r.plot(line[m], R_line[m], color=Z_COLOR, lw=3, label="R on Z(D)" if k == 0 else None)
    ax_r.plot([0], [R_inf], "o", color=INF_COLOR, ms=10, mec="k", zorder=5, label=f"R(θ∞) = {R_inf:.6g}")
    ax_r.plot([span], [R_w], "*", color=W_COLOR, ms=16, mec="k", zorder=5, label=f"R(θ') = {R_w:.6g}")
    ax_r.axhline(R_inf, color=INF_COLOR, lw=0.6, ls=":")
    ax_r.axhline(R_w, color=W_COLOR, lw=0.6, ls=":")
    shown = R_line[on_z] if on_z.any() else R_line
    lo, hi = float(min(shown.min(), R_w)), float(max(shown.max(), R_inf))
    pad = 0.15 * (hi - lo) or 0.05 * max(abs(hi), 1e-12)
    ax_r.set_ylim(lo - pad, hi + pad)
    ax_r.set_xlim(line[0], line[-1])
    ax_r.set_xlabel("s: distance from θ∞ along θ' − θ∞")
    ax_r.set_ylabel("R")
    ax_r.set_title(wrap_title(f"R along that line: R(θ∞) − R(θ') = {cert['gap']:.4g} > margin "
                              f"{cert['margin']:.2g}, so θ∞ is not the argmin of R on Z(D)", 55))
    ax_r.legend(loc="best", fontsize=8)
    h = cert["hypothesis"]
    fig.suptitle(wrap_title(f"{hypothesis_label(h)}: FALSIFIED by a witness   model {cert['model']['name']}"
                            f"   study {cert.get('study', '')}", 110), fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    if hasattr(model, "split"):  # a network: its neurons, θ∞ beside the witness, in a second figure
        neurons_figure(model, X[0], [("θ∞ (gradient flow)", ti), ("θ' (witness)", tw)],
                       path.with_name(path.stem + ".neurons" + path.suffix), dpi)
    return path


Z_COLOR, INF_COLOR, W_COLOR = "#2ca02c", "#1f77b4", "#d62728"


class _Field:
    """The loss on D and R at the points θ∞ + s·u1 + t·u2 of the picture's plane."""

    def __init__(self, model: Any, spec: Any, params: dict, X: torch.Tensor, y: torch.Tensor, th0: torch.Tensor,
                 origin: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor):
        self.model, self.spec, self.params = model, spec, params
        self.X, self.y, self.th0, self.origin, self.u1, self.u2 = X, y, th0, origin, u1, u2

    def __call__(self, S: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts = (self.origin[None] + _t(S.reshape(-1))[:, None] * self.u1[None]
               + _t(T.reshape(-1))[:, None] * self.u2[None])
        N = pts.shape[0]
        X, y = self.X.expand(N, -1, -1), self.y.expand(N, -1)
        mask = torch.ones_like(y)
        with torch.no_grad():
            loss = self.model.loss(pts, X, y, mask).numpy().reshape(S.shape)
            hctx = ev.context(self.model, self.spec, theta0=self.th0[None].expand(N, -1), X=X, y=y, mask=mask)
            R, _ = ev.evaluate(self.model, self.spec, self.params, pts, hctx, grad=False)
        return loss, R.numpy().reshape(S.shape)


def _runs(x: np.ndarray, inside: np.ndarray) -> list[np.ndarray]:
    """The stretches of ``x`` where ``inside`` holds, in order."""
    out, start = [], None
    for k, flag in enumerate(list(inside) + [False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            out.append(x[start:k])
            start = None
    return out


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
