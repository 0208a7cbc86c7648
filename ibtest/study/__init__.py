"""Layer 2, ``study``: a YAML study from text to a validated, typed :class:`Study`.
Positions in YAML (:mod:`~ibtest.study.yamlpos`), the schema and validation
(:mod:`~ibtest.study.schema`), memory budgets (:mod:`~ibtest.study.budget`) and checks of what
plugins return (:mod:`~ibtest.study.checks`). Imports ``base`` and ``plugin``.
"""
