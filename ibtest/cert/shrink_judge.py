r"""Judging shrink candidates: is the same member still refuted? (``ibtest shrink``, :mod:`ibtest.cert.shrink`)

A :class:`Case` is one candidate: the data of both sides (one shared point list with a side mask)
and their θ0. :func:`judge` solves every candidate of a pass in one batch at the certificate's
solver settings and at the tightened ones, and keeps a pair candidate only if both sides converged
at both settings, each solution fits both datasets (relative fit_tol), the pair is valid for the
member's ``depends_on``, and

    |R(θ_a) − R(θ_b)| > SLACK · margin,   margin = floor + safety·(‖∇R_a‖·err_a + ‖∇R_b‖·err_b),

err the distance between the default and the tight solve. A witness candidate is kept when θ∞
converges at both settings and :func:`ibtest.judge.witness.search` finds θ' ∈ Z(D) with
R(θ∞) − R(θ') > SLACK · margin.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.base.errors import UserError
from ibtest.base.guard import plugin_call
from ibtest.judge import evaluation as ev
from ibtest.solve import fit
from ibtest.study.checks import call_solver
from ibtest.study.work import certificate_work_problem

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
    """A candidate that still refutes, with the numbers a certificate records (:func:`judge` gives
    ``None`` for a candidate that does not)."""

    theta: Tensor  # [2, P] default solve
    theta_tight: Tensor
    R: Tensor  # [2] at the default solve
    err: Tensor  # [2]
    loss: Tensor  # [2] own loss at the default solve
    cross: Tensor  # [2] L(θ_a; D_b), L(θ_b; D_a)
    gap: float = 0.0
    margin: float = 0.0


def make_judge(cert: dict[str, Any], budget: int, plugins: Sequence[str] = ()) -> Judge:
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
        model = plugin_call(mspec.factory, **cert["model"]["options"])
    except Exception as exc:
        raise UserError(f"model {mspec.name!r} rejects the certificate's options: {exc}") from None
    solver = reg.get("solvers", cert["solver"]["name"])
    opts = {k: o.default for k, o in solver.options.items()}
    opts.update(cert["solver"].get("options") or {})
    tight = dict(cert["solver"].get("tightened") or plugin_call(solver.tighten, dict(opts)))
    n, P = max(len(cert[s]["X"]) for s in ("a", "b") if s in cert), len(cert["theta0"])
    for settings, times in ((opts, 0), (tight, 1)):  # the work a file may ask for is capped, not each option
        too_much = certificate_work_problem(solver, settings, tightened=times, B=4, n=n, P=P)
        if too_much:
            raise UserError(f"the certificate cannot be shrunk: {too_much}")
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


def judge(J: Judge, cands: list[Case]) -> list[Outcome | None]:
    """Re-judge every candidate (``None``: it does not refute); one solver call per setting and
    input dimension (batched)."""
    out: list[Outcome | None] = [None] * len(cands)
    for d in sorted({c.d for c in cands}):
        idx = [k for k, c in enumerate(cands) if c.d == d]
        one = _judge_witness if J.witness else _judge_same_d
        for k, o in zip(idx, one(J, [cands[k] for k in idx])):
            out[k] = o
    return out


def _judge_same_d(J: Judge, cands: list[Case]) -> list[Outcome | None]:
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
        r1 = call_solver(J.solver, J.model, X, y, mask, th0, J.opts)
        r2 = call_solver(J.solver, J.model, X, y, mask, th0, J.tight)
    except Exception:  # a candidate the solver cannot handle is no evidence
        return [None for _ in cands]
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
    outs: list[Outcome | None] = [None for _ in cands]
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
            outs[k] = Outcome(th[sl].clone(), tt[sl].clone(), Rd.reshape(-1).clone(), err[sl].clone(),
                              own_loss[sl].clone(), cross_loss[sl].clone(), gap, margin)
    return outs


def _judge_witness(J: Judge, cands: list[Case]) -> list[Outcome | None]:
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
    outs: list[Outcome | None] = [None for _ in cands]
    try:
        r1 = call_solver(J.solver, J.model, X, y, mask, th0, J.opts)
        r2 = call_solver(J.solver, J.model, X, y, mask, th0, J.tight)
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
            outs[k] = Outcome(torch.cat([th[sl], tw]), tt[sl].clone(), Rd.reshape(-1).clone(),
                              torch.stack([err[k], torch.zeros((), dtype=torch.float64)]), losses, losses, gap, margin)
    return outs

