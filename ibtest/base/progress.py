"""Progress reporting: a tqdm bar per phase on a terminal, nothing otherwise.

``Progress(enabled)`` is handed to the engine; ``start(phase, total)`` opens a bar with counts
and ETA, ``update(n)`` advances it, ``end(summary)`` closes it and prints the phase's one-line
summary. Disabled (``--quiet`` or stderr not a terminal) every call is a no-op.
"""
from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


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

    def end(self, summary: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled:
            print(summary, file=self.stream)


class Quiet(Progress):
    def __init__(self) -> None:
        super().__init__(enabled=False)
