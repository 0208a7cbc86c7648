"""Certificates: self-contained JSON records of a refutation, and their independent replay.

A regularizer certificate holds the model and its options, both datasets, the shared θ0, both
solutions, their losses and cross-losses, R at both, the margin and the measured solver error,
the solver settings, package versions and the replay command. ``verify`` re-solves both
instances from the file alone at a tolerance tighter than the one the certificate rests on and
confirms the refutation only if both runs still converge, still fit each other's dataset, and
still differ in R by more than the margin (recomputed with the newly measured error).
"""
from __future__ import annotations

import json
import math
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from . import status as st
from .errors import UserError
from .specs import Context as HypContext

FORMAT = "ibtest-certificate/1"


def _num(x: float) -> Any:
    """JSON number, keeping ±inf/nan representable."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _unnum(x: Any) -> Any:
    if isinstance(x, str) and x in ("inf", "-inf", "nan"):
        return float(x)
    if isinstance(x, dict):
        return {k: _unnum(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unnum(v) for v in x]
    return x


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return _num(x)
    return x


def _tensor(x: torch.Tensor) -> list:
    return x.detach().cpu().tolist()


def versions() -> dict[str, str]:
    import numpy
    import pluggy

    return {"ibtest": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pluggy": pluggy.__version__, "python": platform.python_version()}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "hypothesis"


def _side(t, i: int, theta: torch.Tensor, loss: float, R: float, err: float) -> dict[str, Any]:
    n = int(t.mask[i].sum())
    keep = t.mask[i] > 0
    return {
        "label": t.labels[i], "origin": t.origin[i], "theta0": _tensor(t.theta0[i]),
        "X": _tensor(t.X[i][keep]), "y": _tensor(t.y[i][keep]),
        "theta": _tensor(theta), "loss": loss, "R": _num(R), "measured_error": err, "n": n,
    }


def build(ctx, t, member, options_tight: dict[str, Any]) -> dict[str, Any]:
    """The certificate dict for a falsified member (regularizer or invariant)."""
    ev = member.evidence
    spec = member.spec
    m = ctx.model
    a = ev.a
    base = {
        "format": FORMAT,
        "study": ctx.study.name,
        "study_file": ctx.study.source,
        "hypothesis": {"name": member.hypothesis, "params": _jsonable(member.params), "kind": spec.kind,
                       "depends_on": spec.depends_on, "on": spec.on, "doc": spec.doc,
                       "atol": member.use.atol, "rtol": member.use.rtol},
        "model": {"name": ctx.study.model.name, "options": _jsonable(ctx.study.model.options)},
        "solver": {"name": ctx.study.solver.name, "options": _jsonable(ctx.solver_options),
                   "tightened": _jsonable(options_tight)},
        "fit_tol": ctx.fit_tol,
        "safety": ctx.study.verdict.safety,
        "plugins": list(ctx.study.plugin_files),
        "theta0": _tensor(t.theta0[a]),
        "gap": ev.gap, "margin": ev.margin,
        "versions": versions(),
    }
    if getattr(ev, "kind", "pair") == "witness":  # a search witness inside one Z(D)
        from . import witness_cert

        return witness_cert.build(ctx, t, member, options_tight, base)
    if ev.b < 0:  # invariant: one triple
        loss = float(m.loss(ev.theta_a[None], t.X[a : a + 1], t.y[a : a + 1], t.mask[a : a + 1])[0])
        if spec.kind == "bound":
            claim = f"{member.label}: B(theta_inf) <= {ev.Rb:.6g} whenever gradient flow converges"
            refutation = f"B(theta_inf) = {ev.Ra:.6g} exceeds the bound by {ev.gap:.6g} > margin {ev.margin:.6g}"
        else:
            claim = f"{member.label} is conserved by gradient flow: C(theta_inf) = C(theta0)"
            refutation = f"|C(theta_inf) - C(theta0)| = {ev.gap:.6g} > margin {ev.margin:.6g}"
        base.update({"claim": claim, "refutation": refutation,
                     "a": _side(t, a, ev.theta_a, loss, ev.Ra, ev.err_a), "C_init": _num(ev.Rb)})
        return base
    b = ev.b

    def L(th, j):
        return float(m.loss(th[None], t.X[j : j + 1], t.y[j : j + 1], t.mask[j : j + 1])[0])

    lo, hi = ("a", "b") if ev.Ra < ev.Rb else ("b", "a")
    base.update({
        "claim": f"gradient flow converges to argmin {member.label} over the zero-loss set",
        "refutation": (f"theta_{lo} fits D_{hi} (cross-loss below fit_tol) and R(theta_{lo}) is lower than "
                       f"R(theta_{hi}) by {ev.gap:.6g} > margin {ev.margin:.6g}: theta_{hi} is not a minimizer on D_{hi}"),
        "source": ev.source,
        "a": _side(t, a, ev.theta_a, L(ev.theta_a, a), ev.Ra, ev.err_a),
        "b": _side(t, b, ev.theta_b, L(ev.theta_b, b), ev.Rb, ev.err_b),
        "cross_loss": {"theta_a_on_D_b": L(ev.theta_a, b), "theta_b_on_D_a": L(ev.theta_b, a)},
    })
    return base


def write(cert: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cert = dict(cert)
    cert["replay"] = f"ibtest verify {path}"
    path.write_text(json.dumps(_jsonable(cert), indent=1))
    return path


# ------------------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    holds: bool
    lines: list[str]


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise UserError(f"certificate {p}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"certificate {p}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"certificate {p}: field 'format': expected {FORMAT!r}, got {data.get('format') if isinstance(data, dict) else data!r}")
    for key in ("hypothesis", "model", "solver", "theta0", "a"):
        if key not in data:
            raise UserError(f"certificate {p}: required field {key!r} is missing")
    return _unnum(data)


def verify(path: str | Path, extra_plugins: list[str] = ()) -> VerifyResult:
    """Re-solve both instances of a certificate at a tighter tolerance and re-judge the claim."""
    from .manager import SINGULAR, load_registry

    cert = load(path)
    if cert.get("kind") == "witness":  # one triple and a point of its zero-loss set
        from . import witness_cert

        return witness_cert.verify(path, cert, extra_plugins)
    files = list(extra_plugins) + [f for f in cert.get("plugins", []) if Path(f).is_file()]
    reg = load_registry(files)
    for kind, key in (("models", cert["model"]["name"]), ("solvers", cert["solver"]["name"]),
                      ("hypotheses", cert["hypothesis"]["name"])):
        if key not in reg.items[kind]:
            raise UserError(f"certificate {path}: {SINGULAR[kind]} {key!r} is not registered here "
                            f"(install its plugin or pass --plugin FILE)")
    model = reg.get("models", cert["model"]["name"]).factory(**cert["model"]["options"])
    solver = reg.get("solvers", cert["solver"]["name"])
    hspec = reg.get("hypotheses", cert["hypothesis"]["name"])
    params = dict(cert["hypothesis"]["params"])
    bound = params.pop("bound", hspec.bound) if hspec.kind == "bound" else None
    opts = solver.tighten(dict(cert["solver"].get("tightened") or cert["solver"]["options"]))
    fit_tol = float(cert["fit_tol"])
    theta0s = {s: torch.tensor(cert[s].get("theta0", cert["theta0"]), dtype=torch.float64)[None]
               for s in ("a", "b") if s in cert}
    sides = ["a", "b"] if "b" in cert else ["a"]
    lines = [f"Replaying {path}", f"  claim: {cert.get('claim', '')}"]
    sol, data = {}, {}
    for s in sides:
        X = torch.tensor(cert[s]["X"], dtype=torch.float64)[None]
        y = torch.tensor(cert[s]["y"], dtype=torch.float64)[None]
        mask = torch.ones_like(y)
        res = solver.solve(model, X, y, mask, theta0s[s], **opts)
        th_cert = torch.tensor(cert[s]["theta"], dtype=torch.float64)
        err = float((res.theta[0] - th_cert).norm())
        sol[s] = (res.theta[0], int(res.status[0]), float(res.loss[0]), err)
        data[s] = (X, y, mask)
        lines.append(f"  side {s}: re-solved status={st.name(res.status[0])} loss={float(res.loss[0]):.3g} "
                     f"|theta - theta_cert| = {err:.3g}")
    ok = all(sol[s][1] == st.CONVERGED for s in sides)

    def R(theta: torch.Tensor, X, y, mask, theta0: torch.Tensor):
        c = HypContext(model=model)
        if hspec.depends_on in ("init", "data"):
            c.init, c.init_predictor = theta0, model.predictor(theta0)
        if hspec.depends_on == "data":
            c.X, c.y, c.mask = X, y, mask
        with torch.enable_grad():
            th = theta[None].clone().requires_grad_(True)
            x = model.predictor(th) if hspec.on == "predictor" else th
            v = hspec.fn(x, c, **params).reshape(-1)
            g = 0.0
            for k in range(v.numel()):
                if v.requires_grad:
                    (gr,) = torch.autograd.grad(v[k], th, retain_graph=True, allow_unused=True)
                    g += 0.0 if gr is None else float(gr.norm())
        return v.detach(), g

    atol, rtol = float(cert["hypothesis"]["atol"]), float(cert["hypothesis"]["rtol"])
    safety = float(cert.get("safety", 10.0))
    if len(sides) == 2 and ok:
        (ta, _, _, ea), (tb, _, _, eb) = sol["a"], sol["b"]
        Xa, ya, ma = data["a"]
        Xb, yb, mb = data["b"]
        cab = float(model.loss(ta[None], Xb, yb, mb)[0])
        cba = float(model.loss(tb[None], Xa, ya, ma)[0])
        lines.append(f"  cross-fit: L(theta_a; D_b) = {cab:.3g}, L(theta_b; D_a) = {cba:.3g} (fit_tol {fit_tol:.3g})")
        ok = cab <= fit_tol and cba <= fit_tol
        (Ra, ga), (Rb, gb) = R(ta, Xa, ya, ma, theta0s["a"]), R(tb, Xb, yb, mb, theta0s["b"])
        gap = float((Ra - Rb).abs().max())
        margin = max(atol, rtol * max(float(Ra.abs().max()), float(Rb.abs().max()))) + safety * (ga * ea + gb * eb)
        lines.append(f"  R(theta_a) = {float(Ra[0]):.12g}, R(theta_b) = {float(Rb[0]):.12g}, |gap| = {gap:.3g}, margin = {margin:.3g}")
        ok = ok and gap > margin
    elif len(sides) == 1 and ok:
        ta, _, _, ea = sol["a"]
        Xa, ya, ma = data["a"]
        C1, g1 = R(ta, Xa, ya, ma, theta0s["a"])
        if bound is not None:
            C0 = torch.tensor([float(bound)], dtype=torch.float64)
            gap = float((C1 - C0).max())
        else:
            C0, _ = R(theta0s["a"][0], Xa, ya, ma, theta0s["a"])
            gap = float((C1 - C0).abs().max())
        margin = max(atol, rtol * max(float(C1.abs().max()), float(C0.abs().max()))) + safety * g1 * ea
        what = "B(theta_inf) - bound" if bound is not None else "|C(theta_inf) - C(theta0)|"
        lines.append(f"  {what} = {gap:.3g}, margin = {margin:.3g}")
        ok = gap > margin
    lines.append("  refutation CONFIRMED" if ok else "  refutation WITHDRAWN")
    return VerifyResult(ok, lines)
