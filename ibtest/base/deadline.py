"""Deadlines on plugin calls: a call that runs past the study's ``budget.deadline`` is stopped.

A plugin is someone else's code run in this process: a solver asked for ``rtol: 0``, a model
whose gradient is NaN, a construction asked for a million rotations can each run for hours. Like
Hypothesis's ``deadline`` setting, every plugin call gets a time limit (:data:`DEFAULT` seconds
unless the study's ``budget: {deadline: S}`` says otherwise; ``null`` switches it off), and a call
past it is stopped and reported in its row (:func:`ibtest.base.guard.plugin_call`): the study
goes on, nothing already computed is lost.

How it is enforced, and what that guarantees. Python cannot kill a thread, so a watchdog thread
(one per process, started on first use) raises :class:`DeadlineExceeded` *inside* the calling
thread when its time is up (``PyThreadState_SetAsyncExc``, CPython's asynchronous exception).
The exception is delivered at the next Python bytecode the calling thread runs, so

* a plugin that runs Python code (every solver loop, construction, hypothesis and model here:
  torch calls from Python, one small operation at a time) is stopped within milliseconds of its
  deadline;
* a plugin stuck inside *one* C call (a single huge matrix product, a blocking read, waiting on
  its own worker threads) is stopped when that call returns, not before;
* :class:`DeadlineExceeded` derives from ``BaseException``, so a plugin's ``except Exception``
  does not swallow it; a plugin that catches ``BaseException`` gets it again every
  :data:`RETRY` seconds;
* what the stopped call had built is dropped (its chunk of instances is marked failed); objects
  the plugin itself was mutating may be left half-updated, which is why the rows it touched are
  errors, never results.

Where the interpreter has no asynchronous exceptions (not CPython), deadlines are not enforced.
A plugin may also check cooperatively: :func:`remaining` gives the seconds left in the current
call (None: no deadline), e.g. between solver steps.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

#: seconds a plugin call may take unless the study's ``budget.deadline`` says otherwise
DEFAULT = 60.0
#: seconds between re-deliveries to a plugin that swallowed the exception (at most MAX_RETRIES)
RETRY = 1.0
MAX_RETRIES = 30


class DeadlineExceeded(BaseException):
    """Raised inside a plugin call that ran past its deadline (each call raises its own subclass)."""

    seconds: float = 0.0


_policy: contextvars.ContextVar[float | None] = contextvars.ContextVar("ibtest_deadline", default=DEFAULT)


def current() -> float | None:
    """The deadline (seconds) plugin calls get here; None: no deadline."""
    return _policy.get()


@contextlib.contextmanager
def policy(seconds: float | None) -> Iterator[None]:
    """Plugin calls inside get ``seconds`` each (None: no deadline)."""
    token = _policy.set(seconds if seconds is None or seconds > 0 else None)
    try:
        yield
    finally:
        _policy.reset(token)


@dataclass(eq=False)
class Watch:
    """One plugin call being timed: its thread, when it expires, the exception class it gets."""

    tid: int
    seconds: float
    expires: float
    exc: type[DeadlineExceeded]
    done: bool = False
    fired: int = 0

    def owns(self, exc: BaseException) -> bool:
        return isinstance(exc, self.exc)


def _async_raise():  # -> callable(tid, exc_class | None) -> int, or None where unsupported
    try:
        import ctypes

        fn = ctypes.pythonapi.PyThreadState_SetAsyncExc
        fn.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        fn.restype = ctypes.c_int
    except (ImportError, AttributeError, OSError):
        return None

    def deliver(tid: int, exc: type[BaseException] | None) -> int:
        # the class object's address (CPython: id()); NULL clears a pending delivery
        return int(fn(tid, None if exc is None else id(exc)))

    return deliver


_DELIVER = _async_raise()


class _Watchdog:
    """The process's watchdog thread: sleeps until the nearest expiry, then delivers."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.cond = threading.Condition()
        self.watches: set[Watch] = set()
        self.thread = threading.Thread(target=self._run, name="ibtest-deadline", daemon=True)
        self.thread.start()

    def add(self, w: Watch) -> None:
        with self.cond:
            self.watches.add(w)
            self.cond.notify()

    def stop(self, w: Watch) -> None:
        with self.cond:
            w.done = True
            self.watches.discard(w)
            fired = w.fired
        if fired and _DELIVER is not None:
            _DELIVER(w.tid, None)  # a delivery still pending is cancelled: the call is over

    def _run(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                for w in list(self.watches):
                    if w.done or now < w.expires:
                        continue
                    if w.fired >= MAX_RETRIES or _DELIVER is None:
                        self.watches.discard(w)
                        continue
                    if _DELIVER(w.tid, w.exc) > 1:  # never more than one thread (CPython's advice)
                        _DELIVER(w.tid, None)
                    w.fired += 1
                    w.expires = now + RETRY
                nearest = min((w.expires for w in self.watches), default=None)
                self.cond.wait(None if nearest is None else max(0.0, nearest - time.monotonic()))


_DOG: _Watchdog | None = None
_DOG_LOCK = threading.Lock()


def _dog() -> _Watchdog:
    global _DOG
    with _DOG_LOCK:
        if _DOG is None or _DOG.pid != os.getpid():  # a forked child has no watchdog thread
            _DOG = _Watchdog()
        return _DOG


def start(seconds: float | None = None) -> Watch | None:
    """Time the call the calling thread is about to make: ``seconds`` (default :func:`current`).
    None when there is no deadline or it cannot be enforced here. Pair with :func:`stop`."""
    s = current() if seconds is None else seconds
    if s is None or s <= 0 or _DELIVER is None:
        return None
    exc = type("DeadlineExceeded", (DeadlineExceeded,), {"seconds": s})
    w = Watch(threading.get_ident(), s, time.monotonic() + s, exc)
    _dog().add(w)
    return w


def stop(w: Watch | None) -> None:
    """The call timed by ``w`` is over (normally or not): no delivery from now on. Safe to call
    twice, and safe against a delivery that arrives while it runs."""
    if w is None:
        return
    while True:
        try:
            _dog().stop(w)
            return
        except DeadlineExceeded:  # delivered just as the call ended: it is cancelled by the retry
            continue


def remaining() -> float | None:
    """Seconds left to the innermost timed call of this thread (None: none is timed)."""
    dog = _DOG
    if dog is None:
        return None
    tid = threading.get_ident()
    with dog.cond:
        mine = [w.expires for w in dog.watches if w.tid == tid and not w.done]
    return None if not mine else max(0.0, min(mine) - time.monotonic())
