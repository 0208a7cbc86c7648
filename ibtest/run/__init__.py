"""Layer 7, ``run``: a study from plan to stored results. Block scoring and retention
(:mod:`~ibtest.run.streaming`), executors (:mod:`~ibtest.run.executors`,
:mod:`~ibtest.run.ray_executor`) and the results store (:mod:`~ibtest.run.store`).
Imports every layer below."""
