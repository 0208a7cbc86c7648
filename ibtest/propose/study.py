"""``ibtest fit STUDY``: propose the regularizer a family can give, or prove none can.

For each run of the study (each sweep value) and each family (the study's ``fit: {family: ...}``
or ``--family``):

1. every triple and admissible pair of the study (:mod:`ibtest.propose.collect`), a seeded share
   ``holdout`` of the instances held out;
2. the family fitted to the rest (:func:`ibtest.propose.engine.fit_table`: KKT and pair conditions,
   one convex program, errors measured by tight re-solves);
3. a fit: the member in closed form, judged by the falsifier on the held-out triples
   (:mod:`ibtest.propose.heldout`), a ``fit`` certificate; no fit: a ``no_fit`` certificate of the
   few triples no member explains (both replayed by ``ibtest verify``);
4. the expectations of the study's ``fit:`` block: the outcome, the held-out verdict, whether the fit
   only ties, and the fitted parameters against known values (``truth``, within ``rtol``).

Exit code (the CLI): 0 every expectation held, 1 one did not, 2 bad input.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ibtest.base.errors import UserError
from ibtest.base.jsonio import to_jsonable
from ibtest.base.textsafe import clean
from ibtest.cert import certificate
from ibtest.judge.records import ErrorMeter, MemberResult
from ibtest.plugin.specs import Family
from ibtest.propose import engine as eng
from ibtest.propose.collect import collect
from ibtest.propose.heldout import HeldOut, judge_heldout, member_use
from ibtest.propose.kinds import evidence, no_fit_evidence
from ibtest.solve.engine import build_context, plan_instances
from ibtest.solve.rules import Verdict
from ibtest.study.sweep import variants
from ibtest.study.typed import FitSettings, HypothesisUse, Study

KKT_NOTE = ("KKT is only necessary for a non-convex R: a fit is a proposal, and the falsifier on held-out "
            "triples decides")


@dataclass
class Check:
    """One expectation of the study's ``fit:`` block and whether it held."""

    what: str
    expected: Any
    got: Any
    held: bool


@dataclass
class FamilyFit:
    """One family fitted to one run of a study."""

    family: Family
    outcome: eng.FitOutcome
    heldout: HeldOut | None = None
    certificate: str | None = None
    closed_form: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return all(c.held for c in self.checks)


@dataclass
class FitReport:
    """What ``ibtest fit`` found on one run of a study (one sweep value)."""

    study: Study
    sweep_value: Any
    fits: list[FamilyFit]
    triples: int
    converged: int
    fit_triples: int
    heldout_triples: int
    pairs: int
    seconds_produce: float
    seconds_fit: float
    seconds_heldout: float
    errors: list[str] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def expectations_held(self) -> bool:
        return all(f.held for f in self.fits)

    def lines(self) -> list[str]:
        sv = f" ({self.study.sweep.path} = {self.sweep_value})" if self.study.sweep is not None else ""
        out = [f"Fit: study {self.study.name}{sv}: {self.triples} triples ({self.converged} converged), "
               f"{self.pairs} admissible pairs; fitted on {self.fit_triples} converged triples, "
               f"{self.heldout_triples} held out",
               f"  time: producing the triples {self.seconds_produce:.2f} s, fitting {self.seconds_fit:.2f} s, "
               f"judging on held-out triples {self.seconds_heldout:.2f} s"]
        for f in self.fits:
            out += family_lines(f)
        out += [f"error: {clean(e)}" for e in self.errors]
        return out

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({
            "study": self.study.name, "sweep_value": self.sweep_value, "triples": self.triples,
            "converged": self.converged, "fit_triples": self.fit_triples, "heldout_triples": self.heldout_triples,
            "pairs": self.pairs, "seconds": {"produce": self.seconds_produce, "fit": self.seconds_fit,
                                             "heldout": self.seconds_heldout},
            "expectations_held": self.expectations_held, "errors": self.errors,
            "families": [family_json(f) for f in self.fits]})


def family_json(f: FamilyFit) -> dict[str, Any]:
    o = f.outcome
    h = f.heldout
    return {"family": f.family.name, "status": o.status, "reason": o.reason, "strict": o.strict,
            "settings": o.settings, "kkt_variable": o.var, "lam": None if o.lam is None else o.lam.tolist(),
            "closed_form": f.closed_form, "parameters": f.parameters, "ties": o.ties, "pairs": o.n_pairs,
            "null_dim": None if o.ls is None else o.ls.null_dim, "worst_ratio": o.worst_ratio,
            "worst_residual": o.worst_residual, "core": o.core, "free_claim": o.free_claim, "notes": o.notes,
            "certificate": f.certificate,
            "heldout": None if h is None else {"verdict": None if h.member is None else str(h.member.verdict),
                                               "grade": None if h.member is None or h.member.grade is None
                                               else str(h.member.grade), "triples": h.triples, "pairs": h.pairs,
                                               "reason": h.reason if h.member is None else h.member.reason,
                                               "certificate": h.certificate},
            "checks": [{"what": c.what, "expected": c.expected, "got": c.got, "held": c.held} for c in f.checks]}


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def family_lines(f: FamilyFit) -> list[str]:
    o = f.outcome
    strict = f", strictly convex (mu = {o.strict:g})" if o.strict else ""
    head = f"  family {f.family.name}{strict}" + (f", KKT in {o.var}" if o.var else "")
    out = [head]
    if o.status == eng.FITS:
        out.append(f"    proposed R: {f.closed_form}")
        if o.search is not None:
            out.append(f"    free parameters by search: {eng._fmt(o.search.values)} "
                       f"(residual {o.search.residual:.3g}, {o.search.evaluations} evaluations)")
        shown = "the least-norm one" if o.member == "least squares" else "the minimax program's"
        uniq = ("unique (no other member fits as well)" if o.ls is not None and o.ls.null_dim == 0 else
                f"not unique: the least-squares conditions leave a {o.ls.null_dim}-dimensional set of members "
                f"(shown: {shown})" if o.ls is not None else "")
        out.append(f"    fit: {o.reason}; {uniq}")
        if o.ties:
            out.append(f"    it only ties: on {o.n_pairs} distinct admissible pairs both solutions lie in both zero-loss "
                       "sets and R rates them equal, so theta_inf is not the unique minimizer: R does not say which "
                       "one gradient flow picks (no strictly convex R can do this on a convex Z(D))")
        out.append(f"    note: {KKT_NOTE}")
        h = f.heldout
        if h is not None:
            out.append("    " + heldout_line(h))
    elif o.status == eng.NO_FIT:
        out.append(f"    no fit: {o.reason}" + (f"; free parameters {o.free_claim}" if o.free_claim else ""))
    else:
        out.append(f"    inconclusive: {o.reason}")
    out += [f"    note: {n}" for n in o.notes]
    for c in f.checks:
        out.append(f"    expect {c.what}: {c.expected} -> {c.got} {_mark(c.held)}")
    if f.certificate:
        out.append(f"    certificate: {f.certificate} (replay: ibtest verify)")
    return out


def heldout_line(h: HeldOut) -> str:
    m = h.member
    if m is None:
        return f"held out: {h.reason}"
    if m.verdict == Verdict.FALSIFIED:
        return (f"proposed R: refuted on held-out triples ({m.reason})"
                + (f"; certificate {h.certificate}" if h.certificate else ""))
    if m.verdict == Verdict.SURVIVES:
        return f"proposed R: survives on {h.triples} held-out triples ({m.grade}): {m.reason}"
    return f"proposed R: {m.verdict} on {h.triples} held-out triples: {m.reason}"


# ------------------------------------------------------------------------------------------
def fit_study(study: str | Path | dict | Study, *, family: str | Sequence[str] | None = None,
              plugins: Sequence[str] = (), out_dir: str | Path | None = None, strict: float | None = None,
              write: bool = True) -> FitReport | list[FitReport]:
    """Fit families to a study (a path, a dict, or a validated :class:`Study`); a list of reports
    for a sweep. ``family`` and ``strict`` override the study's ``fit:`` block; ``out_dir``: where the
    certificates and ``fit.json`` go (default ``runs/<study>-fit-<time>``; ``write=False``: nowhere)."""
    st_, reg = _load(study, plugins)
    settings = st_.fit or FitSettings()
    names = _families(family if family is not None else settings.family, reg)
    mu = strict if strict is not None else settings.strict
    base = Path(out_dir) if out_dir is not None else None
    if base is None and write:
        from ibtest.api import default_run_dir

        base = default_run_dir(st_.name + "-fit")
    runs = variants(st_)
    out = []
    for k, (v, s) in enumerate(runs):
        d = None if base is None else (base / f"sweep-{k:02d}" if st_.sweep is not None else base)
        out.append(fit_run(s, reg, names, mu, settings, v, d))
    return out if st_.sweep is not None else out[0]


def _load(study: str | Path | dict | Study, plugins: Sequence[str]) -> tuple[Study, Any]:
    from ibtest.plugin.manager import load_registry
    from ibtest.study.schema import load_study, validate

    if isinstance(study, Study):
        return study, load_registry(list(study.plugin_files) + list(plugins))
    if isinstance(study, dict):
        reg = load_registry(list(plugins))
        return validate(study, reg, src="<dict>", plugin_files=list(plugins)), reg
    return load_study(study, plugins)


def _families(names: str | Sequence[str] | None, reg: Any) -> list[Family]:
    if names is None:
        raise UserError("no family to fit: give --family NAME (or fit: {family: NAME} in the study); families: "
                        + ", ".join(reg.names("families")))
    out = []
    for n in [names] if isinstance(names, str) else list(names):
        if n not in reg.items["families"]:
            raise UserError(f"unknown family {n!r} (known: {', '.join(reg.names('families')) or 'none'})")
        out.append(reg.get("families", n))
    return out


def fit_run(study: Study, reg: Any, families: list[Family], strict: float | None, fs: FitSettings, sweep_value: Any,
            out_dir: Path | None) -> FitReport:
    """One run of a study: collect, split, fit every family, judge, certify, check."""
    from ibtest.base import status as st

    ctx = build_context(study)
    plan = plan_instances(ctx)
    col = collect(ctx, plan)
    fit_idx, held_idx, _, held_pairs = col.split(fs.holdout, study.seed, plan.n)
    t = col.t
    conv = t.status == st.CONVERGED
    report = FitReport(study, sweep_value, [], len(t), int(conv.sum()), int(conv[fit_idx].sum()),
                       int(conv[held_idx].sum()), len(col.pairs), col.seconds, 0.0, 0.0, list(ctx.errors))
    report.run_dir = out_dir
    meter = ErrorMeter(ctx, t)
    for fam in families:
        t0 = time.perf_counter()
        settings = {**fam.settings(), **{k: v for k, v in fs.options.items() if k in fam.options}}
        unknown = [k for k in fs.options if not any(k in f.options for f in families)]
        if unknown:
            raise UserError(f"study {study.source}: fit.options: {', '.join(map(repr, unknown))} is not an option of "
                            f"{', '.join(f.name for f in families)}")
        o = eng.fit_table(ctx, t, col.pairs, fam, settings, strict, fit_idx, meter)
        ff = FamilyFit(fam, o)
        if o.lam is not None:
            opts = {k: v for k, v in o.settings.items()}
            ff.closed_form = (str(fam.describe(o.lam, o.Q, **opts)) if fam.describe is not None
                              else " ".join(f"{float(v):+.6g}*phi_{k}" for k, v in enumerate(o.lam.tolist())))
            ff.parameters = dict(fam.parameters(o.lam, o.Q, **opts)) if fam.parameters is not None else {}
        report.seconds_fit += time.perf_counter() - t0
        if out_dir is not None:
            ff.certificate = _certify(ctx, reg, t, col.pairs, ff, meter, out_dir)
        t1 = time.perf_counter()
        if o.status == eng.FITS and o.lam is not None:
            use = member_use(reg, fam, o.lam.tolist(), o.settings, o.Q)
            ff.heldout = judge_heldout(ctx, reg, use, t.take(held_idx), held_pairs, out_dir)
        report.seconds_heldout += time.perf_counter() - t1
        ff.checks = checks(ff, fs, sweep_value, study)
        report.fits.append(ff)
    report.errors = list(dict.fromkeys(report.errors + ctx.errors))
    if out_dir is not None:
        _write(out_dir / "fit.json", report)
    return report


def _certify(ctx: Any, reg: Any, t: Any, pairs: Any, ff: FamilyFit, meter: ErrorMeter, out_dir: Path) -> str | None:
    """Write the fit or no-fit certificate of ``ff`` (None when the outcome has none)."""
    o = ff.outcome
    fam = ff.family
    if o.status == eng.NO_FIT:
        ev = no_fit_evidence(o, pairs)
    elif o.status == eng.FITS and o.lam is not None:
        ev = _fit_evidence(o, t, pairs, meter)
    else:
        ev = None
    if ev is None:
        return None
    spec = reg.get("hypotheses", fam.claim_name)
    opts = {k: v for k, v in o.settings.items() if k in fam.options}
    use = HypothesisUse(fam.claim_name, spec, [opts], None, float(spec.atol), float(spec.rtol), ("fit",))
    member = MemberResult(fam.claim_name, opts, spec.kind, spec.depends_on, Verdict.INCONCLUSIVE, None, spec=spec,
                          use=use, evidence=ev)
    cctx = copy.copy(ctx)
    cctx.study = copy.copy(ctx.study)
    cctx.study.hypotheses = [use]
    cctx.study.kinds = {"family": reg.kinds_for("family")}
    cert = certificate.build(cctx, t, member)
    path = out_dir / "certificates" / f"{certificate.slug(fam.name)}.{ev.kind}.json"
    certificate.write(cert, path)
    return str(path)


def _fit_evidence(o: eng.FitOutcome, t: Any, pairs: Any, meter: ErrorMeter) -> Any:
    """The fit's evidence: the MAX_FIT_RUNS fitted triples closest to their tolerance (tight
    re-solves where measured) and the fit's pairs between them."""
    from ibtest.propose.cert import MAX_FIT_RUNS

    order = sorted(range(len(o.rows)), key=lambda j: -o.ratios[j] if j < len(o.ratios) else 0.0)
    runs = [o.rows[j] for j in order[:MAX_FIT_RUNS]]
    inside = set(runs)
    pair_idx = [k for k in range(len(pairs)) if (int(pairs.a[k]), int(pairs.b[k])) in set(o.pair_rows)
                and int(pairs.a[k]) in inside and int(pairs.b[k]) in inside]
    thetas, errs = [], []
    for i in runs:
        if i in meter.err and meter.usable(i):
            thetas.append(meter.tight_theta[i])
            errs.append(eng.z_error(meter.ctx.model, o.var, t.theta[i:i + 1], meter.tight_theta[i][None], meter.err[i]))
        else:
            thetas.append(t.theta[i])
            errs.append(0.0)
    return evidence("fit", o, pairs, runs, torch.stack(thetas), errs, pair_idx, o.worst_ratio, 1.0)


def _write(path: Path, report: FitReport) -> None:
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_json(), indent=1))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------------------
def checks(ff: FamilyFit, fs: FitSettings, sweep_value: Any, study: Study) -> list[Check]:
    """The expectations of the study's ``fit:`` block, judged on ``ff``."""
    o = ff.outcome
    out = []
    want = fs.expect.get(ff.family.name) if isinstance(fs.expect, dict) else fs.expect
    if want is not None:
        out.append(Check("outcome", want, o.status, o.status == want))
    if fs.verdict is not None and (want in (None, eng.FITS)):
        got = None if ff.heldout is None or ff.heldout.member is None else str(ff.heldout.member.verdict)
        out.append(Check("held-out verdict", fs.verdict, got, got == fs.verdict))
    if fs.ties is not None and o.status == eng.FITS:
        out.append(Check("ties", fs.ties, o.ties, o.ties == fs.ties))
    if o.status == eng.FITS:
        for name, truth in fs.truth.items():
            out.append(_truth(name, truth, ff.parameters.get(name), fs.rtol, sweep_value))
    return out


def _truth(name: str, truth: Any, got: Any, rtol: float, sweep_value: Any) -> Check:
    if got is None:
        return Check(f"{name} (rtol {rtol:g})", truth, "not a parameter of this family", False)
    g = torch.as_tensor(got, dtype=torch.float64)
    if truth == "identity":
        want = torch.eye(g.shape[0], dtype=torch.float64) if g.dim() == 2 else None
    elif truth == "sweep":
        want = torch.full_like(g, float(sweep_value)) if sweep_value is not None else None
    else:
        try:
            want = torch.as_tensor(truth, dtype=torch.float64).expand_as(g)
        except (TypeError, ValueError, RuntimeError):
            want = None
    if want is None:
        return Check(f"{name} (rtol {rtol:g})", truth, "cannot compare", False)
    rel = float((g - want).norm() / want.norm().clamp_min(1e-300))
    if g.dim() <= 1:
        shown = eng._fmt(g.tolist() if g.dim() == 1 else float(g))
    else:
        shown = f"matrix, max |entry - truth| {float((g - want).abs().max()):.2g}"
    ok = math.isfinite(rel) and rel <= rtol
    return Check(f"{name} (rtol {rtol:g})", truth if truth != "sweep" else float(sweep_value),
                 f"{shown} (relative error {rel:.2g})", ok)
