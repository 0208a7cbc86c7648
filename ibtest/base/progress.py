"""Progress reporting: a tqdm bar per phase on a terminal, nothing otherwise.

``Progress(enabled)`` is handed to the engine; ``start(phase, total)`` opens a bar with counts
and ETA, ``update(n)`` advances it, ``end(summary)`` closes it and prints the phase's one-line
summary. Disabled (``--quiet`` or stderr not a terminal) every call is a no-op.

Inside a long solver call the bar moves too: the engine runs the call inside
``progress.solving(k)`` (k instances), and a solver that knows how far it is asks
:func:`solver_reporter` for the active reporter and calls it with the instances of the call
that are done, the steps taken and the flow time the slowest unfinished instance has reached.
The bar then advances by the instances done, with ``t`` and ``steps`` shown after it, at most
every ``INTERVAL`` seconds; tqdm's ETA follows the instances done. A solver that never reports
moves the bar once, when the call returns.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

#: the reporter of the solver call in progress: (done, steps, t) -> None
Reporter = Callable[[int, int, float], None]
_ACTIVE: ContextVar[Reporter | None] = ContextVar("ibtest_solve_reporter", default=None)
#: seconds between two redraws from inside a solver call
INTERVAL = 0.5


def solver_reporter() -> Reporter | None:
    """The reporter of the solver call in progress (None: nobody is watching, or the bar is
    off): call it with (instances of the call done, steps taken, flow time reached)."""
    return _ACTIVE.get()


class Progress:
    def __init__(self, enabled: bool | None = None, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() if hasattr(self.stream, "isatty") else False) if enabled is None else enabled
        self._bar: tqdm[Any] | None = None

    def start(self, phase: str, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=phase, unit="inst", leave=False, file=self.stream, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    @contextmanager
    def solving(self, k: int) -> Iterator[None]:
        """Run a solver call on k instances inside this: the call's reports (:func:`solver_reporter`)
        move the bar, and on exit the bar has advanced by k in all."""
        counted = [0]
        last = [0.0]

        def report(done: int, steps: int, t: float) -> None:
            bar = self._bar
            now = time.monotonic()
            if bar is None or (now - last[0] < INTERVAL and done < k):
                return
            last[0] = now
            new = min(int(done), k) - counted[0]
            bar.set_postfix_str(f"t={t:.3g}, steps={int(steps)}", refresh=new <= 0)
            if new > 0:
                counted[0] += new
                bar.update(new)

        token = _ACTIVE.set(report if self._bar is not None else None)
        try:
            yield
        finally:
            _ACTIVE.reset(token)
            if k > counted[0]:
                self.update(k - counted[0])

    def end(self, summary: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled:
            print(summary, file=self.stream)


class Quiet(Progress):
    def __init__(self) -> None:
        super().__init__(enabled=False)
