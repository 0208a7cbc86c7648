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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ibtest import __version__
from ibtest.base.jsonio import encode_float, tensor_to_list, to_jsonable
from ibtest.cert.schema import FORMAT

if TYPE_CHECKING:
    from ibtest.judge.records import Evidence, MemberResult
    from ibtest.solve.batch import Triples
    from ibtest.solve.engine import RunContext
    from ibtest.solve.rules import Side

def versions() -> dict[str, str]:
    import numpy
    import pluggy

    return {"ibtest": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pluggy": pluggy.__version__, "python": platform.python_version()}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "hypothesis"


def side_fields(t: Triples, i: int, theta: torch.Tensor, loss: float, side: Side) -> dict[str, Any]:
    """One run of a certificate: its dataset (real points only), θ0, the solution the evidence rests
    on, its loss, R there, its measured error and R's evaluation noise there."""
    n = int(t.mask[i].sum())
    keep = t.mask[i] > 0
    R = side.R.reshape(-1)
    return {
        "label": t.labels[i], "origin": t.origin[i], "theta0": tensor_to_list(t.theta0[i]),
        "X": tensor_to_list(t.X[i][keep]), "y": tensor_to_list(t.y[i][keep]),
        "theta": tensor_to_list(theta), "loss": loss, "R": encode_float(float(R[0])) if R.numel() == 1
        else [encode_float(float(v)) for v in R], "measured_error": side.err, "noise": side.noise, "n": n,
    }


def loss_at(ctx: RunContext, t: Triples, theta: torch.Tensor, j: int) -> float:
    """L(θ; D_j) of triple j's dataset."""
    sl = slice(j, j + 1)
    return float(ctx.model.loss(theta[None], t.X[sl], t.y[sl], t.mask[sl])[0])


def build(ctx: RunContext, t: Triples, member: MemberResult, ev: Evidence | None = None,
          kind: Any = None) -> dict[str, Any]:
    """The certificate dict of a member's evidence (by default the evidence it was falsified by):
    the fields every certificate shares (format, claim kind, hypothesis, model, solver and its
    tightened settings, rules, versions, θ0, gap, margin, noise) and those of its claim kind
    (``kind.certificate``; by default the study's claim kind named by the evidence)."""
    ev = member.evidence if ev is None else ev
    if ev is None:
        raise ValueError(f"{member.label}: no evidence to certify")
    if member.use is None or member.spec is None:
        raise ValueError(f"{member.label}: no hypothesis use (atol, rtol) to certify with")
    if kind is None:
        kind = ctx.study.kind_named(member.use, ev.kind)
    if kind is None:
        raise ValueError(f"{member.label}: no claim kind {ev.kind!r} judges a {member.spec.kind}")
    spec = member.spec
    base = {
        "format": FORMAT,
        "kind": ev.kind,
        "study": ctx.study.name,
        "study_file": ctx.study.source,
        "hypothesis": {"name": member.hypothesis, "params": to_jsonable(member.params), "kind": spec.kind,
                       "depends_on": spec.depends_on, "on": spec.on, "doc": spec.doc,
                       "atol": member.use.atol, "rtol": member.use.rtol},
        "model": {"name": ctx.study.model.name, "options": to_jsonable(ctx.study.model.options)},
        "solver": {"name": ctx.study.solver.name, "options": to_jsonable(dict(ctx.settings.options)),
                   "tightened": to_jsonable(dict(ctx.settings.tightened))},
        "fit_tol": ctx.rules.fit_tol,
        "safety": ctx.rules.safety,
        "plugins": list(ctx.study.plugin_files),
        "theta0": tensor_to_list(t.theta0[ev.a]),
        "gap": ev.gap, "margin": ev.margin, "noise": ev.noise,
        "versions": versions(),
    }
    base.update(kind.certificate(ctx, t, member, ev))
    return base


def write(cert: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cert = dict(cert)
    cert["replay"] = f"ibtest verify {path}"
    path.write_text(json.dumps(to_jsonable(cert), indent=1))
    return path


def header_lines(cert: dict[str, Any], title: str = "Failing case:") -> list[str]:
    """The first lines of ``ibtest show``: the hypothesis (as the file states it), the claim, the
    model and the solver."""
    h = cert["hypothesis"]
    params = ", ".join(f"{k}={v}" for k, v in h["params"].items())
    return [title,
            f"  hypothesis: {h['name']}{f'[{params}]' if params else ''} ({h.get('kind') or '?'}, depends on "
            f"{h.get('depends_on') or '?'}; as stated by the file)",
            f"  claim: {cert.get('claim', '')}",
            f"  model: {cert['model']['name']} {cert['model']['options']}",
            f"  solver: {cert['solver']['name']} {cert['solver']['options']}"]


def field_text(x: Any, spec: str = ".3g") -> str:
    """A stored number as ``ibtest show`` prints it ("-" when the file has none)."""
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)
