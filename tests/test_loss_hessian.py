"""The models' analytic ``loss_hessian`` hook (the stiff tail's Hessian, ``stiff.hessian``) against
the forward-mode AD Hessian of their own ``grad`` (``stiff.hessian_ad``), on and off kinks, and the
AD fallback for a model without the hook."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

import ibtest
from ibtest.solve.solvers.stiff import hessian, hessian_ad
from plugins.models.neurons import leaky_relu_neuron, linear, relu_neuron
from plugins.models.two_layer_relu import two_layer_relu

F64 = torch.float64


def _data(seed, b, n, d, masked):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(b, n, d, generator=g, dtype=F64)
    y = torch.randn(b, n, generator=g, dtype=F64)
    mask = (torch.rand(b, n, generator=g, dtype=F64) < 0.7).to(F64) if masked else torch.ones(b, n, dtype=F64)
    return g, X, y, mask


def _close(H, ref):
    scale = ref.abs().amax((1, 2), keepdim=True).clamp_min(1e-300)
    return float(((H - ref).abs() / scale).max())


def _pattern_hessian(model, theta, X, y, mask, s):
    """Reference for the two-layer net: the Jacobian of its gradient with the pattern s [1, n, m]
    held fixed (σ(z) = s·z), by forward-mode AD of that gradient, symmetrized; with v frozen its
    v rows and columns are 0."""

    def g(t):
        W, v = model.split(t.unsqueeze(0))
        z = torch.matmul(X, W.transpose(1, 2))
        r = (torch.matmul(z * s, v.unsqueeze(-1)).squeeze(-1) - y) * mask
        gW = torch.matmul((r.unsqueeze(-1) * s * v.unsqueeze(1)).transpose(1, 2), X).flatten(1)
        gv = torch.matmul(r.unsqueeze(1), z * s).squeeze(1)
        return torch.cat([gW, gv], -1)[0]

    H = torch.func.jacfwd(g)(theta[0])
    H = 0.5 * (H + H.T)
    if not model.train_output:
        H[model.m * X.shape[-1]:] = 0.0
        H[:, model.m * X.shape[-1]:] = 0.0
    return H.unsqueeze(0)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(m=st.integers(1, 5), d=st.integers(1, 5), n=st.integers(1, 5), train_output=st.booleans(),
       at_zero=st.sampled_from([0, 1]), masked=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_two_layer_hook_matches_ad(m, d, n, train_output, at_zero, masked, seed):
    model = two_layer_relu(width=m, train_output=train_output, relu_grad_at_zero=at_zero)
    b = 6
    g, X, y, mask = _data(seed, b, n, d, masked)
    th = torch.randn(b, m * d + m, generator=g, dtype=F64)
    H = model.loss_hessian(th, X, y, mask)
    assert H.shape == (b, m * d + m, m * d + m)
    assert torch.equal(H, H.transpose(1, 2))
    assert _close(H, hessian_ad(model, th, X, y, mask)) < 1e-12
    assert torch.equal(hessian(model, th, X, y, mask), H)  # stiff.hessian takes the hook
    if not train_output:  # v frozen: its rows and columns are 0
        assert not bool(H[:, m * d:].any()) and not bool(H[:, :, m * d:].any())


@settings(max_examples=40, deadline=None, derandomize=True)
@given(d=st.integers(1, 5), n=st.integers(1, 5), kind=st.sampled_from(["relu0", "relu1", "leaky", "linear"]),
       masked=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_neuron_hook_matches_ad(d, n, kind, masked, seed):
    model = {"relu0": relu_neuron(0), "relu1": relu_neuron(1), "leaky": leaky_relu_neuron(0.1),
             "linear": linear()}[kind]
    b = 6
    g, X, y, mask = _data(seed, b, n, d, masked)
    th = torch.randn(b, d, generator=g, dtype=F64)
    H = model.loss_hessian(th, X, y, mask)
    assert torch.equal(H, H.transpose(1, 2))
    assert _close(H, hessian_ad(model, th, X, y, mask)) < 1e-12


def _on_kink(m, d, n, seed):
    """θ with z_00 = ⟨w_0, x_0⟩ exactly 0 (x_0 = e_0, w_0[0] = 0) for both signs of v."""
    g, X, y, mask = _data(seed, 1, n, d, False)
    X[:, 0] = 0.0
    X[:, 0, 0] = 1.0
    th = torch.randn(1, m * d + m, generator=g, dtype=F64)
    th[:, 0] = 0.0
    return X, y, mask, th


def test_two_layer_hook_on_a_kink_uses_the_declared_derivative():
    """z_00 = 0 exactly. σ'(0) = 1: the hook equals the AD Hessian (``clamp_min``'s forward
    derivative at 0 is 1 too). Both conventions: the hook equals the Jacobian of the gradient with
    the declared pattern (s_00 = σ'(0)) held fixed. σ'(0) = 0: the AD path does not follow it
    (it takes ``clamp_min``'s derivative 1 for a but s = 0), so the two differ there."""
    for train_output in (True, False):
        for seed in range(3):
            X, y, mask, th = _on_kink(3, 2, 3, seed)
            for at_zero in (0, 1):
                model = two_layer_relu(width=3, train_output=train_output, relu_grad_at_zero=at_zero)
                z = model.hidden_preactivations(th, X)
                assert z[0, 0, 0].item() == 0.0
                s = ((z >= 0) if at_zero else (z > 0)).to(F64)
                H = model.loss_hessian(th, X, y, mask)
                ref = _pattern_hessian(model, th, X, y, mask, s)
                ref = 0.5 * (ref + ref.transpose(1, 2))
                assert _close(H, ref) < 1e-12
                if at_zero == 1:
                    assert _close(H, hessian_ad(model, th, X, y, mask)) < 1e-12


def test_neuron_hook_on_a_kink_uses_the_declared_derivative():
    """z_0 = 0 exactly: H = Σ_i mask_i s_i² x_i x_iᵀ with s_0 = σ'(0) (the AD path takes the
    derivative of ``where(z > 0, ...)``, the z < 0 slope, there)."""
    g, X, y, mask = _data(0, 1, 3, 3, False)
    X[:, 0] = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    th = torch.randn(1, 3, generator=g, dtype=F64)
    th[:, 0] = 0.0
    for model, s0 in ((relu_neuron(1), 1.0), (relu_neuron(0), 0.0)):
        z = model.preactivation(th, X)
        assert z[0, 0].item() == 0.0
        s = torch.where(z > 0, 1.0, 0.0).to(F64)
        s[0, 0] = s0
        ref = torch.einsum("bn,bni,bnj->bij", mask * s * s, X, X)
        assert _close(model.loss_hessian(th, X, y, mask), ref) < 1e-14


class _Quadratic(ibtest.ModelBase):
    """f_θ(x) = ⟨θ, x⟩², with a hand-written grad and no ``loss_hessian``."""

    def n_params(self, d):
        return d

    def predict(self, theta, X):
        return torch.einsum("bnd,bd->bn", X, theta) ** 2

    def grad(self, theta, X, y, mask):
        z = torch.einsum("bnd,bd->bn", X, theta)
        return torch.einsum("bn,bnd->bd", (z * z - y) * mask * 2 * z, X)


def test_model_without_the_hook_gets_the_ad_hessian():
    model = _Quadratic()
    assert getattr(model, "loss_hessian", None) is None
    g, X, y, mask = _data(1, 4, 3, 2, True)
    th = torch.randn(4, 2, generator=g, dtype=F64)
    H = hessian(model, th, X, y, mask)
    assert torch.equal(H, hessian_ad(model, th, X, y, mask))
    # L = ½ Σ mask (z² − y)², z = ⟨θ, x⟩: ∇²L = Σ mask (6 z² − 2 y) x xᵀ
    z = torch.einsum("bnd,bd->bn", X, th)
    ref = torch.einsum("bn,bni,bnj->bij", mask * (6 * z * z - 2 * y), X, X)
    assert _close(H, ref) < 1e-12
