"""Propose, not only refute: fit a regularizer family to a study's triples (``ibtest fit``).

A family R_λ(x) = Σ_k λ_k φ_k(x) (:class:`ibtest.Family`, hook ``ibtest_families``) is fitted to the
converged triples (D, θ0, θ∞) and admissible pairs of a study:

* **KKT** (:mod:`ibtest.propose.kkt`): θ∞ is a KKT point of min R_λ over Z(D) iff ∇R_λ(x∞) lies in
  minus the normal cone of Z(D) at x∞: ∇R_λ + A_eqᵀν + A_bᵀμ = 0 with μ ≥ 0 on the one-sided rows
  binding at x∞ (a ReLU neuron's zero labels), A_eq the equality rows of the model's polyhedral
  Z(D), or the residual Jacobian J (the default, Gauss–Newton Z). Linear in (λ, μ).
* **pairs**: on a distinct admissible pair valid for the family's ``depends_on``, R_λ(θa) = R_λ(θb).
* **one convex program** (:mod:`ibtest.propose.program`, cvxpy + Clarabel; least squares by LAPACK
  where no cone is active) over every triple and pair, with a normalization that excludes λ = 0,
  constants and members flat along the flow, and optional strict convexity.
* **free parameters** R is not linear in (α of Q_α, p of ℓp) by a search outside the linear fit
  (:mod:`ibtest.propose.search`).
* **both outcomes are evidence** (:mod:`ibtest.propose.kinds`): a fit is judged by the falsifier on
  held-out triples; no fit yields a certificate of a few triples no member satisfies, which
  ``ibtest verify`` replays and ``ibtest shrink`` shrinks.

KKT is necessary for a minimizer (every Z here is polyhedral, or smooth where J has full rank), and
sufficient only for a convex R_λ: a fit is a proposal, and the falsifier decides.

This package sits at the top of the layers (it uses the engine, the judge, the certificates and
the runner); :mod:`ibtest.propose.study` is the entry point (:func:`ibtest.fit_study`).
"""
