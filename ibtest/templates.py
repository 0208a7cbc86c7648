'''``ibtest new KIND NAME``: write a commented, working plugin template, its tests and a study.

:func:`write_template` writes three files into a directory:

* ``NAME.py``: the plugin (a hypothesis R(θ), a model f_θ, or a dataset family), registered
  with ``@ibtest.hookimpl`` exactly as a built-in one; ``ibtest list --plugin NAME.py`` shows it;
* ``test_NAME.py``: pytest tests written with :mod:`ibtest.testing`, passing as generated;
* ``NAME_study.yaml``: a small study that uses the plugin (``ibtest run NAME_study.yaml``).

Each template works unchanged, so the author edits from something that runs.
'''
from __future__ import annotations

import keyword
from pathlib import Path
from string import Template

from ibtest.base.errors import UserError
from ibtest.study.builtin import THEOREM3, study_section

KINDS = ("hypothesis", "model", "dataset")

# ------------------------------------------------------------------------------------------
HYPOTHESIS = Template('''"""$name: a candidate implicit regularizer R(θ) for ibtest.

The claim put to the test: gradient flow (GF) started at θ0 converges to a point of
argmin { R(θ) : L(θ; D) = 0 } on every dataset D where it reaches zero loss. ibtest refutes it
with two GF solutions θ1, θ2 from the same θ0 that each fit the other's dataset yet get
different values of R (one of them is then not a minimizer).

Edit ``$name`` below (keep the shapes), then

    python -m pytest test_$name.py         # the generated tests (ibtest.testing)
    ibtest run ${name}_study.yaml           # Vardi & Shamir's Theorem 3 study with your R
    ibtest list --plugin $name.py           # is it registered?

As generated, R is the ℓp distance to the initialization, ‖θ − θ0‖_p: GF on a linear model
converges to the closest interpolator in ℓ2 (it survives there, p = 2), while the single
ReLU neuron of the paper's Theorem 3 refutes it for every p.
"""
from __future__ import annotations

import torch

import ibtest


def $name(theta: torch.Tensor, ctx: ibtest.HypothesisContext, p: float = 2.0) -> torch.Tensor:
    """R(θ) = ‖θ − θ0‖_p.

    theta: [B, P] float64, one parameter vector per row (B solutions judged at once; rows must
           not interact). With ``on="predictor"`` below you get the model's end-to-end predictor
           [B, Q] instead (e.g. β = u∘u − v∘v of a diagonal net).
    ctx:   what R may read besides θ, limited by ``depends_on``: ``ctx.model`` always;
           ``ctx.init`` [B, P] (θ0 of each row) for "init" and "data"; ``ctx.X`` [B, n, d],
           ``ctx.y`` [B, n], ``ctx.mask`` [B, n] for "data" only.
    p:     a parameter; a study may give a list (p: [1, 2, .inf]) to test a whole family.
    Returns [B] float64. Use torch operations: ibtest differentiates R by autograd (‖∇R‖ enters
    the margin that absorbs solver error).
    """
    return torch.linalg.vector_norm(theta - ctx.init, ord=float(p), dim=-1)


def ${name}_cvx(x, ctx: ibtest.CvxContext, p: float = 2.0):
    """The same R as a cvxpy expression of one instance (x: a cvxpy Variable [P], ctx.init a numpy
    array [P]). With ``convex=True`` it lets ibtest compute the global minimum of R over the
    zero-loss set (a polyhedron for neurons and linear models): a survival there is *certified*,
    not just a local search that found nothing (verdict "unrefuted"). Delete it (and
    ``convex``/``cvx`` below) if your R is not convex."""
    import cvxpy as cp

    return cp.norm(x - ctx.init, float(p))


@ibtest.hookimpl
def ibtest_hypotheses():
    return [
        ibtest.Hypothesis(
            name="$name",
            fn=$name,
            # "params": R(θ) alone, claimed for every instance (any two cross-fitting solutions
            #   refute it); "init": R(θ; θ0) (only pairs sharing θ0 count); "data": R(θ; θ0, D)
            #   (never refuted across datasets: verdict inconclusive).
            depends_on="init",
            params={"p": 2.0},             # defaults of fn's keyword parameters
            doc="l_p distance to the initialization |theta - theta0|_p",
            kind="regularizer",            # or "invariant": claims C(theta_inf) = C(theta0)
            on="theta",                    # or "predictor": fn sees model.predictor(theta)
            atol=1e-9, rtol=1e-9,          # tolerance floor of the margin
            convex=True, cvx=${name}_cvx,  # R is convex: its global argmin on Z(D) is computable
        ),
    ]
''')

HYPOTHESIS_TEST = Template('''"""Tests of the $name hypothesis plugin, with ibtest.testing
(run: python -m pytest test_$name.py)."""
from pathlib import Path

from ibtest.testing import assert_falsified, assert_survives, check_hypothesis, run_hypothesis

PLUGIN = Path(__file__).with_name("$name.py")


def test_contract():
    """R returns [B] finite float64 values, row by row, with a finite gradient."""
    check_hypothesis(PLUGIN, "$name")
    check_hypothesis(PLUGIN, "$name", {"p": 1.0})


def test_theorem3_refutes_it():
    """Vardi & Shamir, Theorem 3 (single ReLU neuron from w(0) = 0): any R that is not constant
    on the admissible pairs is falsified. Expect this for almost every R you write."""
    result = run_hypothesis(PLUGIN, "theorem3", params={"p": [1.0, 2.0]})
    assert_falsified(result, "$name")


def test_linear_control():
    """Linear model: GF converges to the interpolator closest to θ0 in ℓ2 (Theorem 1), so the
    template's R survives at p = 2, certified (its convex minimum over Z(D) is θ∞). Change or
    delete this test when you change R."""
    result = run_hypothesis(PLUGIN, "linear", params={"p": 2.0})
    assert_survives(result, "$name", grade="certified")
''')

# The study reuses the paper's Theorem 3 study (hypotheses/vardi_shamir_theorem3.yaml, the one
# source of it) from ``model:`` to ``constructions:`` verbatim; only name, plugin and hypotheses differ.
HYPOTHESIS_STUDY = Template('''# Vardi & Shamir (COLT 2021), Theorem 3, with the $name hypothesis (plugin $name.py).
# Run: ibtest run ${name}_study.yaml
study: $name-theorem3
description: Single ReLU neuron from w(0) = 0 on the paper's Theorem 3 data; is $name refuted?
seed: 0
plugins: [$name.py]            # relative to this file
''' + study_section(THEOREM3, "model", "hypotheses") + '''hypotheses:
  - {name: $name, params: {p: [1, 2, .inf]}, expect: falsified}
  - {name: l2_norm, expect: falsified}     # a built-in, for comparison
''')

# ------------------------------------------------------------------------------------------
MODEL = Template('''"""$name: a model f_θ(x) for ibtest.

As generated: a single neuron with a smooth, strictly increasing activation
f_w(x) = σ(⟨w, x⟩), σ(z) = z + bend·tanh(z), θ = w ∈ R^d. For a strictly monotone σ, gradient
flow moves w − w(0) inside the row space of X, so it ends at the interpolator closest to w(0)
(Theorem 1 of Vardi & Shamir: the built-in ``dist_to_init`` should survive), while two inits on
one dataset end at different interpolators (``l2_norm`` is falsified, see test_$name.py).

Edit ``$cls`` (keep the shapes), then

    python -m pytest test_$name.py         # contract checks and a small study
    ibtest run ${name}_study.yaml           # a study on Gaussian data
    ibtest list --plugin $name.py

Conventions: float64 tensors, batch dimension first; θ [B, P], X [B, n, d], y [B, n], mask [B, n]
(1 real point, 0 padding).
"""
from __future__ import annotations

import torch

import ibtest
from ibtest import Option


class $cls(ibtest.ModelBase):
    """f_w(x) = σ(⟨w, x⟩) with σ(z) = z + bend·tanh(z)."""

    def __init__(self, bend: float = 0.5):
        if bend < 0:
            raise ValueError(f"bend must be >= 0 (got {bend})")
        super().__init__(bend=bend)   # options are recorded for certificates
        self.bend = float(bend)

    def n_params(self, d: int) -> int:
        """P, the length of θ for inputs in R^d."""
        return d

    def blocks(self, d: int) -> dict[str, slice]:
        """Named blocks of θ, for reports and plots (coordinates are called w1, w2, ...)."""
        return {"w": slice(0, d)}

    def predict(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """f_θ(x_i): θ [B, P], X [B, n, d] -> [B, n]."""
        z = torch.einsum("bnd,bd->bn", X, theta)
        return z + self.bend * torch.tanh(z)

    # The square loss L(θ) = ½ Σ_i mask_i (f_θ(x_i) − y_i)² comes from ibtest.ModelBase, and so
    # does its gradient, by autograd, if you delete ``grad`` below. A hand-written gradient is
    # much faster (solvers call it thousands of times) and is where a σ'(0) convention at a
    # kink belongs (autograd picks its own); test_$name.py checks it against finite differences.

    def grad(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """∇_θ L = Σ_i mask_i (f_θ(x_i) − y_i) σ'(⟨w, x_i⟩) x_i, [B, P]; GF is dθ/dt = −grad."""
        z = torch.einsum("bnd,bd->bn", X, theta)
        t = torch.tanh(z)
        r = (z + self.bend * t - y) * mask * (1.0 + self.bend * (1.0 - t * t))
        return torch.einsum("bn,bnd->bd", r, X)

    def rotate(self, theta: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """θ' with f_θ'(M x) = f_θ(x) for orthogonal M [B, d, d]: enables the ``rotate``
        construction. Delete it if your model has no such symmetry."""
        return torch.einsum("bij,bj->bi", M, theta)

    # Optional hooks. Delete one and a default takes its place; keep it and test_$name.py checks
    # it (ibtest.testing.check_model).

    def loss_hessian(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """∇²L [B, P, P] = Σ_i mask_i (σ'(z_i)² + r_i σ''(z_i)) x_i x_iᵀ, r_i = f_θ(x_i) − y_i
        (ibtest.LossHessian): the adaptive solver's stiff tail (a Rosenbrock step) uses it.
        Without it the Hessian comes from automatic differentiation of ``grad``: slower."""
        z = torch.einsum("bnd,bd->bn", X, theta)
        t = torch.tanh(z)
        s1 = 1.0 + self.bend * (1.0 - t * t)
        s2 = -2.0 * self.bend * t * (1.0 - t * t)
        c = mask * (s1 * s1 + (z + self.bend * t - y) * s2)
        H = torch.matmul(X.transpose(1, 2) * c.unsqueeze(1), X)
        return 0.5 * (H + H.transpose(1, 2))

    def zero_set(self, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> ibtest.Polyhedron:
        """Z(D) = {w : ⟨w, x_i⟩ = σ⁻¹(y_i)}: σ is strictly increasing, so each label fixes one
        pre-activation and Z(D) is affine, an ibtest.Polyhedron in θ (padded points: zero rows).
        The witness search and the optimality certificate then work on Z(D) exactly; without it
        they follow r(θ) = 0 by Gauss–Newton projection."""
        z = y / (1.0 + self.bend)
        for _ in range(60):  # Newton on σ(z) = y (σ' ≥ 1)
            t = torch.tanh(z)
            z = z - (z + self.bend * t - y) / (1.0 + self.bend * (1.0 - t * t))
        m = (mask > 0).to(X.dtype)
        B, _, d = X.shape
        return ibtest.Polyhedron("theta", X * m[..., None], z * m, X.new_zeros(B, 0, d), X.new_zeros(B, 0),
                                 torch.ones(B, dtype=torch.bool))

    # Also optional: ``predictor(theta) -> [B, Q]``, the end-to-end predictor hypotheses declared
    # with on="predictor" see (default: θ itself); and for a net of piecewise-linear units
    # f(x) = Σ_j v_j σ(⟨w_j, x⟩), the members of ibtest.PiecewiseLinearUnits (units, slopes,
    # σ'(0), grad_on_pattern), with which the adaptive solver follows its kinks as events.


def $name(bend: float = 0.5) -> $cls:
    return $cls(bend=bend)


@ibtest.hookimpl
def ibtest_models():
    return [
        ibtest.Model(
            name="$name",
            factory=$name,                 # called with the study's model options
            doc="single neuron with sigma(z) = z + bend * tanh(z) (smooth, strictly increasing)",
            options={"bend": Option(0.5, float, "weight of the tanh term (>= 0)")},
        ),
    ]
''')

MODEL_TEST = Template('''"""Tests of the $name model plugin, with ibtest.testing (run: python -m pytest test_$name.py)."""
from pathlib import Path

from ibtest.base.status import CONVERGED
from ibtest.testing import assert_falsified, check_model, run_model

PLUGIN = Path(__file__).with_name("$name.py")


def test_contract():
    """Shapes, the square loss, grad against finite differences, blocks, predictor, and the
    optional hooks the model has (loss_hessian against autograd, zero_set contains θ on labels
    θ fits)."""
    check_model(PLUGIN, "$name")
    check_model(PLUGIN, "$name", {"bend": 0.0})


def test_small_study():
    """Gradient flow (adaptive solver) reaches zero loss on small Gaussian datasets (n = 2 < d = 3)
    from two Gaussian inits each; the two limits on one dataset differ and fit each other's
    dataset, so the θ-only R = ‖θ‖₂ is falsified."""
    result = run_model(PLUGIN, "$name", hypotheses=["l2_norm"])
    assert not result.errors, result.errors
    assert int((result.triples.status == CONVERGED).sum()) == len(result.triples), result.summary()
    assert_falsified(result, "l2_norm")
''')

MODEL_STUDY = Template('''# A small study on the $name model (plugin $name.py). Run: ibtest run ${name}_study.yaml
study: $name-gaussian
description: $name on Gaussian data (n = 2 < d = 3), two Gaussian inits per dataset.
seed: 0
plugins: [$name.py]            # relative to this file
model: {name: $name, bend: 0.5}
init: {name: gaussian, scale: 0.5, count: 2}
datasets:
  - {name: gaussian, n: 2, d: 3, count: 3, labels: teacher_relu}
# any model with a gradient ('exact' is for piecewise-linear neurons only)
solver: {name: adaptive}
fit_tol: 1.0e-16               # the study's fit rule (relative loss), one for every solver
constructions: []              # e.g. [consistent_augmentation]: pairs sharing θ0, more solving
hypotheses:
  - {name: l2_norm, expect: falsified}   # two inits on one dataset end at different interpolators
  - {name: dist_to_init}                 # needs pairs sharing θ0 (a construction) to be judged
''')

# ------------------------------------------------------------------------------------------
DATASET = Template('''"""$name: a dataset family for ibtest.

As generated: n inputs drawn uniformly on the unit sphere of R^d, labels from a random ReLU
teacher, y_i = scale · max(0, ⟨w*, x_i⟩); ``count`` independent datasets per option value.

Edit ``$name`` below (keep the shapes), then

    python -m pytest test_$name.py         # contract checks and a small study
    ibtest run ${name}_study.yaml           # the ReLU neuron on your data
    ibtest list --plugin $name.py
"""
from __future__ import annotations

import torch

import ibtest
from ibtest import Option


def $name(rng: torch.Generator, n: int = 3, d: int = 4, count: int = 2, scale: float = 1.0) -> ibtest.DataBatch:
    """``count`` datasets of n points in R^d.

    rng: a seeded torch.Generator (draw every random number from it: studies are reproducible).
    Returns DataBatch(X [count, n, d], y [count, n], labels [count]) in float64; pass
    ``mask`` [count, n] (1 real, 0 padding) only if datasets of one batch differ in n.
    """
    X = torch.randn(count, n, d, generator=rng, dtype=torch.float64)
    X = X / X.norm(dim=-1, keepdim=True)
    teacher = torch.randn(count, d, generator=rng, dtype=torch.float64)
    y = scale * torch.einsum("knd,kd->kn", X, teacher).clamp_min(0.0)
    return ibtest.DataBatch(X, y, [f"#{k}" for k in range(count)])


@ibtest.hookimpl
def ibtest_datasets():
    return [
        ibtest.Dataset(
            name="$name",
            generate=$name,
            doc="inputs uniform on the unit sphere, labels from a random ReLU teacher",
            options={
                # sweep=True: a study may give a list (n: [3, 4]); generate is called per value
                "n": Option(3, int, "points per dataset", sweep=True),
                "d": Option(4, int, "input dimension", sweep=True),
                "count": Option(2, int, "independent datasets"),
                "scale": Option(1.0, float, "label scale", sweep=True),
            },
        ),
    ]
''')

DATASET_TEST = Template('''"""Tests of the $name dataset plugin, with ibtest.testing (run: python -m pytest test_$name.py)."""
from pathlib import Path

from ibtest.testing import assert_survives, check_dataset, run_dataset

PLUGIN = Path(__file__).with_name("$name.py")


def test_contract():
    """Shapes [k, n, d] / [k, n], float64, finite, one label per dataset, reproducible."""
    batch = check_dataset(PLUGIN, "$name", {"n": 3, "d": 4, "count": 2})
    assert batch.X.shape == (2, 3, 4)


def test_relu_neuron_study():
    """The paper's ReLU neuron (σ'(0) = 1, from w(0) = 0) on your data: the study runs."""
    result = run_dataset(PLUGIN, "$name", model="relu_neuron", hypotheses=["l2_norm"])
    assert not result.errors, result.errors
    assert len(result.triples) > 0, result.summary()


def test_linear_control():
    """A linear model from θ0 = 0 ends at the minimum-ℓ2-norm interpolator on any data with
    n <= d: l2_norm survives every admissible pair."""
    result = run_dataset(PLUGIN, "$name", {"n": 3, "d": 4}, model="linear", hypotheses=["l2_norm"],
                         constructions=["consistent_augmentation"])
    assert_survives(result, "l2_norm")
''')

DATASET_STUDY = Template('''# The paper's single ReLU neuron on the $name dataset (plugin $name.py).
# Run: ibtest run ${name}_study.yaml
study: $name-relu
description: Single ReLU neuron from w(0) = 0 (sigma'(0) = 1) on $name data.
seed: 0
plugins: [$name.py]            # relative to this file
model: {name: relu_neuron, relu_grad_at_zero: 1}
init: {name: zeros}
datasets:
  - {name: $name, n: 3, d: 4, count: 4}
solver: {name: exact}
fit_tol: 1.0e-20               # the study's fit rule (relative loss), one for every solver
constructions:
  - blocking_point
  - consistent_augmentation
  - {name: rotate, count: 2, max_pairs: 8}
hypotheses:
  - {name: l2_norm}
  - {name: dist_to_init}
''')

TEMPLATES: dict[str, tuple[Template, Template, Template]] = {
    "hypothesis": (HYPOTHESIS, HYPOTHESIS_TEST, HYPOTHESIS_STUDY),
    "model": (MODEL, MODEL_TEST, MODEL_STUDY),
    "dataset": (DATASET, DATASET_TEST, DATASET_STUDY),
}


def _class_name(name: str) -> str:
    """my_model -> MyModel (the model template's class)."""
    cls = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return cls if cls != name else cls + "Model"


def write_template(kind: str, name: str, directory: str | Path = ".", *, overwrite: bool = False) -> list[Path]:
    """Write ``NAME.py``, ``test_NAME.py`` and ``NAME_study.yaml`` for ``kind`` into ``directory``.

    ``kind``: "hypothesis", "model" or "dataset". ``name`` must be a Python identifier (it names
    the plugin, its function and its files) and not a keyword. Existing files are never replaced
    unless ``overwrite``. Returns the paths written: [plugin, test, study].
    """
    if kind not in TEMPLATES:
        raise UserError(f"ibtest new: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("test"):
        raise UserError(f"ibtest new: name {name!r} must be a Python identifier (letters, digits, _; "
                        f"not a keyword, not starting with 'test'), e.g. my_reg")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / f"{name}.py", d / f"test_{name}.py", d / f"{name}_study.yaml"]
    clash = [str(p) for p in paths if p.exists()]
    if clash and not overwrite:
        raise UserError(f"ibtest new: {', '.join(clash)} already exist(s); choose another name or directory")
    for tpl, p in zip(TEMPLATES[kind], paths):
        p.write_text(tpl.substitute(name=name, cls=_class_name(name)))
    return paths
