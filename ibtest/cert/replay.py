"""``ibtest verify``: replay a certificate by the registry's rules, never by the file's.

A certificate may come from someone else's hands, edited. Exit 0 must mean that the refutation
holds by the tool's own rules, so from the file only the *data* is taken: the model and solver
names and options, the hypothesis name and its parameters, both datasets, θ0 and θ of each side.
Everything that decides the verdict comes from the registry and the tool:

* **claim type**: the registered hypothesis's ``kind``. A regularizer needs sides a and b (a pair);
  an invariant or a bound one side. A file of the other shape is bad input (exit 2).
* **pair validity** (regularizers), by the registered ``depends_on``, as in the engine:
  ``params`` any admissible pair; ``init`` only a pair whose two θ0 are equal; ``data`` no pair
  across datasets (a data-dependent R is refuted only inside one Z(D)). An invalid pair is
  withdrawn (exit 1).
* **tolerance floors**: ``atol``, ``rtol`` (the hypothesis's registered values) and ``safety`` (the
  tool's default) may only be raised by the file: the replay uses max(file, default). ``fit_tol``
  and every solver option named ``*tol`` may only be lowered: min(file, default). Other numeric
  solver options (budgets, step sizes) are capped at ``BUDGET_FACTOR`` × their default, so a file
  cannot make the replay run for days. Negative or non-finite values are bad input.

The replay then re-solves both sides at the solver's tightened settings and confirms only if
every re-solved side converged, fits its own dataset, fits the other side's dataset (a pair; "fits"
is :mod:`ibtest.solve.fit`'s rule, relative to the dataset's loss scale), R (or C) is finite with a
finite gradient, and the gap exceeds the engine's margin (:func:`ibtest.judge.evaluation.margin`)

    margin = floor + safety·Σ_sides ‖∇R(θ_s)‖·‖θ_s − θ_s(file)‖,

the file's θ standing in for the engine's first solution: its distance to the re-solve is the
measured error. Context, R, ∇R, the margin and the pair rule all come from
:mod:`ibtest.judge.evaluation`, as in the engine.

It also recomputes the file's own numbers (R, gap, margin, losses) at the file's θ with the file's
settings and reports each one that disagrees: they do not decide anything, but a reader should
know the file was edited.

Every problem with the file is a :class:`UserError` (exit 2) with one line; 1 means "withdrawn".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from pydantic import TypeAdapter, ValidationError

from ibtest.judge import evaluation as ev_mod
from ibtest.solve import fit
from ibtest.base import status as st
from ibtest.cert.schema import load
from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean

DEFAULT_SAFETY = 10.0  # the study's verdict.safety default (ibtest.study.schema.VerdictSettings)
DEFAULT_FIT_TOL = fit.DEFAULT_FIT_TOL  # the engine's (relative) fit_tol when a solver declares none
BUDGET_FACTOR = 10.0


@dataclass
class VerifyResult:
    holds: bool
    lines: list[str]


@dataclass
class Rules:
    """The tolerances a replay judges by (after the floors), and what was changed from the file."""

    atol: float
    rtol: float
    safety: float
    fit_tol: float
    notes: list[str] = field(default_factory=list)


def _nonneg(value: Any, name: str, where: str) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise UserError(f"{where}: field {name}: expected a finite number >= 0, got {v}")
    return v


def tolerance_rules(cert: dict, hspec: Any, solver_spec: Any, where: str) -> Rules:
    """max(file, default) for atol, rtol, safety; min(file, default) for fit_tol."""
    h = cert["hypothesis"]
    notes: list[str] = []
    out = {}
    for name, file_v, default in (("atol", h.get("atol"), float(hspec.atol)),
                                  ("rtol", h.get("rtol"), float(hspec.rtol)),
                                  ("safety", cert.get("safety"), DEFAULT_SAFETY)):
        v = _nonneg(file_v, name if name == "safety" else f"hypothesis.{name}", where)
        if v is not None and v < default:
            notes.append(f"{name} {v:.3g} in the file is below the tool's floor {default:.3g}: using {default:.3g}")
        out[name] = default if v is None else max(v, default)
    opt = solver_spec.options.get("fit_tol")
    default_fit = float(opt.default) if opt is not None and _is_num(opt.default) else DEFAULT_FIT_TOL
    v = _nonneg(cert.get("fit_tol"), "fit_tol", where)
    if v is not None and v > default_fit:
        notes.append(f"fit_tol {v:.3g} in the file is looser than the tool's {default_fit:.3g}: using {default_fit:.3g}")
    out["fit_tol"] = default_fit if v is None else min(v, default_fit)
    return Rules(notes=notes, **out)


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


def solver_options(spec: Any, given: Mapping[str, Any], where: str, path: str, notes: list[str]) -> dict:
    """Checked solver options with the floors: ``*tol`` at most the default, budgets at most BUDGET_FACTOR×."""
    opts = check_options("solver", spec.name, spec, given, where, path)
    for key, opt in spec.options.items():
        d, v = opt.default, opts[key]
        if not _is_num(d) or not _is_num(v):
            continue
        if key.endswith("tol"):
            if not math.isfinite(v) or v < 0:
                raise UserError(f"{where}: field {path}.{key}: expected a finite number >= 0, got {v}")
            if v > d:
                notes.append(f"solver {key} {v:.3g} in the file is looser than the tool's {d:.3g}: using {d:.3g}")
                opts[key] = d
        elif d > 0 and not v <= BUDGET_FACTOR * d:
            cap = type(d)(BUDGET_FACTOR * d)
            notes.append(f"solver {key} {v:.3g} in the file is beyond {BUDGET_FACTOR:g}x the default: using {cap:.3g}")
            opts[key] = cap
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


# ------------------------------------------------------------------------------------------
# the pieces the engine also has: pair rule, fit test, evaluation of R and its gradient
# ------------------------------------------------------------------------------------------
def pair_invalid(depends_on: str, theta0_a: torch.Tensor, theta0_b: torch.Tensor) -> str | None:
    """Why a pair is not valid evidence against a regularizer of this dependence (None: valid).

    The rule is the engine's (:func:`ibtest.judge.evaluation.eligible`): ``params`` any pair, ``init``
    only a pair whose θ0 are equal, ``data`` none.
    """
    same = torch.tensor([bool(torch.equal(theta0_a, theta0_b))])
    if bool(ev_mod.eligible(depends_on, same)[0]):
        return None
    if depends_on == "init":
        return ("the hypothesis depends on the init, and the two sides start from different theta0: "
                f"it may be refuted by {ev_mod.pair_rule(depends_on)}")
    return f"the hypothesis depends on the data: it may be refuted by {ev_mod.pair_rule(depends_on)}"


def fits(model: Any, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
         theta0: torch.Tensor, fit_tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss [k] of θ [k, P] on datasets (X, y, mask) [k, ...], the loss at or below which it fits
    [k] and whether it fits [k]: the one place verify decides "fits", by :mod:`ibtest.solve.fit`
    (relative to the scale of the dataset and the θ0 it was solved from)."""
    with torch.no_grad():
        loss = model.loss(theta, X, y, mask).detach().to(torch.float64)
    thr = fit.fit_threshold(model, X, y, mask, theta0, fit_tol)
    return loss, thr, fit.fits(model, theta, X, y, mask, theta0, fit_tol)


def evaluate(model: Any, hspec: Any, params: dict, theta: torch.Tensor, theta0: torch.Tensor,
             X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R [k] (C [k, m]) at θ [k, P] and Σ_components ‖∇R‖ [k], through :mod:`ibtest.judge.evaluation`
    (the context the engine gives; NonFiniteValue when R or ∇R is not finite)."""
    c = ev_mod.context(model, hspec, theta0=theta0, X=X, y=y, mask=mask)
    return ev_mod.evaluate(model, hspec, params, theta, c)


# ------------------------------------------------------------------------------------------
@dataclass
class _Data:
    """The sides of a certificate as tensors, padded to one batch: X [S, n, d], θ0 / θ [S, P]."""

    names: list[str]
    X: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    theta0: torch.Tensor
    theta: torch.Tensor


def side_tensors(cert: dict, model: Any, names: list[str], where: str) -> _Data:
    rows = []
    for s in names:
        side = cert[s]
        X, y = side["X"], side["y"]
        d = len(X[0])  # shapes were checked by certschema.check_shapes
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
    return _Data(names, X, y, mask, theta0, theta)


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
def verify(path: str | Path, extra_plugins: list[str] = ()) -> VerifyResult:
    """Re-solve a certificate's runs at tighter settings and judge the claim by the registry's rules."""
    from ibtest.plugin.manager import load_registry, require_registered

    where = f"certificate {clean(str(path))}"
    cert = load(path)
    reg = load_registry(list(extra_plugins))
    require_registered(reg, [("models", cert["model"]["name"]), ("solvers", cert["solver"]["name"]),
                             ("hypotheses", cert["hypothesis"]["name"])], what=where, named_files=cert["plugins"])
    hreg = reg.items["hypotheses"][cert["hypothesis"]["name"]]
    hspec, sspec = hreg.spec, reg.get("solvers", cert["solver"]["name"])
    mname = cert["model"]["name"]
    mspec = reg.get("models", mname)

    # the claim type comes from the registry
    witness = cert.get("kind") == "witness"
    pair = hspec.kind == "regularizer" and not witness
    if witness:
        if hspec.kind != "regularizer":
            raise UserError(f"{where}: a witness refutes a regularizer, but hypothesis {hspec.name!r} is "
                            f"{'an invariant' if hspec.kind == 'invariant' else 'a bound'} (registered kind)")
        if "witness" not in cert:
            raise UserError(f"{where}: required field 'witness' is missing")
        if "b" in cert:
            raise UserError(f"{where}: a witness certificate holds one run and a point of its zero-loss set: "
                            f"the file has a side 'b'")
    elif pair and "b" not in cert:
        raise UserError(f"{where}: hypothesis {hspec.name!r} is a regularizer (registered kind), which needs "
                        f"a pair: side 'b' is missing")
    if not pair and "b" in cert:
        raise UserError(f"{where}: hypothesis {hspec.name!r} is {'an invariant' if hspec.kind == 'invariant' else 'a bound'} "
                        f"(registered kind), judged on one run: the file has a side 'b'")
    names = ["a", "b"] if pair else ["a"]
    params, bound = member_params(hspec, cert["hypothesis"]["params"], where)
    rules = tolerance_rules(cert, hspec, sspec, where)

    mopts = check_options("model", mname, mspec, cert["model"]["options"], where, "model.options")
    try:
        model = mspec.factory(**mopts)
        reason = sspec.applies(model)
    except Exception as exc:
        raise UserError(f"{where}: model {mname!r} rejects its options: {type(exc).__name__}: {clean(exc)}") from None
    if reason:
        raise UserError(f"{where}: solver {sspec.name!r} cannot solve model {mname!r}: {reason}")
    base = cert["solver"].get("tightened") or cert["solver"]["options"]
    opts = solver_options(sspec, base, where, "solver.tightened" if cert["solver"].get("tightened") else "solver.options",
                          rules.notes)
    if "fit_tol" in opts:
        opts["fit_tol"] = min(float(opts["fit_tol"]), rules.fit_tol)
    try:
        opts = sspec.tighten(dict(opts))
    except Exception as exc:
        raise UserError(f"{where}: solver {sspec.name!r} cannot tighten these options: {type(exc).__name__}: {clean(exc)}") from None
    D = side_tensors(cert, model, names, where)

    label = hspec.name + (f"[{', '.join(f'{k}={v}' for k, v in params.items())}]" if params else "")
    lines = [f"Replaying {clean(str(path))}",
             f"  claim (from the file): {clean(cert.get('claim', ''))}",
             f"  judged as: {hspec.kind} {clean(label)}, depends on {hspec.depends_on}"
             + (f", bound {bound:g}" if bound is not None else "")
             + f" (registered by {clean(hreg.plugin)}); atol {rules.atol:.3g}, rtol {rules.rtol:.3g}, "
               f"safety {rules.safety:g}, fit_tol {rules.fit_tol:.3g}"]
    lines += [f"  note: {n}" for n in rules.notes]
    if witness:
        return _replay_witness(cert, model, hspec, params, sspec, opts, D, rules, where, lines)

    def R(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            v, g = evaluate(model, hspec, params, theta, D.theta0, D.X, D.y, D.mask)
        except ev_mod.NonFiniteValue:
            raise
        except Exception as exc:
            raise UserError(f"{where}: hypothesis {hspec.name!r} raised on this certificate: "
                            f"{type(exc).__name__}: {clean(exc)}") from None
        return v.reshape(theta.shape[0], -1), g

    def ref(C1: torch.Tensor) -> torch.Tensor:
        """What C is compared with: C(θ0) for an invariant, the bound for a bound."""
        if bound is not None:
            return torch.full_like(C1, bound)
        C0, _ = R(D.theta0)
        return C0

    def margin_of(Rv: torch.Tensor, C0: torch.Tensor | None, g: torch.Tensor, theta: torch.Tensor,
                  err: torch.Tensor, atol: float, rtol: float, safety: float) -> tuple[float, float]:
        """(gap, margin) as the engine sets them (:func:`ibtest.judge.evaluation.margin`): |R_a − R_b| for a
        pair, the largest excess of C over C(θ0) (|·|) or over the bound otherwise."""
        if pair:
            gap = float((Rv[0, 0] - Rv[1, 0]).abs())
            m = ev_mod.margin(atol, rtol, safety, Rv[:1], Rv[1:], g[:1], g[1:], theta[:1], theta[1:],
                              float(err[0]), float(err[1]))
        else:
            diff = Rv[0] - C0[0]
            gap = float(diff.max() if bound is not None else diff.abs().max())
            m = ev_mod.margin(atol, rtol, safety, Rv[:1], C0[:1], g[:1], None, theta[:1], None, float(err[0]))
        return gap, float(m.flatten()[0])

    # 1. the file's own numbers, recomputed at the file's θ with the file's settings
    lines += _stored_check(cert, D, R, ref, margin_of, model, names, pair, rules)

    # 2. the pair must be valid evidence for this dependence
    if pair:
        why = pair_invalid(hspec.depends_on, D.theta0[0], D.theta0[1])
        if why:
            lines += [f"  pair not valid: {why}", "  refutation WITHDRAWN"]
            return VerifyResult(False, lines)

    # 3. re-solve every side at the tightened settings
    try:
        res = sspec.solve(model, D.X, D.y, D.mask, D.theta0, **opts)
        theta = res.theta.detach().to(torch.float64).reshape(D.theta.shape)
        status = [int(s) for s in res.status]
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{where}: solver {sspec.name!r} failed on this certificate's data: "
                        f"{type(exc).__name__}: {clean(exc)}") from None
    err = (theta - D.theta).norm(dim=-1)
    own, own_thr, own_ok = fits(model, theta, D.X, D.y, D.mask, D.theta0, rules.fit_tol)
    ok = True
    for k, s in enumerate(names):
        conv = status[k] == st.CONVERGED and bool(own_ok[k])
        ok = ok and conv
        lines.append(f"  side {s}: re-solved status={st.name(status[k])} loss={float(own[k]):.3g} "
                     f"(fits at <= {float(own_thr[k]):.3g}) |theta - theta_file| = {float(err[k]):.3g}"
                     + ("" if conv else "  (not converged within fit_tol: no evidence)"))
    if ok and pair:
        sw = torch.tensor([1, 0])
        cross, thr, cross_ok = fits(model, theta, D.X[sw], D.y[sw], D.mask[sw], D.theta0[sw], rules.fit_tol)
        lines.append(f"  cross-fit: L(theta_a; D_b) = {float(cross[0]):.3g} (fits at <= {float(thr[0]):.3g}), "
                     f"L(theta_b; D_a) = {float(cross[1]):.3g} (fits at <= {float(thr[1]):.3g})")
        ok = bool(cross_ok.all())
    if ok:
        try:
            Rv, g = R(theta)
            C0 = None if pair else ref(Rv)
            if not bool(torch.isfinite(err).all()):
                raise ev_mod.NonFiniteValue("the measured solver error is not finite")
            gap, margin = margin_of(Rv, C0, g, theta, err, rules.atol, rules.rtol, rules.safety)
        except ev_mod.NonFiniteValue as exc:
            lines.append(f"  at the re-solved solutions: {clean(exc)}: no evidence")
            ok = False
        else:
            if pair:
                lines.append(f"  R(theta_a) = {float(Rv[0, 0]):.12g}, R(theta_b) = {float(Rv[1, 0]):.12g}, "
                             f"|gap| = {gap:.3g}, margin = {margin:.3g}")
            else:
                what = "B(theta_inf) - bound" if bound is not None else "|C(theta_inf) - C(theta0)|"
                lines.append(f"  {what} = {gap:.3g}, margin = {margin:.3g}")
            ok = gap > margin
    lines.append("  refutation CONFIRMED" if ok else "  refutation WITHDRAWN")
    return VerifyResult(ok, lines)


def _replay_witness(cert: dict, model: Any, hspec: Any, params: dict, sspec: Any, opts: dict, D: _Data,
                    rules: Rules, where: str, lines: list[str]) -> VerifyResult:
    """A witness certificate: θ∞ re-solved from (D, θ0) at tight settings must converge; the file's
    θ' must fit D by :mod:`ibtest.solve.fit`'s rule (the tool's fit_tol or a stricter one); and
    R(θ∞) − R(θ') must exceed the engine's margin, θ∞'s measured error being its distance to the
    file's θ∞ (θ' is data: no solver error). A witness lies inside one Z(D), so it is valid evidence
    for every ``depends_on``."""
    tw = torch.tensor(cert["witness"]["theta"], dtype=torch.float64)[None]
    two = torch.tensor([0, 0])
    X2, y2, m2, t02 = D.X[two], D.y[two], D.mask[two], D.theta0[two]

    def R(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            hctx = ev_mod.context(model, hspec, theta0=t02, X=X2, y=y2, mask=m2)
            v, g = ev_mod.evaluate(model, hspec, params, theta, hctx)
        except ev_mod.NonFiniteValue:
            raise
        except Exception as exc:
            raise UserError(f"{where}: hypothesis {hspec.name!r} raised on this certificate: "
                            f"{type(exc).__name__}: {clean(exc)}") from None
        return v.reshape(-1), g

    # the file's own numbers (informational)
    try:
        Rf, _ = R(torch.cat([D.theta, tw]))
        bad = []
        for name, stored, new in (("R(theta_inf)", cert["a"].get("R"), float(Rf[0])),
                                  ("R(theta')", cert["witness"].get("R"), float(Rf[1])),
                                  ("gap", cert.get("gap"), float(Rf[0] - Rf[1]))):
            if isinstance(stored, list):
                stored = stored[0] if stored else None
            if _disagree(stored, new, 1e-9, ev_mod.ROUNDING * abs(new)):
                bad.append(f"{name} stored {_g(float(stored))}, recomputed {_g(new)}")
        if bad:
            lines.append("  stored values disagree with the ones recomputed at the file's own theta (the file "
                         "was edited, or written by another version): " + "; ".join(bad))
    except ev_mod.NonFiniteValue as exc:
        lines.append(f"  at the file's own theta: {clean(exc)} (the stored numbers cannot be checked)")
    try:
        res = sspec.solve(model, D.X, D.y, D.mask, D.theta0, **opts)
        th = res.theta.detach().to(torch.float64).reshape(D.theta.shape)
        status = int(res.status[0])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{where}: solver {sspec.name!r} failed on this certificate's data: "
                        f"{type(exc).__name__}: {clean(exc)}") from None
    err = float((th - D.theta).norm())
    own, own_thr, own_ok = fits(model, th, D.X, D.y, D.mask, D.theta0, rules.fit_tol)
    ok = status == st.CONVERGED and bool(own_ok[0])
    lines.append(f"  theta_inf re-solved: status={st.name(status)} loss={float(own[0]):.3g} (fits at <= "
                 f"{float(own_thr[0]):.3g}) |theta_inf - theta_inf(file)| = {err:.3g}"
                 + ("" if ok else "  (not converged within fit_tol: no evidence)"))
    wl, wthr, wok = fits(model, tw, D.X, D.y, D.mask, D.theta0, rules.fit_tol)
    lines.append(f"  theta' in Z(D): loss(theta') = {float(wl[0]):.3g} (fits at <= {float(wthr[0]):.3g}): "
                 f"{'yes' if bool(wok[0]) else 'NO'}")
    ok = ok and bool(wok[0])
    if ok:
        try:
            Rv, g = R(torch.cat([th, tw]))
            if not math.isfinite(err):
                raise ev_mod.NonFiniteValue("the measured solver error is not finite")
            gap = float(Rv[0] - Rv[1])
            margin = float(ev_mod.margin(rules.atol, rules.rtol, rules.safety, Rv[:1], Rv[1:], g[:1], g[1:],
                                         th, tw, err, 0.0)[0])
        except ev_mod.NonFiniteValue as exc:
            lines.append(f"  at the re-solved theta_inf: {clean(exc)}: no evidence")
            ok = False
        else:
            lines.append(f"  R(theta_inf) = {float(Rv[0]):.12g}, R(theta') = {float(Rv[1]):.12g}, "
                         f"R(theta_inf) - R(theta') = {gap:.3g}, margin = {margin:.3g}")
            ok = gap > margin
    lines.append("  refutation CONFIRMED" if ok else "  refutation WITHDRAWN")
    return VerifyResult(ok, lines)


def _stored_check(cert, D: _Data, R, ref, margin_of, model, names, pair: bool, rules: Rules) -> list[str]:
    """One line naming every stored R, gap, margin or loss that the file's own θ does not reproduce."""
    h = cert["hypothesis"]
    atol = float(h["atol"]) if h.get("atol") is not None else rules.atol
    rtol = float(h["rtol"]) if h.get("rtol") is not None else rules.rtol
    safety = float(cert["safety"]) if cert.get("safety") is not None else rules.safety
    errs = torch.tensor([float(cert[s].get("measured_error") or 0.0) for s in names], dtype=torch.float64)
    try:
        Rv, g = R(D.theta)
        C0 = None if pair else ref(Rv)
        gap, margin = margin_of(Rv, C0, g, D.theta, errs, atol, rtol, safety)
    except ev_mod.NonFiniteValue as exc:
        return [f"  at the file's own theta and settings: {clean(exc)} (the stored numbers cannot be checked)"]
    rnd = ev_mod.ROUNDING * g * D.theta.norm(dim=-1)  # round-off of R at each side, as in the floor
    tol_R = float(rnd.sum())
    bad = []
    for k, s in enumerate(names):
        stored = cert[s].get("R")
        if isinstance(stored, list):
            stored = stored[0] if stored else None
        if _disagree(stored, float(Rv[k, 0]), 1e-9, float(rnd[k])):
            bad.append(f"R(theta_{s}) stored {_g(float(stored))}, recomputed {_g(float(Rv[k, 0]))}")
    if not pair and cert.get("C_init") is not None and C0 is not None:
        stored = cert["C_init"][0] if isinstance(cert["C_init"], list) else cert["C_init"]
        if stored is not None and _disagree(stored, float(C0[0, 0]), 1e-9, tol_R):
            bad.append(f"C_init stored {_g(float(stored))}, recomputed {_g(float(C0[0, 0]))}")
    if _disagree(cert.get("gap"), gap, 1e-9, tol_R):
        bad.append(f"gap stored {_g(float(cert['gap']))}, recomputed {_g(gap)}")
    if _disagree(cert.get("margin"), margin, 1e-6, 0.0):
        bad.append(f"margin stored {_g(float(cert['margin']))}, recomputed {_g(margin)}")
    own, thr, _ = fits(model, D.theta, D.X, D.y, D.mask, D.theta0, rules.fit_tol)
    for k, s in enumerate(names):
        if _disagree(cert[s].get("loss"), float(own[k]), 1e-6, 1e-3 * float(thr[k])):
            bad.append(f"loss of side {s} stored {_g(float(cert[s]['loss']))}, recomputed {_g(float(own[k]))}")
    if pair and cert.get("cross_loss"):
        sw = torch.tensor([1, 0])
        cross, thr, _ = fits(model, D.theta, D.X[sw], D.y[sw], D.mask[sw], D.theta0[sw], rules.fit_tol)
        for k, key in enumerate(("theta_a_on_D_b", "theta_b_on_D_a")):
            if _disagree(cert["cross_loss"][key], float(cross[k]), 1e-6, 1e-3 * float(thr[k])):
                bad.append(f"cross_loss {key} stored {_g(float(cert['cross_loss'][key]))}, recomputed {_g(float(cross[k]))}")
    if not bad:
        return []
    return ["  stored values disagree with the ones recomputed at the file's own theta (the file was "
            "edited, or written by another version): " + "; ".join(bad)]


def model_and_hypothesis(cert: dict, plugins: list[str] = (), where: str = "certificate") -> tuple[Any, Any, dict]:
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
        model = mspec.factory(**mopts)
    except Exception as exc:
        raise UserError(f"{where}: model {mname!r} rejects its options: {type(exc).__name__}: {clean(exc)}") from None
    return model, reg.get("hypotheses", cert["hypothesis"]["name"]), dict(cert["hypothesis"].get("params") or {})
