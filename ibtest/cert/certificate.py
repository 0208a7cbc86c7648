"""Certificates: self-contained JSON records of a refutation, and their independent replay.

A regularizer certificate holds the model and its options, both datasets, the shared θ0, both
solutions, their losses and cross-losses, R at both, the margin and the measured solver error,
the solver settings, package versions and the replay command. ``verify`` re-solves both
instances from the file alone (:mod:`ibtest.cert.replay`) by the registry's rules: claim type, pair
validity and tolerance floors come from the registered hypothesis and the tool, never from the
file. Reading a file is :func:`ibtest.cert.schema.load`.
"""
from __future__ import annotations

import json
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ibtest import __version__
from ibtest.base.jsonio import encode_float, tensor_to_list, to_jsonable
from ibtest.cert.schema import FORMAT, load  # noqa: F401  (load: the validated reader, re-exported)

if TYPE_CHECKING:
    from ibtest.cert.replay_rules import VerifyResult
    from ibtest.judge.verdicts import MemberResult
    from ibtest.solve.batch import Triples
    from ibtest.solve.engine import RunContext

def versions() -> dict[str, str]:
    import numpy
    import pluggy

    return {"ibtest": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pluggy": pluggy.__version__, "python": platform.python_version()}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "hypothesis"


def _side(t: Triples, i: int, theta: torch.Tensor, loss: float, R: float, err: float) -> dict[str, Any]:
    n = int(t.mask[i].sum())
    keep = t.mask[i] > 0
    return {
        "label": t.labels[i], "origin": t.origin[i], "theta0": tensor_to_list(t.theta0[i]),
        "X": tensor_to_list(t.X[i][keep]), "y": tensor_to_list(t.y[i][keep]),
        "theta": tensor_to_list(theta), "loss": loss, "R": encode_float(R), "measured_error": err, "n": n,
    }


def build(ctx: RunContext, t: Triples, member: MemberResult, options_tight: dict[str, Any]) -> dict[str, Any]:
    """The certificate dict for a falsified member (regularizer or invariant)."""
    ev = member.evidence
    if ev is None:
        raise ValueError(f"{member.label}: no evidence to certify")
    if ev.theta_a is None:
        raise ValueError(f"{member.label}: the evidence holds no re-solved theta_inf to certify")
    if member.use is None:
        raise ValueError(f"{member.label}: no hypothesis use (atol, rtol) to certify with")
    theta_a = ev.theta_a
    spec = member.spec
    m = ctx.model
    a = ev.a
    base = {
        "format": FORMAT,
        "study": ctx.study.name,
        "study_file": ctx.study.source,
        "hypothesis": {"name": member.hypothesis, "params": to_jsonable(member.params), "kind": spec.kind,
                       "depends_on": spec.depends_on, "on": spec.on, "doc": spec.doc,
                       "atol": member.use.atol, "rtol": member.use.rtol},
        "model": {"name": ctx.study.model.name, "options": to_jsonable(ctx.study.model.options)},
        "solver": {"name": ctx.study.solver.name, "options": to_jsonable(ctx.solver_options),
                   "tightened": to_jsonable(options_tight)},
        "fit_tol": ctx.fit_tol,
        "safety": ctx.study.verdict.safety,
        "plugins": list(ctx.study.plugin_files),
        "theta0": tensor_to_list(t.theta0[a]),
        "gap": ev.gap, "margin": ev.margin,
        "versions": versions(),
    }
    if getattr(ev, "kind", "pair") == "witness":  # a search witness inside one Z(D)
        from ibtest.cert import witness_cert

        return witness_cert.build(ctx, t, member, options_tight, base)
    if ev.b is None:  # invariant or bound: one triple
        loss = float(m.loss(theta_a[None], t.X[a : a + 1], t.y[a : a + 1], t.mask[a : a + 1])[0])
        if spec.kind == "bound":
            claim = f"{member.label}: B(theta_inf) <= {ev.Rb:.6g} whenever gradient flow converges"
            refutation = f"B(theta_inf) = {ev.Ra:.6g} exceeds the bound by {ev.gap:.6g} > margin {ev.margin:.6g}"
        else:
            claim = f"{member.label} is conserved by gradient flow: C(theta_inf) = C(theta0)"
            refutation = f"|C(theta_inf) - C(theta0)| = {ev.gap:.6g} > margin {ev.margin:.6g}"
        base.update({"claim": claim, "refutation": refutation,
                     "a": _side(t, a, theta_a, loss, ev.Ra, ev.err_a), "C_init": encode_float(ev.Rb)})
        return base
    b = ev.b
    if ev.theta_b is None:
        raise ValueError(f"{member.label}: the pair evidence holds no re-solved theta_b to certify")
    theta_b = ev.theta_b

    def L(th, j):
        return float(m.loss(th[None], t.X[j : j + 1], t.y[j : j + 1], t.mask[j : j + 1])[0])

    lo, hi = ("a", "b") if ev.Ra < ev.Rb else ("b", "a")
    base.update({
        "claim": f"gradient flow converges to argmin {member.label} over the zero-loss set",
        "refutation": (f"theta_{lo} fits D_{hi} (cross-loss below fit_tol) and R(theta_{lo}) is lower than "
                       f"R(theta_{hi}) by {ev.gap:.6g} > margin {ev.margin:.6g}: theta_{hi} is not a minimizer on D_{hi}"),
        "source": ev.source,
        "a": _side(t, a, theta_a, L(theta_a, a), ev.Ra, ev.err_a),
        "b": _side(t, b, theta_b, L(theta_b, b), ev.Rb, ev.err_b),
        "cross_loss": {"theta_a_on_D_b": L(theta_a, b), "theta_b_on_D_a": L(theta_b, a)},
    })
    return base


def write(cert: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cert = dict(cert)
    cert["replay"] = f"ibtest verify {path}"
    path.write_text(json.dumps(to_jsonable(cert), indent=1))
    return path



def verify(path: str | Path, extra_plugins: Sequence[str] = ()) -> VerifyResult:
    """Replay a certificate by the registry's rules (see :func:`ibtest.cert.replay.verify`)."""
    from ibtest.cert.replay import verify as _verify

    return _verify(path, extra_plugins)
