"""ibtest's built-in hypotheses (R families and invariants) and the YAML studies that test them.

Installed as the package ``ibtest_hypotheses``; every module here registers its own
``ibtest_hypotheses`` hook, so a new hypothesis is one new file.
"""
