"""The solve layer's trajectory API (ibtest.solve.trajectory.flow_path): a library dense-output
integration of dθ/dt = −∇L(θ) that plots draw from."""
from __future__ import annotations

import numpy as np
import torch

from ibtest.plugin.manager import load_registry
from ibtest.solve.trajectory import flow_path


def _theorem3():
    reg = load_registry()
    model = reg.get("models", "relu_neuron").factory(relu_grad_at_zero=1)
    b = reg.get("datasets", "vardi_shamir_theorem3").generate(torch.Generator(), alpha=1.0, gamma=5.0)
    return model, b.X[0], b.y[0], b.mask[0]


def test_flow_path_reaches_the_exact_limit_and_stops_settled():
    """From θ0 = 0 the flow ends at the closed-form limit (5, −1, s), s = −0.20905 for γ = 5."""
    model, X, y, mask = _theorem3()
    fp = flow_path(model, X, y, mask, torch.zeros(3))
    assert fp.t[0] == 0 and (np.diff(fp.t) > 0).all()
    assert fp.theta.shape == (len(fp.t), 3)
    assert np.allclose(fp.theta[-1], [5.0, -1.0, -0.20905], atol=1e-3)
    assert fp.reason in ("settled", "stationary")


def test_flow_path_on_a_grid_and_to_an_end_point():
    """``t_eval`` gives θ on that grid by dense output; ``theta_end`` stops the flow near it."""
    model, X, y, mask = _theorem3()
    full = flow_path(model, X, y, mask, torch.zeros(3))
    grid = np.array([0.0, 0.1, 1.0, 5.0])
    on = flow_path(model, X, y, mask, torch.zeros(3), grid)
    assert on.t.tolist() == grid.tolist() and on.theta.shape == (4, 3)
    assert np.allclose(on.theta, full.at(grid), atol=1e-9)
    assert np.allclose(on.theta[0], 0.0)
    end = torch.tensor(full.theta[-1])
    stop = flow_path(model, X, y, mask, torch.zeros(3), theta_end=end, stop_tol=1e-2)
    assert stop.reason == "end point"
    assert np.linalg.norm(stop.theta[-1] - end.numpy()) <= 1e-2 * (1 + float(end.norm())) * (1 + 1e-6)
