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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.base.errors import UserError
from ibtest.base.guard import plugin_call
from ibtest.base.textsafe import clean
from ibtest.cert.replay_rules import (  # noqa: F401  (re-exported: the former contents of this module)
    BUDGET_FACTOR,
    DEFAULT_FIT_TOL,
    DEFAULT_SAFETY,
    Rules,
    VerifyResult,
    _Data,
    _disagree,
    _g,
    _is_num,
    _nonneg,
    check_options,
    evaluate,
    fits,
    member_params,
    pair_invalid,
    side_tensors,
    solver_options,
    tolerance_rules,
)
from ibtest.cert.replay_witness import _replay_witness
from ibtest.cert.schema import load
from ibtest.judge import evaluation as ev_mod
from ibtest.study.checks import call_solver
from ibtest.study.work import certificate_work_problem


# ------------------------------------------------------------------------------------------
def verify(path: str | Path, extra_plugins: Sequence[str] = ()) -> VerifyResult:
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
        model = plugin_call(mspec.factory, **mopts)
        reason = plugin_call(sspec.applies, model)
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
        opts = plugin_call(sspec.tighten, dict(opts))
    except Exception as exc:
        raise UserError(f"{where}: solver {sspec.name!r} cannot tighten these options: "
                        f"{type(exc).__name__}: {clean(exc)}") from None
    D = side_tensors(cert, model, names, where)
    too_much = certificate_work_problem(sspec, opts, tightened=2 if cert["solver"].get("tightened") else 1,
                                        B=len(names), n=D.X.shape[1], P=D.theta.shape[1])
    if too_much:  # the work is capped, not each option alone
        raise UserError(f"{where}: {too_much}")

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
            if C0 is None:
                raise ValueError("an invariant or bound certificate needs the reference value C(theta0) or the bound")
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
        res = call_solver(sspec, model, D.X, D.y, D.mask, D.theta0, opts)
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
