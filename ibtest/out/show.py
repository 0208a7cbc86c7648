"""``ibtest show CERT``: a counterexample in words and numbers (and, with --plot, a picture).

Every string of the file is printed through :func:`ibtest.base.textsafe.clean`: a certificate from
someone else's hands cannot move the cursor, hide text or forge a line.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ibtest.base.textsafe import clean, clean_tree
from ibtest.cert import certificate


def _f(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def describe(cert: dict) -> list[str]:
    """The certificate in lines; ``cert`` is a validated (:func:`ibtest.cert.schema.load`) dict."""
    cert = clean_tree(cert)
    if cert.get("kind") == "witness":
        from ibtest.cert.witness_cert import describe as describe_witness

        return describe_witness(cert)
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


def _vec(v) -> str:
    from ibtest.cert.shrink import fraction_text

    return "(" + ", ".join(fraction_text(float(x)) for x in v) + ")"


def describe_shrunk(cert: dict) -> list[str]:
    """A shrunk pair, compactly, like the paper states its own: the points (with the datasets each is in),
    the labels, θ0, both solutions as exact small rationals where the float is one within rounding (else
    12 significant digits, enough to check by hand) and both R values."""
    from ibtest.cert.shrink import Case, case_from_cert, fraction_text

    cert = clean_tree(cert)
    h = cert["hypothesis"]
    params = ", ".join(f"{k}={v}" for k, v in h["params"].items())
    sh = cert["shrink"]
    c: Case = case_from_cert(cert)
    from ibtest.cert.shrink import _clean_num

    aft, bef = ({**x, "max_abs": _clean_num(x["max_abs"])} for x in (sh["after"], sh["before"]))
    lines = [f"Shrunk counterexample: {h['name']}{f'[{params}]' if params else ''} ({h['kind']}, depends on {h['depends_on']}), "
             f"model {cert['model']['name']} {cert['model']['options']}, solver {cert['solver']['name']}",
             f"  n = {aft['n']}, d = {aft['d']}, max |coordinate| = {aft['max_abs']}, digits {aft['digits']} "
             f"(was n = {bef['n']}, d = {bef['d']}, max |coordinate| = {bef['max_abs']}, digits {bef['digits']})"]
    w = max(len(_vec(x)) for x in c.X.tolist())
    for i in range(c.m):
        where = " and ".join(f"D_{s}" for k, s in enumerate("ab") if bool(c.sides[k, i]))
        lines.append(f"  x{i + 1} = {_vec(c.X[i].tolist()):<{w}}  y{i + 1} = {fraction_text(float(c.y[i]))}   in {where}")
    same = bool((c.theta0[0] == c.theta0[1]).all())
    lines.append(f"  theta0 = {_vec(c.theta0[0].tolist())}"
                 + ("" if same else f" (side a), {_vec(c.theta0[1].tolist())} (side b)"))
    for s in ("a", "b"):
        side = cert[s]
        lines.append(f"  theta_{s} = {_vec(side['theta'])}   R(theta_{s}) = {fraction_text(float(side['R']))}")
    lines += [f"  |R(theta_a) - R(theta_b)| = {cert['gap']:.6g} > margin {cert['margin']:.3g}; "
              "each solution fits the other dataset",
              f"  shrunk from {cert['shrunk_from']['path']} (sha256 {cert['shrunk_from']['sha256'][:12]}) in "
              f"{len(sh['passes'])} step(s), {sh['solves']} solves",
              f"  replay: {cert.get('replay', '')}"]
    return lines


def show(path: str | Path, plot: str | Path | None = None, plugins: Iterable[str] = ()) -> int:
    cert = certificate.load(path)
    shrunk = bool(cert.get("shrink")) and "b" in cert
    print("\n".join(describe_shrunk(cert) if shrunk else describe(cert)))
    if plot:
        from ibtest.base.outpath import save_figure
        from ibtest.out.plots import plot_certificate

        out = save_figure(plot_certificate, Path(plot), cert, plugins=list(plugins))
        print(f"figure written to {clean(out)}")
    return 0
