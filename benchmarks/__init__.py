"""Benchmarks of issue 4 (``python -m benchmarks``; see ``benchmarks/__main__.py``).

Each workload is timed next to its baseline in the same process; ``benchmarks/RESULTS.md`` holds
the last full run.  Speed is never asserted in unit tests (tests/test_benchmarks_smoke.py only
checks that the quick versions run and agree with the exact flow).
"""
