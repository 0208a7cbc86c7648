"""``ibtest shrink CERT``: reduce a pair (or witness) certificate to its core, the way the paper states its own.

A pair certificate refutes a regularizer member R with two runs (D_a, θ0_a, θ_a), (D_b, θ0_b, θ_b)
whose solutions fit each other's dataset and whose R differ by more than the margin. Shrinking
searches, by deterministic passes, for a *simpler* pair that refutes the *same member*:

* drop a data point (a point the two datasets share is dropped from both; the construction's
  added point is simplified like the rest), project onto the span of the data or drop a
  coordinate;
* θ0 → 0 (unless the model's σ'(0) convention makes 0 a stationary point); when the construction's
  added point was built for the flow from the old θ0, it is rebuilt for the flow from 0 by the
  registered ``blocking_point`` construction; else θ0 with one or two significant digits;
* rescale and round X, y toward small integers (then halves, then tenths, point by point);
  zero or decrement integer entries, divide by a common factor.

Every candidate of a pass is judged in ONE batched solve (both sides of every candidate, at the
certificate's solver settings and at the tightened ones). A candidate is kept only if, exactly as
the engine decides a witness (:mod:`ibtest.judge.evaluation`, :mod:`ibtest.solve.fit`):

    both sides converged at both settings, each solution fits its own dataset and the other side's
    (relative fit_tol), the pair is valid for the member's ``depends_on``, and

        |R(θ_a) − R(θ_b)| > SLACK · margin,   margin = floor + safety·(‖∇R_a‖·err_a + ‖∇R_b‖·err_b)

with err the distance between the default and the tight solve (SLACK = 2 leaves room for the
replay's own re-solve). Candidates are tried in a fixed order and the first that holds is kept,
so the result depends only on the input file. The loop stops at a fixed point (a round of all
passes keeps nothing) or when the budget of solves is spent.

A witness certificate (one run (D, θ0, θ∞) and θ' ∈ Z(D)) is shrunk by the same passes (no
rebuild); a candidate is kept when θ∞ re-solved at both settings converges and
:func:`ibtest.judge.witness.search` on the candidate's Z(D) finds θ' that fits D with
R(θ∞) − R(θ') > SLACK · margin.

Sizes are measured, not claimed: n (points of the larger dataset), d, the largest |coordinate| of
X, y, θ0 and the significant digits needed to write them, before and after.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import torch

from ibtest.cert import certificate as certmod
from ibtest.judge import evaluation as ev
from ibtest.solve import fit
from ibtest.base import status as st
from ibtest.base.errors import UserError
from ibtest.base.jsonio import to_jsonable

Tensor = torch.Tensor

#: the gap must exceed SLACK × margin for a candidate to be kept
SLACK = 2.0
#: instance solves a shrink may spend unless told otherwise
DEFAULT_BUDGET = 6000
#: the tool's default safety factor (ibtest.study.schema.VerdictSettings.safety)
DEFAULT_SAFETY = 10.0


class NotRefuted(Exception):
    """The certificate's refutation does not hold at tight settings (``ibtest shrink`` exits 1)."""


# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A pair as one set of points: X [m, d], y [m], membership ``sides`` [2, m] (bool) and θ0 [2, P].

    Side s's dataset is the rows of X, y with ``sides[s]`` true, in order.
    """

    X: Tensor
    y: Tensor
    sides: Tensor
    theta0: Tensor

    @property
    def m(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    def side(self, s: int) -> tuple[Tensor, Tensor]:
        keep = self.sides[s]
        return self.X[keep], self.y[keep]

    def key(self) -> bytes:
        """Identity of the case (to skip candidates equal to the current state)."""
        return b"|".join(t.contiguous().numpy().tobytes() for t in (self.X, self.y, self.sides.to(torch.uint8),
                                                                    self.theta0)) + str(self.X.shape).encode()


def case_from_cert(cert: dict[str, Any]) -> Case:
    """Union of the two datasets: a's rows in order, then b's rows not equal to an unmatched row of a."""
    Xa, ya = cert["a"]["X"], cert["a"]["y"]
    if "b" not in cert:  # a witness certificate: one run
        th0 = cert["a"].get("theta0") or cert["theta0"]
        return Case(torch.tensor(Xa, dtype=torch.float64), torch.tensor(ya, dtype=torch.float64),
                    torch.ones(1, len(ya), dtype=torch.bool), torch.tensor([th0], dtype=torch.float64))
    Xb, yb = cert["b"]["X"], cert["b"]["y"]
    rows = [(list(x), float(v)) for x, v in zip(Xa, ya)]
    ina, inb = [True] * len(rows), [False] * len(rows)
    for x, v in zip(Xb, yb):
        hit = next((i for i, (xr, vr) in enumerate(rows) if ina[i] and not inb[i] and xr == list(x) and vr == float(v)), None)
        if hit is None:
            rows.append((list(x), float(v)))
            ina.append(False)
            inb.append(True)
        else:
            inb[hit] = True
    X = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    y = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    th0 = [cert[s].get("theta0", cert["theta0"]) for s in ("a", "b")]
    return Case(X, y, torch.tensor([ina, inb]), torch.tensor(th0, dtype=torch.float64))


# ------------------------------------------------------------------------------------------
@dataclass
class Judge:
    """Everything a re-judgement needs, from the registry and the certificate's data only."""

    model: Any
    solver: Any
    spec: Any
    params: dict[str, Any]
    opts: dict[str, Any]
    tight: dict[str, Any]
    atol: float
    rtol: float
    safety: float
    fit_tol: float
    budget: int
    construction: Callable[..., Any] | None = None  # the registered blocking_point build, for pass_rebuild
    witness: bool = False  # a witness certificate: one run, θ' found by ibtest.judge.witness.search on Z(D)
    used: int = 0
    calls: int = 0

    def n_params(self, d: int) -> int:
        return int(self.model.n_params(d))


@dataclass
class Outcome:
    """A judged candidate: whether it refutes, and the numbers a certificate records."""

    ok: bool
    theta: Tensor | None = None  # [2, P] default solve
    theta_tight: Tensor | None = None
    R: Tensor | None = None  # [2] at the default solve
    err: Tensor | None = None  # [2]
    loss: Tensor | None = None  # [2] own loss at the default solve
    cross: Tensor | None = None  # [2] L(θ_a; D_b), L(θ_b; D_a)
    gap: float = 0.0
    margin: float = 0.0


def make_judge(cert: dict[str, Any], budget: int, plugins: list[str] = ()) -> Judge:
    from ibtest.plugin.manager import SINGULAR, load_registry

    reg = load_registry(list(plugins))
    for kind, key in (("models", cert["model"]["name"]), ("solvers", cert["solver"]["name"]),
                      ("hypotheses", cert["hypothesis"]["name"])):
        if key not in reg.items[kind]:
            raise UserError(f"{SINGULAR[kind]} {key!r} is not registered here (install its plugin or pass --plugin FILE)")
    spec = reg.get("hypotheses", cert["hypothesis"]["name"])
    witness = cert.get("kind") == "witness"
    if spec.kind != "regularizer" or ("b" not in cert and not witness):
        raise UserError(f"shrinking supports pair certificates of regularizers; {spec.name!r} is a {spec.kind}"
                        + ("" if "b" in cert else " certificate with one side"))
    mspec = reg.get("models", cert["model"]["name"])
    try:
        model = mspec.factory(**cert["model"]["options"])
    except Exception as exc:
        raise UserError(f"model {mspec.name!r} rejects the certificate's options: {exc}") from None
    solver = reg.get("solvers", cert["solver"]["name"])
    opts = {k: o.default for k, o in solver.options.items()}
    opts.update(cert["solver"].get("options") or {})
    tight = dict(cert["solver"].get("tightened") or solver.tighten(dict(opts)))
    params = dict(spec.params)
    params.update(cert["hypothesis"].get("params") or {})
    h = cert["hypothesis"]
    fdef = solver.options["fit_tol"].default if "fit_tol" in solver.options else fit.DEFAULT_FIT_TOL
    cons = reg.items["constructions"].get("blocking_point")
    return Judge(model, solver, spec, params, opts, tight, construction=None if cons is None else cons.spec.build,
                 witness=witness,
                 atol=max(float(h.get("atol") or 0.0), float(spec.atol)),
                 rtol=max(float(h.get("rtol") or 0.0), float(spec.rtol)),
                 safety=max(float(cert.get("safety") or 0.0), DEFAULT_SAFETY),
                 fit_tol=min(float(cert.get("fit_tol", fdef)), float(fdef)), budget=int(budget))


def judge(J: Judge, cands: list[Case]) -> list[Outcome]:
    """Re-judge every candidate; one solver call per setting and input dimension (batched)."""
    out: list[Outcome | None] = [None] * len(cands)
    for d in sorted({c.d for c in cands}):
        idx = [k for k, c in enumerate(cands) if c.d == d]
        one = _judge_witness if J.witness else _judge_same_d
        for k, o in zip(idx, one(J, [cands[k] for k in idx])):
            out[k] = o
    return out  # type: ignore[return-value]


def _judge_same_d(J: Judge, cands: list[Case]) -> list[Outcome]:
    K = len(cands)
    n = max(int(c.sides.sum(-1).max()) for c in cands)
    d, P = cands[0].d, J.n_params(cands[0].d)
    X = torch.zeros(2 * K, n, d, dtype=torch.float64)
    y = torch.zeros(2 * K, n, dtype=torch.float64)
    mask = torch.zeros(2 * K, n, dtype=torch.float64)
    th0 = torch.zeros(2 * K, P, dtype=torch.float64)
    for k, c in enumerate(cands):
        for s in (0, 1):
            Xs, ys = c.side(s)
            X[2 * k + s, : len(ys)], y[2 * k + s, : len(ys)], mask[2 * k + s, : len(ys)] = Xs, ys, 1.0
            th0[2 * k + s] = c.theta0[s]
    J.used += 4 * K
    J.calls += 2
    try:
        r1 = J.solver.solve(J.model, X, y, mask, th0, **J.opts)
        r2 = J.solver.solve(J.model, X, y, mask, th0, **J.tight)
    except Exception:  # a candidate the solver cannot handle is no evidence
        return [Outcome(False) for _ in cands]
    th, tt = r1.theta.detach().to(torch.float64), r2.theta.detach().to(torch.float64)
    conv = (r1.status == st.CONVERGED) & (r2.status == st.CONVERGED) & torch.isfinite(th).all(-1) & torch.isfinite(tt).all(-1)
    own = fit.fits(J.model, th, X, y, mask, th0, J.fit_tol) & fit.fits(J.model, tt, X, y, mask, th0, J.fit_tol)
    sw = torch.arange(2 * K).view(K, 2).flip(-1).reshape(-1)  # a <-> b
    cross = (fit.fits(J.model, th, X[sw], y[sw], mask[sw], th0[sw], J.fit_tol)
             & fit.fits(J.model, tt, X[sw], y[sw], mask[sw], th0[sw], J.fit_tol))
    with torch.no_grad():
        own_loss = J.model.loss(th, X, y, mask).to(torch.float64)
        cross_loss = J.model.loss(th, X[sw], y[sw], mask[sw]).to(torch.float64)
    same = torch.tensor([torch.equal(c.theta0[0], c.theta0[1]) for c in cands], dtype=torch.bool)
    elig = ev.eligible(J.spec.depends_on, same)
    ok = (conv & own & cross).view(K, 2).all(-1) & elig
    err = (th - tt).norm(dim=-1)
    outs = [Outcome(False) for _ in cands]
    rows = ok.nonzero().flatten().tolist()
    for k in rows:  # R per candidate: a plugin's NaN on one row must not sink the others
        sl = slice(2 * k, 2 * k + 2)
        try:
            hctx = ev.context(J.model, J.spec, theta0=th0[sl], X=X[sl], y=y[sl], mask=mask[sl])
            Rt, gt = ev.evaluate(J.model, J.spec, J.params, tt[sl], hctx)
            Rd, _ = ev.evaluate(J.model, J.spec, J.params, th[sl], hctx, grad=False)
            m = ev.margin(J.atol, J.rtol, J.safety, Rt[:1], Rt[1:], gt[:1], gt[1:], tt[sl][:1], tt[sl][1:],
                          err[sl][:1], err[sl][1:])
        except Exception:
            continue
        gap = float((Rt[0] - Rt[1]).abs())
        margin = float(m[0])
        if gap > SLACK * margin and math.isfinite(gap):
            outs[k] = Outcome(True, th[sl].clone(), tt[sl].clone(), Rd.reshape(-1).clone(), err[sl].clone(),
                              own_loss[sl].clone(), cross_loss[sl].clone(), gap, margin)
    return outs


def _judge_witness(J: Judge, cands: list[Case]) -> list[Outcome]:
    """One run per candidate: θ∞ solved at both settings must converge and fit D; the witness search
    (:func:`ibtest.judge.witness.search`, from the tight θ∞) must find θ' that fits D with
    R(θ∞) − R(θ') > SLACK · margin (θ' is data: only θ∞'s error enters the margin)."""
    from ibtest.judge.witness import search

    K = len(cands)
    n = max(c.m for c in cands)
    d = cands[0].d
    X = torch.zeros(K, n, d, dtype=torch.float64)
    y = torch.zeros(K, n, dtype=torch.float64)
    mask = torch.zeros(K, n, dtype=torch.float64)
    for k, c in enumerate(cands):
        X[k, : c.m], y[k, : c.m], mask[k, : c.m] = c.X, c.y, 1.0
    th0 = torch.stack([c.theta0[0] for c in cands])
    J.used += 2 * K
    J.calls += 2
    outs = [Outcome(False) for _ in cands]
    try:
        r1 = J.solver.solve(J.model, X, y, mask, th0, **J.opts)
        r2 = J.solver.solve(J.model, X, y, mask, th0, **J.tight)
    except Exception:
        return outs
    th, tt = r1.theta.detach().to(torch.float64), r2.theta.detach().to(torch.float64)
    ok = ((r1.status == st.CONVERGED) & (r2.status == st.CONVERGED) & torch.isfinite(th).all(-1) & torch.isfinite(tt).all(-1)
          & fit.fits(J.model, th, X, y, mask, th0, J.fit_tol) & fit.fits(J.model, tt, X, y, mask, th0, J.fit_tol))
    rows = ok.nonzero().flatten()
    if rows.numel() == 0:
        return outs
    try:
        sr = search(J.model, J.spec, J.params, X[rows], y[rows], mask[rows], th0[rows], tt[rows], J.fit_tol,
                    atol=J.atol, rtol=J.rtol)
    except Exception:
        return outs
    err = (th - tt).norm(dim=-1)
    for j, k in enumerate(rows.tolist()):
        tw = sr.theta[j : j + 1].detach().to(torch.float64)
        sl = slice(k, k + 1)
        try:
            if not bool(fit.fits(J.model, tw, X[sl], y[sl], mask[sl], th0[sl], J.fit_tol)[0]):
                continue
            two = torch.tensor([k, k])
            hctx = ev.context(J.model, J.spec, theta0=th0[two], X=X[two], y=y[two], mask=mask[two])
            R, g = ev.evaluate(J.model, J.spec, J.params, torch.cat([tt[sl], tw]), hctx)
            Rd, _ = ev.evaluate(J.model, J.spec, J.params, torch.cat([th[sl], tw]), hctx, grad=False)
            m = ev.margin(J.atol, J.rtol, J.safety, R[:1], R[1:], g[:1], g[1:], tt[sl], tw, err[sl], 0.0)
        except Exception:
            continue
        gap, margin = float(R[0] - R[1]), float(m[0])
        if math.isfinite(gap) and gap > SLACK * margin:
            with torch.no_grad():
                losses = J.model.loss(torch.cat([th[sl], tw]), X[two], y[two], mask[two]).to(torch.float64)
            outs[k] = Outcome(True, torch.cat([th[sl], tw]), tt[sl].clone(), Rd.reshape(-1).clone(),
                              torch.stack([err[k], torch.zeros((), dtype=torch.float64)]), losses, losses, gap, margin)
    return outs


# ------------------------------------------------------------------------------------------
# candidates: (description, case), in the order they are tried
# ------------------------------------------------------------------------------------------
Cand = tuple[str, Case]


def _valid(c: Case) -> bool:
    """Each side keeps a point and the sides still differ (in data or θ0)."""
    if c.d < 1 or not bool(c.sides.any(-1).all()):
        return False
    if c.sides.shape[0] == 1:
        return True
    same_data = torch.equal(c.sides[0], c.sides[1])
    return not (same_data and torch.equal(c.theta0[0], c.theta0[1]))


def pass_drop_points(c: Case, J: Judge) -> list[Cand]:
    out = []
    for i in range(c.m):
        keep = torch.ones(c.m, dtype=torch.bool)
        keep[i] = False
        out.append((f"drop point {i + 1}", Case(c.X[keep], c.y[keep], c.sides[:, keep], c.theta0)))
    return out


def _theta0_without(c: Case, J: Judge, cols: Tensor | None, basis: Tensor | None = None) -> Tensor | None:
    """θ0 for fewer input dimensions: the same coordinates (or their projection) when θ = w (P = d);
    zeros when θ0 = 0; None when the model's θ cannot follow."""
    d2 = int(cols.sum()) if cols is not None else int(basis.shape[0])
    if J.n_params(c.d) == c.d and J.n_params(d2) == d2:
        return c.theta0[:, cols] if cols is not None else c.theta0 @ basis.T
    if bool((c.theta0 == 0).all()):
        return torch.zeros(c.theta0.shape[0], J.n_params(d2), dtype=torch.float64)
    return None


def pass_dimensions(c: Case, J: Judge) -> list[Cand]:
    out = []
    if c.d > 1:
        _, S, Vh = torch.linalg.svd(c.X, full_matrices=False)
        r = int((S > 1e-10 * S[0]).sum()) if S.numel() and float(S[0]) > 0 else 0
        if 0 < r < c.d:
            B = Vh[:r]
            th0 = _theta0_without(c, J, None, B)
            if th0 is not None:
                out.append((f"project onto the {r}-dimensional span of the data", Case(c.X @ B.T, c.y, c.sides, th0)))
        for j in range(c.d):
            cols = torch.ones(c.d, dtype=torch.bool)
            cols[j] = False
            th0 = _theta0_without(c, J, cols)
            if th0 is not None:
                out.append((f"drop coordinate {j + 1}", Case(c.X[:, cols], c.y, c.sides, th0)))
    return out


def _stationary_at_zero(model: Any) -> bool:
    pw = getattr(model, "piecewise", None)
    return pw is not None and pw.neg == 0.0 and pw.at_zero == 0.0


def _sig(v: Tensor, digits: int) -> Tensor:
    """v rounded to ``digits`` significant digits of its largest entry (a short rational vector)."""
    top = float(v.abs().max())
    if top == 0:
        return v.clone()
    e = math.floor(math.log10(top)) - digits + 1
    return torch.round(v * 10.0**-e) / 10.0**-e + 0.0 if e < 0 else torch.round(v / 10.0**e) * 10.0**e + 0.0


def pass_theta0(c: Case, J: Judge) -> list[Cand]:
    if bool((c.theta0 == 0).all()):
        return []
    out = []
    if not _stationary_at_zero(J.model):
        out.append(("theta0 = 0", replace(c, theta0=torch.zeros_like(c.theta0))))
    for k in (1, 2):
        th = torch.stack([_sig(t, k) for t in c.theta0])
        out.append((f"theta0 to {k} significant digit{'s' * (k > 1)}", replace(c, theta0=th)))
    return out


def pass_rebuild(c: Case, J: Judge) -> list[Cand]:
    """θ0 = 0 where plain θ0 → 0 failed: the construction's added point was built for the flow from the
    old θ0, so rebuild it for the flow from 0. For every subset of D_a's points (D_a ⊂ D_b, the
    construction's shape), solve D_a from 0 (one batched call) and let the registered
    ``blocking_point`` construction add its point to each converged solution."""
    if J.construction is None or J.witness or bool((c.theta0 == 0).all()) or _stationary_at_zero(J.model):
        return []
    a, b = c.sides[0], c.sides[1]
    if not bool((b | ~a).all()) or torch.equal(a, b):
        return []
    base = a.nonzero().flatten().tolist()
    if len(base) > 6:
        return []
    subsets = [S for r in range(len(base), 0, -1) for S in itertools.combinations(base, r)]
    k, n, P = len(subsets), len(base), J.n_params(c.d)
    X = torch.zeros(k, n, c.d, dtype=torch.float64)
    y = torch.zeros(k, n, dtype=torch.float64)
    mask = torch.zeros(k, n, dtype=torch.float64)
    for r, S in enumerate(subsets):
        X[r, : len(S)], y[r, : len(S)], mask[r, : len(S)] = c.X[list(S)], c.y[list(S)], 1.0
    th0 = torch.zeros(k, P, dtype=torch.float64)
    if J.used + k > J.budget:
        return []
    J.used += k
    J.calls += 1
    try:
        res = J.solver.solve(J.model, X, y, mask, th0, **J.opts)
        ok = (res.status == st.CONVERGED).nonzero().flatten()
        if ok.numel() == 0:
            return []
        from ibtest.plugin.specs import TripleBatch

        tb = TripleBatch(X[ok], y[ok], mask[ok], th0[ok], res.theta[ok].to(torch.float64), [str(i) for i in ok.tolist()])
        parts = J.construction(J.model, tb, torch.Generator().manual_seed(0))
    except Exception:
        return []
    if parts is None:
        return []
    out = []
    for r in range(parts.X.shape[0]):
        keep = parts.mask[r] > 0
        Xr, yr = parts.X[r][keep], parts.y[r][keep]
        na = int(mask[int(ok[int(parts.source[r])])].sum())
        sides = torch.zeros(2, len(yr), dtype=torch.bool)
        sides[0, :na], sides[1] = True, True
        out.append((f"theta0 = 0 with {na} of D_a's points and a rebuilt blocking point",
                    Case(Xr.clone(), yr.clone(), sides, torch.zeros(2, P, dtype=torch.float64))))
    return out


def _is_grid(v: Tensor, q: float) -> bool:
    return bool((_rnd(v, q) == v).all())


def _rnd(v: Tensor, q: float) -> Tensor:
    inv = round(1 / q)  # q = 1/inv: dividing by the integer inv gives the shortest decimal (0.3, not 0.30000000000000004)
    return torch.round(v * inv) / inv + 0.0  # + 0.0: no negative zeros in the file


def pass_scale_round(c: Case, J: Judge) -> list[Cand]:
    """X → round(X·K/max|X|), y → round(y·L/max|y|) for small K, L (θ0 scaled along: the flow of a
    1-homogeneous neuron follows exactly); smallest integers first."""
    if _is_grid(c.X, 1) and _is_grid(c.y, 1):
        return []
    mx, my = float(c.X.abs().max()), float(c.y.abs().max())
    if mx == 0 or my == 0:
        return []
    out = []
    for top in range(1, 11):
        for K, L in sorted({(top, l) for l in range(1, top + 1)} | {(k, top) for k in range(1, top + 1)}):
            X = _rnd(c.X * (K / mx), 1)
            y = _rnd(c.y * (L / my), 1)
            th0 = c.theta0 * ((L / my) / (K / mx))
            out.append((f"scale X to max {K}, y to max {L}, round to integers", Case(X, y, c.sides, th0)))
    return out


def pass_rescale(c: Case, J: Judge) -> list[Cand]:
    """Rescale so the largest coordinate of X (of y) is 10, without rounding."""
    mx, my = float(c.X.abs().max()), float(c.y.abs().max())
    out = []
    if mx > 0 and not (_is_grid(c.X, 1) and mx <= 10):
        out.append(("rescale X to max 10", Case(c.X * (10 / mx), c.y, c.sides, c.theta0 * (mx / 10))))
    if my > 0 and not (_is_grid(c.y, 1) and my <= 10):
        out.append(("rescale y to max 10", Case(c.X, c.y * (10 / my), c.sides, c.theta0 * (10 / my))))
    return out


def pass_round_points(c: Case, J: Judge) -> list[Cand]:
    out = []
    for q, word in ((1.0, "integers"), (0.5, "halves"), (0.1, "tenths")):
        for i in range(c.m):
            if not (_is_grid(c.X[i], q) and _is_grid(c.y[i : i + 1], q)):
                X, y = c.X.clone(), c.y.clone()
                X[i], y[i] = _rnd(X[i], q), _rnd(y[i : i + 1], q)
                out.append((f"round point {i + 1} to {word}", Case(X, y, c.sides, c.theta0)))
        if not _is_grid(c.theta0, q) and not _is_grid(c.theta0, 1):
            out.append((f"round theta0 to {word}", replace(c, theta0=_rnd(c.theta0, q))))
    return out


def pass_entries(c: Case, J: Judge) -> list[Cand]:
    """On integer data: divide by a common factor, halve, zero an entry, move an entry toward 0."""
    out = []
    for name, v in (("X", c.X), ("y", c.y)):
        if not _is_grid(v, 1) or not bool((v != 0).any()):
            continue
        g = 0
        for e in v.abs().flatten().tolist():
            g = math.gcd(g, int(e))
        scale = (lambda t, f: Case(t, c.y, c.sides, c.theta0 * f)) if name == "X" else \
                (lambda t, f: Case(c.X, t, c.sides, c.theta0 / f))
        if g > 1:
            out.append((f"divide {name} by {g}", scale(v / g, g)))
        if float(v.abs().max()) > 1:
            out.append((f"halve {name} and round", scale(_rnd(v / 2, 1), 2.0)))
    if _is_grid(c.X, 0.5) and not _is_grid(c.X, 1):
        out.append(("double X", Case(c.X * 2, c.y, c.sides, c.theta0 / 2)))
    for i in range(c.m):  # a zero-label point keeps its zero-loss set at any positive scale
        if c.y[i] == 0 and not _is_grid(c.X[i], 1) and float(c.X[i].abs().max()) > 0:
            for K in range(1, 11):
                X = c.X.clone()
                X[i] = _rnd(X[i] * (K / float(X[i].abs().max())), 1)
                out.append((f"scale x{i + 1} to max {K} and round", Case(X, c.y, c.sides, c.theta0)))
    for i in range(c.m):
        g = 0
        for e in c.X[i].abs().tolist():
            g = math.gcd(g, int(e))
        if g > 1 and c.y[i] == 0 and _is_grid(c.X[i], 1):  # a zero-label point: same zero-loss set at any positive scale
            X = c.X.clone()
            X[i] = X[i] / g
            out.append((f"divide x{i + 1} by {g}", Case(X, c.y, c.sides, c.theta0)))
    for i in range(c.m):
        for j in range(c.d):
            if c.X[i, j] != 0:
                X = c.X.clone()
                X[i, j] = 0.0
                out.append((f"zero x{i + 1}[{j + 1}]", Case(X, c.y, c.sides, c.theta0)))
    for i in range(c.m):
        for j in range(c.d):
            if abs(float(c.X[i, j])) > 1 and float(c.X[i, j]).is_integer():
                X = c.X.clone()
                X[i, j] -= torch.sign(X[i, j])
                out.append((f"move x{i + 1}[{j + 1}] toward 0", Case(X, c.y, c.sides, c.theta0)))
    if _is_grid(c.y, 1):
        for i in range(c.m):
            if abs(float(c.y[i])) > 1:
                y = c.y.clone()
                y[i] -= torch.sign(y[i])
                out.append((f"move y{i + 1} toward 0", Case(c.X, y, c.sides, c.theta0)))
    return out


PASSES: list[tuple[str, Callable[[Case, Judge], list[Cand]]]] = [
    ("theta0", pass_theta0),  # first: the paper's form starts at 0, which a smaller case may no longer allow
    ("rebuild", pass_rebuild),
    ("drop_point", pass_drop_points),
    ("dimension", pass_dimensions),
    ("scale_round", pass_scale_round),
    ("rescale", pass_rescale),
    ("round_points", pass_round_points),
    ("entries", pass_entries),
]


# ------------------------------------------------------------------------------------------
def sizes(c: Case) -> dict[str, Any]:
    """n (points of the larger dataset), d, the largest |coordinate| of X, y, θ0, and digits: the most
    significant decimal digits any of them needs (shortest round-trip form)."""
    vals = torch.cat([c.X.flatten(), c.y, c.theta0.flatten()]).tolist()
    return {"n": int(c.sides.sum(-1).max()), "d": c.d, "points": c.m,
            "max_abs": _clean_num(max((abs(v) for v in vals), default=0.0)),
            "digits": max((_digits(v) for v in vals), default=0),
            "integer": all(float(v).is_integer() for v in vals),
            "theta0_zero": bool((c.theta0 == 0).all())}


def _clean_num(v: float) -> float | int:
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else v


def _digits(v: float) -> int:
    if v == 0:
        return 1
    mant = repr(abs(float(v))).split("e")[0].replace(".", "").lstrip("0").rstrip("0")
    if float(v).is_integer():
        mant = str(int(abs(v))).rstrip("0") or "0"
    return max(1, len(mant))


@dataclass
class ShrinkResult:
    cert: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    steps: list[str] = field(default_factory=list)
    solves: int = 0
    budget: int = 0
    fixed_point: bool = False


def shrink_cert(cert: dict[str, Any], source: str, digest: str, budget: int = DEFAULT_BUDGET,
                plugins: list[str] = ()) -> ShrinkResult:
    """Shrink a loaded pair certificate; raises :class:`NotRefuted` if it does not hold to begin with."""
    J = make_judge(cert, budget, plugins)
    cur = case_from_cert(cert)
    if cur.theta0.shape[1] != J.n_params(cur.d):
        raise UserError(f"theta0 has {cur.theta0.shape[1]} entries, the model has {J.n_params(cur.d)} parameters")
    (res,) = judge(J, [cur])
    if not res.ok:
        raise NotRefuted("the refutation does not hold at tight settings: nothing to shrink")
    before = sizes(cur)
    steps: list[str] = []
    fixed = False
    seen = {cur.key()}
    while J.used < J.budget:
        changed = False
        for _name, gen in PASSES:
            while J.used < J.budget:
                cands = [(desc, c) for desc, c in gen(cur, J) if _valid(c) and c.key() not in seen]
                room = (J.budget - J.used) // 4
                if not cands or room <= 0:
                    break
                cands = cands[:room]
                outs = judge(J, [c for _, c in cands])
                for (_, c) in cands:
                    seen.add(c.key())
                hit = next((k for k, o in enumerate(outs) if o.ok), None)
                if hit is None:
                    break
                desc, cur = cands[hit]
                res = outs[hit]
                steps.append(desc)
                changed = True
        if not changed:
            fixed = J.used < J.budget
            break
    after = sizes(cur)
    out = build_cert(cert, cur, res, J, source, digest, before, after, steps, fixed)
    return ShrinkResult(out, before, after, steps, J.used, J.budget, fixed)


def build_cert(cert: dict[str, Any], c: Case, o: Outcome, J: Judge, source: str, digest: str,
               before: dict, after: dict, steps: list[str], fixed: bool) -> dict[str, Any]:
    """An ordinary pair certificate for case ``c`` (judged as ``o``), plus ``shrunk_from`` and ``shrink``."""
    new = {k: v for k, v in cert.items() if k not in ("replay", "shrunk_from", "shrink") and v is not None}
    if J.witness:
        _witness_fields(new, cert, c, o, J)
    else:
        _pair_fields(new, cert, c, o)
    new["versions"] = certmod.versions()
    new["shrunk_from"] = {"path": source, "sha256": digest}
    new["shrink"] = {"passes": steps, "solves": J.used, "budget": J.budget, "solver_calls": J.calls,
                     "fixed_point": fixed, "before": before, "after": after}
    return new


def _label(cert: dict, name: str) -> str:
    label = str(cert[name].get("label", name))
    return label if label.endswith(" (shrunk)") else f"{label} (shrunk)"


def _witness_fields(new: dict, cert: dict, c: Case, o: Outcome, J: Judge) -> None:
    X, y = c.side(0)
    side = dict(cert["a"])
    side.update({"label": _label(cert, "a"), "theta0": c.theta0[0].tolist(), "X": X.tolist(), "y": y.tolist(),
                 "theta": o.theta[0].tolist(), "loss": float(o.loss[0]), "R": float(o.R[0]),
                 "measured_error": float(o.err[0]), "n": int(len(y))})
    new["a"] = side
    new["theta0"] = c.theta0[0].tolist()
    tw = o.theta[1:2]
    thr = float(fit.fit_threshold(J.model, X[None], y[None], torch.ones_like(y)[None], c.theta0[:1], J.fit_tol)[0])
    new["witness"] = {"theta": tw[0].tolist(), "loss": float(o.loss[1]), "fit_threshold": thr, "R": float(o.R[1]),
                      "predictor": J.model.predictor(tw)[0].tolist()}
    new["gap"], new["margin"] = o.gap, o.margin
    new["refutation"] = (f"theta' also fits every data point of D (loss {float(o.loss[1]):.3g} <= {thr:.3g}) and has a "
                         f"smaller R: R(theta_inf) - R(theta') = {o.gap:.6g} > margin {o.margin:.6g}, so theta_inf "
                         f"is not a minimizer of R on Z(D)")


def _pair_fields(new: dict, cert: dict, c: Case, o: Outcome) -> None:
    lo, hi = ("a", "b") if float(o.R[0]) < float(o.R[1]) else ("b", "a")
    for s, name in enumerate(("a", "b")):
        X, y = c.side(s)
        side = dict(cert[name])
        side.update({"label": _label(cert, name), "theta0": c.theta0[s].tolist(),
                     "X": X.tolist(), "y": y.tolist(), "theta": o.theta[s].tolist(), "loss": float(o.loss[s]),
                     "R": float(o.R[s]), "measured_error": float(o.err[s]), "n": int(len(y))})
        new[name] = side
    new["theta0"] = c.theta0[0].tolist()
    new["gap"], new["margin"] = o.gap, o.margin
    new["cross_loss"] = {"theta_a_on_D_b": float(o.cross[0]), "theta_b_on_D_a": float(o.cross[1])}
    new["refutation"] = (f"theta_{lo} fits D_{hi} (cross-loss below fit_tol) and R(theta_{lo}) is lower than "
                         f"R(theta_{hi}) by {o.gap:.6g} > margin {o.margin:.6g}: theta_{hi} is not a minimizer on D_{hi}")


def shrink_file(path: str | Path, out: str | Path | None = None, budget: int = DEFAULT_BUDGET,
                plugins: list[str] = (), check: bool = True) -> tuple[Path, ShrinkResult]:
    """Shrink the certificate at ``path``, write it to ``out`` (default: ``<stem>.shrunk.json`` next to
    it) and, with ``check``, confirm it with ``ibtest verify``'s replay (else keep the input's case)."""
    p = Path(path)
    if budget < 4:
        raise UserError(f"--budget {budget}: at least 4 solves are needed to re-judge one candidate")
    cert = certmod.load(p)
    witness = cert.get("kind") == "witness"
    if "b" not in cert and not witness:
        raise UserError(f"certificate {p}: shrinking supports pair and witness certificates; this one has one run and no witness")
    for s in (("a",) if witness else ("a", "b")):
        for key in ("X", "y", "theta"):
            if key not in cert[s]:
                raise UserError(f"certificate {p}: required field {s}.{key!r} is missing")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    try:
        res = shrink_cert(cert, str(path), digest, budget, plugins)
    except (ValueError, TypeError, IndexError, KeyError, RuntimeError) as exc:
        raise UserError(f"certificate {p}: cannot be shrunk: {type(exc).__name__}: {exc}") from None
    dest = Path(out) if out else p.with_name(p.stem + ".shrunk.json")
    certmod.write(res.cert, dest)
    if check and not _verify(dest, plugins):
        raise NotRefuted(f"the shrunk certificate {dest} did not pass 'ibtest verify' (removed)")
    return dest, res


def _verify(path: Path, plugins) -> bool:
    try:
        from ibtest.cert.replay import verify  # the registry-ruled replay, where present
    except ImportError:
        from ibtest.cert.certificate import verify
    ok = bool(verify(path, list(plugins)).holds)
    if not ok:
        path.unlink()
    return ok


def fraction_text(v: float, max_den: int = 1000) -> str:
    """v as an exact small rational p/q when the float is that rational within rounding
    (|v − p/q| ≤ 8 ε·max(1, |v|)), else v to 12 significant digits."""
    if not math.isfinite(v):
        return str(v)
    f = Fraction(v).limit_denominator(max_den)
    if abs(float(f) - v) <= 8 * 2.0**-52 * max(1.0, abs(v)):
        return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
    return f"{v:.12g}"


def dumps(cert: dict[str, Any]) -> str:
    return json.dumps(to_jsonable(cert), indent=1)


def _size_text(s: dict[str, Any]) -> str:
    return (f"n = {s['n']}, d = {s['d']}, max |coordinate| = {s['max_abs']}, digits = {s['digits']}"
            f"{', integer data' if s['integer'] else ''}{', theta0 = 0' if s['theta0_zero'] else ''}")


def summary(dest: Path, res: ShrinkResult) -> list[str]:
    """What ``ibtest shrink`` prints: sizes before and after, passes, budget used."""
    return [f"shrunk certificate written to {dest}",
            f"  before: {_size_text(res.before)}",
            f"  after:  {_size_text(res.after)}",
            f"  {len(res.steps)} step(s) kept: {'; '.join(res.steps) or 'none'}",
            f"  solves used: {res.solves} of a budget of {res.budget}"
            + (" (fixed point reached)" if res.fixed_point else " (budget spent before a fixed point)"),
            f"  confirmed by: ibtest verify {dest}"]
