"""``ibtest show CERT``: a counterexample in words and numbers (and, with --plot, a picture).

Every string of the file is printed through :func:`ibtest.base.textsafe.clean`: a certificate from
someone else's hands cannot move the cursor, hide text or forge a line.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ibtest.base.textsafe import clean, clean_tree
from ibtest.cert.schema import load


def describe(cert: dict, plugins: Iterable[str] = (), where: str = "certificate") -> list[str]:
    """The certificate in lines, by its claim kind's ``describe`` (the registry's kind named by the
    file); ``cert`` is a validated (:func:`ibtest.cert.schema.load`) dict, printed cleaned."""
    from ibtest.cert.replay import registered_kind
    from ibtest.plugin.manager import load_registry

    cert = clean_tree(cert)
    return list(registered_kind(load_registry(list(plugins)), cert, where).describe(cert))


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
    from ibtest.cert.shrink import clean_num

    aft, bef = ({**x, "max_abs": clean_num(x["max_abs"])} for x in (sh["after"], sh["before"]))
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
    cert = load(path)
    shrunk = bool(cert.get("shrink")) and "b" in cert
    print("\n".join(describe_shrunk(cert) if shrunk else describe(cert, plugins, f"certificate {clean(str(path))}")))
    if plot:
        from ibtest.base.outpath import save_figure
        from ibtest.out.plots import plot_certificate

        out = save_figure(plot_certificate, Path(plot), cert, plugins=list(plugins))
        print(f"figure written to {clean(out)}")
    return 0
