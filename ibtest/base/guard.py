"""Calling a plugin: whatever it does, the caller gets a value or an ordinary exception.

A plugin may raise, call ``sys.exit`` (``SystemExit`` is not an ``Exception``), raise
``KeyboardInterrupt`` itself, or run past its deadline (:mod:`ibtest.base.deadline`).
:func:`plugin_call` turns the last three into :class:`PluginFailure`, an ordinary exception, so
every ``except Exception`` that reports a plugin's failure in its row covers them too: a plugin
can neither end the run (``sys.exit(0)`` would make a failing study pass) nor hang it.

A Ctrl-C from the user is not a plugin's failure: while :func:`user_interrupts` is active (the
``ibtest`` command line), SIGINT is recorded before it raises ``KeyboardInterrupt``, and only a
``KeyboardInterrupt`` without that record is the plugin's own. Elsewhere (ibtest used as a
library, e.g. in a notebook) every ``KeyboardInterrupt`` is the user's and is re-raised.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ibtest.base import deadline

T = TypeVar("T")


class PluginFailure(RuntimeError):
    """A plugin called ``sys.exit``, raised ``KeyboardInterrupt`` or ran past its deadline."""

    def __init__(self, detail: str, *, timed_out: bool = False):
        super().__init__(detail)
        self.detail = detail
        self.timed_out = timed_out


_state = {"installed": 0}
_user = threading.Event()


def by_user() -> bool:
    """Whether a KeyboardInterrupt now is the user's (Ctrl-C): always, unless SIGINT is recorded
    (:func:`user_interrupts`) and none arrived."""
    return _state["installed"] == 0 or _user.is_set()


@contextlib.contextmanager
def user_interrupts() -> Iterator[None]:
    """Record SIGINT while inside (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        _user.set()
        if callable(previous) and previous is not on_sigint:
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    _state["installed"] += 1
    try:
        yield
    finally:
        _state["installed"] -= 1
        signal.signal(signal.SIGINT, previous)
        if _state["installed"] == 0:
            _user.clear()


def describe(exc: BaseException) -> str:
    """What a plugin did, in words: ``called sys.exit(3)``, ``raised ValueError: ...``."""
    if isinstance(exc, PluginFailure):
        return exc.detail
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    if isinstance(exc, deadline.DeadlineExceeded):
        return _late(exc.seconds)
    if isinstance(exc, KeyboardInterrupt):
        return "raised KeyboardInterrupt"
    return f"raised {type(exc).__name__}: {exc}"


def _late(seconds: float) -> str:
    return (f"ran past the deadline of {seconds:g} s per plugin call (set budget: {{deadline: SECONDS}} in the "
            "study to allow more, or null for none)")


def plugin_call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` under the current deadline; ``sys.exit``, the plugin's own
    ``KeyboardInterrupt`` and the deadline come out as :class:`PluginFailure`, other exceptions
    unchanged (the caller names the plugin and reports it in its row)."""
    watch = deadline.start()
    try:
        try:
            return fn(*args, **kwargs)
        finally:
            deadline.stop(watch)
    except (SystemExit, KeyboardInterrupt, deadline.DeadlineExceeded) as exc:
        deadline.stop(watch)
        if isinstance(exc, KeyboardInterrupt) and by_user():
            raise
        if isinstance(exc, deadline.DeadlineExceeded) and (watch is None or not watch.owns(exc)):
            raise  # an enclosing call's deadline: that call reports it
        raise PluginFailure(describe(exc), timed_out=isinstance(exc, deadline.DeadlineExceeded)) from None
