"""The figure of a limit certificate: the relative gap against the swept scale, on log axes, with
the fitted rate. Drawn from the certificate alone (its judged values); nothing is solved."""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ibtest.out.plot_plane import pyplot


def plot(cert: dict[str, Any], path: str | Path, plugins: Iterable[str] = (), dpi: int = 110) -> Path:
    """Refuted values as filled dots (the relative gap), values within the margin as open triangles
    at their upper bound, the least-squares line through the refuted ones, the limit's side marked."""
    pts = cert.get("points") or []
    lim = cert.get("limit") or {}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ref = [(float(p["s"]), float(p["g"])) for p in pts if p.get("refuted") and float(p.get("g") or 0) > 0]
    flo = [(float(p["s"]), float(p["g"])) for p in pts if not p.get("refuted")]
    if ref:
        ax.loglog(*zip(*ref), "o", color="#d62728", label="refuted at this value: relative gap")
    if flo:
        low = min([g for _, g in ref if g > 0] + [1e-16])
        ax.loglog([s for s, _ in flo], [g if g > 0 else low * 1e-2 for _, g in flo], "v", mfc="none",
                  color="#1f77b4", label="within the margin (upper bound)")
    rate = cert.get("rate")
    if rate is not None and len(ref) >= 2:
        s0, g0 = ref[0]
        k = rate if str(lim.get("to")) == "0" else -rate
        xs = [min(s for s, _ in ref), max(s for s, _ in ref)]
        ax.loglog(xs, [g0 * (x / s0) ** k for x in xs], "--", color="#7f7f7f",
                  label=f"fit: gap ~ scale^{k:.2f} (R² {cert.get('r2') or 0:.2f})")
    shown = [g for _, g in ref] + [g for _, g in flo if g > 0]
    if shown:  # at least two decades: a flat trend must look flat
        lo, hi = min(shown), max(shown)
        mid = math.sqrt(lo * hi)
        ax.set_ylim(min(lo / 2, mid / 10), max(hi * 2, mid * 10))
    ax.set_xlabel(f"{lim.get('path', 'scale')} (log)")
    ax.set_ylabel("relative gap |ΔR| / |R| (log)")
    h = cert.get("hypothesis") or {}
    arrow = "0" if str(lim.get("to")) == "0" else "∞"
    ax.set_title(f"{h.get('name', '')}: {str(cert.get('verdict', '')).replace('_', ' ')} as "
                 f"{lim.get('path', 'scale')} → {arrow}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    if not (ref or flo) or not all(math.isfinite(s) for s, _ in ref + flo):
        ax.text(0.5, 0.5, "no finite value to draw", transform=ax.transAxes, ha="center")
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
