r"""What ``ibtest verify`` takes from the tool and what from the file (:mod:`ibtest.cert.replay`).

From the registry and the tool: tolerance floors (:func:`tolerance_rules`: atol, rtol, safety are
max(file, default); fit_tol and every ``*tol`` solver option min(file, default); other numeric
solver options capped at ``BUDGET_FACTOR`` × default), option and parameter checks against the
registered specs, the pair rule by ``depends_on`` (:func:`pair_invalid`), fit (:func:`fits`,
:mod:`ibtest.solve.fit`'s relative rule) and R with its gradient (:func:`evaluate`, through
:mod:`ibtest.judge.evaluation`). From the file: only data, read into tensors by
:func:`side_tensors` (X, y, θ0, θ of each side, checked for shape and finiteness).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError

from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean
from ibtest.judge import evaluation as ev_mod
from ibtest.solve import fit

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


