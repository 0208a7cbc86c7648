"""Layer 4, ``pairs``: solved triples to admissible pairs. Which pairs may be compared
(:mod:`~ibtest.pairs.admissible`) and the constructions that build partners and solve them
(:mod:`~ibtest.pairs.constructions`, with :func:`~ibtest.pairs.constructions.run_block`, one
block of a study). Imports ``base``, ``plugin``, ``study``, ``solve``."""
