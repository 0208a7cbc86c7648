"""Layer 3, ``solve``: instances to solved triples. The fit rule (:mod:`~ibtest.solve.fit`),
batched containers (:mod:`~ibtest.solve.batch`), the engine's instance plan and chunked, cached
solve (:mod:`~ibtest.solve.engine`) and the built-in solvers (:mod:`~ibtest.solve.solvers`).
Imports ``base``, ``plugin``, ``study``."""
