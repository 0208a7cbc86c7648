"""``ibtest show CERT``: a counterexample in words and numbers (and, with --plot, a picture).

Every string of the file is printed through :func:`ibtest.textsafe.clean`: a certificate from
someone else's hands cannot move the cursor, hide text or forge a line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from . import certificate
from .textsafe import clean_tree


def _f(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def describe(cert: dict) -> list[str]:
    """The certificate in lines; ``cert`` is a validated (:func:`ibtest.certschema.load`) dict."""
    cert = clean_tree(cert)
    h = cert["hypothesis"]
    params = ", ".join(f"{k}={v}" for k, v in h["params"].items())
    sides = [s for s in ("a", "b") if s in cert]
    same0 = all((cert[s].get("theta0") or cert["theta0"]) == cert["theta0"] for s in sides)
    lines = [
        "Failing case:",
        f"  hypothesis: {h['name']}{f'[{params}]' if params else ''} ({h.get('kind') or '?'}, depends on "
        f"{h.get('depends_on') or '?'}; as stated by the file)",
        f"  claim: {cert.get('claim', '')}",
        f"  model: {cert['model']['name']} {cert['model']['options']}",
        f"  solver: {cert['solver']['name']} {cert['solver']['options']}",
        f"  theta0 = {cert['theta0']}" + ("" if same0 else " (side a; the sides differ)"),
    ]
    for s in sides:
        side = cert[s]
        lines += [
            f"  dataset {s} ({side.get('label', '')}):",
            *[f"    x = {x}, y = {y}" for x, y in zip(side["X"], side["y"])],
            *([f"    theta0 of this side = {side['theta0']}"] if side.get("theta0") not in (None, cert["theta0"]) else []),
            f"    theta_{s} = {side['theta']}",
            f"    loss = {_f(side.get('loss'))}, R = {_f(side.get('R'), '')}, "
            f"measured solver error = {_f(side.get('measured_error'))}",
        ]
    if cert.get("cross_loss"):
        cl = cert["cross_loss"]
        lines.append(f"  cross-fit: L(theta_a; D_b) = {_f(cl['theta_a_on_D_b'])}, L(theta_b; D_a) = {_f(cl['theta_b_on_D_a'])}")
    lines += [f"  {cert.get('refutation', '')}", f"  replay: {cert.get('replay', '')}",
              "  (numbers as stored in the file: 'ibtest verify' re-solves and judges them)"]
    return lines


def show(path: str | Path, plot: str | None = None, plugins: Iterable[str] = ()) -> int:
    cert = certificate.load(path)
    print("\n".join(describe(cert)))
    if plot:
        from .plots import plot_certificate

        out = plot_certificate(cert, plot, plugins=list(plugins))
        print(f"figure written to {out}")
    return 0
