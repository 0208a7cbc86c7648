r"""Certificates of ``ibtest fit``: a no-fit (``kind: no_fit``) and a fit (``kind: fit``).

Both name the family's ``family`` hypothesis (``NAME_family``, its options as params), the model,
the solver and its settings like every certificate, and hold

* ``runs``: k triples (dataset, θ0, θ∞ re-solved at tightened settings, measured error);
* ``fit``: the family, its settings (options and free values), ``strict`` μ, the pairs among the runs
  (positions), the box Λ of the claim, the KKT variable, and for a fit the coefficients λ.

``ibtest verify`` (the claim kind's replay) trusts only the data: it re-solves every run at the
tightened settings (each must converge and fit), re-checks each pair's cross-fits and validity for
the family's ``depends_on``, rebuilds the KKT rows at the re-solved θ∞ with their measured errors
(:mod:`ibtest.propose.kkt`), and

* ``no_fit``: solves the minimax program (:mod:`ibtest.propose.program`) over the box: confirmed
  when s* > 0 beyond the program's measured error (no member of the box satisfies the KKT
  conditions of these runs and rates their pairs equal);
* ``fit``: checks the file's λ: confirmed when every run's KKT residual and every pair's gap is
  within what the measured solver error and rounding can do.

``ibtest shrink`` of a no-fit certificate drops runs (and pairs) while the rest stays infeasible
(one re-solve of every run, then one program per candidate), and writes an ordinary no-fit
certificate of the rest, verified before it is kept.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from ibtest.base import status as st
from ibtest.base.errors import UserError
from ibtest.base.jsonio import tensor_to_list, to_jsonable
from ibtest.base.textsafe import clean
from ibtest.cert.certificate import header_lines, loss_at
from ibtest.cert.replay import Data, Replay, VerifyResult, side_tensors
from ibtest.cert.schema import Finite
from ibtest.judge.records import Evidence
from ibtest.plugin.specs import FamilyFunction
from ibtest.propose import engine as eng, program as prog_mod
from ibtest.solve.batch import Pairs, Triples

if TYPE_CHECKING:
    from ibtest.judge.records import MemberResult
    from ibtest.solve.engine import RunContext

Tensor = torch.Tensor
MAX_FIT_RUNS = 8  # runs a fit certificate keeps: the triples closest to their tolerance


@dataclass
class FitEvidence(Evidence):
    """Evidence of the ``fit`` / ``no_fit`` claim kinds: the outcome, and the runs it rests on
    (positions in the table) with the pairs between them (positions in ``runs``)."""

    outcome: eng.FitOutcome | None = None
    runs: tuple[int, ...] = ()
    run_theta: Tensor | None = None  # θ∞ of the runs to certify (the tight re-solves where measured)
    run_err: tuple[float, ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()
    pair_sources: tuple[str, ...] = ()


def _settings_json(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: to_jsonable(v) for k, v in settings.items()}


def fields(ctx: RunContext, t: Triples, member: MemberResult, ev: Evidence) -> dict[str, Any]:
    """The runs and the ``fit`` block of a fit or no-fit certificate."""
    if not isinstance(ev, FitEvidence) or ev.outcome is None or ev.run_theta is None:
        raise ValueError(f"{member.label}: no fit outcome to certify")
    o = ev.outcome
    runs = []
    for j, i in enumerate(ev.runs):
        th = ev.run_theta[j]
        keep = t.mask[i] > 0
        runs.append({"label": t.labels[i], "origin": t.origin[i], "theta0": tensor_to_list(t.theta0[i]),
                     "X": tensor_to_list(t.X[i][keep]), "y": tensor_to_list(t.y[i][keep]),
                     "theta": tensor_to_list(th), "loss": loss_at(ctx, t, th, i),
                     "measured_error": float(ev.run_err[j]), "n": int(keep.sum())})
    fam = o.family
    block: dict[str, Any] = {"family": fam.name, "settings": _settings_json(o.settings), "strict": o.strict,
                             "pairs": [list(p) for p in ev.pairs], "pair_sources": list(ev.pair_sources),
                             "var": o.var, "outcome": ev.kind}
    what = eng.runs_text(len(runs), len(ev.pairs))
    strict = f"strictly convex (mu = {o.strict:g}) " if o.strict else ""
    if ev.kind == "no_fit":
        mm = o.core_minimax
        assert mm is not None
        block.update({"box": None if o.box is None else tensor_to_list(o.box), "s": mm.s, "s_err": mm.s_err,
                      "free_claim": o.free_claim, "box_binds": mm.box_binds})
        refutation = (f"no {strict}member of {fam.name} is consistent with {what}: the minimax program "
                      f"(KKT of min R over Z(D) at each theta_inf, R equal on each pair, normalized growth 1"
                      + (", |lambda_k| <= Lambda_k" if o.box is not None else "") + f"): {eng.excess_text(mm)}"
                      + (f"; free parameters {o.free_claim}" if o.free_claim else ""))
    else:
        assert o.lam is not None
        block.update({"lam": tensor_to_list(o.lam), "worst_ratio": o.worst_ratio,
                      "describe": _describe_member(o)})
        refutation = (f"the fitted member of {fam.name} satisfies the KKT conditions of {what} within what the "
                      f"measured solver error can do (worst residual / tolerance {o.worst_ratio:.3g} on the fit)")
    return {"claim": f"some {strict}member of {fam.name} characterizes gradient flow on study {ctx.study.name}",
            "refutation": refutation, "source": "ibtest fit", "a": runs[0], "runs": runs, "fit": block}


def _describe_member(o: eng.FitOutcome) -> str:
    """The fitted member in closed form (the family's ``describe``, else its coefficients)."""
    if o.lam is None:
        return ""
    if o.family.describe is None:
        return " ".join(f"{float(v):+.6g}*phi_{k}" for k, v in enumerate(o.lam.tolist()))
    return str(o.family.describe(o.lam, o.Q, **o.settings))


# ------------------------------------------------------------------------------------------
# the file's fit block, checked
# ------------------------------------------------------------------------------------------
class FitBlock(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    family: StrictStr
    settings: dict[StrictStr, Any] = Field(default_factory=dict)
    strict: Finite | None = None
    pairs: list[tuple[StrictInt, StrictInt]] = Field(default_factory=list)
    box: list[Finite] | None = None
    lam: list[Finite] | None = None
    outcome: StrictStr = ""
    box_binds: StrictBool = False


def _block(cert: dict[str, Any], rp: Replay) -> FitBlock:
    if "fit" not in cert or "runs" not in cert:
        raise UserError(f"{rp.where}: required field {'fit' if 'fit' not in cert else 'runs'!r} is missing")
    try:
        b = FitBlock.model_validate(cert["fit"])
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        raise UserError(f"{rp.where}: field fit.{clean(loc)}: {clean(e['msg'])}") from None
    fn = rp.spec.fn
    fam = fn.family if isinstance(fn, FamilyFunction) else None
    if fam is None or fam.name != b.family:
        raise UserError(f"{rp.where}: field fit.family: {clean(b.family)!r} is not the family of hypothesis "
                        f"{rp.spec.name!r}")
    n = len(cert["runs"])
    for i, j in b.pairs:
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise UserError(f"{rp.where}: field fit.pairs: ({i}, {j}) is not a pair of two of the {n} runs")
    if b.strict is not None and b.strict < 0:
        raise UserError(f"{rp.where}: field fit.strict: expected a number >= 0, got {b.strict}")
    return b


def _settings(b: FitBlock, fam: Any, rp: Replay) -> dict[str, Any]:
    """The family's settings: its registered defaults, then the file's options and free values, each
    of its default's type (a number for a number, a list for a list, at most MAX_SETTING_LIST entries,
    an integer at most MAX_SETTING_INT in size: a degree of 10⁹ would be a denial of service) and
    finite; a free value inside its declared range."""
    out = fam.settings()
    for key, v in b.settings.items():
        if key not in out:
            raise UserError(f"{rp.where}: field fit.settings.{clean(key)}: not an option or free parameter of family "
                            f"{fam.name!r} (known: {', '.join(sorted(out)) or 'none'})")
        out[key] = _setting(key, v, out[key], fam.free.get(key), rp)
    return out


MAX_SETTING_LIST, MAX_SETTING_INT = 256, 64


def _setting(key: str, v: Any, default: Any, free: Any, rp: Replay) -> Any:
    where = f"{rp.where}: field fit.settings.{clean(key)}"
    if isinstance(default, list) != isinstance(v, list):
        raise UserError(f"{where}: expected {'a list' if isinstance(default, list) else 'a single value'}, as the "
                        f"family's default {clean(repr(default))[:40]}")
    vals = v if isinstance(v, list) else [v]
    if len(vals) > MAX_SETTING_LIST:
        raise UserError(f"{where}: {len(vals)} entries, more than {MAX_SETTING_LIST}")
    kinds = {type(x) for x in (default if isinstance(default, list) else [default])} or {float}
    for x in vals:
        if isinstance(x, bool) != (bool in kinds) or not isinstance(x, (bool, int, float)):
            raise UserError(f"{where}: expected {'booleans' if bool in kinds else 'numbers'}, got {clean(repr(x))[:40]}")
        if not math.isfinite(float(x)):
            raise UserError(f"{where}: not finite")
        if isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_SETTING_INT and float not in kinds:
            raise UserError(f"{where}: {x} is beyond the {MAX_SETTING_INT} an integer setting may be")
        if free is not None and not free.low <= float(x) <= free.high:
            raise UserError(f"{where}: {x} is outside the free parameter's range [{free.low:g}, {free.high:g}]")
    return v


# ------------------------------------------------------------------------------------------
# replay
# ------------------------------------------------------------------------------------------
def _runs(cert: dict[str, Any], rp: Replay) -> Data:
    named = {f"run {i}": r for i, r in enumerate(cert["runs"])}
    named["theta0"] = cert["theta0"]
    return side_tensors(named, rp.model, list(named)[:-1], rp.where)


def table(data: Data, theta: Tensor, status: Sequence[int]) -> Triples:
    """The runs as a table of triples (each its own dataset and init)."""
    S = theta.shape[0]
    ar = torch.arange(S)
    return Triples(X=data.X, y=data.y, mask=data.mask, theta0=data.theta0, theta=theta,
                   status=torch.tensor(list(status), dtype=torch.int64), loss=torch.zeros(S, dtype=torch.float64),
                   dataset_id=ar, init_id=ar.clone(), parent=torch.full((S,), -1, dtype=torch.int64),
                   labels=list(data.names), init_labels=list(data.names), origin=["certificate"] * S)


def _pairs(b: FitBlock, rp: Replay, theta: Tensor, fam: Any) -> tuple[Pairs, list[str]]:
    """The file's pairs, re-checked on the re-solved θ: cross-fits, distinctness, validity."""
    from ibtest.pairs.admissible import distinct
    from ibtest.solve.rules import pair_invalid

    problems = []
    for i, j in b.pairs:
        fij, fji = rp.fit(theta[i:i + 1], [j]), rp.fit(theta[j:j + 1], [i])
        if not (bool(fij.ok[0]) and bool(fji.ok[0])):
            problems.append(f"runs {i} and {j} do not cross-fit on their re-solved solutions")
        why = pair_invalid(fam.depends_on, rp.data.theta0[i], rp.data.theta0[j])
        if why:
            problems.append(f"runs {i} and {j}: {why}")
    if not b.pairs:
        return Pairs.empty(), problems
    a = torch.tensor([p[0] for p in b.pairs])
    c = torch.tensor([p[1] for p in b.pairs])
    same = (rp.data.theta0[a] == rp.data.theta0[c]).all(-1)
    dist = distinct(theta[a], theta[c])
    k = len(b.pairs)
    return Pairs(a, c, torch.zeros(k, dtype=torch.int64), ["certificate"], same, torch.zeros(k, dtype=torch.float64),
                 torch.zeros(k, dtype=torch.float64), dist), problems


def _resolved(cert: dict[str, Any], rp: Replay) -> tuple[FitBlock, Any, dict[str, Any], Tensor, list[int], Tensor,
                                                         Pairs, list[str]]:
    b = _block(cert, rp)
    fam = rp.spec.fn.family  # checked by _block
    settings = _settings(b, fam, rp)
    rp.data = _runs(cert, rp)
    theta, status, err, lines = rp.resolve()
    rp.lines += lines
    pairs, problems = _pairs(b, rp, theta, fam)
    zs = rp.model.zero_set(rp.data.X[:1], rp.data.y[:1], rp.data.mask[:1])
    var = eng.kkt_mod.kkt_variable(rp.model, fam, zs)
    z_err = torch.tensor([eng.z_error(rp.model, var, rp.data.theta[i:i + 1], theta[i:i + 1], err[i])
                          for i in range(theta.shape[0])], dtype=torch.float64)
    return b, fam, settings, theta, status, z_err, pairs, problems


def _problem(rp: Replay, fam: Any, settings: dict[str, Any], strict: float | None, theta: Tensor, status: list[int],
             pairs: Pairs, err: Tensor) -> prog_mod.Problem:
    t = table(rp.data, theta, status)
    rtol = max(float(fam.hypotheses()[0].rtol), rp.tol.rtol)
    try:
        return eng.problem(rp.model, fam, settings, strict, t, torch.arange(len(t)), pairs, err, rp.rules.safety, rtol)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{rp.where}: family {fam.name!r} cannot be evaluated on these runs: {clean(exc)}") from None


def replay_no_fit(cert: dict[str, Any], rp: Replay) -> VerifyResult:
    """Confirmed when every run converges and fits at tight settings, every pair cross-fits and is
    valid, and the minimax program over the file's box is infeasible beyond its own error."""
    b, fam, settings, theta, status, err, pairs, problems = _resolved(cert, rp)
    ok = all(s == st.CONVERGED for s in status) and not problems
    rp.lines += [f"  {p}: no evidence" for p in problems]
    if not ok:
        return rp.result(rp.verdict(False))
    pb = _problem(rp, fam, settings, b.strict, theta, status, pairs, err)
    box = _box(b, fam, pb.kkt.K, rp)
    mm = eng.infeasible(pb, err, rp.rules.safety, box, measure=True)
    rp.lines.append(f"  family {fam.name} {_fmt_settings(settings)}{_strict_text(b.strict)}, KKT in {pb.kkt.var}, "
                    f"{pb.kkt.T} runs, {len(pb.pairs)} pairs: minimax excess s* = {mm.s:.6g}, program error "
                    f"{mm.s_err:.3g} (status {mm.status}; no fit when s* > {prog_mod.PROGRAM_SAFETY:g} x error, "
                    "or when the program is infeasible)")
    if mm.box_binds:
        rp.lines.append("  note: the box |lambda_k| <= Lambda_k binds: the claim covers the members inside it")
    return rp.result(rp.verdict(mm.infeasible))


def _box(b: FitBlock, fam: Any, K: int, rp: Replay) -> Tensor | None:
    """The box of the claim: none for a family whose ``magnitude`` bounds |λ| (every member is
    covered), else the file's (K positive numbers: part of the claim it states)."""
    if fam.magnitude is not None:
        return None
    if b.box is None:
        raise UserError(f"{rp.where}: required field 'fit.box' is missing")
    box = torch.tensor(b.box, dtype=torch.float64)
    if box.numel() != K or bool((box <= 0).any()):
        raise UserError(f"{rp.where}: field fit.box: expected {K} positive numbers, got {box.numel()}")
    return box


def replay_fit(cert: dict[str, Any], rp: Replay) -> VerifyResult:
    """Confirmed when every run converges and fits, every pair cross-fits, and the file's member
    satisfies every run's KKT conditions and rates every pair equal within the tolerance."""
    b, fam, settings, theta, status, err, pairs, problems = _resolved(cert, rp)
    if b.lam is None:
        raise UserError(f"{rp.where}: required field 'fit.lam' is missing")
    rp.lines += [f"  {p}: no evidence" for p in problems]
    holds = all(s == st.CONVERGED for s in status) and not problems
    if holds:
        pb = _problem(rp, fam, settings, b.strict, theta, status, pairs, err)
        lam = torch.tensor(b.lam, dtype=torch.float64)
        if lam.numel() != pb.kkt.K:
            raise UserError(f"{rp.where}: field fit.lam: {lam.numel()} coefficients, the family has {pb.kkt.K} here")
        rt, rpair, rel = eng.judge(pb, err, rp.rules.safety, lam)
        worst = float(torch.cat([rt, rpair]).max()) if rt.numel() + rpair.numel() else 0.0
        rp.lines.append(f"  family {fam.name} {_fmt_settings(settings)}, the file's member on {pb.kkt.T} runs and "
                        f"{len(pb.pairs)} pairs: worst KKT residual / tolerance {worst:.3g} (relative residual "
                        f"{float(rel.max()):.3g}); fits when <= 1")
        holds = worst <= 1
    rp.lines.append("  fit CONFIRMED" if holds else "  fit WITHDRAWN")
    return rp.result(holds)


def _fmt_settings(s: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {eng._fmt(v)}" for k, v in s.items()) + "}"


def _strict_text(mu: float | None) -> str:
    return f", strictly convex (mu = {mu:g})" if mu else ""


# ------------------------------------------------------------------------------------------
# show
# ------------------------------------------------------------------------------------------
def _run_lines(cert: dict[str, Any]) -> list[str]:
    out = []
    for i, r in enumerate(cert.get("runs") or []):
        out.append(f"  run {i} ({r.get('label', '')}): theta0 = {r.get('theta0')}, theta_inf = {r['theta']}")
        out += [f"      x = {x}, y = {y}" for x, y in zip(r["X"], r["y"])]
    return out


def describe_no_fit(cert: dict[str, Any]) -> list[str]:
    f = cert.get("fit") or {}
    pairs = f.get("pairs") or []
    return header_lines(cert, "No member of a family fits:") + [
        f"  family: {f.get('family')} {f.get('settings')}" + _strict_text(f.get("strict")),
        f"  {cert.get('refutation', '')}",
        *_run_lines(cert),
        *([f"  pairs (runs): {pairs} ({', '.join(f.get('pair_sources') or [])})"] if pairs else []),
        "  In words: at every theta_inf above, any R of the family that gradient flow minimizes must satisfy the",
        "  KKT conditions of min R over Z(D) (and rate each pair equal); no member satisfies all of them at once.",
        f"  replay: {cert.get('replay', '')}",
    ]


def describe_fit(cert: dict[str, Any]) -> list[str]:
    f = cert.get("fit") or {}
    return header_lines(cert, "A fitted member of a family:") + [
        f"  family: {f.get('family')} {f.get('settings')}" + _strict_text(f.get("strict")),
        f"  proposed R: {f.get('describe', '')}",
        f"  {cert.get('refutation', '')}",
        *_run_lines(cert),
        "  KKT is only necessary for a non-convex R: the falsifier judges the fitted member on held-out triples.",
        f"  replay: {cert.get('replay', '')}",
    ]


# ------------------------------------------------------------------------------------------
# shrink
# ------------------------------------------------------------------------------------------
def shrink_no_fit(cert: dict[str, Any], source: str, digest: str, budget: int, plugins: Sequence[str]) -> Any:
    """Drop runs (then pairs) of a no-fit certificate while the rest stays infeasible (see the
    module docstring); a :class:`ibtest.cert.shrink.ShrinkResult`."""
    from ibtest.cert.replay import replay_context
    from ibtest.cert.shrink import NotRefuted, ShrinkResult
    from ibtest.plugin.manager import load_registry

    where = f"certificate {clean(source)}"
    reg = load_registry(list(plugins))
    rp = replay_context(reg, cert, where)
    b, fam, settings, theta, status, err, pairs, problems = _resolved(cert, rp)
    if problems or any(s != st.CONVERGED for s in status):
        raise NotRefuted("the no-fit does not hold at tight settings: nothing to shrink")
    box = _box(b, fam, _problem(rp, fam, settings, b.strict, theta, status, pairs, err).kkt.K, rp)
    n = theta.shape[0]
    runs, prs = set(range(n)), set(range(len(b.pairs)))
    solves = n

    def holds(rs: set[int], ps: set[int]) -> bool:
        nonlocal solves
        if not rs or solves >= budget:
            return False
        solves += 1
        r = torch.tensor(sorted(rs))
        pos = {int(v): j for j, v in enumerate(r.tolist())}
        sel = [p for p in sorted(ps) if b.pairs[p][0] in pos and b.pairs[p][1] in pos]
        sub = _subpairs(pairs, sel, pos)
        t = table(rp.data, theta, status).take(r)
        try:
            pb = eng.problem(rp.model, fam, settings, b.strict, t, torch.arange(len(t)), sub, err[r], rp.rules.safety,
                             float(fam.hypotheses()[0].rtol))
            return eng.infeasible(pb, err[r], rp.rules.safety, box).infeasible_once
        except ValueError:
            return False

    if not holds(runs, prs):
        raise NotRefuted("the no-fit does not hold at tight settings: nothing to shrink")
    steps = []
    for i in range(n):
        rs = runs - {i}
        ps = {p for p in prs if i not in b.pairs[p]}
        if holds(rs, ps):
            runs, prs = rs, ps
            steps.append(f"drop run {i}")
    for p in sorted(prs):
        if holds(runs, prs - {p}):
            prs = prs - {p}
            steps.append(f"drop pair {p}")
    keep = sorted(runs)
    new = {k: v for k, v in cert.items() if k not in ("replay", "shrunk_from", "shrink") and v is not None}
    pos = {i: j for j, i in enumerate(keep)}
    new_runs = []
    for i in keep:
        r = dict(cert["runs"][i])
        r.update({"theta": tensor_to_list(theta[i]), "measured_error": float(err[i]),
                  "label": str(r.get("label", f"run {i}")) + ("" if str(r.get("label", "")).endswith(" (shrunk)")
                                                              else " (shrunk)")})
        new_runs.append(r)
    new["runs"], new["a"], new["theta0"] = new_runs, new_runs[0], new_runs[0]["theta0"]
    fit = dict(cert["fit"])
    fit["pairs"] = [[pos[b.pairs[p][0]], pos[b.pairs[p][1]]] for p in sorted(prs)]
    srcs = list(cert["fit"].get("pair_sources") or [])
    fit["pair_sources"] = [srcs[p] for p in sorted(prs) if p < len(srcs)]
    new["fit"] = fit
    from ibtest.cert.certificate import versions

    new["versions"] = versions()
    before, after = _sizes(cert["runs"]), _sizes(new_runs)
    new["shrunk_from"] = {"path": source, "sha256": digest}
    new["shrink"] = {"passes": steps, "solves": solves, "budget": budget, "solver_calls": 1,
                     "fixed_point": solves < budget, "before": before, "after": after}
    new["refutation"] = str(cert.get("refutation", "")).split(":")[0] + f" (shrunk to {len(keep)} runs)"
    return ShrinkResult(new, before, after, steps, solves, budget, solves < budget)


def _subpairs(pairs: Pairs, sel: list[int], pos: dict[int, int]) -> Pairs:
    if not sel:
        return Pairs.empty()
    p = pairs.select(torch.tensor(sel))
    p.a = torch.tensor([pos[int(i)] for i in p.a.tolist()])
    p.b = torch.tensor([pos[int(i)] for i in p.b.tolist()])
    return p


def _sizes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    from ibtest.cert.shrink import _digits, clean_num

    vals = [float(v) for r in runs for row in r["X"] for v in row] + [float(v) for r in runs for v in r["y"]]
    vals += [float(v) for r in runs for v in (r.get("theta0") or [])]
    return {"n": max(len(r["y"]) for r in runs), "d": len(runs[0]["X"][0]), "points": sum(len(r["y"]) for r in runs),
            "max_abs": clean_num(max((abs(v) for v in vals), default=0.0)),
            "digits": max((_digits(v) for v in vals), default=0),
            "integer": all(v.is_integer() for v in vals),
            "theta0_zero": all(all(float(v) == 0 for v in (r.get("theta0") or [])) for r in runs)}
