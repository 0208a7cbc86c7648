r"""Replaying a witness certificate (one run (D, θ0, θ∞) and θ' ∈ Z(D)) for ``ibtest verify``.

Confirmed only if θ∞ re-solved at the tightened settings converges and fits D, the file's θ' fits
D by :mod:`ibtest.solve.fit`'s rule, R is finite with a finite gradient at both, and

    R(θ∞) − R(θ') > margin = floor + safety·‖∇R(θ∞)‖·‖θ∞ − θ∞(file)‖

(:func:`ibtest.judge.evaluation.margin`; θ' is data, so it carries no solver error).
"""

import math
from typing import Any

import torch

from ibtest.base import status as st
from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean
from ibtest.cert.replay_rules import Rules, VerifyResult, _Data, _disagree, _g, fits
from ibtest.judge import evaluation as ev_mod
from ibtest.study.checks import call_solver


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
            if stored is not None and _disagree(stored, new, 1e-9, ev_mod.ROUNDING * abs(new)):
                bad.append(f"{name} stored {_g(float(stored))}, recomputed {_g(new)}")
        if bad:
            lines.append("  stored values disagree with the ones recomputed at the file's own theta (the file "
                         "was edited, or written by another version): " + "; ".join(bad))
    except ev_mod.NonFiniteValue as exc:
        lines.append(f"  at the file's own theta: {clean(exc)} (the stored numbers cannot be checked)")
    try:
        res = call_solver(sspec, model, D.X, D.y, D.mask, D.theta0, opts)
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


