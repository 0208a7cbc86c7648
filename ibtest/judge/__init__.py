"""Layer 5, ``judge``: triples and pairs to verdicts. Everything about calling a hypothesis
(:mod:`~ibtest.judge.evaluation`), the verdicts per hypothesis kind
(:mod:`~ibtest.judge.verdicts`), the zero-loss set Z(D) (:mod:`~ibtest.judge.zeroset`),
optimality certificates (:mod:`~ibtest.judge.optimality`) and the witness search
(:mod:`~ibtest.judge.witness`). Imports every layer below."""
