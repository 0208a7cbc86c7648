"""Python API: run a study (file or dict), resume one, and get a result object.

``run_study(path_or_dict)`` returns a :class:`StudyResult` (a list of them for a sweep) with
``.table()``, ``.verdicts``, ``.certificates``, ``.to_json()``. With ``write=True`` (default) the
run directory holds ``results.sqlite`` (written as the run goes), ``results.json``, ``report.md``
and ``certificates/``; ``resume_run(RUN_DIR)`` finishes an interrupted run from its store, and
``load_results(RUN_DIR)`` reads a finished run's results.

This module is the public facade. The code lives in the layers: :mod:`ibtest.out.runner` (running
and resuming), :mod:`ibtest.out.result` (:class:`StudyResult`), :mod:`ibtest.run.pipeline` (one
run streamed in blocks and judged), :mod:`ibtest.run.results_file` (the stored results format).
"""
from __future__ import annotations

from ibtest.out.result import StudyResult
from ibtest.out.runner import default_run_dir, resume_run, run_loaded, run_study, write_certificates
from ibtest.run.results_file import load_results

__all__ = ["StudyResult", "default_run_dir", "load_results", "resume_run", "run_loaded", "run_study",
           "write_certificates"]
