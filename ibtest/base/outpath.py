"""Files a command writes where the user said (``shrink -o``, ``--plot``, ``new --dir``).

The user's path is checked before any work is spent on what goes there, and every failure is a
:class:`~ibtest.base.errors.UserError` naming the option and the path (exit 2, one line):

* an existing directory takes the command's default file name inside it (``shrink -o DIR``
  writes ``DIR/<name>.shrunk.json``, like ``cp FILE DIR``);
* a figure without a suffix gets ``.png`` (what matplotlib would write anyway), so the message
  names the file that exists;
* an existing path that is neither a directory nor a regular file (``/dev/null``, a FIFO, a
  device) is refused: ibtest reads back and may remove what it writes, and must never do so to
  something it did not create;
* a missing parent directory is created; one that cannot be (a file on the way, no permission)
  is the error;
* writing itself (a full disk, ``/dev/full``, a read-only place) fails with the system's reason.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean


def output_file(arg: str | Path, *, flag: str, default_name: str, suffix: str | None = None) -> Path:
    """The file ``arg`` (the value of ``flag``) names, checked (see the module doc)."""
    p = Path(arg).expanduser()
    where = f"{flag} {clean(str(arg))}"
    try:
        if p.is_dir():
            p = p / default_name
        elif suffix and not p.suffix and not p.exists():
            p = p.with_name(p.name + suffix)
        if p.exists() and not p.is_file():
            raise UserError(f"{where}: {clean(str(p))} exists and is not a regular file (a device, a FIFO, ...): "
                            "give the name of a file to write")
        parent = p.parent
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{where}: {clean(str(parent))} is not a directory")
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{where}: cannot write there: {clean(exc.strerror or exc)}") from None
    return p


def output_dir(arg: str | Path, *, flag: str) -> Path:
    """The directory ``arg`` names, created if missing; anything else there is refused."""
    p = Path(arg).expanduser()
    where = f"{flag} {clean(str(arg))}"
    if p.exists() and not p.is_dir():
        raise UserError(f"{where}: exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{where}: cannot create the directory: {clean(exc.strerror or exc)}") from None
    return p


@contextlib.contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Turn a failure to write ``path`` (``what``: "the figure", ...) into a UserError."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {what} {clean(str(path))}: {clean(exc.strerror or exc)}") from None


def save_figure(draw: Callable[..., Path], path: Path, *args: Any, **kwargs: Any) -> Path:
    """``draw(*args, path, **kwargs)`` with a failure to write, or a format matplotlib does not
    know (``fig.png.foo``), as a UserError naming the file."""
    try:
        with writing(path, "the figure"):
            return draw(*args, path, **kwargs)
    except ValueError as exc:
        if "format" not in str(exc).lower():
            raise
        raise UserError(f"cannot write the figure {clean(str(path))}: {clean(exc)} (use .png, .pdf or .svg)") from None
