"""Import-time helper: pause the cyclic garbage collector while heavy modules load.

Importing torch, numpy and pydantic allocates ~10^6 long-lived objects; every few hundred
allocations the collector walks the young generations, and now and then all of them (a full
collection over everything torch has created so far). None of that finds garbage: import-time
objects live as long as the process. :func:`gc_paused` switches collection off for the block,
then moves everything that exists into the permanent generation (``gc.freeze``), so later
collections skip it too, and restores the previous setting. It saves ~0.2–0.4 s of the ~2–3 s a
cold ``ibtest run`` spends importing (measured on the 2-core CI machine; see
benchmarks/RESULTS.md, "Import time").
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect nothing inside the block; freeze what exists at its end; restore the setting."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()
