"""Contract checks of one plugin without a run: shapes, dtypes, finiteness, and (hypotheses) the
context the engine passes, built by :mod:`ibtest.judge.evaluation` as in the engine."""
from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import torch

from ibtest.judge.zeroset import Polyhedron
from ibtest.plugin.manager import Registry, load_registry
from ibtest.plugin.specs import LossHessian, LossHessianParts, PiecewiseLinearUnits
from ibtest.testing.studies import local_files

Tensor = torch.Tensor


def _registry(plugin) -> Registry:
    return load_registry(local_files([plugin] if plugin is not None else []))


def check_hypothesis(plugin: str | Path | types.ModuleType | None, name: str, params: dict[str, Any] | None = None, *,
                     model: str = "relu_neuron", d: int = 3, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """Evaluate hypothesis ``name`` on a random batch θ [B, P] of ``model`` and check the contract.

    Checks: ``fn(theta, ctx, **params)`` returns a float tensor of shape [B] (an invariant may
    return [B, k]), finite values, the same values for each row evaluated alone (no mixing across
    the batch), and a finite gradient by autograd (the margin uses ‖∇R‖). ``ctx`` is built by
    :func:`ibtest.judge.evaluation.context`, exactly as the engine builds it: ``init`` (a random raw θ0)
    for "init"/"data" hypotheses, a random dataset for "data" ones. Returns R [B].
    """
    reg = _registry(plugin)
    spec = reg.get("hypotheses", name)
    m = reg.get("models", model).factory()
    g = torch.Generator().manual_seed(seed)
    P = m.n_params(d)
    theta = torch.randn(batch, P, generator=g, dtype=torch.float64)
    theta0 = torch.randn(batch, P, generator=g, dtype=torch.float64)
    X = torch.randn(batch, 3, d, generator=g, dtype=torch.float64)
    y = torch.randn(batch, 3, generator=g, dtype=torch.float64)
    pv = {**dict(spec.params), **(params or {})}
    on_pred = spec.on == "predictor"

    def call(th, th0, Xs, ys):
        from ibtest.judge.evaluation import context

        # the context the engine builds (raw θ0 as ctx.init, also for on="predictor")
        ctx = context(m, spec, theta0=th0, X=Xs, y=ys, mask=torch.ones_like(ys))
        return spec.fn(m.predictor(th) if on_pred else th, ctx, **pv)

    R = call(theta, theta0, X, y)
    assert isinstance(R, torch.Tensor), f"{name} returned {type(R).__name__}, expected a torch.Tensor"
    if spec.kind == "regularizer":
        assert R.shape == (batch,), f"{name} returned shape {tuple(R.shape)}, expected [B] = [{batch}]"
    else:
        assert R.dim() in (1, 2) and R.shape[0] == batch, f"{name} returned shape {tuple(R.shape)}, expected [B] or [B, k]"
    assert R.is_floating_point(), f"{name} returned dtype {R.dtype}, expected a float tensor"
    assert bool(torch.isfinite(R).all()), f"{name} returned non-finite values {R.tolist()}"
    for i in range(batch):
        Ri = call(theta[i : i + 1], theta0[i : i + 1], X[i : i + 1], y[i : i + 1])
        assert torch.allclose(Ri.reshape(-1).double(), R[i].reshape(-1).double(), rtol=1e-10, atol=1e-12), (
            f"{name}: row {i} evaluated alone gives {Ri.tolist()}, in the batch {R[i].tolist()} (rows must not mix)")
    th = theta.clone().requires_grad_(True)
    Rg = call(th, theta0, X, y)
    if Rg.requires_grad:
        (gr,) = torch.autograd.grad(Rg.sum(), th, allow_unused=True)
        if gr is not None:
            assert bool(torch.isfinite(gr).all()), f"{name}: the gradient of R is not finite"
    return R.detach()


def check_model(plugin: str | Path | types.ModuleType | None, name: str, options: dict[str, Any] | None = None, *,
                d: int = 3, n: int = 4, batch: int = 3, seed: int = 0, rtol: float = 1e-5) -> Any:
    """Build model ``name`` and check the :class:`~ibtest.ModelBase` contract on random inputs.

    Checks: ``n_params(d)`` = P > 0; ``blocks(d)`` slices cover [0, P) without overlap;
    ``predict`` gives [B, n]; ``loss`` equals ½ Σ (f − y)² (masked) and is [B]; ``grad`` [B, P]
    matches central finite differences of ``loss`` (relative error ≤ ``rtol``, at a random θ
    where no pre-activation sits on a kink); ``predictor`` returns a [B, Q] tensor. The optional
    hooks where the model has them: ``loss_hessian`` (:class:`~ibtest.LossHessian`) against
    autograd's Hessian of ``loss`` and ``loss_hessian_parts`` (:class:`~ibtest.LossHessianParts`)
    against ``loss_hessian``; the :class:`~ibtest.PiecewiseLinearUnits` members against
    ``predict`` and ``grad``; ``zero_set`` (a :class:`~ibtest.Polyhedron` that contains θ on labels
    θ fits, and not on labels it misses). Returns the model instance.
    """
    reg = _registry(plugin)
    m = reg.get("models", name).factory(**(options or {}))
    g = torch.Generator().manual_seed(seed)
    P = m.n_params(d)
    assert isinstance(P, int) and P > 0, f"{name}: n_params({d}) = {P!r}, expected a positive int"
    covered = torch.zeros(P, dtype=torch.int64)
    for sl in m.blocks(d).values():
        covered[sl] += 1
    assert bool((covered == 1).all()), f"{name}: blocks({d}) must cover 0..{P - 1} exactly once, got {m.blocks(d)}"
    theta = torch.randn(batch, P, generator=g, dtype=torch.float64)
    X = torch.randn(batch, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(batch, n, generator=g, dtype=torch.float64)
    mask = torch.ones(batch, n, dtype=torch.float64)
    mask[0, -1] = 0.0  # padding must not count
    f = m.predict(theta, X)
    assert f.shape == (batch, n), f"{name}: predict returned shape {tuple(f.shape)}, expected [B, n] = [{batch}, {n}]"
    L = m.loss(theta, X, y, mask)
    assert L.shape == (batch,), f"{name}: loss returned shape {tuple(L.shape)}, expected [{batch}]"
    want = 0.5 * (((f - y) * mask) ** 2).sum(-1)
    assert torch.allclose(L, want, rtol=1e-10, atol=1e-12), f"{name}: loss {L.tolist()} != ½Σ mask·(f−y)² {want.tolist()}"
    G = m.grad(theta, X, y, mask)
    assert G.shape == (batch, P), f"{name}: grad returned shape {tuple(G.shape)}, expected [{batch}, {P}]"
    h = 1e-6
    fd = torch.zeros_like(theta)
    for j in range(P):
        e = torch.zeros(P, dtype=torch.float64)
        e[j] = h
        fd[:, j] = (m.loss(theta + e, X, y, mask) - m.loss(theta - e, X, y, mask)) / (2 * h)
    err = float((G - fd).norm() / max(float(fd.norm()), 1e-12))
    assert err <= rtol, f"{name}: grad differs from finite differences of loss by {err:.3g} (relative)"
    pr = m.predictor(theta)
    assert isinstance(pr, torch.Tensor) and pr.dim() == 2 and pr.shape[0] == batch, (
        f"{name}: predictor returned {getattr(pr, 'shape', pr)!r}, expected [B, Q]")
    if isinstance(m, LossHessian):
        _check_loss_hessian(name, m, theta, X, y, mask)
        if isinstance(m, LossHessianParts):
            _check_loss_hessian_parts(name, m, theta, X, y, mask)
    if isinstance(m, PiecewiseLinearUnits):
        _check_units(name, m, theta, X, y, mask, g)
    _check_zero_set(name, m, theta, X, mask)
    return m


def _check_loss_hessian_parts(name: str, m: Any, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> None:
    """``loss_hessian_parts`` (:class:`~ibtest.LossHessianParts`) has the declared shapes and
    disjoint blocks, and assembles to ``loss_hessian``."""
    B, P = theta.shape
    parts = m.loss_hessian_parts(theta, X, y, mask)
    J, R, idx = parts
    u, k = idx.shape
    assert J.shape == (B, X.shape[1], P) and R.shape == (B, u, k, k), (
        f"{name}: loss_hessian_parts returned J {tuple(J.shape)}, R {tuple(R.shape)}, idx {tuple(idx.shape)}; "
        f"expected J [B, n, P] = [{B}, {X.shape[1]}, {P}] and R [B, u, k, k] for idx [u, k]")
    assert idx.unique().numel() == idx.numel() and int(idx.min()) >= 0 and int(idx.max()) < P, (
        f"{name}: loss_hessian_parts' blocks must be disjoint positions in [0, {P})")
    H = m.loss_hessian(theta, X, y, mask)
    err = float((parts.dense() - H).norm() / max(float(H.norm()), 1e-12))
    assert err <= 1e-12, f"{name}: loss_hessian_parts assembles to a Hessian {err:.3g} (relative) from loss_hessian"


def _check_loss_hessian(name: str, m: Any, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> None:
    """``loss_hessian`` [B, P, P] is symmetric and equals autograd's Hessian of the loss at a
    random θ (no pre-activation on a kink there)."""
    B, P = theta.shape
    H = m.loss_hessian(theta, X, y, mask)
    assert isinstance(H, torch.Tensor) and H.shape == (B, P, P), (
        f"{name}: loss_hessian returned {getattr(H, 'shape', H)!r}, expected [B, P, P] = [{B}, {P}, {P}]")
    assert torch.allclose(H, H.transpose(1, 2), rtol=1e-12, atol=1e-12), f"{name}: loss_hessian is not symmetric"
    for b in range(B):
        Xb, yb, mb = X[b:b + 1], y[b:b + 1], mask[b:b + 1]
        Ha = torch.autograd.functional.hessian(lambda t, Xb=Xb, yb=yb, mb=mb: m.loss(t.unsqueeze(0), Xb, yb, mb).sum(),
                                               theta[b])
        err = float((H[b] - Ha).norm() / max(float(Ha.norm()), 1e-12))
        assert err <= 1e-8, f"{name}: loss_hessian differs from autograd's Hessian of loss by {err:.3g} (relative)"


def _check_units(name: str, m: Any, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, g: torch.Generator) -> None:
    """The :class:`~ibtest.PiecewiseLinearUnits` members agree with the model's own ``predict``
    and ``grad``: f_θ(x_i) = Σ_j v_j σ(z_ij) with z = ``hidden_preactivations`` = ⟨w_j, x_i⟩ from
    ``units``, ``from_units`` inverts ``units``, z is linear in θ, and ``grad_on_pattern`` equals
    ``grad`` on θ's own pattern and the gradient of the pattern's loss (finite differences) on a
    random pattern."""
    lo, hi = (float(s) for s in m.slopes)
    assert isinstance(m.train_output, bool), f"{name}: train_output must be a bool"
    float(m.at_zero)
    B, P = theta.shape
    n, d = X.shape[1:]
    W, v = m.units(theta)
    assert W.dim() == 3 and W.shape[0] == B and W.shape[2] == d and v.shape == W.shape[:2], (
        f"{name}: units returned W {tuple(W.shape)}, v {tuple(v.shape)}; expected [B, m, d] and [B, m]")
    assert torch.equal(m.from_units(W, v), theta), f"{name}: from_units(*units(theta)) is not theta"
    z = m.hidden_preactivations(theta, X)
    assert z.shape == (B, n, W.shape[1]), f"{name}: hidden_preactivations returned {tuple(z.shape)}, expected [B, n, m]"
    assert torch.allclose(z, torch.einsum("bnd,bmd->bnm", X, W), rtol=1e-12, atol=1e-12), (
        f"{name}: hidden_preactivations is not <w_j, x_i> of units(theta)")
    th2 = torch.randn(theta.shape, generator=g, dtype=theta.dtype)
    lin = m.hidden_preactivations(2.0 * theta - 3.0 * th2, X)
    assert torch.allclose(lin, 2.0 * z - 3.0 * m.hidden_preactivations(th2, X), rtol=1e-10, atol=1e-10), (
        f"{name}: hidden_preactivations is not linear in theta")
    sig = torch.where(z > 0, hi * z, lo * z)
    f = (sig * v.unsqueeze(1)).sum(-1)
    assert torch.allclose(m.predict(theta, X), f, rtol=1e-10, atol=1e-12), (
        f"{name}: predict is not sum_j v_j sigma(z_ij) with the declared slopes {m.slopes}")
    own = torch.where(z > 0, hi, torch.where(z < 0, lo, torch.full_like(z, float(m.at_zero))))
    G = m.grad_on_pattern(theta, X, y, mask, own)
    assert torch.allclose(G, m.grad(theta, X, y, mask), rtol=1e-10, atol=1e-12), (
        f"{name}: grad_on_pattern on theta's own pattern differs from grad")
    pat = torch.where(torch.rand(z.shape, generator=g) < 0.5, lo, hi).to(theta.dtype)

    def loss_on(t: Tensor) -> Tensor:
        Wt, vt = m.units(t)
        zt = torch.einsum("bnd,bmd->bnm", X, Wt)
        r = ((pat * zt * vt.unsqueeze(1)).sum(-1) - y) * mask
        return 0.5 * (r * r).sum(-1)
    Gp = m.grad_on_pattern(theta, X, y, mask, pat)
    h = 1e-6
    fd = torch.zeros_like(theta)
    for j in range(P):
        e = torch.zeros(P, dtype=theta.dtype)
        e[j] = h
        fd[:, j] = (loss_on(theta + e) - loss_on(theta - e)) / (2 * h)
    if not m.train_output:  # frozen output weights: their gradient is 0
        fd = torch.where(Gp == 0, torch.zeros_like(fd), fd)
    err = float((Gp - fd).norm() / max(float(fd.norm()), 1e-12))
    assert err <= 1e-5, f"{name}: grad_on_pattern differs from finite differences of the pattern's loss by {err:.3g}"


def _check_zero_set(name: str, m: Any, theta: Tensor, X: Tensor, mask: Tensor) -> None:
    """``zero_set`` on labels made by θ itself (y = f_θ(X), so θ ∈ Z(D)) returns None or a
    :class:`~ibtest.Polyhedron` of the right shapes that contains θ (or its predictor), is
    feasible, and excludes a θ that does not fit."""
    B, P = theta.shape
    y_fit = m.predict(theta, X).detach()
    Z = m.zero_set(X, y_fit, mask)
    if Z is None:
        return
    assert isinstance(Z, Polyhedron), f"{name}: zero_set returned {type(Z).__name__}, expected ibtest.Polyhedron or None"
    x = theta if Z.on == "theta" else m.predictor(theta)
    Q = x.shape[1]
    assert Z.A_eq.shape[0] == B and Z.A_eq.shape[2] == Q and Z.b_eq.shape == Z.A_eq.shape[:2], (
        f"{name}: zero_set A_eq {tuple(Z.A_eq.shape)} / b_eq {tuple(Z.b_eq.shape)} do not fit x [B, Q] = [{B}, {Q}]")
    assert Z.A_ub.shape[0] == B and Z.A_ub.shape[2] == Q and Z.b_ub.shape == Z.A_ub.shape[:2], (
        f"{name}: zero_set A_ub {tuple(Z.A_ub.shape)} / b_ub {tuple(Z.b_ub.shape)} do not fit x [B, Q] = [{B}, {Q}]")
    assert bool(Z.feasible.all()), f"{name}: zero_set calls a dataset fitted by theta infeasible"
    scale = 1.0 + float(x.abs().max()) * float(X.abs().max())
    viol = Z.violation(x)
    assert bool((viol <= 1e-9 * scale).all()), f"{name}: zero_set excludes theta on labels theta fits (violation {viol.tolist()})"
    far = m.zero_set(X, y_fit + mask, mask)  # every real label moved by 1: theta no longer fits
    if isinstance(far, Polyhedron):
        assert bool((far.violation(x) > 1e-6).all() | ~far.feasible.all()), (
            f"{name}: zero_set contains theta on labels theta does not fit")


def check_dataset(plugin: str | Path | types.ModuleType | None, name: str, options: dict[str, Any] | None = None, *,
                  seed: int = 0) -> Any:
    """Generate dataset ``name`` twice from the same seed and check the :class:`~ibtest.DataBatch`.

    Checks: X [k, n, d], y [k, n], mask [k, n] float64, one label per dataset, finite values,
    mask entries in {0, 1}, and the same output for the same seed (studies must be
    reproducible). Returns the DataBatch.
    """
    reg = _registry(plugin)
    spec = reg.get("datasets", name)
    opts = {k: o.default for k, o in spec.options.items() if o.default is not None}
    opts.update(options or {})
    b1 = spec.generate(torch.Generator().manual_seed(seed), **opts)
    b2 = spec.generate(torch.Generator().manual_seed(seed), **opts)
    X, y, mask = b1.X, b1.y, b1.mask
    assert X.dim() == 3, f"{name}: X has shape {tuple(X.shape)}, expected [k, n, d]"
    k, n, _ = X.shape
    assert y.shape == (k, n), f"{name}: y has shape {tuple(y.shape)}, expected [{k}, {n}]"
    assert mask.shape == (k, n), f"{name}: mask has shape {tuple(mask.shape)}, expected [{k}, {n}]"
    for t, what in ((X, "X"), (y, "y"), (mask, "mask")):
        assert t.dtype == torch.float64, f"{name}: {what} is {t.dtype}, expected torch.float64"
        assert bool(torch.isfinite(t).all()), f"{name}: {what} has non-finite entries"
    assert bool(((mask == 0) | (mask == 1)).all()), f"{name}: mask entries must be 0 or 1"
    assert len(b1.labels) == k, f"{name}: {len(b1.labels)} labels for {k} datasets"
    assert torch.equal(b1.X, b2.X) and torch.equal(b1.y, b2.y), f"{name}: not reproducible from the same seed (use rng)"
    return b1
