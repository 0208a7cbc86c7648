"""User-facing errors: each carries a message that says what, where, and what was expected.

The CLI prints :class:`UserError` messages without a traceback and exits with code 2.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (study file, plugin file, command line). Exit code 2.

    The CLI prints the message as one line: every control character in it (a newline from a file
    name, a YAML key or a plugin's text included) is shown as a visible escape
    (:func:`ibtest.base.textsafe.clean`). Only an error whose own layout is several lines
    (``multiline``: a study's list of problems, each cleaned) keeps its line breaks.
    """

    exit_code = 2
    multiline = False


class StudyError(UserError):
    """A study file failed validation; ``problems`` lists every problem found."""

    #: problems shown in the message (all of them stay in ``problems``)
    SHOWN = 25
    multiline = True  # one problem a line; each line is cleaned, so none can forge another

    def __init__(self, path: str, problems: list[str]):
        from ibtest.base.textsafe import clean

        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {clean(p)}" for p in problems[: self.SHOWN])
        if len(problems) > self.SHOWN:
            lines += f"\n  ... and {len(problems) - self.SHOWN} more problems"
        super().__init__(f"invalid study {clean(path)}:\n{lines}")


class PluginError(UserError):
    """A plugin could not be loaded or registered (names the plugin and its file)."""
