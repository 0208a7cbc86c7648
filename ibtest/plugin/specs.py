"""The spec objects plugins return from their hooks.

Every plugin kind (model, dataset, init, solver, construction, hypothesis) is described by one
small frozen dataclass: a ``name`` (unique per kind), a one-line ``doc``, the ``options`` it accepts
(each an :class:`Option` with a default and a type that pydantic validates) and the callable that
does the work. Conventions shared by all of them:

* tensors are ``torch.float64``; a batch dimension ``B`` comes first;
* a dataset is ``X [B, n, d]``, ``y [B, n]`` and ``mask [B, n]`` (1.0 for a real point, 0.0 for
  padding, so datasets of different ``n`` share one batch);
* parameters are one flat vector per instance, ``theta [B, P]``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import torch

Tensor = torch.Tensor



#: the default of a study's fit rule ``fit_tol`` (relative, :mod:`ibtest.solve.fit`), which the
#: engine hands to every solver (a certificate may only be stricter)
DEFAULT_FIT_TOL = 1e-20

@dataclass(frozen=True)
class Option:
    """One option a plugin accepts in a study.

    ``type`` is any type pydantic can validate (``float``, ``int``, ``list[float]``,
    ``Literal[0, 1]`` ...), with constraints where a value has a range:
    ``Annotated[int, Field(ge=1)]`` (``from pydantic import Field``). With ``sweep=True`` the
    study may also give a (non-empty) list of such values; the engine then expands the option
    into one plugin instance per value (a family).

    Every value is checked when the study is validated, before anything runs: a bool never
    passes for a number (YAML's ``true`` is not 1), no number is NaN, none is ±inf unless
    ``allow_inf``, and an option without declared bounds follows two conventions: a plain
    ``int`` is ≥ 0 (counts, sizes, budgets) and a plain ``float`` whose name ends in ``tol``
    (a tolerance) is ≥ 0. Declare an ``Annotated`` type to state other bounds.
    """

    default: Any = None
    type: Any = Any
    doc: str = ""
    sweep: bool = False
    required: bool = False
    allow_inf: bool = False


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PiecewiseLinearNeuron:
    """Declares f_w(x) = σ(⟨w, x⟩) with σ piecewise linear: σ(z) = pos·z (z > 0), neg·z (z < 0).

    ``at_zero`` is the convention σ'(0) used by gradient flow when a pre-activation is exactly
    0. Between activation switches the flow of such a model is linear, which is what the
    ``exact`` solver exploits. θ = w, so P = d.
    """

    pos: float = 1.0
    neg: float = 0.0
    at_zero: float = 1.0


class ModelBase:
    """Base class of a model instance (a model spec's ``factory`` returns one).

    Subclasses implement :meth:`n_params` and :meth:`predict`; the square loss and its gradient
    follow. The gradient defaults to autograd; override :meth:`grad` with a hand-written one for
    speed or to fix a σ'(0) convention autograd would not follow.

    Optional capabilities, declared as protocols (a model has one when it defines its members;
    ``isinstance(model, PiecewiseLinearUnits)``):

    * :class:`PiecewiseLinearUnits`: the hidden units, pre-activations and the gradient with the
      activation pattern held, with which the ``adaptive`` solver follows kinks;
    * :class:`LossHessian`, ``loss_hessian(theta [B, P], X [B, n, d], y [B, n], mask [B, n]) -> [B, P, P]``: the
      Hessian of L(θ) = ½ Σ_i mask_i r_i², r_i = f_θ(x_i) − y_i, on the activation pattern of θ,
      i.e. the derivative of the model's own :meth:`grad` with the pattern (every σ'(z), with the
      declared σ'(0) at z = 0) held fixed, so σ'' = 0 for piecewise-linear σ: the Gauss–Newton
      part Σ_i mask_i J_iᵀJ_i (J_i = ∂f_θ(x_i)/∂θ) plus Σ_i mask_i r_i ∇²f_θ(x_i); symmetric.
      Parameters that :meth:`grad` keeps frozen (gradient 0) have zero rows and columns. The
      stiff tail of the ``adaptive`` solver uses it (:func:`ibtest.solve.solvers.stiff.hessian`),
      and computes the same by forward-mode AD of :meth:`grad` when a model has none.
    * :class:`LossHessianParts`, ``loss_hessian_parts(theta, X, y, mask) -> HessianParts``: the
      same Hessian as its Gauss–Newton factor J [B, n, P] and the residual term as small diagonal
      blocks, from which the stiff tail solves its linear systems in O(P) instead of O(P³)
      (wide networks: P = 2,816 at width 256).
    """

    #: set by models whose flow is linear between switches (the ``exact`` solver reads it)
    piecewise: PiecewiseLinearNeuron | None = None

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    # -- structure -----------------------------------------------------------------------
    def n_params(self, d: int) -> int:
        """Length P of θ for inputs of dimension d."""
        raise NotImplementedError

    def blocks(self, d: int) -> dict[str, slice]:
        """Named blocks of θ for reports (default: one block ``theta``)."""
        return {"theta": slice(0, self.n_params(d))}

    # -- maths ---------------------------------------------------------------------------
    def predict(self, theta: Tensor, X: Tensor) -> Tensor:
        """f_θ(x_i) for θ [B, P] and X [B, n, d]; returns [B, n]."""
        raise NotImplementedError

    def loss(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Square loss L(θ) = ½ Σ_i mask_i (f_θ(x_i) − y_i)²; returns [B]."""
        r = (self.predict(theta, X) - y) * mask
        return 0.5 * (r * r).sum(-1)

    def grad(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """∇_θ L(θ) [B, P]; gradient flow is dθ/dt = −grad."""
        with torch.enable_grad():
            th = theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.loss(th, X, y, mask).sum(), th)
        return g

    def predictor(self, theta: Tensor) -> Tensor:
        """End-to-end predictor (β of a diagonal net, u = v·w, the product matrix, flattened).

        Defaults to θ itself: hypotheses declared ``on="predictor"`` then see θ.
        """
        return theta

    def rotate(self, theta: Tensor, M: Tensor) -> Tensor:
        """θ' such that f_θ'(M x) = f_θ(x) for an orthogonal M [B, d, d] (rotation equivariance).

        Models that support the ``rotate`` construction override this; the default refuses.
        """
        raise NotImplementedError(f"model {type(self).__name__} does not define rotate()")

    def first_layer(self, theta: Tensor) -> Tensor | None:
        """Input weights of the hidden units [B, m, d] (a single neuron: m = 1), or None."""
        return None

    # -- the zero-loss set (ibtest.judge.zeroset, the witness search) ----------------------------
    def residual(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """r(θ) = mask ∘ (f_θ(X) − y) [B, n]; Z(D) = {θ : r(θ) = 0} unless :meth:`zero_set`
        says more (one-sided fits)."""
        return (self.predict(theta, X) - y) * mask

    def zero_set(self, X: Tensor, y: Tensor, mask: Tensor) -> Any:
        """An exact polyhedral Z(D) (:class:`ibtest.judge.zeroset.Polyhedron`, in θ or in the
        predictor), or None (the default): the witness search then follows r(θ) = 0 by
        Gauss–Newton projection."""
        return None

    def from_predictor(self, x: Tensor) -> Tensor:
        """A θ [B, P] whose predictor is x [B, Q] (needed when Z(D) is declared in the predictor).

        The default holds for models whose predictor is θ itself."""
        if type(self).predictor is ModelBase.predictor:
            return x
        raise NotImplementedError(f"model {type(self).__name__} does not define from_predictor()")

    def certified_optimum(self, name: str, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor,
                          atol: float = 0.0, rtol: float = 0.0) -> list[OptimumCheck] | None:
        """θ [B, P] (solutions that fit X [B, n, d], y [B, n]) against the global minimum over Z(D)
        of the quantity ``name`` (a :attr:`Hypothesis.optimum`), when the model can certify it (a
        convex reformulation): one :class:`OptimumCheck` per row. ``atol``/``rtol``: the caller's
        tolerance on top of the certificate's own. None (the default): no such certificate."""
        return None


@dataclass(frozen=True)
class OptimumCheck:
    """One solution θ against a certified minimum over Z(D) (``ModelBase.certified_optimum``).

    ``status``: "certified" (θ attains the minimum within ``tol``), "beaten" (``witness``, a θ' of
    the same model that fits D, is below R(θ) − tol), "inconclusive" (neither, with an exact
    minimum) or "uncertified" (no certificate: a sampled program, no solution). ``value`` R(θ),
    ``minimum`` the certified minimum (an upper bound when not ``exact``), ``lower_bound`` the
    bound that rests on no solver claim, ``exact`` whether the program is the true minimum."""

    status: Literal["certified", "beaten", "inconclusive", "uncertified"]
    value: float
    minimum: float
    lower_bound: float
    tol: float
    exact: bool
    reason: str = ""
    witness: Tensor | None = None


@runtime_checkable
class PiecewiseLinearUnits(Protocol):
    """Capability: f_θ(x) = Σ_j v_j σ(⟨w_j, x⟩), m hidden units with σ piecewise linear with one
    kink at 0 (σ'(z) = ``slopes[0]`` for z < 0, ``slopes[1]`` for z > 0).

    A model that declares these members (a :class:`ModelBase` subclass; no base class needed,
    the check is structural: ``isinstance(model, PiecewiseLinearUnits)``) has its kinks
    z_ij = ⟨w_j, x_i⟩ = 0 followed by the ``adaptive`` solver: a crossing is an event located on
    the step's dense output, a kink the flow presses on from both sides is held with the
    Filippov (minimal-norm Clarke) velocity. A single neuron is the case m = 1, v ≡ 1
    (``train_output`` False). :func:`ibtest.testing.check_model` checks the members against the
    model's own ``predict`` and ``grad``.

    * ``slopes``: (σ' below the kink, σ' above it); equal slopes mean no kink (a linear model);
    * ``at_zero``: σ'(0), the derivative the model's ``grad`` uses at z = 0 exactly; a
      pre-activation that starts at 0 starts on the side whose slope it is;
    * ``train_output``: the output weights v are trained (False: frozen, or a neuron's v ≡ 1);
    * ``hidden_preactivations(theta [B, P], X [B, n, d]) -> z [B, n, m]``, linear in θ;
    * ``units(theta [B, P]) -> (W [B, m, d], v [B, m])`` and its inverse
      ``from_units(W, v) -> theta [B, P]``;
    * ``grad_on_pattern(theta, X, y, mask, slope [B, n, m]) -> [B, P]``: ∇L with the pattern held,
      i.e. the gradient of ½ Σ_i mask_i (Σ_j v_j s_ij z_ij − y_i)² with s = ``slope`` fixed
      (equal to ``grad`` where s_ij = σ'(z_ij)); frozen parameters get 0.
    """

    slopes: tuple[float, float]
    at_zero: float
    train_output: bool

    def hidden_preactivations(self, theta: Tensor, X: Tensor) -> Tensor: ...

    def units(self, theta: Tensor) -> tuple[Tensor, Tensor]: ...

    def from_units(self, W: Tensor, v: Tensor) -> Tensor: ...

    def grad_on_pattern(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor, slope: Tensor) -> Tensor: ...


@runtime_checkable
class LossHessian(Protocol):
    """Capability: ``loss_hessian(theta [B, P], X, y, mask) -> [B, P, P]``, the Hessian of the
    loss on the activation pattern of θ (see :class:`ModelBase`). The stiff tail of the
    ``adaptive`` solver uses it; without it the Hessian comes from forward-mode AD of ``grad``.
    :func:`ibtest.testing.check_model` checks it against autograd."""

    def loss_hessian(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> Tensor: ...


class HessianParts(NamedTuple):
    """∇²L [B, P, P] = JᵀJ + Σ_u E_uᵀ R_u E_u in parts: the Gauss–Newton factor ``J`` [B, n, P]
    (row i = √mask_i ∂f_θ(x_i)/∂θ) and the residual term Σ_i mask_i r_i ∇²f_θ(x_i) as diagonal
    blocks ``R`` [B, u, k, k] (symmetric) on the θ positions ``idx`` [u, k] (long, disjoint; E_u
    picks them). Positions in no block have no residual term. For a model whose units are
    blocks (``two_layer_relu``: block j = (w_j, v_j), its first d positions w_j's, in order),
    the held-kink projection can be applied to the parts."""

    J: Tensor
    R: Tensor
    idx: Tensor

    def dense(self) -> Tensor:
        """∇²L [B, P, P] assembled (tests, and the fallback of the structured solve)."""
        B, n, P = self.J.shape
        H = torch.matmul(self.J.transpose(1, 2), self.J)
        u, k = self.idx.shape
        rr = self.idx.unsqueeze(-1).expand(u, k, k)
        cc = self.idx.unsqueeze(-2).expand(u, k, k)
        H[:, rr, cc] += self.R
        return H


@runtime_checkable
class LossHessianParts(Protocol):
    """Capability: ``loss_hessian_parts(theta [B, P], X, y, mask) -> HessianParts``, the Hessian
    of :class:`LossHessian` in parts (Gauss–Newton factor and block-diagonal residual term), for
    models whose residual term is block-diagonal. With it the stiff tail of the ``adaptive``
    solver solves (I/(hγ) + ∇²L) x = b by the Woodbury identity in O(n²P + u·k³) instead of a
    dense LU (:mod:`ibtest.solve.solvers.stiff_linear`). :func:`ibtest.testing.check_model`
    checks ``dense()`` against ``loss_hessian``."""

    def loss_hessian_parts(self, theta: Tensor, X: Tensor, y: Tensor, mask: Tensor) -> HessianParts: ...


@dataclass(frozen=True)
class Model:
    """A model family. ``factory(**options)`` returns a :class:`ModelBase` instance."""

    name: str
    factory: Callable[..., ModelBase]
    doc: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Datasets and inits
# --------------------------------------------------------------------------------------------
@dataclass
class DataBatch:
    """k datasets of one shape: X [k, n, d], y [k, n], a label per dataset (for reports)."""

    X: Tensor
    y: Tensor
    labels: list[str]
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.mask is None:
            self.mask = torch.ones_like(self.y)


@dataclass(frozen=True)
class Dataset:
    """A dataset family: ``generate(rng, **options) -> DataBatch``.

    Options marked ``sweep=True`` may be lists in a study; ``generate`` is then called once per
    combination with scalar values. ``rng`` is a seeded ``torch.Generator``.

    ``size(**options) -> (k, n, d)``, optional, gives the shape ``generate`` will return
    without generating anything, so that a study's memory (and a mismatch of ``d`` between its
    datasets) is found when the study is validated. Without it both are checked once the
    datasets are generated, still before any solve.
    """

    name: str
    generate: Callable[..., DataBatch]
    doc: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)
    size: Callable[..., tuple[int, int, int]] | None = None


@dataclass(frozen=True)
class Init:
    """An initialization: ``sample(model, d, count, rng, **options) -> theta0 [count, P]``."""

    name: str
    sample: Callable[..., Tensor]
    doc: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------
@dataclass
class SolveResult:
    """What a solver returns for a batch of B instances.

    ``theta`` [B, P] the limit θ∞ (or the last iterate), ``status`` [B] int64 codes of
    :mod:`ibtest.base.status`, ``loss`` [B] the loss at ``theta``; ``info`` holds optional per-instance
    diagnostics ([B] tensors: ``t`` the flow time reached, ``steps``, ``drift`` a bound on
    ‖θ(t) − θ(∞)‖, ``growth`` for diverging runs ...).
    """

    theta: Tensor
    status: Tensor
    loss: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Solver:
    """A gradient-flow solver.

    ``solve(model, X, y, mask, theta0, *, fit_tol, **options) -> SolveResult``; batched over
    instances. ``fit_tol`` is the study's fit rule (:mod:`ibtest.solve.fit`: an instance has
    converged only when L(θ; D) ≤ fit_tol · max(½‖y‖², L(θ0; D))), handed to every solver by the
    engine, ``verify`` and ``shrink``; it is never one of the declared ``options``.
    ``applies(model) -> str | None`` returns a reason when the solver cannot handle the model.
    ``tighten(options) -> options`` returns the settings of a re-solve with a smaller error, used
    to measure the solver error of every θ∞ a verdict rests on.
    """

    name: str
    solve: Callable[..., SolveResult]
    doc: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)
    applies: Callable[[ModelBase], str | None] = lambda model: None
    tighten: Callable[[dict[str, Any]], dict[str, Any]] = lambda options: dict(options)


# --------------------------------------------------------------------------------------------
# Constructions
# --------------------------------------------------------------------------------------------
@dataclass
class TripleBatch:
    """Converged triples handed to a construction: X, y, mask [k, ...], theta0, theta [k, P]."""

    X: Tensor
    y: Tensor
    mask: Tensor
    theta0: Tensor
    theta: Tensor
    labels: list[str]


@dataclass
class Partners:
    """Datasets D2 built from triples, all run from the *same* θ0 as their source triple.

    X [k, n2, d], y [k, n2], mask [k, n2]; ``source`` [k] int64 indexes the TripleBatch;
    ``labels`` describe each D2 (e.g. ``"blocking γ=5"``).
    """

    X: Tensor
    y: Tensor
    mask: Tensor
    source: Tensor
    labels: list[str]


@dataclass
class PairBatch:
    """Admissible pairs handed to a pair-stage construction: side a and side b, [k, ...] each."""

    Xa: Tensor
    ya: Tensor
    maska: Tensor
    Xb: Tensor
    yb: Tensor
    maskb: Tensor
    theta0: Tensor
    labels: list[str]


@dataclass
class NewPairs:
    """Fresh instance pairs (both sides solved by the engine from ``theta0``)."""

    pairs: PairBatch
    source: Tensor  # [k] index into the PairBatch the construction received


@dataclass(frozen=True)
class Construction:
    """A pair construction.

    ``stage="triple"``: ``build(model, triples, rng, **options) -> Partners`` (a D2 per source
    triple, same θ0, built so that θ1 fits D2). ``stage="pair"``: ``build(model, pairs, rng,
    **options) -> NewPairs`` (e.g. rotations of an admissible pair). The engine solves what is
    built and keeps a pair only if both sides converged and each solution fits the other dataset.

    ``size(sources, n, **options) -> (instances, points)``, optional, says how much it builds from
    ``sources`` triples (pairs) of at most n points: at most ``instances`` new instances (a pair
    stage's new pair is two) of at most ``points`` points. The study's memory and work are then
    estimated before it runs (:mod:`ibtest.study.work`); without it, one instance per source.
    """

    name: str
    build: Callable[..., Any]
    doc: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)
    stage: Literal["triple", "pair"] = "triple"
    size: Callable[..., tuple[int, int]] | None = None


# --------------------------------------------------------------------------------------------
# Hypotheses
# --------------------------------------------------------------------------------------------
@dataclass
class HypothesisContext:
    """What a hypothesis may read besides θ, limited by its declared dependence.

    ``model`` always; ``init`` (raw θ0, [B, P]) and ``init_predictor`` (the model's predictor at
    θ0) for ``depends_on`` "init" or "data"; ``X`` [B, n, d], ``y``, ``mask`` for "data" only.
    ``study`` holds study-level values (the seed).
    """

    model: ModelBase
    init: Tensor | None = None
    init_predictor: Tensor | None = None
    X: Tensor | None = None
    y: Tensor | None = None
    mask: Tensor | None = None
    study: Mapping[str, Any] = field(default_factory=dict)


class InitContext(Protocol):
    """What a hypothesis declared ``depends_on="init"`` is guaranteed to see: ``ctx.init`` (θ0
    [B, P]) and ``ctx.init_predictor`` are never None. Annotate ``ctx: ibtest.InitContext`` and a
    type checker knows it (the object passed is a :class:`HypothesisContext`)."""

    model: ModelBase
    init: Tensor
    init_predictor: Tensor
    study: Mapping[str, Any]


class DataContext(InitContext, Protocol):
    """What a hypothesis declared ``depends_on="data"`` is guaranteed to see: θ0 and the dataset
    ``ctx.X`` [B, n, d], ``ctx.y`` [B, n], ``ctx.mask`` [B, n], never None."""

    X: Tensor
    y: Tensor
    mask: Tensor


DependsOn = Literal["params", "init", "data"]


@dataclass(frozen=True)
class Hypothesis:
    """A family of candidate implicit regularizers R_p(θ; ctx), invariants or bounds.

    ``fn(theta [B, P] or predictor [B, Q], ctx, **params) -> [B]`` (an invariant may return
    [B, k]: every component must be conserved). ``params`` holds defaults; a study may give a
    list for any of them to test a family. ``on`` says whether ``fn`` sees raw θ (``"theta"``)
    or the model's end-to-end predictor (``"predictor"``). The claim depends on ``kind``:

    * ``"regularizer"``: θ∞ ∈ argmin over Z(D) of R (refuted by an admissible pair);
    * ``"invariant"``: C(θ∞) = C(θ0) for every converged triple;
    * ``"bound"``: B(θ∞; ctx) ≤ ``bound`` for every converged triple (e.g. Theorem 8's ratio ≤ 2).
    """

    name: str
    fn: Callable[..., Tensor]
    depends_on: DependsOn = "params"
    params: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""
    #: "regularizer", "invariant", "bound", or a kind a plugin's claim kinds judge (ClaimKind.judges)
    kind: str = "regularizer"
    on: Literal["theta", "predictor"] = "theta"
    atol: float = 0.0  # optional absolute floor of the margin; 0 keeps verdicts scale-free
    rtol: float = 1e-9  # the margin's floor relative to |R| (see ibtest.judge.evaluation)
    bound: float | None = None
    #: R is convex in the variable it sees (θ or the predictor): over a polyhedral Z(D) its
    #: minimum is global and the optimality of θ∞ can be certified (ibtest.judge.optimality)
    convex: bool = False
    #: optional cvxpy form of R for the certificate: ``cvx(x, ctx, **params) -> cvxpy expression``
    #: with x a cvxpy Variable [Q] and ctx a :class:`CvxContext` of one instance (numpy arrays)
    cvx: Callable[..., Any] | None = None
    #: a quantity whose global minimum over Z(D) a model may certify (ModelBase.certified_optimum),
    #: R being that quantity or a monotone function of it: "half_sq_norm" (½‖θ‖², so ‖θ‖) or
    #: "path_norm" (Σ_j |v_j|‖w_j‖, the variation norm of a one-hidden-layer net)
    optimum: str | None = None


@dataclass
class CvxContext:
    """One instance's context for ``Hypothesis.cvx``: numpy arrays (init [P], init_predictor,
    X [n, d], y [n] with padded points removed), and the model."""

    model: ModelBase
    init: Any = None
    init_predictor: Any = None
    X: Any = None
    y: Any = None


# --------------------------------------------------------------------------------------------
# Families (``ibtest fit``: propose a regularizer)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Free:
    """A parameter of a :class:`Family` that R is *not* linear in (α of Q_α, p of ℓp), found by a
    search outside the linear fit: a grid on [``low``, ``high``] (log-spaced with ``log``), then
    least squares on the fit's residual. ``per_coordinate``: one value per coordinate of the
    variable (length Q), started from the best common value."""

    default: float
    low: float
    high: float
    log: bool = True
    per_coordinate: bool = False
    doc: str = ""


class FamilyFunction:
    """R_λ(x; ctx) = Σ_k λ_k φ_k(x; ctx) of a family, as a hypothesis's ``fn``: ``fn(x, ctx, lam,
    **settings)`` with ``lam`` the K coefficients and ``settings`` the family's options and free
    parameters. ``family`` is the spec it evaluates (how ``ibtest fit`` and its claim kinds reach it)."""

    def __init__(self, family: Family):
        self.family = family

    def __call__(self, x: Tensor, ctx: Any, lam: Any = (), **settings: Any) -> Tensor:
        phi = self.family.features(x, ctx, **settings)
        coef = torch.as_tensor(list(lam) if not isinstance(lam, Tensor) else lam, dtype=phi.dtype)
        if coef.numel() != phi.shape[-1]:
            raise ValueError(f"family {self.family.name!r}: {coef.numel()} coefficients for {phi.shape[-1]} features")
        return phi @ coef


@dataclass(frozen=True)
class Family:
    """A family of regularizers linear in its coefficients λ ∈ R^K:

        R_λ(x; ctx) = Σ_k λ_k φ_k(x; ctx),      ``features(x [B, Q], ctx, **options, **free) -> Φ [B, K]``

    with x = θ, or the model's predictor for ``on="predictor"``, and ``ctx`` a hypothesis context
    (θ0 for ``depends_on`` "init"). ``ibtest fit`` finds λ from the converged triples of a study
    through the KKT condition of min R_λ over Z(D) at θ∞, linear in λ (:mod:`ibtest.propose`).
    Gradients (and the Hessian norms the tolerance needs) come from autograd.

    * ``options``: fixed settings with their defaults (a grid of c, polynomial degrees); a study's
      ``fit: {options: ...}`` overrides them;
    * ``free``: parameters R is not linear in (:class:`Free`), searched outside the linear fit;
    The callables below get the coefficients, Q (the length of x) and the family's settings (its
    options and the values of its free parameters) as keywords:

    * ``cone(lam, Q, **settings) -> [cvxpy constraints]``: what makes λ a member (M ⪰ 0 for a
      quadratic form); None: every λ;
    * ``strict(lam, mu, span, Q, **settings) -> [constraints]``: sufficient conditions, linear or
      conic in λ, for R_λ − μ‖x − x0‖²/2 to be convex on the box |x_i − x0_i| ≤ span (λ normalized
      so that R_λ grows like ½‖x − x0‖² on average); None: the family has no strictly convex member;
    * ``magnitude(lam, Q, **settings) -> cvxpy expression [K]``: linear in λ and ≥ |λ_k| on the
      cone (|2M_ij| ≤ M_ii + M_jj for M ⪰ 0): the no-fit program then needs no box on λ; optional;
    * ``convex(lam, Q, **settings) -> bool``: R_λ is convex (the falsifier may then certify optimality);
    * ``cvx(x, ctx, lam, **settings)``: R_λ as a cvxpy expression (a :class:`CvxContext`), optional;
    * ``labels(Q, **settings) -> [K names]`` and ``describe(lam, Q, **settings) -> str``: the fitted R
      in closed form; ``parameters(lam, Q, **settings) -> {name: value}``: the fitted quantities a
      study may compare with known values (``M``, ``alpha``).

    Each family is also registered as two hypotheses: ``NAME`` (a regularizer, one member per λ:
    ``params: {lam: [...]}``, what the falsifier judges and its certificates name) and
    ``NAME_family`` (kind ``family``: "some member fits", judged by the ``fit`` and ``no_fit`` claim
    kinds; its certificates are the no-fit certificates).
    """

    name: str
    features: Callable[..., Tensor]
    doc: str = ""
    depends_on: DependsOn = "params"
    on: Literal["theta", "predictor"] = "theta"
    options: Mapping[str, Any] = field(default_factory=dict)
    free: Mapping[str, Free] = field(default_factory=dict)
    cone: Callable[..., list] | None = None
    strict: Callable[..., list] | None = None
    magnitude: Callable[..., Any] | None = None
    convex: Callable[..., bool] | None = None
    cvx: Callable[..., Any] | None = None
    labels: Callable[..., list[str]] | None = None
    describe: Callable[..., str] | None = None
    parameters: Callable[..., dict[str, Any]] | None = None

    @property
    def claim_name(self) -> str:
        """The name of the family's ``family`` hypothesis ("some member of it fits")."""
        return f"{self.name}_family"

    def settings(self) -> dict[str, Any]:
        """Default options and free parameters (a per-coordinate one as a list, filled in by the fit)."""
        out = dict(self.options)
        out.update({k: ([] if f.per_coordinate else f.default) for k, f in self.free.items()})
        return out

    def hypotheses(self) -> list[Hypothesis]:
        """The two hypotheses this family registers (see the class docstring)."""
        fn = FamilyFunction(self)
        member = Hypothesis(name=self.name, fn=fn, depends_on=self.depends_on, on=self.on,
                            params={"lam": [], **self.settings()},
                            doc=f"a member R_lambda of family {self.name} (coefficients lam): {self.doc}")
        claim = Hypothesis(name=self.claim_name, fn=fn, depends_on=self.depends_on, on=self.on, kind="family",
                           params=dict(self.options),
                           doc=f"some member of family {self.name} characterizes gradient flow here: {self.doc}")
        return [member, claim]


# --------------------------------------------------------------------------------------------
# Claim kinds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClaimKind:
    """One kind of evidence, and everything the tool does with it, in one object.

    A hypothesis of ``kind`` K (``Hypothesis.kind``) is judged by every registered claim kind with
    ``judges == K``: the built-in ``pair`` and ``witness`` judge regularizers, ``invariant`` and
    ``bound`` judge their namesakes. A plugin adds a kind through the ``ibtest_claim_kinds`` hook
    (zero edits to the core). The callables:

    * ``score(ctx, triples, pairs, use, params, prior) -> score | None``: a member on one table
      of triples (a block): the score has ``counts()`` (a ``MemberCounts``), ``keep_triples()``,
      ``keep_pairs()`` and ``triples_to_measure()``; ``prior`` holds the scores of the kinds
      before it for the same member;
    * ``finish(ctx, triples, score, use, params, meter, counts) -> Finding``: the strongest
      re-checked evidence (its ``judgement`` from ``ctx.rules``) and the support it gives;
    * ``certificate(ctx, triples, member, evidence) -> dict``: the certificate's kind-specific
      fields (sides, claim, refutation);
    * ``replay(cert, replay) -> VerifyResult``: ``ibtest verify`` of such a certificate;
    * ``describe(cert) -> list[str]``: ``ibtest show`` in words;
    * ``plot(cert, path, plugins) -> Path``: ``ibtest show --plot`` (optional);
    * ``label``: how a report names its gap (``|ΔR|``);
    * ``shrink``: ``ibtest shrink`` of such a certificate (optional).

    ``judges="*"`` marks a kind judged across the runs of a sweep (``limit``): it has no ``score`` or
    ``finish`` (the runs' own kinds judge each run) and replays a certificate of any hypothesis.
    """

    name: str
    judges: str
    certificate: Callable[..., Any]
    replay: Callable[..., Any]
    describe: Callable[..., Any]
    score: Callable[..., Any] | None = None
    finish: Callable[..., Any] | None = None
    label: str = "gap"
    plot: Callable[..., Any] | None = None
    doc: str = ""
    #: ``shrink(cert, source, digest, budget, plugins) -> ShrinkResult``: ``ibtest shrink`` of a
    #: certificate of this kind (optional; the built-in pair and witness kinds shrink through
    #: :mod:`ibtest.cert.shrink` itself)
    shrink: Callable[..., Any] | None = None


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Executor:
    """Where the blocks of a study run (in this process, on a Ray cluster, ...).

    ``factory(**options)`` returns an object with ``workers() -> int`` (blocks it runs at once),
    ``run(job) -> Iterator[BlockResult]`` and ``close()`` (see :mod:`ibtest.run.executors`): ``run``
    yields one result per block of ``job``, in block order, however the blocks were computed. A
    factory that cannot work here (a missing package) raises :class:`ibtest.base.errors.UserError`.
    """

    name: str
    factory: Callable[..., Any]
    doc: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)


SPEC_TYPES: dict[str, type] = {
    "models": Model,
    "datasets": Dataset,
    "inits": Init,
    "solvers": Solver,
    "constructions": Construction,
    "hypotheses": Hypothesis,
    "executors": Executor,
    "kinds": ClaimKind,
    "families": Family,
}


def replace(spec: Any, **changes: Any) -> Any:
    """dataclasses.replace, re-exported for plugin authors."""
    return dataclasses.replace(spec, **changes)


__all__: Sequence[str] = [
    "Option",
    "PiecewiseLinearNeuron",
    "ModelBase",
    "PiecewiseLinearUnits",
    "LossHessian",
    "LossHessianParts",
    "HessianParts",
    "OptimumCheck",
    "Model",
    "DataBatch",
    "Dataset",
    "Init",
    "SolveResult",
    "Solver",
    "TripleBatch",
    "Partners",
    "PairBatch",
    "NewPairs",
    "Construction",
    "HypothesisContext",
    "InitContext",
    "DataContext",
    "Hypothesis",
    "CvxContext",
    "ClaimKind",
    "Free",
    "Family",
    "FamilyFunction",
    "Executor",
    "SPEC_TYPES",
]
