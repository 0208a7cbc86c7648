"""ibtest's built-in plugins: models, datasets, inits and pair constructions.

Installed as the package ``ibtest_plugins``; each sub-package is an entry point of the
``ibtest`` group, and every module inside it is registered, so a new model is one new file.
"""
