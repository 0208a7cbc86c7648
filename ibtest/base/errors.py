"""User-facing errors: each carries a message that says what, where, and what was expected.

The CLI prints :class:`UserError` messages without a traceback and exits with code 2.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (study file, plugin file, command line). Exit code 2."""

    exit_code = 2


class StudyError(UserError):
    """A study file failed validation; ``problems`` lists every problem found."""

    #: problems shown in the message (all of them stay in ``problems``)
    SHOWN = 25

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems[: self.SHOWN])
        if len(problems) > self.SHOWN:
            lines += f"\n  ... and {len(problems) - self.SHOWN} more problems"
        super().__init__(f"invalid study {path}:\n{lines}")


class PluginError(UserError):
    """A plugin could not be loaded or registered (names the plugin and its file)."""
