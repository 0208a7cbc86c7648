"""``ibtest show CERT``: a counterexample in words and numbers (and, with --plot, a picture)."""
from __future__ import annotations

from pathlib import Path

from . import certificate


def describe(cert: dict) -> list[str]:
    if cert.get("kind") == "witness":
        from .witness_cert import describe as describe_witness

        return describe_witness(cert)
    h = cert["hypothesis"]
    params = ", ".join(f"{k}={v}" for k, v in h["params"].items())
    lines = [
        "Failing case:",
        f"  hypothesis: {h['name']}{f'[{params}]' if params else ''} ({h['kind']}, depends on {h['depends_on']})",
        f"  claim: {cert.get('claim', '')}",
        f"  model: {cert['model']['name']} {cert['model']['options']}",
        f"  solver: {cert['solver']['name']} {cert['solver']['options']}",
        f"  theta0 = {cert['theta0']}" + ("" if all(cert[s].get("theta0", cert["theta0"]) == cert["theta0"]
                                                     for s in ("a", "b") if s in cert) else " (side a; the sides differ)"),
    ]
    for s in ("a", "b"):
        if s not in cert:
            continue
        side = cert[s]
        lines += [
            f"  dataset {s} ({side['label']}):",
            *[f"    x = {x}, y = {y}" for x, y in zip(side["X"], side["y"])],
            *([f"    theta0 of this side = {side['theta0']}"] if side.get("theta0") not in (None, cert["theta0"]) else []),
            f"    theta_{s} = {side['theta']}",
            f"    loss = {side['loss']:.3g}, R = {side['R']}, measured solver error = {side['measured_error']:.3g}",
        ]
    if "cross_loss" in cert:
        cl = cert["cross_loss"]
        lines.append(f"  cross-fit: L(theta_a; D_b) = {cl['theta_a_on_D_b']:.3g}, L(theta_b; D_a) = {cl['theta_b_on_D_a']:.3g}")
    lines += [f"  {cert.get('refutation', '')}", f"  replay: {cert.get('replay', '')}"]
    return lines


def show(path: str | Path, plot: str | None = None, plugins=()) -> int:
    cert = certificate.load(path)
    print("\n".join(describe(cert)))
    if plot:
        from .plots import plot_certificate

        out = plot_certificate(cert, plot, plugins=list(plugins))
        print(f"figure written to {out}")
    return 0
