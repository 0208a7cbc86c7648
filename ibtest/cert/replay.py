"""``ibtest verify``: replay a certificate by the registry's rules, never by the file's.

A certificate may come from someone else's hands, edited. Exit 0 must mean that the refutation
holds by the tool's own rules, so from the file only the *data* is taken: the model and solver
names and options, the hypothesis name and its parameters, the claim kind, the datasets, θ0 and θ
of each side (and a witness θ'). Everything that decides the verdict comes from the registry and
the tool:

* **claim kind**: the file's ``kind`` must be a registered claim kind that judges the registered
  hypothesis's ``kind`` (a ``pair`` or ``witness`` for a regularizer, ``invariant``, ``bound``, or a
  plugin's); it replays the file (``ClaimKind.replay``). Anything else is bad input (exit 2).
* **rules** (:class:`ibtest.solve.rules.Rules`): ``atol``, ``rtol`` (the hypothesis's registered
  values) and ``safety`` may only be raised by the file, ``fit_tol`` and every solver ``*tol`` only
  lowered, other numeric solver options are capped at ``BUDGET_FACTOR`` × their default; negative
  or non-finite values are bad input.
* **the judgement**: the claim kind's replay re-solves every run at the solver's tightened
  settings, requires each to converge and fit by the fit rule, and judges the gap with
  :mod:`ibtest.solve.rules` (the engine's margin, each side's measured error being its distance to
  the file's θ plus its distance to Z(D), R's evaluation noise at each side).

It also recomputes the file's own numbers (R, gap, margin, losses) at the file's θ and reports each
one that disagrees: they do not decide anything, but a reader should know the file was edited.

Every problem with the file is a :class:`UserError` (exit 2) with one line; 1 means "withdrawn".
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError

from ibtest.base import status as st
from ibtest.base.errors import UserError
from ibtest.base.guard import plugin_call
from ibtest.base.textsafe import clean
from ibtest.cert.schema import load
from ibtest.judge import evaluation as ev_mod
from ibtest.judge.records import member_label
from ibtest.solve import fit
from ibtest.solve.rules import Judgement, Rules, Side, SolverSettings, Tolerance, capped_solver_options
from ibtest.study.checks import call_solver
from ibtest.study.work import certificate_work_problem


@dataclass
class VerifyResult:
    holds: bool
    lines: list[str]
    judgement: Judgement | None = None  # the judgement of the re-solved runs (None: never reached)


@dataclass
class Data:
    """The runs of a certificate as tensors, padded to one batch: X [S, n, d], θ0 / θ [S, P]."""

    names: list[str]
    X: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    theta0: torch.Tensor
    theta: torch.Tensor

    def rows(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(X, y, mask, θ0) of the runs ``idx``."""
        i = torch.tensor(list(idx))
        return self.X[i], self.y[i], self.mask[i], self.theta0[i]


@dataclass
class Replay:
    """Everything a claim kind's replay needs, from the registry and the file's data only."""

    cert: dict[str, Any]
    where: str
    model: Any
    spec: Any  # the registered Hypothesis
    params: dict[str, Any]
    bound: float | None
    rules: Rules
    tol: Tolerance
    solver: Any  # the registered Solver
    settings: SolverSettings
    data: Data
    lines: list[str] = field(default_factory=list)
    judgement: Judgement | None = None  # the replay's judgement of the re-solved runs, once made
    registry: Any = None  # the registry the replay was built from (a sweep-wide kind replays with it)

    def context(self, runs: Sequence[int]) -> Any:
        """The hypothesis context of runs ``runs``."""
        X, y, mask, th0 = self.data.rows(runs)
        return ev_mod.context(self.model, self.spec, theta0=th0, X=X, y=y, mask=mask)

    def _call(self, fn: Any, theta: torch.Tensor, runs: Sequence[int], *args: Any) -> Any:
        """``fn(model, spec, params, θ, context of runs, *args)``: a hypothesis that raises is bad
        input (exit 2); a non-finite value is :class:`NonFiniteValue` (no evidence)."""
        try:
            return fn(self.model, self.spec, self.params, theta, self.context(runs), *args)
        except ev_mod.NonFiniteValue:
            raise
        except Exception as exc:
            raise UserError(f"{self.where}: hypothesis {self.spec.name!r} raised on this certificate: "
                            f"{type(exc).__name__}: {clean(exc)}") from None

    def sides(self, theta: torch.Tensor, runs: Sequence[int], err: Sequence[float]) -> list[Side]:
        """Sides (R, ‖∇R‖, error, noise) of θ [k, P], each judged in the context of run ``runs[i]``."""
        return self._call(ev_mod.sides, theta, runs, list(err))

    def compare(self, theta: torch.Tensor, runs: Sequence[int], err: Sequence[float]) -> tuple[Side, Side, float]:
        """The two sides of a comparison of R at θ [2, P] (in the contexts of runs ``runs``) and the
        path noise of their difference (:func:`ibtest.judge.evaluation.compare`)."""
        return self._call(ev_mod.compare, theta, runs, list(err))

    def values(self, theta: torch.Tensor, runs: Sequence[int]) -> torch.Tensor:
        """R (or C) [k, m] at θ [k, P] in the context of runs ``runs`` (no gradient)."""
        R, _ = self._call(ev_mod.evaluate, theta, runs, False)
        return R.reshape(theta.shape[0], -1)

    def fit(self, theta: torch.Tensor, runs: Sequence[int]) -> fit.FitCheck:
        """The fit rule of θ [k, P] on the datasets of runs ``runs``."""
        X, y, mask, th0 = self.data.rows(runs)
        return self.rules.check_fit(self.model, theta, X, y, mask, th0)

    def resolve(self) -> tuple[torch.Tensor, list[int], list[float], list[str]]:
        """Re-solve every run at the tightened settings: (θ [S, P], statuses, measured errors
        ‖θ − θ_file‖ + distance to Z(D), one report line per run)."""
        D = self.data
        try:
            res = call_solver(self.solver, self.model, D.X, D.y, D.mask, D.theta0, dict(self.settings.tightened))
            theta = res.theta.detach().to(torch.float64).reshape(D.theta.shape)
            status = [int(s) for s in res.status]
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{self.where}: solver {self.solver.name!r} failed on this certificate's data: "
                            f"{type(exc).__name__}: {clean(exc)}") from None
        fc = self.rules.check_fit(self.model, theta, D.X, D.y, D.mask, D.theta0)
        moved = (theta - D.theta).norm(dim=-1)
        err = (moved + torch.nan_to_num(fc.dist, nan=0.0)).tolist()
        lines = []
        for k, s in enumerate(D.names):
            ok = status[k] == st.CONVERGED and bool(fc.ok[k])
            if not ok:
                status[k] = status[k] if status[k] != st.CONVERGED else st.FAILED
            lines.append(f"  side {s}: re-solved status={st.name(status[k])} loss={float(fc.loss[k]):.3g} "
                         f"(fits at <= {float(fc.threshold[k]):.3g}) |theta - theta_file| = {float(moved[k]):.3g}"
                         + ("" if ok else "  (does not converge and fit by the fit rule: no evidence)"))
        return theta, status, err, lines

    def judged(self, where: str, judge: Callable[[], tuple[Judgement, str]]) -> bool:
        """Run a claim kind's judgement of the re-solved runs (``judge`` returns it and its line):
        True when it refutes. A non-finite R is no evidence; a gap inside R's evaluation noise
        is said so. Ends the replay's lines with CONFIRMED or WITHDRAWN."""
        ok = False
        try:
            j, line = judge()
        except ev_mod.NonFiniteValue as exc:
            self.lines.append(f"  at {where}: {clean(exc)}: no evidence")
        else:
            self.judgement = j
            self.lines.append(line)
            ok = j.refutes
            if j.in_noise:
                self.lines.append("  the gap is within R's evaluation noise: no evidence")
        return self.verdict(ok)

    def verdict(self, ok: bool) -> bool:
        """Close the replay: its last line says whether the refutation holds."""
        self.lines.append("  refutation CONFIRMED" if ok else "  refutation WITHDRAWN")
        return ok

    def result(self, ok: bool) -> VerifyResult:
        return VerifyResult(ok, self.lines, self.judgement)

    def stored(self, checks: Sequence[tuple[str, Any, float, float, float]]) -> None:
        """Append one line naming every stored number (name, stored, recomputed, rel, abs tolerance)
        that the file's own θ does not reproduce."""
        bad = [f"{name} stored {_g(float(_first(stored)))}, recomputed {_g(new)}"
               for name, stored, new, rel, abs_ in checks if _disagree(_first(stored), new, rel, abs_)]
        if bad:
            self.lines.append("  stored values disagree with the ones recomputed at the file's own theta (the file "
                              "was edited, or written by another version): " + "; ".join(bad))


def _first(v: Any) -> Any:
    if isinstance(v, list):
        return v[0] if v else None
    return v


def _disagree(stored: Any, new: float, rel: float, abs_: float) -> bool:
    if stored is None:
        return False
    stored = float(stored)
    if not (math.isfinite(stored) and math.isfinite(new)):
        return not (stored == new or (math.isnan(stored) and math.isnan(new)))
    return not math.isclose(stored, new, rel_tol=rel, abs_tol=abs_)


def _g(x: float) -> str:
    return f"{x:.6g}"


# ------------------------------------------------------------------------------------------
def verify(path: str | Path, extra_plugins: Sequence[str] = ()) -> VerifyResult:
    """Re-solve a certificate's runs at tighter settings and judge its claim by the registry's rules."""
    from ibtest.plugin.manager import load_registry, require_registered

    where = f"certificate {clean(str(path))}"
    cert = load(path)
    reg = load_registry(list(extra_plugins))
    require_registered(reg, [("models", cert["model"]["name"]), ("solvers", cert["solver"]["name"]),
                             ("hypotheses", cert["hypothesis"]["name"])], what=where, named_files=cert["plugins"])
    hreg = reg.items["hypotheses"][cert["hypothesis"]["name"]]
    kind = claim_kind(reg, hreg.spec, cert, where)
    rp = replay_context(reg, cert, where)
    label = member_label(rp.spec.name, rp.params)
    rp.lines += [f"Replaying {clean(str(path))}",
                 f"  claim (from the file): {clean(cert.get('claim', ''))}",
                 f"  judged as: {kind.name} claim on {rp.spec.kind} {clean(label)}, depends on {rp.spec.depends_on}"
                 + (f", bound {rp.bound:g}" if rp.bound is not None else "")
                 + f" (registered by {clean(hreg.plugin)}); atol {rp.tol.atol:.3g}, rtol {rp.tol.rtol:.3g}, "
                   f"safety {rp.rules.safety:g}, fit_tol {rp.rules.fit_tol:.3g}"]
    rp.lines += [f"  note: {n}" for n in rp.rules.notes]
    return kind.replay(cert, rp)


def registered_kind(reg: Any, cert: Mapping[str, Any], where: str = "certificate") -> Any:
    """The registered claim kind (spec) a certificate's ``kind`` names; UserError when none is."""
    reg_kind = reg.items["kinds"].get(str(cert.get("kind")))
    if reg_kind is None:
        raise UserError(f"{where}: field kind: claim kind {clean(repr(cert.get('kind')))} is not registered here "
                        "(install its plugin or pass --plugin FILE)")
    return reg_kind.spec


def claim_kind(reg: Any, hspec: Any, cert: Mapping[str, Any], where: str) -> Any:
    """The registered claim kind that replays this file: its ``kind`` must judge the registered
    hypothesis's kind."""
    registered_kind(reg, cert, where)
    kinds = reg.replayers_for(hspec.kind)
    name = cert.get("kind")
    for k in kinds:
        if k.name == name:
            return k
    allowed = ", ".join(k.name for k in kinds) or "none"
    raise UserError(f"{where}: field kind: {clean(repr(name))} cannot judge hypothesis {hspec.name!r}, a "
                    f"{hspec.kind} (registered kind; its claim kinds: {allowed})")


def replay_context(reg: Any, cert: dict[str, Any], where: str) -> Replay:
    """The :class:`Replay` of a certificate: model, hypothesis and member parameters, rules (floors
    from the registry), solver settings (checked, capped, tightened) and the data as tensors."""
    hspec = reg.get("hypotheses", cert["hypothesis"]["name"])
    sspec = reg.get("solvers", cert["solver"]["name"])
    mname = cert["model"]["name"]
    mspec = reg.get("models", mname)
    params, bound = member_params(hspec, cert["hypothesis"]["params"], where)
    opt = sspec.options.get("fit_tol")
    default_fit = float(opt.default) if opt is not None and _is_num(opt.default) else fit.DEFAULT_FIT_TOL
    rules = Rules.from_certificate(cert, default_fit, where)
    tol, tnotes = rules.tolerance_from_file(cert["hypothesis"], hspec, where)
    notes = list(rules.notes) + tnotes
    mopts = check_options("model", mname, mspec, cert["model"]["options"], where, "model.options")
    try:
        model = plugin_call(mspec.factory, **mopts)
        reason = plugin_call(sspec.applies, model)
    except Exception as exc:
        raise UserError(f"{where}: model {mname!r} rejects its options: {type(exc).__name__}: {clean(exc)}") from None
    if reason:
        raise UserError(f"{where}: solver {sspec.name!r} cannot solve model {mname!r}: {reason}")
    settings = solver_settings(sspec, cert, rules, where, notes)
    names = [s for s in ("a", "b") if s in cert]
    data = side_tensors(cert, model, names, where)
    too_much = certificate_work_problem(sspec, dict(settings.tightened), tightened=2 if cert["solver"].get("tightened") else 1,
                                        B=len(names), n=data.X.shape[1], P=data.theta.shape[1])
    if too_much:  # the work a file may ask for is capped, not each option alone
        raise UserError(f"{where}: {too_much}")
    rules = Rules(safety=rules.safety, fit_tol=rules.fit_tol, dist_tol=rules.dist_tol, notes=tuple(notes))
    return Replay(cert, where, model, hspec, params, bound, rules, tol, sspec, settings, data, registry=reg)


def solver_settings(sspec: Any, cert: Mapping[str, Any], rules: Rules, where: str, notes: list[str]) -> SolverSettings:
    """The certificate's solver options, checked against the registered spec and capped by its
    defaults, and the tightened settings a replay re-solves at (``fit_tol`` no looser than the
    rules')."""
    opts_file = cert["solver"].get("options") or {}
    opts = capped_solver_options(sspec, check_options("solver", sspec.name, sspec, opts_file, where, "solver.options"),
                                 where, "solver.options", [])
    base = cert["solver"].get("tightened") or opts_file
    path = "solver.tightened" if cert["solver"].get("tightened") else "solver.options"
    tight = capped_solver_options(sspec, check_options("solver", sspec.name, sspec, base, where, path), where, path,
                                  notes)
    for o in (opts, tight):
        if "fit_tol" in o:
            o["fit_tol"] = min(float(o["fit_tol"]), rules.fit_tol)
    try:
        tight = plugin_call(sspec.tighten, dict(tight))
    except Exception as exc:
        raise UserError(f"{where}: solver {sspec.name!r} cannot tighten these options: "
                        f"{type(exc).__name__}: {clean(exc)}") from None
    return SolverSettings(opts, tight)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_options(kind: str, name: str, spec: Any, given: Mapping[str, Any], where: str, path: str) -> dict:
    """The plugin's defaults updated with the file's options, each checked against its declared type."""
    opts = {k: o.default for k, o in spec.options.items()}
    for key, value in given.items():
        opt = spec.options.get(key)
        if opt is None:
            allowed = ", ".join(sorted(spec.options)) or "none"
            raise UserError(f"{where}: field {path}.{clean(key)}: unknown option of {kind} {name!r} "
                            f"(options: {allowed})")
        try:
            if opt.type is float and isinstance(value, bool):
                raise ValueError("expected a number")
            v = value if opt.type is Any else TypeAdapter(opt.type).validate_python(value)
        except (ValidationError, ValueError, TypeError) as exc:
            msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise UserError(f"{where}: field {path}.{key}: {msg} (got {clean(repr(value))[:60]})") from None
        except RecursionError:
            raise UserError(f"{where}: field {path}.{key}: nested too deeply") from None
        if isinstance(v, float) and math.isnan(v):
            raise UserError(f"{where}: field {path}.{key}: expected a number, got nan")
        opts[key] = v
    return opts


def member_params(hspec: Any, given: Mapping[str, Any], where: str) -> tuple[dict, float | None]:
    """The member's parameters (registered defaults, then the file's) and, for a bound, the bound."""
    allowed = set(hspec.params) | ({"bound"} if hspec.kind == "bound" else set())
    params = dict(hspec.params)
    for key, v in given.items():
        if key not in allowed:
            raise UserError(f"{where}: field hypothesis.params.{clean(key)}: unknown parameter of hypothesis "
                            f"{hspec.name!r} (parameters: {', '.join(sorted(allowed)) or 'none'})")
        default = hspec.params.get(key, 0.0 if key == "bound" else None)
        if _is_num(default) and (not _is_num(v) or math.isnan(v)):
            raise UserError(f"{where}: field hypothesis.params.{key}: expected a number, got {clean(repr(v))[:40]}")
        params[key] = v
    bound = None
    if hspec.kind == "bound":
        bound = params.pop("bound", hspec.bound)
        if not _is_num(bound) or not math.isfinite(bound):
            raise UserError(f"{where}: hypothesis {hspec.name!r} is a bound but no finite bound is given")
    return params, (None if bound is None else float(bound))


def side_tensors(cert: Mapping[str, Any], model: Any, names: Sequence[str], where: str) -> Data:
    """The runs ``names`` of a certificate as padded tensors (shapes were checked by the schema;
    here against the model's parameter count)."""
    rows = []
    d = len(cert[names[0]]["X"][0])
    for s in names:
        side = cert[s]
        X, y = side["X"], side["y"]
        try:
            P = int(model.n_params(d))
        except Exception as exc:
            raise UserError(f"{where}: field {s}.X: the model rejects inputs of dimension {d}: "
                            f"{type(exc).__name__}: {clean(exc)}") from None
        th0 = side.get("theta0") or cert["theta0"]
        for key, v in (("theta0", th0), ("theta", side["theta"])):
            if len(v) != P:
                raise UserError(f"{where}: field {s}.{key}: {len(v)} entries, the model has {P} parameters for d = {d}")
        rows.append((X, y, th0, side["theta"]))
    n_max = max(len(r[0]) for r in rows)
    S = len(rows)
    X = torch.zeros(S, n_max, d, dtype=torch.float64)
    y = torch.zeros(S, n_max, dtype=torch.float64)
    mask = torch.zeros(S, n_max, dtype=torch.float64)
    for k, (Xs, ys, _, _) in enumerate(rows):  # at most two sides
        X[k, : len(Xs)] = torch.tensor(Xs, dtype=torch.float64)
        y[k, : len(ys)] = torch.tensor(ys, dtype=torch.float64)
        mask[k, : len(ys)] = 1.0
    theta0 = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    theta = torch.tensor([r[3] for r in rows], dtype=torch.float64)
    return Data(list(names), X, y, mask, theta0, theta)


def model_and_hypothesis(cert: dict, plugins: Sequence[str] = (), where: str = "certificate") -> tuple[Any, Any, dict]:
    """(model instance, hypothesis spec, member params) of a certificate, for drawing it: code only
    from installed plugins and the files the user named (``plugins``), never from the file's list;
    a missing plugin or options the model rejects are a :class:`UserError` naming them."""
    from ibtest.plugin.manager import load_registry, require_registered

    reg = load_registry(list(plugins))
    require_registered(reg, [("models", cert["model"]["name"]), ("hypotheses", cert["hypothesis"]["name"])],
                       what=where, named_files=cert.get("plugins") or [])
    mname = cert["model"]["name"]
    mspec = reg.get("models", mname)
    mopts = check_options("model", mname, mspec, cert["model"]["options"] or {}, where, "model.options")
    try:
        model = plugin_call(mspec.factory, **mopts)
    except Exception as exc:
        raise UserError(f"{where}: model {mname!r} rejects its options: {type(exc).__name__}: {clean(exc)}") from None
    return model, reg.get("hypotheses", cert["hypothesis"]["name"]), dict(cert["hypothesis"].get("params") or {})
