r"""The stiff tail of the ``adaptive`` solver: a batched Rosenbrock step (Rodas3) with the exact
Hessian of the loss, for instances whose explicit step is stability-limited (issue 12).

Why. On a slow last piece the flow θ' = −∇L(θ) has Jacobian −∇²L with eigenvalues from −λ_max
(curvature, ~70 on W2) to −σ_min(J)² (~1e-4): the explicit DOP853 step is held at h ≤ 6/λ_max by
stability while the tail lasts t ~ 1/σ_min², i.e. millions of steps. A linearly implicit
(Rosenbrock) method is L-stable: its step is limited by accuracy only and grows with t.

Method. Rodas3 (Sandu et al. 1997, as in KPP; 4 stages, order 3, embedded order 2, stiffly
accurate, L-stable), autonomous form, with J = −H and H the Hessian of the loss on the current
activation pattern (the region where the flow is smooth):

    (I/(hγ) + H) K_i = f(θ + Σ_j a_ij K_j) + Σ_j (c_ij/h) K_j,   θ_new = θ + Σ m_i K_i,
    error = Σ e_i K_i,

H is computed by forward-mode automatic differentiation of ``model.grad`` (one ``jvp`` on the
b·P rows θ ⊗ unit vectors, so no model code changes and no per-instance Python), the linear
systems by one batched LU (``torch.linalg.lu_factor``/``lu_solve``, a LAPACK call per matrix:
an instance's answer does not depend on its batch). Neither scipy (no Rosenbrock method, and one
Python call per instance) nor torchode (explicit methods only) provides a batched Rosenbrock step,
so the few lines below are written by hand; the coefficients are the published ones and
:func:`rodas3_order` checks the order numerically in the tests.

Kinks. The Hessian is that of one activation pattern. A step whose stage points do not all have
the pattern of θ (a pre-activation changed sign) is rejected and the instance returns to the
explicit method, which resolves kinks by step rejection and detects sliding (``adaptive``).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

# Rodas3 (KPP numbering: a_21, a_31, a_32, a_41, a_42, a_43, same for c)
_GAMMA = 0.5
_A = {(1, 0): 0.0, (2, 0): 2.0, (2, 1): 0.0, (3, 0): 2.0, (3, 1): 0.0, (3, 2): 1.0}
_C = {(1, 0): 4.0, (2, 0): 1.0, (2, 1): -1.0, (3, 0): 1.0, (3, 1): -1.0, (3, 2): -8.0 / 3.0}
_M = (2.0, 0.0, 1.0, 1.0)
_E = (0.0, 0.0, 0.0, 1.0)
#: order of the error estimate + 1 (step-size exponent −1/ELO)
ELO = 3.0


def hessian(model, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """∇²L [b, P, P] on the activation pattern of θ: forward-mode derivative of ``model.grad``
    along the P unit vectors, evaluated as one batched call on b·P rows."""
    b, P = theta.shape
    rep = lambda a: a.repeat_interleave(P, 0)  # noqa: E731
    E = torch.eye(P, dtype=theta.dtype).repeat(b, 1)
    Xr, yr, mr = rep(X), rep(y), rep(mask)
    Hc = torch.func.jvp(lambda t: model.grad(t, Xr, yr, mr), (rep(theta),), (E,))[1]
    H = Hc.view(b, P, P)
    return 0.5 * (H + H.transpose(1, 2))


def rodas3_step(field, theta: Tensor, f0: Tensor, h: Tensor, H: Tensor):
    """One Rodas3 step for b instances. ``field(θ) -> f`` [b, P] (the flow's right-hand side),
    f0 = field(θ), h [b], H [b, P, P] the Hessian of the loss (the Jacobian is −H).

    Returns (θ_new, f(θ_new), error vector [b, P], stage points [list of [b, P]]); rows whose
    matrix could not be factored get a non-finite error."""
    b, P = theta.shape
    hc = h.unsqueeze(-1)
    Mat = H + torch.diag_embed((1.0 / (_GAMMA * h)).unsqueeze(-1).expand(b, P))
    LU, piv, info = torch.linalg.lu_factor_ex(Mat)
    bad = info != 0

    def solve(rhs: Tensor) -> Tensor:
        return torch.linalg.lu_solve(LU, piv, rhs.unsqueeze(-1)).squeeze(-1)

    K = [solve(f0)]
    points = []
    fi = f0
    for i in range(1, 4):
        yi = theta
        for j in range(i):
            a = _A[(i, j)]
            if a != 0.0:
                yi = yi + a * K[j]
        if any(_A[(i, j)] != 0.0 for j in range(i)):
            fi = field(yi)  # stage 2 (a_2j = 0) reuses f0
            points.append(yi)
        rhs = fi
        for j in range(i):
            c = _C[(i, j)]
            if c != 0.0:
                rhs = rhs + (c / hc) * K[j]
        K.append(solve(rhs))
    th_new = theta
    for mi, k in zip(_M, K):
        if mi != 0.0:
            th_new = th_new + mi * k
    err = K[3] * _E[3]
    if bool(bad.any()):
        err = torch.where(bad.unsqueeze(-1), torch.full_like(err, float("inf")), err)
    f_new = field(th_new)
    points.append(th_new)
    return th_new, f_new, err, points


def rodas3_order(steps=(0.1, 0.05, 0.025)) -> list[float]:
    """Global errors of Rodas3 on θ' = −∇L for L = ¼Σθ⁴ + ½θᵀAθ (a smooth nonlinear gradient
    flow) at t = 1 for the given fixed steps; the observed order is log2 of successive ratios."""
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)

    def grad(t):
        return t ** 3 + t @ A

    def hess(t):
        return torch.diag_embed(3 * t * t) + A

    th0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    ref = th0.clone()
    hr = 1e-4
    for _ in range(int(round(1 / hr))):  # RK4 reference
        k1 = -grad(ref)
        k2 = -grad(ref + 0.5 * hr * k1)
        k3 = -grad(ref + 0.5 * hr * k2)
        k4 = -grad(ref + hr * k3)
        ref = ref + hr / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    errs = []
    for h in steps:
        th = th0.clone()
        for _ in range(int(round(1 / h))):
            th, _, _, _ = rodas3_step(lambda u: -grad(u), th, -grad(th),
                                      torch.full((1,), h, dtype=torch.float64), hess(th))
        errs.append(float((th - ref).abs().max()))
    return errs


def kink_projector(preact, held: Tensor, X: Tensor, P: int) -> Tensor:
    """The orthogonal projector [b, P, P] onto {δ: z_e(δ) = 0 for every held entry e}. The
    pre-activations are linear in θ, so the normals ∇_θ z_e are z_e of the unit vectors (one
    batched call on b·P rows) and do not depend on θ."""
    b = X.shape[0]
    E = torch.eye(P, dtype=X.dtype).repeat(b, 1)
    Z = preact(E, X.repeat_interleave(P, 0)).reshape(b, P, -1)  # [b, P, entries]
    N = Z * held.flatten(1).unsqueeze(1).to(Z.dtype)  # normals of the held entries, 0 elsewhere
    G = N.transpose(1, 2) @ N + torch.diag_embed((~held.flatten(1)).to(Z.dtype))
    return torch.eye(P, dtype=X.dtype) - N @ torch.linalg.solve(G, N.transpose(1, 2))


def tail_step(model, preact, theta: Tensor, f0: Tensor, h: Tensor, X: Tensor, y: Tensor,
              mask: Tensor, rtol: float, atol: float, held: Tensor | None = None, kf=None):
    """One Rodas3 step of the stiff rows of the ``adaptive`` solver.

    Returns (θ_new, f(θ_new), scaled error norm [b] (the explicit method's norm: RMS of the error
    over atol + rtol·max(|θ|, |θ_new|)), kinked [b]: a stage point has another activation pattern
    than θ (then the error is inf: the step is rejected and the row returns to the explicit
    method)).

    ``held`` [b, n, m]: kink entries held by ``sliding: follow`` (rows without any: the classical
    field). With every held λ*_e interior the Filippov velocity is −Π∇L, Π the projector onto the
    kinks' (constant) tangent space (KKT of the minimal-norm problem: g(λ*) ⟂ every c_e ∝ ∇z_e),
    so its Jacobian is −Π∇²LΠ (independent of σ'(0) on the held entries, whose normal parts Π
    removes); every stage then keeps z_e fixed. The held entries are left out of the pattern
    test; a step after which some held λ*_e (``kf``) is at a bound counts as kinked."""
    Pi = None
    if held is not None and bool(held.any()):
        Pi = kink_projector(preact, held, X, theta.shape[1])

    def field(u):
        g = -model.grad(u, X, y, mask)
        return g if Pi is None else (Pi @ g.unsqueeze(-1)).squeeze(-1)

    H = hessian(model, theta, X, y, mask)
    if Pi is not None:
        H = Pi @ H @ Pi
        f0 = field(theta)
    th_new, f_new, e, points = rodas3_step(field, theta, f0, h, H)
    sc = torch.maximum(theta.abs(), th_new.abs()).mul_(rtol).add_(atol)
    err = (e / sc).square().mean(-1).sqrt()
    err = torch.nan_to_num(err, nan=float("inf"), posinf=float("inf"))
    kinked = torch.zeros(theta.shape[0], dtype=torch.bool)
    if preact is not None:
        pos = preact(theta, X) > 0
        free = None
        if Pi is not None:
            assert held is not None
            free = ~held
        for p in points:
            ch = (preact(p, X) > 0) != pos
            kinked |= (ch if free is None else ch & free).flatten(1).any(-1)
        if Pi is not None and kf is not None:
            assert held is not None
            rows = held.flatten(1).any(-1).nonzero().squeeze(-1)
            Hf = held[rows].flatten(1)
            k = int(Hf.sum(-1).max())
            ent = torch.argsort((~Hf).to(torch.int8), dim=-1, stable=True)[:, :k]
            ok = Hf.gather(1, ent)
            _, lam = kf.field(th_new[rows], X[rows], y[rows], mask[rows], held[rows], ent, ok)
            leave = (ok & ((lam <= 0.0) | (lam >= 1.0))).any(-1)
            kinked[rows[leave]] = True
        err = torch.where(kinked, torch.full_like(err, float("inf")), err)
    return th_new, f_new, err, kinked
