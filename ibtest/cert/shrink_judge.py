r"""Judging shrink candidates: is the same member still refuted? (``ibtest shrink``, :mod:`ibtest.cert.shrink`)

A :class:`Case` is one candidate: the data of both sides (one shared point list with a side mask)
and their θ0. :func:`judge` solves every candidate of a pass in one batch at the certificate's
solver settings and at the tightened ones (both capped by the registry, as ``ibtest verify`` caps
them: :func:`ibtest.cert.replay.replay_context`), and keeps a pair candidate only if both sides
converged at both settings, each solution fits both datasets (the fit rule), the pair is valid for
the member's ``depends_on``, and the pair refutes by :meth:`ibtest.solve.rules.Rules.judge_pair`
with room to spare:

    |R(θ_a) − R(θ_b)| > SLACK · (margin + noise),

err (in the margin) the distance between the default and the tight solve plus the tight one's
distance to Z(D). A witness candidate is kept when θ∞ converges at both settings and
:func:`ibtest.judge.witness.search` finds θ' ∈ Z(D) with R(θ∞) − R(θ') > SLACK · (margin + noise)
(:meth:`ibtest.solve.rules.Rules.judge_witness`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.base.errors import UserError
from ibtest.judge import evaluation as ev
from ibtest.solve.rules import Rules, SolverSettings, Tolerance, eligible
from ibtest.study.checks import call_solver
from ibtest.study.work import certificate_work_problem

Tensor = torch.Tensor


#: the gap must exceed SLACK × margin for a candidate to be kept
SLACK = 2.0
#: instance solves a shrink may spend unless told otherwise
DEFAULT_BUDGET = 6000


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
    th0 = [cert[s].get("theta0") or cert["theta0"] for s in ("a", "b")]
    return Case(X, y, torch.tensor([ina, inb]), torch.tensor(th0, dtype=torch.float64))


# ------------------------------------------------------------------------------------------
@dataclass
class Judge:
    """Everything a re-judgement needs, from the registry and the certificate's data only: the
    rules, tolerance and solver settings are :func:`ibtest.cert.replay.replay_context`'s, the
    same ``ibtest verify`` judges by."""

    model: Any
    solver: Any
    spec: Any
    params: dict[str, Any]
    settings: SolverSettings
    rules: Rules
    tol: Tolerance
    budget: int
    construction: Callable[..., Any] | None = None  # the registered blocking_point build, for pass_rebuild
    witness: bool = False  # a witness certificate: one run, θ' found by ibtest.judge.witness.search on Z(D)
    used: int = 0
    calls: int = 0

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.settings.options)

    @property
    def tight(self) -> dict[str, Any]:
        return dict(self.settings.tightened)

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
    noise: float = 0.0


def make_judge(cert: dict[str, Any], budget: int, plugins: Sequence[str] = ()) -> Judge:
    from ibtest.cert.replay import claim_kind, replay_context
    from ibtest.plugin.manager import load_registry, require_registered

    where = "certificate"
    reg = load_registry(list(plugins))
    require_registered(reg, [("models", cert["model"]["name"]), ("solvers", cert["solver"]["name"]),
                             ("hypotheses", cert["hypothesis"]["name"])], what=where,
                       named_files=cert.get("plugins") or [])
    spec = reg.get("hypotheses", cert["hypothesis"]["name"])
    kind = claim_kind(reg, spec, cert, where)
    if kind.name not in ("pair", "witness"):
        raise UserError(f"shrinking supports pair and witness certificates of regularizers; this one is a "
                        f"{kind.name} certificate")
    rp = replay_context(reg, cert, where)
    data = rp.data
    for settings, times in ((dict(rp.settings.options), 0), (dict(rp.settings.tightened), 1)):
        too_much = certificate_work_problem(rp.solver, settings, tightened=times, B=4, n=data.X.shape[1],
                                            P=data.theta.shape[1])
        if too_much:  # the work a file may ask for is capped, not each option alone
            raise UserError(f"the certificate cannot be shrunk: {too_much}")
    cons = reg.items["constructions"].get("blocking_point")
    return Judge(rp.model, rp.solver, rp.spec, rp.params, rp.settings, rp.rules, rp.tol, int(budget),
                 construction=None if cons is None else cons.spec.build, witness=kind.name == "witness")


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
    fd, ft = J.rules.check_fit(J.model, th, X, y, mask, th0), J.rules.check_fit(J.model, tt, X, y, mask, th0)
    own = fd.ok & ft.ok
    sw = torch.arange(2 * K).view(K, 2).flip(-1).reshape(-1)  # a <-> b
    cd = J.rules.check_fit(J.model, th, X[sw], y[sw], mask[sw], th0[sw])
    cross = cd.ok & J.rules.fits(J.model, tt, X[sw], y[sw], mask[sw], th0[sw])
    same = torch.tensor([torch.equal(c.theta0[0], c.theta0[1]) for c in cands], dtype=torch.bool)
    elig = eligible(J.spec.depends_on, same)
    ok = (conv & own & cross).view(K, 2).all(-1) & elig
    err = (th - tt).norm(dim=-1) + torch.nan_to_num(ft.dist, nan=0.0)
    outs: list[Outcome | None] = [None for _ in cands]
    for k in ok.nonzero().flatten().tolist():  # R per candidate: a plugin's NaN on one row must not sink the others
        sl = slice(2 * k, 2 * k + 2)
        try:
            hctx = ev.context(J.model, J.spec, theta0=th0[sl], X=X[sl], y=y[sl], mask=mask[sl])
            a, b, pn = ev.compare(J.model, J.spec, J.params, tt[sl], hctx, err[sl].tolist())
            Rd, _ = ev.evaluate(J.model, J.spec, J.params, th[sl], hctx, grad=False)
        except Exception:
            continue
        j = J.rules.judge_pair(J.tol, a, b, pn)
        if j.refutes and j.strength > SLACK:
            outs[k] = Outcome(th[sl].clone(), tt[sl].clone(), Rd.reshape(-1).clone(), err[sl].clone(),
                              fd.loss[sl].clone(), cd.loss[sl].clone(), j.gap, j.margin, j.noise)
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
    ft = J.rules.check_fit(J.model, tt, X, y, mask, th0)
    ok = ((r1.status == st.CONVERGED) & (r2.status == st.CONVERGED) & torch.isfinite(th).all(-1) & torch.isfinite(tt).all(-1)
          & J.rules.fits(J.model, th, X, y, mask, th0) & ft.ok)
    rows = ok.nonzero().flatten()
    if rows.numel() == 0:
        return outs
    try:
        sr = search(J.model, J.spec, J.params, X[rows], y[rows], mask[rows], th0[rows], tt[rows], J.rules, J.tol)
    except Exception:
        return outs
    err = (th - tt).norm(dim=-1) + torch.nan_to_num(ft.dist, nan=0.0)
    for j_, k in enumerate(rows.tolist()):
        tw = sr.theta[j_ : j_ + 1].detach().to(torch.float64)
        sl = slice(k, k + 1)
        try:
            if not bool(J.rules.fits(J.model, tw, X[sl], y[sl], mask[sl], th0[sl])[0]):
                continue
            two = torch.tensor([k, k])
            hctx = ev.context(J.model, J.spec, theta0=th0[two], X=X[two], y=y[two], mask=mask[two])
            inf, w, pn = ev.compare(J.model, J.spec, J.params, torch.cat([tt[sl], tw]), hctx, [float(err[k]), 0.0])
            Rd, _ = ev.evaluate(J.model, J.spec, J.params, torch.cat([th[sl], tw]), hctx, grad=False)
        except Exception:
            continue
        jd = J.rules.judge_witness(J.tol, inf, w, pn)
        if jd.refutes and jd.strength > SLACK:
            with torch.no_grad():
                losses = J.model.loss(torch.cat([th[sl], tw]), X[two], y[two], mask[two]).to(torch.float64)
            outs[k] = Outcome(torch.cat([th[sl], tw]), tt[sl].clone(), Rd.reshape(-1).clone(),
                              torch.stack([err[k], torch.zeros((), dtype=torch.float64)]), losses, losses, jd.gap,
                              jd.margin, jd.noise)
    return outs
