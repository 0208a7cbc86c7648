"""Layer 8, ``out``: what a person reads. Tables and reports (:mod:`~ibtest.out.report`),
figures (:mod:`~ibtest.out.plots`) and the counterexample in words (:mod:`~ibtest.out.show`).
Imports every layer below."""
