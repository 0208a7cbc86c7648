"""Pictures: a counterexample certificate (like Fig. 1 of Vardi & Shamir, for any pair) and a run.

matplotlib is imported lazily, with the non-interactive ``Agg`` backend, so the rest of ibtest
never needs it. Plots draw; they do not solve: trajectories come from the solve layer
(:func:`ibtest.solve.trajectory.flow_path`), the certificate's model and hypothesis from
:func:`ibtest.cert.replay.model_and_hypothesis`, the hypothesis context from
:func:`ibtest.judge.evaluation.context`, stored results from :mod:`ibtest.run.results_file`.

* :func:`plot_certificate` draws a certificate's gradient-flow trajectories θ(t) from its θ0 in the
  affine plane through θ0, θ_a and θ_b (:func:`projection_plane`), with the zero-loss set of each
  dataset and the level set of R through each end point, a zoom on the end points, the
  coordinates that tell θ_a from θ_b along time, and R (or the invariant C) along both paths.
* :func:`pair_gaps`, :func:`gap_summary`, :func:`plot_run` (:mod:`ibtest.out.plot_run`): the
  run-level figure, gaps over the run's retained pairs against each member's margin.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ibtest.out.plot_plane import (
    COLORS,
    HATCH,
    Evaluator,
    coord_names,
    direction_label,
    hypothesis_label,
    level_sets,
    loss_on,
    plane_grid,
    projection_plane,
    pyplot,
    zero_band,
)
from ibtest.out.plot_run import gap_summary, pair_gaps, plot_run
from ibtest.solve.trajectory import flow_path

Tensor = torch.Tensor

__all__ = ["gap_summary", "gradient_flow_path", "pair_gaps", "plot_certificate", "plot_run", "projection_plane",
           "COLORS", "HATCH", "pyplot"]


def gradient_flow_path(model, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor,
                       theta_end: Tensor | None = None, *, rtol: float = 1e-6, atol: float = 1e-9,
                       t_max: float = 1e7, max_steps: int = 20_000, stop_tol: float = 1e-4,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The trajectory of dθ/dt = −∇L(θ) from θ0, for plotting: ``t`` [K] (t[0] = 0) and ``theta``
    [K, P] (float64 numpy) at the integrator's steps. ``X`` [n, d], ``y`` [n], ``mask`` [n],
    ``theta0`` [P]; stops near ``theta_end`` (see :func:`ibtest.solve.trajectory.flow_path`)."""
    fp = flow_path(model, X, y, mask, theta0, theta_end=theta_end, rtol=rtol, atol=atol, t_max=t_max,
                   max_steps=max_steps, stop_tol=stop_tol)
    return fp.t, fp.theta


def plot_certificate(cert: dict, path: str | Path, plugins: Iterable[str] = ()) -> Path:
    """Draw a certificate's counterexample into ``path`` (PNG, or any format matplotlib knows) with
    its claim kind's ``plot`` (the registry's kind named by the file; code only from installed
    plugins and the files the user named). Returns the path written."""
    from ibtest.base.errors import UserError
    from ibtest.cert.replay import registered_kind
    from ibtest.plugin.manager import load_registry

    kind = registered_kind(load_registry(list(plugins)), cert)
    if kind.plot is None:
        raise UserError(f"claim kind {kind.name!r} draws no figure")
    return Path(kind.plot(cert, path, list(plugins)))


def plot_sides(cert: dict, path: str | Path, plugins: Iterable[str] = (), *, grid: int = 161,
               dpi: int = 110) -> Path:
    """Draw a pair, invariant or bound certificate into ``path``.

    Pair certificate (sides a and b, one θ0): both gradient-flow paths θ_a(t), θ_b(t)
    integrated from θ0 by :func:`ibtest.solve.trajectory.flow_path`, in the affine plane through θ0, θ_a, θ_b
    (coordinates θ = θ0 + s·u1 + t·u2, directions named in the axis labels), with the zero-loss
    set of D_a and D_b (shaded, sampled on a ``grid``×``grid`` plane grid) and the level sets
    {R = R(θ_a)} and {R = R(θ_b)}; a zoom on the end points; the coordinates of θ that differ
    most between θ_a and θ_b against flow time t; R along both paths. The title states the
    hypothesis, the verdict and the gap against the margin.

    Invariant certificate (side a only): the single path, its zero-loss set, the level sets of C
    (its component that moved most) through θ0 and θ∞, and C(θ(t)) − C(θ0) along the path.

    The model, hypothesis and (for ``data`` hypotheses) the datasets come from the certificate;
    the registry holds the installed plugins and ``plugins`` (files the user named): the files a
    certificate lists are never imported on its say-so. Returns the path written.
    """
    from ibtest.base.jsonio import decode_floats
    from ibtest.cert.replay import model_and_hypothesis

    cert = decode_floats(cert)
    path = Path(path)
    model, spec, params = model_and_hypothesis(cert, list(plugins))
    theta0 = torch.tensor(cert["theta0"], dtype=torch.float64)
    R = Evaluator(model, spec, params, theta0)
    sides = [s for s in ("a", "b") if s in cert]
    invariant = "b" not in cert

    data, ends, paths, inits = {}, {}, {}, {}
    for s in sides:
        X = torch.tensor(cert[s]["X"], dtype=torch.float64)
        y = torch.tensor(cert[s]["y"], dtype=torch.float64)
        if X.dim() == 1:
            X = X[:, None]
        # a pair of two inits on one dataset has a θ0 per side (stored as side["theta0"])
        inits[s] = torch.tensor(cert[s]["theta0"], dtype=torch.float64) if "theta0" in cert[s] else theta0
        data[s] = (X, y, torch.ones_like(y), inits[s])
        ends[s] = torch.tensor(cert[s]["theta"], dtype=torch.float64)
        paths[s] = gradient_flow_path(model, *data[s][:3], inits[s], ends[s])
    d = data["a"][0].shape[1]
    P = theta0.numel()
    names = coord_names(model, d, P)
    th0 = theta0.numpy()
    end_np = {s: ends[s].numpy() for s in sides}
    cloud = np.concatenate([paths[s][1] for s in sides] + [np.stack(list(end_np.values()))])
    extra0 = [inits[s].numpy() for s in sides if not torch.equal(inits[s], theta0)]
    U, _ = projection_plane(th0, [end_np[s] for s in sides] + extra0, cloud)

    def proj(x: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(x) - th0) @ U.T

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    (ax_full, ax_zoom), (ax_coord, ax_R) = axes
    label = hypothesis_label(cert["hypothesis"])
    what = "C" if invariant else "R"

    # values of R (or C) at the end points and the level sets to draw
    Rend = {s: np.atleast_1d(R(end_np[s][None], *data[s])[0]) for s in sides}
    comp = 0
    if invariant:
        C0 = np.atleast_1d(R(th0[None], *data["a"])[0])
        comp = int(np.argmax(np.abs(Rend["a"] - C0)))
        levels = [(float(C0[comp]), COLORS["init"], "--"), (float(Rend["a"][comp]), COLORS["a"], "-")]
    else:
        levels = [(float(Rend[s][0]), COLORS[s], "-") for s in sides]

    def field(pts: np.ndarray, s: str) -> np.ndarray:
        try:
            v = R(pts, *data[s])
        except Exception:
            return np.full(pts.shape[0], np.nan)
        return v[:, comp] if v.ndim == 2 else v

    def draw_plane(ax, lo, hi, zoom: bool):
        S, T, pts = plane_grid(th0, U, lo, hi, grid)
        drawn = []
        for s in sides:
            if zero_band(ax, S, T, loss_on(model, pts, *data[s][:3]).reshape(S.shape), COLORS[s], HATCH[s]):
                drawn.append(s)
        if spec.depends_on == "data" and not invariant:
            for (value, color, style), s in zip(levels, sides):
                level_sets(ax, S, T, field(pts, s).reshape(S.shape), [(value, color, style)], zoom and s == "a")
        else:
            level_sets(ax, S, T, field(pts, "a").reshape(S.shape), levels, zoom)
        for s in sides:
            pp = proj(paths[s][1])
            ax.plot(pp[:, 0], pp[:, 1], color=COLORS[s], lw=1.4, alpha=0.9)
            e = proj(end_np[s])[0]
            ax.plot(*e, marker="o", ms=8, color=COLORS[s], mec="k", zorder=5)
        ax.plot(*proj(th0)[0], marker="s", ms=7, color=COLORS["init"], mec="k", zorder=5)
        for x0 in extra0:
            ax.plot(*proj(x0)[0], marker="s", ms=7, color=COLORS["b"], mec="k", zorder=5)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xlabel(f"s   (u1 = {direction_label(U[0], names)})")
        ax.set_ylabel(f"t   (u2 = {direction_label(U[1], names)})")
        return drawn

    # full view: every projected point, padded
    allp = np.concatenate([proj(paths[s][1]) for s in sides] + [proj(th0)] + [proj(x) for x in extra0])
    lo, hi = allp.min(0), allp.max(0)
    pad = np.maximum(0.08 * (hi - lo), 1e-3 * max(float(np.abs(allp).max()), 1.0))
    drawn = draw_plane(ax_full, lo - pad, hi + pad, zoom=False)
    ax_full.set_title(("gradient-flow paths from θ0 in the plane through θ0" if not extra0 else
                       "gradient-flow paths from θ0_a and θ0_b (square), plane through θ0_a")
                      + (", θ∞" if invariant else ", θ_a, θ_b"))

    # zoom on the end points (equal aspect: level sets keep their true shape)
    ep = np.concatenate([proj(end_np[s]) for s in sides])
    mid = ep.mean(0) if not invariant else ep[0]
    half = 1.3 * float(np.abs(ep - mid).max()) if not invariant else 0.0
    half = max(half, 0.05 * float(np.linalg.norm(allp.max(0) - allp.min(0))), 1e-6)
    draw_plane(ax_zoom, mid - half, mid + half, zoom=True)
    ax_zoom.set_aspect("equal")
    ax_zoom.set_title("end points: zero-loss sets (shaded) and level sets of " + what)

    # legend (proxy artists)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Line2D([], [], color=COLORS["init"], marker="s", ls="", mec="k", label="θ0" + ("_a" if extra0 else ""))]
    if extra0:
        handles.append(Line2D([], [], color=COLORS["b"], marker="s", ls="", mec="k", label="θ0_b"))
    for s in sides:
        label = f"path and θ_{s if not invariant else '∞'}: {cert[s]['label']}"[:90]
        handles.append(Line2D([], [], color=COLORS[s], marker="o", mec="k", label=label))
        if s in drawn:
            handles.append(Patch(facecolor=COLORS[s], alpha=0.3, hatch=HATCH[s], edgecolor=COLORS[s],
                                 label=f"zero-loss set of D_{s} (where it meets the plane)"))
    for value, color, style in levels:
        handles.append(Line2D([], [], color=color, ls=style, label=f"{what} = {value:.6g}"))
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=2, framealpha=0.9)

    # coordinates against time
    ref = end_np["b"] - end_np["a"] if not invariant else end_np["a"] - th0
    top = list(np.argsort(-np.abs(ref))[: min(3, P)])
    cmap = plt.get_cmap("tab10")
    for j, i in enumerate(top):
        for s, ls in zip(sides, ("-", "--")):
            t, th = paths[s]
            ax_coord.plot(t[1:], th[1:, i], ls=ls, color=cmap((4, 5, 8)[j]),
                          label=names[i] if invariant else f"{names[i]} (side {s})")
            ax_coord.axhline(end_np[s][i], color=cmap((4, 5, 8)[j]), lw=0.5, ls=":")
    ax_coord.set_xscale("log")
    ax_coord.set_xlabel("flow time t")
    ax_coord.set_title("coordinates that differ most" + (" from θ0" if invariant else " between θ_a and θ_b"))
    ax_coord.legend(fontsize=7)

    # R (or C − C(θ0)) along the paths
    for s, ls in zip(sides, ("-", "--")):
        t, th = paths[s]
        try:
            v = R(th, *data[s])
        except Exception:
            continue
        if invariant:
            v2 = np.atleast_2d(v.T).T if v.ndim == 1 else v
            C0v = np.atleast_1d(R(th0[None], *data[s])[0])
            for k in range(v2.shape[1]):
                label = f"C{k + 1}(θ(t)) − C{k + 1}(θ0)" if v2.shape[1] > 1 else "C(θ(t)) − C(θ0)"
                ax_R.plot(t[1:], v2[1:, k] - C0v[k], color=cmap(k), label=label)
        else:
            ax_R.plot(t[1:], v[1:], ls=ls, color=COLORS[s], label=f"R(θ_{s}(t))")
            ax_R.axhline(float(Rend[s][0]), color=COLORS[s], lw=0.6, ls=":")
    ax_R.set_xscale("log")
    ax_R.set_xlabel("flow time t")
    ax_R.set_title(f"{label} along the paths" if not invariant else f"{label}: change along the path")
    ax_R.legend(fontsize=7)

    verdict = str(cert.get("verdict", "falsified")).upper()
    gap, margin = cert.get("gap"), cert.get("margin")
    numeric = isinstance(gap, (int, float)) and isinstance(margin, (int, float))
    num = f"|Δ{what}| = {gap:.4g} > margin {margin:.2g}" if numeric else ""
    fig.suptitle(f"{label}: {verdict}   ({num})\nmodel {cert['model']['name']} {cert['model']['options'] or ''}"
                 f"   study {cert.get('study', '')}   source {cert.get('source', 'study')}", fontsize=11)
    fig.tight_layout(rect=(0, 0.02 + 0.02 * math.ceil(len(handles) / 2), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
