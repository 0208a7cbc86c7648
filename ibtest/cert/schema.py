"""Reading a certificate file someone else wrote: bounded, decoded, and checked field by field.

:func:`load` turns a path into a validated dict or raises :class:`UserError` with one line that
names the file and the field. It never lets another exception out: a file too large, not UTF-8,
not JSON, nested too deeply, with a huge integer, NaN or inf where data must be finite, a
ragged array, a missing field or a field of the wrong type are all "bad input" (exit 2).

What the schema checks is the *shape* of the file. Whether its numbers make a refutation is
decided by :mod:`ibtest.cert.replay` from the registry's rules, never from the file's own.

Every command that reads a certificate (``verify``, ``show``, ``shrink``, plots) reads it through
:func:`load`, and the schema is complete for each kind, so no command meets a missing field later:

* **pair** (``kind: "pair"``, a regularizer refuted by two runs): sides a and b each with X, y,
  θ, loss, R (a number), measured_error; ``gap``, ``margin``, ``cross_loss``;
* **witness** (``kind: "witness"``): side a as above, ``witness`` with θ', loss, fit_threshold,
  R; ``gap``, ``margin``; no side b;
* **invariant**, **bound** (one run): side a with X, y, θ, loss, R (a number, or a list for an
  invariant of several components), measured_error; ``gap``, ``margin``; no side b;
* **shrunk** (written by ``ibtest shrink``: ``shrink`` or ``shrunk_from`` present): a pair or
  witness certificate with both ``shrunk_from`` (path, sha256) and ``shrink`` (the record);
* any other claim kind (``optimum``, ``limit``, a plugin's): the common fields; the kind's own
  replay reads the rest and says what is missing.

Numbers: JSON has no inf/nan, so the writer stores them as the strings ``"inf"``, ``"-inf"``,
``"nan"`` (:func:`ibtest.base.jsonio.encode_float`); the schema reads those strings back as floats in
numeric fields only (a dataset label ``"nan"`` stays a string). Data arrays (X, y, θ0, θ) must be
finite.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean

FORMAT = "ibtest-certificate/2"
MAX_BYTES = 32 * 2**20  # a genuine certificate is a few kB: two small datasets and their solutions
#: a certificate is a counterexample (a few points in a few dimensions); beyond these the replay
#: could run for hours (the exact solver is O(d³) per linear piece), so they are refused
MAX_POINTS, MAX_DIM, MAX_PARAMS = 512, 128, 16384
MAX_RUNS = 64  # a no-fit certificate's triples (a handful; the claim kind's replay re-solves each)
_NONFINITE = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "nan": math.nan,
              "Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _number(v: Any) -> float:
    """A JSON number (not a bool) or one of the writer's spellings of ±inf / nan, as a float."""
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    if isinstance(v, str):
        if v in _NONFINITE:
            return _NONFINITE[v]
        raise ValueError(f"expected a number, got a string {_short(v)}")
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            raise ValueError("number too large for float64") from None
    raise ValueError(f"expected a number, got {type(v).__name__}")


def _finite(v: Any) -> float:
    x = _number(v)
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got {x}")
    return x


def _short(v: Any, n: int = 40) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


Num = Annotated[float, BeforeValidator(_number)]
Finite = Annotated[float, BeforeValidator(_finite)]
Vector = list[Finite]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Side(_Model):
    """One run of a certificate: its dataset, θ0, the solution and what was measured there."""

    X: list[Vector]
    y: Vector
    theta: Vector
    theta0: Vector | None = None
    label: StrictStr = ""
    origin: StrictStr = ""
    loss: Num | None = None
    R: Num | list[Num] | None = None
    measured_error: Num | None = None
    noise: Num | None = None
    n: StrictInt | None = None


class HypothesisRef(_Model):
    name: StrictStr
    params: dict[StrictStr, StrictBool | Num | StrictStr | list[Num]] = Field(default_factory=dict)
    atol: Num | None = None
    rtol: Num | None = None
    # informational only: the registry's spec decides kind, depends_on and on
    kind: StrictStr | None = None
    depends_on: StrictStr | None = None
    on: StrictStr | None = None
    doc: StrictStr | None = None


class PluginRef(_Model):
    name: StrictStr
    options: dict[StrictStr, Any] = Field(default_factory=dict)


class SolverRef(PluginRef):
    tightened: dict[StrictStr, Any] | None = None


class CrossLoss(_Model):
    theta_a_on_D_b: Num
    theta_b_on_D_a: Num


class ShrinkSizes(_Model):
    """Sizes of a case before or after ``ibtest shrink`` (:func:`ibtest.cert.shrink.sizes`)."""

    n: StrictInt
    d: StrictInt
    points: StrictInt
    max_abs: Num
    digits: StrictInt
    integer: StrictBool
    theta0_zero: StrictBool


class ShrinkRecord(_Model):
    passes: list[StrictStr]
    solves: StrictInt
    budget: StrictInt
    solver_calls: StrictInt
    fixed_point: StrictBool
    before: ShrinkSizes
    after: ShrinkSizes


class ShrunkFrom(_Model):
    path: StrictStr
    sha256: StrictStr


class Witness(_Model):
    """A point θ' of Z(D) with a smaller R than θ∞ (a witness certificate's second point)."""

    theta: Vector
    loss: Num | None = None
    fit_threshold: Num | None = None
    R: Num | None = None
    noise: Num | None = None
    predictor: Vector | None = None


class LimitRef(_Model):
    path: StrictStr
    to: Literal["0", "inf"]


class LimitPointRef(_Model):
    s: Finite
    refuted: StrictBool
    g: Num
    certificate: dict[StrictStr, Any] | None = None


class Certificate(_Model):
    format: Literal["ibtest-certificate/2"]
    kind: StrictStr  # the claim kind (pair, witness, invariant, bound, or a plugin's): the registry replays it
    witness: Witness | None = None
    hypothesis: HypothesisRef
    model: PluginRef
    solver: SolverRef
    theta0: Vector
    a: Side
    b: Side | None = None
    fit_tol: Num | None = None
    safety: Num | None = None
    plugins: list[StrictStr] = Field(default_factory=list)
    gap: Num | None = None
    margin: Num | None = None
    noise: Num | None = None
    cross_loss: CrossLoss | None = None
    C_init: Num | list[Num] | None = None
    study: StrictStr = ""
    study_file: StrictStr = ""
    claim: StrictStr = ""
    refutation: StrictStr = ""
    source: StrictStr = ""
    replay: StrictStr = ""
    versions: dict[StrictStr, Any] = Field(default_factory=dict)
    # several runs (the fit and no_fit claim kinds of ibtest fit): their data, and the fit itself,
    # checked field by field by the claim kind's replay (ibtest.propose.cert)
    runs: list[Side] | None = None
    fit: dict[StrictStr, Any] | None = None
    # written by ibtest shrink (informational: verify judges the data like any certificate's)
    shrunk_from: ShrunkFrom | None = None
    shrink: ShrinkRecord | None = None
    # a limit certificate (kind limit): the sweep's path and direction, the judged values (each
    # refuted one with its run's certificate, validated when it is replayed) and the fitted trend
    limit: LimitRef | None = None
    points: list[LimitPointRef] | None = None
    verdict: StrictStr | None = None
    rate: Num | None = None
    r2: Num | None = None
    floor_from: Num | None = None


class RunSide(Side):
    """A side of a pair or witness certificate: what was measured there is part of the claim."""

    loss: Num
    R: Num
    measured_error: Num


class TripleSide(Side):
    """The run of an invariant or bound certificate (C may have several components)."""

    loss: Num
    R: Num | list[Num]
    measured_error: Num


class WitnessPoint(Witness):
    loss: Num
    fit_threshold: Num
    R: Num


class PairCertificate(Certificate):
    kind: Literal["pair"]
    a: RunSide
    b: RunSide
    gap: Num
    margin: Num
    cross_loss: CrossLoss


class WitnessCertificate(Certificate):
    kind: Literal["witness"]
    a: RunSide
    witness: WitnessPoint
    gap: Num
    margin: Num


class TripleCertificate(Certificate):
    kind: Literal["invariant", "bound"]
    a: TripleSide
    gap: Num
    margin: Num


class _Shrunk(BaseModel):
    shrunk_from: ShrunkFrom
    shrink: ShrinkRecord


class ShrunkPairCertificate(PairCertificate, _Shrunk):
    shrunk_from: ShrunkFrom
    shrink: ShrinkRecord


class ShrunkWitnessCertificate(WitnessCertificate, _Shrunk):
    shrunk_from: ShrunkFrom
    shrink: ShrinkRecord


#: the claim kinds whose certificate shape is fixed here (a file ``ibtest shrink`` wrote: ``shrunk-``)
SCHEMAS: dict[str, type[Certificate]] = {
    "pair": PairCertificate, "witness": WitnessCertificate, "invariant": TripleCertificate,
    "bound": TripleCertificate, "shrunk-pair": ShrunkPairCertificate, "shrunk-witness": ShrunkWitnessCertificate,
}
ONE_RUN = ("witness", "invariant", "bound")


def kind_of(data: dict[str, Any]) -> str:
    """The claim kind a certificate dict names (``""`` when it names none), ``shrunk-`` prefixed for
    a file ``ibtest shrink`` wrote."""
    named = data.get("kind")
    kind = named if isinstance(named, str) else ""
    shrunk = data.get("shrink") is not None or data.get("shrunk_from") is not None
    return f"shrunk-{kind}" if shrunk and kind else kind


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith(("function-", "union[", "list[")) or part in
                                          ("str", "float", "int", "bool", "dict", "list")):
            continue  # pydantic's union-member and validator tags
        else:
            out += ("." if out else "") + str(part)
    return clean(out) or "<top level>"


def validate(data: Any, where: str) -> dict[str, Any]:
    """The certificate dict ``data`` checked against the schema; UserError naming the first bad field."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise UserError(f"{where}: field 'format': expected {FORMAT!r}, got {clean(_short(data.get('format')))}")
    kind = kind_of(data)
    if kind in ("shrunk-invariant", "shrunk-bound"):
        raise UserError(f"{where}: fields shrink / shrunk_from: only pair and witness certificates are shrunk, "
                        "this one has one run and no witness")
    if kind.removeprefix("shrunk-") in ONE_RUN and data.get("b") is not None:
        what = "the point 'witness'" if kind.endswith("witness") else "its own run"
        raise UserError(f"{where}: field b: a{'n' if kind[0] in 'aeiou' else ''} {clean(kind)} certificate holds "
                        f"one run (side a) and {what}, not a side b")
    try:
        out = SCHEMAS.get(kind, Certificate).model_validate(data).model_dump()
    except pydantic.ValidationError as exc:
        e = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        if e["type"] == "missing":
            raise UserError(f"{where}: required field {_where(e['loc'])!r} is missing{more}") from None
        msg = e["msg"].removeprefix("Value error, ")
        raise UserError(f"{where}: field {_where(e['loc'])}: {msg}{more}") from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply") from None
    for s in ("a", "b", "witness", "runs", "fit", "limit", "points", "verdict", "rate", "r2", "floor_from"):
        if out.get(s) is None:
            out.pop(s, None)
    check_shapes(out, where)
    return out


def check_shapes(cert: dict[str, Any], where: str) -> None:
    """Array shapes a file can get wrong without any registry: X [n, d] rectangular with n, d ≥ 1,
    y [n], one d for both sides, θ and each θ0 of one length P."""
    d = None
    P = len(cert["theta0"])
    if P > MAX_PARAMS:
        raise UserError(f"{where}: field theta0: {P} parameters, more than the {MAX_PARAMS} a certificate may have")
    runs = cert.get("runs") or []
    if len(runs) > MAX_RUNS:
        raise UserError(f"{where}: field runs: {len(runs)} runs, more than the {MAX_RUNS} a certificate may have")
    named = [("a", cert.get("a")), ("b", cert.get("b"))] + [(f"runs[{i}]", r) for i, r in enumerate(runs)]
    for s, side in named:
        if side is None:
            continue
        X, y = side["X"], side["y"]
        if not X:
            raise UserError(f"{where}: field {s}.X: empty dataset")
        widths = sorted({len(r) for r in X})
        if len(widths) != 1:
            raise UserError(f"{where}: field {s}.X: ragged rows (lengths {widths[:5]})")
        if widths[0] == 0:
            raise UserError(f"{where}: field {s}.X: rows of length 0")
        if d is not None and widths[0] != d:
            raise UserError(f"{where}: field {s}.X: {widths[0]} columns, side a has {d}")
        d = widths[0]
        if len(X) > MAX_POINTS or d > MAX_DIM:
            raise UserError(f"{where}: field {s}.X: {len(X)} points of dimension {d}; a certificate may hold at "
                            f"most {MAX_POINTS} points of dimension at most {MAX_DIM}")
        if len(y) != len(X):
            raise UserError(f"{where}: field {s}.y: {len(y)} labels for {len(X)} points")
        for key in ("theta0", "theta"):
            v = side.get(key)
            if v is not None and len(v) != P:
                raise UserError(f"{where}: field {s}.{key}: {len(v)} entries, theta0 has {P}")
    w = cert.get("witness")
    if w is not None and len(w["theta"]) != P:
        raise UserError(f"{where}: field witness.theta: {len(w['theta'])} entries, theta0 has {P}")


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a certificate file; every failure is a one-line :class:`UserError`."""
    p = Path(path)
    where = f"certificate {clean(str(p))}"
    try:
        if not p.is_file():
            raise UserError(f"{where}: no such file" if not p.exists() else f"{where}: not a regular file")
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"{where}: {size} bytes, more than the {MAX_BYTES} a certificate may have")
        raw = p.read_bytes()
    except OSError as exc:
        raise UserError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise UserError(f"{where}: not valid JSON: {str(exc).splitlines()[0][:100]}") from None
    return validate(data, where)
