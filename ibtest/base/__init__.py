"""Layer 0, ``base``: what every layer may use. Errors and exit codes, terminal-safe text,
triple statuses, progress bars, and the JSON form of numbers (:mod:`ibtest.base.jsonio`).
Imports nothing from ibtest."""
