"""Pictures: a counterexample certificate (like Fig. 1 of Vardi & Shamir, for any pair) and a run.

matplotlib is imported lazily, with the non-interactive ``Agg`` backend, so the rest of ibtest
never needs it.

* :func:`plot_certificate` re-solves the gradient-flow trajectories θ(t) of a certificate from its
  shared θ0 (an adaptive Bogacki–Shampine 3(2) integration of dθ/dt = −∇L(θ), accurate enough to
  draw, :func:`gradient_flow_path`) and draws them in the affine plane through θ0, θ_a and θ_b
  (:func:`projection_plane`), with the zero-loss set of each dataset and the level set of R
  through each end point, a zoom on the end points, the coordinates that tell θ_a from θ_b
  along time, and R (or the invariant C) along both paths.
* :func:`pair_gaps` computes R(θ_b) − R(θ_a) on every admissible pair a hypothesis member is
  judged on; :func:`gap_summary` adds each member's margin and verdict; :func:`plot_run` draws
  their distribution against the margin, one row per member.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ibtest.base.errors import UserError
from ibtest.judge.evaluation import context

Tensor = torch.Tensor

COLORS = {"a": "#1f77b4", "b": "#d62728", "init": "#2ca02c"}
HATCH = {"a": "////", "b": "\\\\\\\\"}


def _plt():
    """matplotlib.pyplot with the Agg backend (never opens a window)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------------
# Gradient-flow trajectories
# ------------------------------------------------------------------------------------------
def gradient_flow_path(model, X: Tensor, y: Tensor, mask: Tensor, theta0: Tensor,
                       theta_end: Tensor | None = None, *, rtol: float = 1e-6, atol: float = 1e-9,
                       t_max: float = 1e7, max_steps: int = 20_000, stop_tol: float = 1e-4,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The trajectory of dθ/dt = −∇L(θ) from θ0, for plotting (not for verdicts).

    ``X`` [n, d], ``y`` [n], ``mask`` [n], ``theta0`` [P]; ``model.grad`` gives ∇L. Adaptive
    Bogacki–Shampine 3(2) with an error test max_i |err_i| / (atol + rtol·|θ_i|) ≤ 1, so steps are
    short early on (t log-spaced in effect) and near activation switches, long near convergence.
    A step below 1e-14·(1 + t) is accepted regardless (a Filippov sliding mode then chatters
    forward instead of stalling). Stops when ‖θ − θ_end‖ ≤ stop_tol·(1 + ‖θ_end‖) (``theta_end``
    given: the certificate's solution), when ∇L vanishes, when θ leaves every bound, or at the
    ``t_max`` / ``max_steps`` budget.

    Returns ``t`` [K] (t[0] = 0) and ``theta`` [K, P] as float64 numpy arrays.
    """
    Xb, yb, mb = X[None], y[None], mask[None]

    def f(th: Tensor) -> Tensor:
        return -model.grad(th[None], Xb, yb, mb)[0]

    th = theta0.detach().to(torch.float64).clone()
    t = 0.0
    k1 = f(th)
    end_norm = float(theta_end.norm()) if theta_end is not None else float(th.norm())
    scale = 1.0 + end_norm + float(th.norm())
    g = float(k1.norm())
    h = 1e-3 * scale / g if g > 0 else 1.0
    ts, path = [0.0], [th.clone()]
    steps = 0
    lam = 0.0
    while steps < max_steps and t < t_max:
        steps += 1
        k2 = f(th + 0.5 * h * k1)
        k3 = f(th + 0.75 * h * k2)
        new = th + h * (2.0 / 9.0 * k1 + 1.0 / 3.0 * k2 + 4.0 / 9.0 * k3)
        k4 = f(new)
        err = h * (-5.0 / 72.0 * k1 + 1.0 / 12.0 * k2 + 1.0 / 9.0 * k3 - 1.0 / 8.0 * k4)
        tol = atol + rtol * torch.maximum(th.abs(), new.abs())
        e = float((err.abs() / tol).max()) if err.numel() else 0.0
        if not math.isfinite(e):
            e = 1e10
        forced = h <= 1e-14 * (1.0 + t)
        if e <= 1.0 or forced:
            t += h
            # local stiffness λ ≈ ‖Δf‖/‖Δθ‖; keeping h·λ ≤ 1.5 stays well inside the method's
            # real stability interval (≈ [−2.5, 0]): at its edge the controller would let a fast
            # mode oscillate forever instead of decaying
            dth = float((new - th).norm())
            lam = float((k4 - k1).norm()) / dth if dth > 0 else 0.0
            th, k1 = new, k4
            ts.append(t)
            path.append(th.clone())
            if not bool(torch.isfinite(th).all()) or float(th.norm()) > 1e8 * scale:
                break
            if theta_end is not None and float((th - theta_end).norm()) <= stop_tol * (1.0 + end_norm):
                break
            if float(k1.norm()) <= 1e-13 * (1.0 + float(th.norm())):
                break
        h *= min(5.0, max(0.2, 0.9 * (max(e, 1e-12)) ** (-1.0 / 3.0)))
        if lam > 0:
            h = min(h, 1.5 / lam)
        h = max(h, 1e-15 * (1.0 + t))
    return np.asarray(ts), torch.stack(path).numpy()


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


def _coord_names(model, d: int, P: int) -> list[str]:
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


def _direction_label(u: np.ndarray, names: list[str], top: int = 3) -> str:
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
class _Evaluator:
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
            data = self.spec.depends_on == "data" and X is not None
            c = context(self.model, self.spec, theta0=init0[None].expand(B, -1),
                        X=X[None].expand(B, -1, -1) if data else None, y=y[None].expand(B, -1) if data else None,
                        mask=mask[None].expand(B, -1) if data else None)
            x = self.model.predictor(th) if self.spec.on == "predictor" else th
            with torch.no_grad():
                v = self.spec.fn(x, c, **self.params)
            out.append(torch.as_tensor(v, dtype=torch.float64).reshape(B, -1).numpy())
        R = np.concatenate(out) if out else np.zeros((0, 1))
        return R[:, 0] if R.shape[1] == 1 else R


def _loss(model, theta: np.ndarray, X: Tensor, y: Tensor, mask: Tensor, chunk: int = 8192) -> np.ndarray:
    """L(θ; D) for θ [B, P] (numpy), [B]."""
    th_all = torch.as_tensor(theta, dtype=torch.float64)
    out = []
    for s in range(0, th_all.shape[0], chunk):
        th = th_all[s : s + chunk]
        B = th.shape[0]
        with torch.no_grad():
            out.append(model.loss(th, X[None].expand(B, -1, -1), y[None].expand(B, -1), mask[None].expand(B, -1)).numpy())
    return np.concatenate(out)


def _grid(center: np.ndarray, U: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int):
    """Plane coordinates S, T [n, n] over [lo, hi] and the points θ = center + S u1 + T u2 [n², P]."""
    s = np.linspace(lo[0], hi[0], n)
    t = np.linspace(lo[1], hi[1], n)
    S, T = np.meshgrid(s, t)
    pts = center[None] + S.reshape(-1, 1) * U[0][None] + T.reshape(-1, 1) * U[1][None]
    return S, T, pts


def _zero_band(ax, S, T, loss: np.ndarray, color: str, hatch: str) -> bool:
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


def _level_sets(ax, S, T, R: np.ndarray, levels: list[tuple[float, str, str]], background: bool) -> None:
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


def _label(h: dict) -> str:
    params = h.get("params") or {}
    if not params:
        return h["name"]

    def fmt(v):
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:g}"
        return str(v)

    return f"{h['name']}[{', '.join(f'{k}={fmt(v)}' for k, v in params.items())}]"


# ------------------------------------------------------------------------------------------
def plot_certificate(cert: dict, path: str | Path, plugins: Iterable[str] = (), *, grid: int = 161,
                     dpi: int = 110) -> Path:
    """Draw a certificate's counterexample into ``path`` (PNG, or any format matplotlib knows).

    Regularizer certificate (sides a and b, one θ0): both gradient-flow paths θ_a(t), θ_b(t)
    re-solved from θ0 with :func:`gradient_flow_path`, in the affine plane through θ0, θ_a, θ_b
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
    from ibtest.cert import certificate as certmod
    from ibtest.cert.replay import model_and_hypothesis

    cert = certmod._unnum(cert)
    if cert.get("kind") == "witness":  # θ∞ and the witness θ' on Z(D)
        from ibtest.out.witness_plot import plot as plot_witness

        return plot_witness(cert, path, plugins)
    path = Path(path)
    model, spec, params = model_and_hypothesis(cert, list(plugins))
    theta0 = torch.tensor(cert["theta0"], dtype=torch.float64)
    R = _Evaluator(model, spec, params, theta0)
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
    names = _coord_names(model, d, P)
    th0 = theta0.numpy()
    end_np = {s: ends[s].numpy() for s in sides}
    cloud = np.concatenate([paths[s][1] for s in sides] + [np.stack(list(end_np.values()))])
    extra0 = [inits[s].numpy() for s in sides if not torch.equal(inits[s], theta0)]
    U, _ = projection_plane(th0, [end_np[s] for s in sides] + extra0, cloud)

    def proj(x: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(x) - th0) @ U.T

    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    (ax_full, ax_zoom), (ax_coord, ax_R) = axes
    label = _label(cert["hypothesis"])
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
        S, T, pts = _grid(th0, U, lo, hi, grid)
        drawn = []
        for s in sides:
            if _zero_band(ax, S, T, _loss(model, pts, *data[s][:3]).reshape(S.shape), COLORS[s], HATCH[s]):
                drawn.append(s)
        if spec.depends_on == "data" and not invariant:
            for (value, color, style), s in zip(levels, sides):
                _level_sets(ax, S, T, field(pts, s).reshape(S.shape), [(value, color, style)], zoom and s == "a")
        else:
            _level_sets(ax, S, T, field(pts, "a").reshape(S.shape), levels, zoom)
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
        ax.set_xlabel(f"s   (u1 = {_direction_label(U[0], names)})")
        ax.set_ylabel(f"t   (u2 = {_direction_label(U[1], names)})")
        return drawn

    # full view: every projected point, padded
    allp = np.concatenate([proj(paths[s][1]) for s in sides] + [proj(th0)] + [proj(x) for x in extra0])
    lo, hi = allp.min(0), allp.max(0)
    pad = np.maximum(0.08 * (hi - lo), 1e-3 * max(float(np.abs(allp).max()), 1.0))
    drawn = draw_plane(ax_full, lo - pad, hi + pad, zoom=False)
    ax_full.set_title(("gradient-flow paths from θ0 in the plane through θ0" if not extra0 else
                       "gradient-flow paths from θ0_a and θ0_b (square), plane through θ0_a") + (", θ∞" if invariant else ", θ_a, θ_b"))

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

    handles = [Line2D([], [], color=COLORS["init"], marker="s", ls="", mec="k", label="θ0" + ("_a" if extra0 else ""))]
    if extra0:
        handles.append(Line2D([], [], color=COLORS["b"], marker="s", ls="", mec="k", label="θ0_b"))
    for s in sides:
        handles.append(Line2D([], [], color=COLORS[s], marker="o", mec="k", label=f"path and θ_{s if not invariant else '∞'}: {cert[s]['label']}"[:90]))
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
                ax_R.plot(t[1:], v2[1:, k] - C0v[k], color=cmap(k), label=f"C{k + 1}(θ(t)) − C{k + 1}(θ0)" if v2.shape[1] > 1 else "C(θ(t)) − C(θ0)")
        else:
            ax_R.plot(t[1:], v[1:], ls=ls, color=COLORS[s], label=f"R(θ_{s}(t))")
            ax_R.axhline(float(Rend[s][0]), color=COLORS[s], lw=0.6, ls=":")
    ax_R.set_xscale("log")
    ax_R.set_xlabel("flow time t")
    ax_R.set_title(f"{label} along the paths" if not invariant else f"{label}: change along the path")
    ax_R.legend(fontsize=7)

    verdict = str(cert.get("verdict", "falsified")).upper()
    gap, margin = cert.get("gap"), cert.get("margin")
    num = f"|Δ{what}| = {gap:.4g} > margin {margin:.2g}" if isinstance(gap, (int, float)) and isinstance(margin, (int, float)) else ""
    fig.suptitle(f"{label}: {verdict}   ({num})\nmodel {cert['model']['name']} {cert['model']['options'] or ''}"
                 f"   study {cert.get('study', '')}   source {cert.get('source', 'study')}", fontsize=11)
    fig.tight_layout(rect=(0, 0.02 + 0.02 * math.ceil(len(handles) / 2), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------
# Run-level figure
# ------------------------------------------------------------------------------------------
def _model_of(result):
    if getattr(result, "model", None) is not None:
        return result.model
    u = result.study.model
    return u.spec.factory(**u.options)


def pair_gaps(result) -> dict[str, list[float]]:
    """R(θ_b) − R(θ_a) on every pair each hypothesis member is judged on, by member label.

    ``result`` is a :class:`ibtest.api.StudyResult`. A regularizer member is evaluated on the
    admissible pairs its ``depends_on`` makes eligible (all for ``params``, those sharing θ0 for
    ``init``, none for ``data``), at the run's solutions θ∞ (not the re-solved ones a certificate
    rests on). For an invariant member the "gap" is C(θ∞) − C(θ0) on every converged triple (the
    component that moved most, signed). A member whose hypothesis raises gets an empty list.
    For a streamed study (``result.blocks > 1``) these are the retained triples and pairs only:
    each block's candidate witnesses and closest calls (:mod:`ibtest.run.streaming`).
    """
    from ibtest.base import status as st
    from ibtest.judge.verdicts import evaluate, hyp_context
    from ibtest.judge.evaluation import eligible

    ctx = SimpleNamespace(model=_model_of(result), study=result.study)
    t, pairs = result.triples, result.pairs
    out: dict[str, list[float]] = {}
    for m in result.members:
        spec = m.spec
        try:
            if spec.kind == "invariant":
                idx = (t.status == st.CONVERGED).nonzero().flatten()
                if idx.numel() == 0:
                    out[m.label] = []
                    continue
                hctx = hyp_context(ctx, t, idx, spec)
                C1, _ = evaluate(ctx, spec, m.params, t.theta[idx], hctx)
                C0, _ = evaluate(ctx, spec, m.params, t.theta0[idx], hctx)
                D = (C1 - C0).reshape(idx.numel(), -1)
                k = D.abs().argmax(-1)
                out[m.label] = D.gather(1, k[:, None]).flatten().tolist()
                continue
            sel = eligible(spec.depends_on, pairs.same_init).nonzero().flatten() if len(pairs) else torch.zeros(0, dtype=torch.int64)
            if sel.numel() == 0:
                out[m.label] = []
                continue
            p = pairs.select(sel)
            used = torch.unique(torch.cat([p.a, p.b]))
            Rv, _ = evaluate(ctx, spec, m.params, t.theta[used], hyp_context(ctx, t, used, spec))
            pos = torch.full((len(t),), -1, dtype=torch.int64)
            pos[used] = torch.arange(used.numel())
            out[m.label] = (Rv[pos[p.b]] - Rv[pos[p.a]]).tolist()
        except Exception:
            out[m.label] = []
    return out


def gap_summary(result) -> dict[str, dict[str, Any]]:
    """{label: {"gaps": [...], "margin": float, "verdict": str}} for :func:`plot_run`.

    ``result``: a StudyResult, or a list of them (a sweep: labels get `` @ path=value``).
    ``margin`` is the margin of the member's evidence (the certified margin of a falsified member,
    the tolerance floor max(atol, rtol·|R|) of the closest call otherwise; NaN if none).
    """
    if isinstance(result, (list, tuple)):
        out = {}
        for r in result:
            tag = f" @ {r.study.sweep.path}={r.sweep_value}" if r.study.sweep is not None else ""
            out.update({k + tag: v for k, v in gap_summary(r).items()})
        return out
    gaps = pair_gaps(result)
    out = {}
    for m in result.members:
        margin = float("nan")
        if m.evidence is not None and math.isfinite(m.evidence.margin):
            margin = float(m.evidence.margin)
        out[m.label] = {"gaps": gaps.get(m.label, []), "margin": margin, "verdict": m.verdict}
    return out


def _load_run(results: str | Path) -> dict[str, dict[str, Any]]:
    p = Path(results)
    f = p / "results.json" if p.is_dir() else p
    try:
        data = json.loads(f.read_text())
    except OSError as exc:
        raise UserError(f"run {p}: cannot read {f}: {exc.strerror or exc}") from None
    out = {}
    for v in data.get("verdicts", []):
        if "gaps" not in v:
            raise UserError(f"run {p}: results.json stores no per-pair gaps; plot from the StudyResult "
                            f"(ibtest.out.plots.plot_run(result, FILE)) or re-run the study")
        ev = v.get("evidence") or {}
        margin = ev.get("margin", float("nan"))
        out[v["label"]] = {"gaps": v["gaps"], "margin": float(margin) if margin is not None else float("nan"),
                           "verdict": v.get("verdict", "")}
    return out


def plot_run(results, path: str | Path, *, dpi: int = 110) -> Path:
    """Per hypothesis member, the distribution of R(θ2) − R(θ1) over its pairs against its margin.

    ``results``: a :class:`ibtest.api.StudyResult` (or a list, for a sweep), a dict
    ``{label: {"gaps": [float, ...], "margin": float, "verdict": str (optional)}}``, or a run
    directory / results.json whose verdicts carry a ``gaps`` list. One row per member; each dot
    is a pair (x on a symmetric-log axis whose linear part is the smallest margin, vertical
    jitter); the band |ΔR| ≤ margin is shaded; dots outside it are red (they exceed even the
    tolerance floor; a verdict rests on re-solved pairs, see the verdict at the right).
    Returns the path written.
    """
    if isinstance(results, (str, Path)):
        summary = _load_run(results)
    elif isinstance(results, Mapping):
        summary = {k: dict(v) for k, v in results.items()}
    else:
        summary = gap_summary(results)
    path = Path(path)
    plt = _plt()
    labels = list(summary)
    n = max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(11, 1.5 + 0.55 * n))
    margins = [float(v.get("margin", float("nan"))) for v in summary.values()]
    pos_m = [m for m in margins if math.isfinite(m) and m > 0]
    all_g = np.array([g for v in summary.values() for g in v.get("gaps", []) if math.isfinite(g)], dtype=float)
    nz = np.abs(all_g[all_g != 0]) if all_g.size else np.array([])
    lin = min(pos_m) if pos_m else (float(nz.min()) if nz.size else 1e-9)
    rng = np.random.default_rng(0)
    xmax = max([float(np.abs(all_g).max()) if all_g.size else 0.0] + pos_m + [lin]) * 3
    for row, lab in enumerate(labels):
        v = summary[lab]
        g = np.asarray([x for x in v.get("gaps", []) if math.isfinite(x)], dtype=float)
        m = float(v.get("margin", float("nan")))
        yrow = n - 1 - row
        if math.isfinite(m) and m > 0:
            ax.fill_between([-m, m], yrow - 0.4, yrow + 0.4, color="0.85", zorder=0)
            ax.plot([-m, -m], [yrow - 0.4, yrow + 0.4], color="0.4", lw=0.8)
            ax.plot([m, m], [yrow - 0.4, yrow + 0.4], color="0.4", lw=0.8)
        if g.size:
            out = np.abs(g) > m if math.isfinite(m) else np.zeros(g.size, dtype=bool)
            jit = yrow + rng.uniform(-0.3, 0.3, g.size)
            ax.scatter(g[~out], jit[~out], s=12, color="0.35", alpha=0.7, zorder=2)
            ax.scatter(g[out], jit[out], s=14, color="#d62728", alpha=0.8, zorder=3)
        verdict = v.get("verdict", "")
        note = f"{verdict}  ({g.size} pairs" + (f", {int((np.abs(g) > m).sum())} beyond margin" if math.isfinite(m) else "") + ")"
        ax.text(1.01, yrow, note, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.set_xscale("symlog", linthresh=lin, linscale=0.5)
    ax.set_xlim(-xmax, xmax)
    k0, k1 = math.ceil(math.log10(lin)), math.floor(math.log10(xmax))
    step = max(1, math.ceil((k1 - k0 + 1) / 4))
    ks = list(range(k1, k0 - 1, -step))
    ticks = [-(10.0 ** k) for k in ks] + [0.0] + [10.0 ** k for k in reversed(ks)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([("0" if x == 0 else f"{'−' if x < 0 else ''}1e{round(math.log10(abs(x)))}") for x in ticks],
                       fontsize=8)
    ax.minorticks_off()
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_yticks(range(n))
    ax.set_yticklabels(list(reversed(labels)), fontsize=8)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("R(θ2) − R(θ1) over admissible pairs  (shaded: |ΔR| ≤ margin; symlog axis, linear below "
                  f"{lin:.2g})")
    runs = results if isinstance(results, (list, tuple)) else [results]
    streamed = any(getattr(r, "blocks", 1) > 1 for r in runs)
    ax.set_title("hypothesis members: gaps over pairs against the margin"
                 + ("\n(a streamed study: the pairs retained from each block, i.e. its candidate witnesses "
                    "and closest calls)" if streamed else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


__all__ = ["plot_certificate", "plot_run", "pair_gaps", "gap_summary", "gradient_flow_path", "projection_plane"]
