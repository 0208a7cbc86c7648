r"""Built-in families for ``ibtest fit`` (propose a regularizer): R_λ(x) = Σ_k λ_k φ_k(x), linear in λ.

* ``quadratic``: (θ − θ0)ᵀ M (θ − θ0) with M ⪰ 0 (an SDP); features u_i u_j (i ≤ j), u = θ − θ0,
  λ_ii = M_ii, λ_ij = 2 M_ij. M ∝ I is the squared distance to θ0 (Theorem 1 of the paper).
* ``separable`` (in θ) and ``separable_predictor`` (in the model's predictor): Σ_i f(u_i) with
  u = x − x0 and f in the span of u, u², …, u^degree, |u|^p for p in ``powers``, and
  h_c(u) = u·asinh(u/c) − √(u² + c²) + c for c in the grid ``c`` (h_c'' = 1/√(u² + c²)); with
  ``per_coordinate`` one f per coordinate. Q_α(β) = Σ_i h_{2α²}(β_i) from β0 = 0 (Woodworth et al.),
  so Q_α is a member when 2α² is on the grid, and its non-uniform form Σ_i h_{2α_i²}(β_i) with
  ``per_coordinate`` when every 2α_i² is.
* ``q_alpha_free``: λ·Q_α(β) with α free (a search outside the linear fit);
  ``q_alpha_coords``: λ·Σ_i α_i² q(β_i/α_i²) with one free α_i per coordinate (a non-uniform init);
* ``lp_norm_free``: λ‖θ‖_p with p ∈ [1, 8] free.

Strict convexity (``ibtest fit --strict MU``): R_λ − μ‖x − x0‖²/2 convex, with λ normalized so that
R_λ grows from x0 to x∞ like ½‖x − x0‖² on average (so μ is relative to that). Sufficient conditions,
linear or conic in λ: M ⪰ (μ/2)·I; a separable f with non-negative coefficients on convex features
(none on odd powers ≥ 3) and Σ_k λ_k min_{|u|≤L} φ_k''(u) ≥ μ on the box |u| ≤ L the fit spans; for
Q_α, λ·min 1/√(L² + c²) ≥ μ. A norm is not strongly convex: ``lp_norm_free`` has no strict member.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

import ibtest

from .nets import q, q_alpha
from .norms import lp_norm

Tensor = torch.Tensor


def _origin(x: Tensor, ctx: Any, on: str) -> Tensor:
    """x0: θ0 (``on="theta"``) or its predictor, for an ``init`` family."""
    v = ctx.init if on == "theta" else ctx.init_predictor
    return torch.zeros_like(x) if v is None else v.to(x.dtype)


# ------------------------------------------------------------------------------------------
# quadratic forms
# ------------------------------------------------------------------------------------------
def _pairs(Q: int) -> tuple[list[int], list[int]]:
    i, j = torch.triu_indices(Q, Q)
    return i.tolist(), j.tolist()


def quadratic_features(x: Tensor, ctx: Any) -> Tensor:
    """u_i u_j for i ≤ j, u = θ − θ0: [B, Q(Q+1)/2]."""
    u = x - _origin(x, ctx, "theta")
    i, j = _pairs(x.shape[1])
    return u[:, i] * u[:, j]


def matrix(lam: Any, Q: int) -> Any:
    """M (symmetric Q×Q) of the coefficients: M_ii = λ_ii, M_ij = M_ji = λ_ij / 2 (numpy, torch or cvxpy)."""
    i, j = _pairs(Q)
    if isinstance(lam, (np.ndarray, Tensor, list, tuple)):
        lam_t = torch.as_tensor(np.asarray(lam, dtype=float))
        M = torch.zeros(Q, Q, dtype=torch.float64)
        for k, (a, b) in enumerate(zip(i, j)):
            M[a, b] += lam_t[k] / (1 if a == b else 2)
            if a != b:
                M[b, a] += lam_t[k] / 2
        return M
    import cvxpy as cp

    basis = []
    for a, b in zip(i, j):
        E = np.zeros((Q, Q))
        E[a, b] = E[b, a] = 1.0 if a == b else 0.5
        basis.append(E)
    return cp.sum([lam[k] * E for k, E in enumerate(basis)])


def quadratic_cone(lam: Any, Q: int) -> list:
    return [matrix(lam, Q) >> 0]


def quadratic_strict(lam: Any, mu: float, span: float, Q: int) -> list:
    return [matrix(lam, Q) >> (mu / 2) * np.eye(Q)]


def quadratic_magnitude(lam: Any, Q: int) -> Any:
    """|λ_k| ≤ a linear function of λ for M ⪰ 0: λ_ii = M_ii ≥ 0, |λ_ij| = 2|M_ij| ≤ M_ii + M_jj."""
    import cvxpy as cp

    i, j = _pairs(Q)
    diag = {a: k for k, (a, b) in enumerate(zip(i, j)) if a == b}
    return cp.hstack([lam[k] if a == b else lam[diag[a]] + lam[diag[b]] for k, (a, b) in enumerate(zip(i, j))])


def quadratic_convex(lam: Any, Q: int) -> bool:
    M = matrix(lam, Q)
    ev = torch.linalg.eigvalsh(M)
    return bool(ev.min() >= -1e-9 * ev.abs().max().clamp_min(1e-300))


def quadratic_cvx(x: Any, ctx: Any, lam: Any) -> Any:
    import cvxpy as cp

    Q = int(x.shape[0])
    ev, V = torch.linalg.eigh(matrix(lam, Q))
    L = (V * ev.clamp_min(0).sqrt()).T.numpy()  # M = Lᵀ L
    return cp.sum_squares(L @ (x - ctx.init))


def quadratic_params(lam: Any, Q: int) -> dict[str, Any]:
    """M normalized to mean eigenvalue 1 (tr M = Q)."""
    M = matrix(lam, Q)
    tr = float(torch.trace(M))
    return {"M": (M * (Q / tr) if tr != 0 else M).tolist()}


def quadratic_describe(lam: Any, Q: int) -> str:
    """The fitted form: M normalized to tr M = Q; "M ∝ I" when it is the identity to 1e-6; the
    directions R is flat along when M is singular (entries below 1e-6 of the largest shown as 0)."""
    M = torch.tensor(quadratic_params(lam, Q)["M"], dtype=torch.float64)
    off = float((M - torch.eye(Q, dtype=torch.float64)).abs().max())
    if off <= 1e-6:
        return (f"(theta - theta0)^T M (theta - theta0) with M ∝ I to {off:.1g}: |theta - theta0|^2, the squared "
                "distance to the init (dist_to_init)")
    top = float(M.abs().max())
    rows = "; ".join(" ".join(f"{(v if abs(v) > 1e-6 * top else 0.0):.4g}" for v in r) for r in M.tolist())
    text = f"(theta - theta0)^T M (theta - theta0), M ∝ [{rows}] (tr M = {Q})"
    ev, V = torch.linalg.eigh(M)
    flat = [V[:, k] for k in range(Q) if float(ev[k]) <= 1e-6 * float(ev.abs().max())]
    if flat:
        dirs = "; ".join("(" + ", ".join(f"{(float(x) if abs(float(x)) > 1e-6 else 0.0):.3g}" for x in v) + ")"
                         for v in flat)
        text += f"; M is singular: R is flat along {dirs}"
    return text


# ------------------------------------------------------------------------------------------
# separable bases
# ------------------------------------------------------------------------------------------
def _h(u: Tensor, c: float) -> Tensor:
    """h_c(u) = u·asinh(u/c) − √(u² + c²) + c, without cancellation at |u| ≪ c: √(u²+c²) − c = u²/(√(u²+c²) + c)."""
    r = torch.sqrt(u * u + c * c)
    return u * torch.asinh(u / c) - u * u / (r + c)


def _basis(u: Tensor, degree: int, powers: list[float], c: list[float]) -> list[Tensor]:
    """The 1-D features of every coordinate, [B, Q] each."""
    out = [u ** k for k in range(1, int(degree) + 1)]
    out += [u.abs() ** float(p) for p in powers]
    out += [_h(u, float(cc)) for cc in c]
    return out


def _labels1(degree: int, powers: list[float], c: list[float]) -> list[str]:
    return ([f"u^{k}" for k in range(1, int(degree) + 1)] + [f"|u|^{p:g}" for p in powers]
            + [f"h_{cc:g}(u)" for cc in c])


def _make_separable(on: str):
    def features(x: Tensor, ctx: Any, degree: int = 4, powers: Any = (1.5, 3.0), c: Any = (0.01, 0.1, 1.0, 10.0),
                 per_coordinate: bool = False) -> Tensor:
        u = x - _origin(x, ctx, on)
        f = _basis(u, degree, list(powers), list(c))
        if per_coordinate:
            return torch.cat(f, dim=1)  # feature-major: [k·Q + i]
        return torch.stack([v.sum(-1) for v in f], dim=1)

    return features


def _curvature_min(degree: int, powers: list[float], c: list[float], L: float) -> list[float | None]:
    """min over |u| ≤ L of each 1-D feature's second derivative, None for a feature that is not convex."""
    out: list[float | None] = []
    for k in range(1, int(degree) + 1):
        out.append(0.0 if k == 1 else (2.0 if k == 2 else (0.0 if k % 2 == 0 else None)))
    for p in powers:
        p = float(p)
        out.append(None if p < 1 else (0.0 if p == 1 or p > 2 else p * (p - 1) * L ** (p - 2)))
    out += [1.0 / math.sqrt(L * L + float(cc) ** 2) for cc in c]
    return out


def _sep_constraints(lam: Any, mu: float, span: float, Q: int, degree: int, powers: Any, c: Any,
                     per_coordinate: bool) -> list:
    m = _curvature_min(degree, list(powers), list(c), span)
    n = len(m)
    cons = []
    coords = range(Q) if per_coordinate else range(1)
    for i in coords:
        idx = [k * Q + i for k in range(n)] if per_coordinate else list(range(n))
        for k, mk in enumerate(m):
            if k == 0:  # the linear feature: any sign keeps convexity
                continue
            cons.append(lam[idx[k]] == 0 if mk is None else lam[idx[k]] >= 0)
        cons.append(sum(lam[idx[k]] * (mk or 0.0) for k, mk in enumerate(m)) >= mu)
    return cons


def separable_strict(lam: Any, mu: float, span: float, Q: int, degree: int = 4, powers: Any = (1.5, 3.0),
                     c: Any = (0.01, 0.1, 1.0, 10.0), per_coordinate: bool = False) -> list:
    return _sep_constraints(lam, mu, span, Q, degree, powers, c, per_coordinate)


def separable_convex(lam: Any, Q: int, degree: int = 4, powers: Any = (1.5, 3.0), c: Any = (0.01, 0.1, 1.0, 10.0),
                     per_coordinate: bool = False) -> bool:
    m = _curvature_min(degree, list(powers), list(c), 1.0)
    lam_t = torch.as_tensor(np.asarray(lam, dtype=float))
    n = len(m)
    per = lam_t.reshape(n, Q) if per_coordinate else lam_t.reshape(n, 1)
    tol = 1e-9 * float(lam_t.abs().max().clamp_min(1e-300))
    for k, mk in enumerate(m):
        if k == 0:
            continue
        if (mk is None and bool((per[k].abs() > tol).any())) or bool((per[k] < -tol).any()):
            return False
    return True


def separable_labels(Q: int, degree: int = 4, powers: Any = (1.5, 3.0), c: Any = (0.01, 0.1, 1.0, 10.0),
                     per_coordinate: bool = False) -> list[str]:
    base = _labels1(degree, list(powers), list(c))
    if per_coordinate:
        return [b.replace("u", f"u{i + 1}", 1) for b in base for i in range(Q)]
    return [f"sum_i {b.replace('u', 'u_i', 1)}" for b in base]


def separable_describe(lam: Any, Q: int, **options: Any) -> str:
    labels = separable_labels(Q, **options)
    lam_t = torch.as_tensor(np.asarray(lam, dtype=float))
    top = float(lam_t.abs().max()) if lam_t.numel() else 0.0
    terms = [f"{float(v):+.6g}·{lab}" for v, lab in zip(lam_t.tolist(), labels) if abs(v) > 1e-8 * top]
    return " ".join(terms) + "   (u = x - x0; h_c(u) = u asinh(u/c) - sqrt(u^2+c^2) + c)"


def separable_params(lam: Any, Q: int, **options: Any) -> dict[str, Any]:
    lam_t = torch.as_tensor(np.asarray(lam, dtype=float))
    top = float(lam_t.abs().max()) or 1.0
    return {"lam": (lam_t / top).tolist()}


# ------------------------------------------------------------------------------------------
# existing families with a free parameter
# ------------------------------------------------------------------------------------------
def q_alpha_features(beta: Tensor, ctx: Any, alpha: float = 1.0) -> Tensor:
    return q_alpha(beta, ctx, float(alpha))[:, None]


def q_coords_features(beta: Tensor, ctx: Any, alpha: Any = ()) -> Tensor:
    """Σ_i α_i² q(β_i/α_i²) with one α_i per coordinate."""
    a = torch.as_tensor(list(alpha), dtype=beta.dtype)
    if a.numel() != beta.shape[1]:
        raise ValueError(f"q_alpha_coords: {a.numel()} values of alpha for {beta.shape[1]} coordinates")
    a2 = (a * a)[None, :]
    return (a2 * q(beta / a2)).sum(-1, keepdim=True)


def _q_strict(lam: Any, mu: float, span: float, Q: int, alphas: list[float]) -> list:
    cmax = max(2 * a * a for a in alphas)
    return [lam[0] >= 0, lam[0] * (1.0 / math.sqrt(span * span + cmax * cmax)) >= mu]


def lp_features(theta: Tensor, ctx: Any, p: float = 2.0) -> Tensor:
    return lp_norm(theta, ctx, float(p))[:, None]


def _positive(lam: Any, Q: int, **_: Any) -> bool:
    return float(np.asarray(lam, dtype=float)[0]) >= 0


def _fmt_alpha(alpha: Any) -> str:
    if isinstance(alpha, (list, tuple)):
        return "[" + ", ".join(f"{float(a):.10g}" for a in alpha) + "]"
    return f"{float(alpha):.10g}"


@ibtest.hookimpl
def ibtest_families():
    sep_opts = {"degree": 4, "powers": [1.5, 3.0], "c": [0.01, 0.1, 1.0, 10.0], "per_coordinate": False}
    common = dict(options=sep_opts, strict=separable_strict, convex=separable_convex, labels=separable_labels,
                  describe=separable_describe, parameters=separable_params)
    return [
        ibtest.Family(name="quadratic", features=quadratic_features, depends_on="init", on="theta",
                      cone=quadratic_cone, strict=quadratic_strict, magnitude=quadratic_magnitude,
                      convex=quadratic_convex, cvx=quadratic_cvx,
                      describe=quadratic_describe, parameters=quadratic_params,
                      doc="quadratic forms (theta - theta0)^T M (theta - theta0), M PSD (an SDP)"),
        ibtest.Family(name="separable", features=_make_separable("theta"), depends_on="init", on="theta",
                      doc="sum_i f(theta_i - theta0_i), f in a basis of powers, |u|^p and u asinh(u/c) - sqrt(u^2+c^2)",
                      **common),  # type: ignore[arg-type]
        ibtest.Family(name="separable_predictor", features=_make_separable("predictor"), depends_on="init",
                      on="predictor", doc="the separable basis on the model's predictor (beta of a diagonal net)",
                      **common),  # type: ignore[arg-type]
        ibtest.Family(name="q_alpha_free", features=q_alpha_features, depends_on="params", on="predictor",
                      free={"alpha": ibtest.Free(1.0, 1e-3, 1e3, doc="the scale alpha of Q_alpha")},
                      strict=lambda lam, mu, span, Q, **o: _q_strict(lam, mu, span, Q, [float(o.get("alpha", 1.0))]),
                      convex=_positive, describe=lambda lam, Q, alpha=1.0: f"Q_alpha(beta) with alpha = {_fmt_alpha(alpha)}",
                      parameters=lambda lam, Q, alpha=1.0: {"alpha": float(alpha)},
                      doc="Woodworth et al.'s Q_alpha of the predictor, alpha free"),
        ibtest.Family(name="q_alpha_coords", features=q_coords_features, depends_on="params", on="predictor",
                      free={"alpha": ibtest.Free(1.0, 1e-3, 1e3, per_coordinate=True, doc="one alpha_i per coordinate")},
                      strict=lambda lam, mu, span, Q, **o: _q_strict(lam, mu, span, Q, list(o.get("alpha") or [1.0])),
                      convex=_positive,
                      describe=lambda lam, Q, alpha=(): f"sum_i alpha_i^2 q(beta_i / alpha_i^2) with alpha = {_fmt_alpha(alpha)}",
                      parameters=lambda lam, Q, alpha=(): {"alpha": [float(a) for a in alpha]},
                      doc="the non-uniform Q_alpha, one free alpha_i per coordinate (init u0 = v0 = alpha_i)"),
        ibtest.Family(name="lp_norm_free", features=lp_features, depends_on="params", on="theta",
                      free={"p": ibtest.Free(2.0, 1.0, 8.0, log=False, doc="the exponent p >= 1")},
                      convex=_positive, describe=lambda lam, Q, p=2.0: f"|theta|_p with p = {float(p):.10g}",
                      parameters=lambda lam, Q, p=2.0: {"p": float(p)},
                      doc="the l_p norm of theta, p free (no strictly convex member)"),
    ]
