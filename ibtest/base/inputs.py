"""Reading an input file the user named, without hanging on what is not a file.

``ibtest run FIFO`` must not wait forever for a writer that never comes, and ``/dev/zero`` is
not a study. :func:`read_input` reads a regular file as usual; anything else that can be read
(a FIFO, a pipe such as ``<(cat study.yaml)``, a character device) is opened non-blocking and
read until its end, at most :data:`MAX_BYTES`, waiting at most :data:`SILENCE` seconds for data
to arrive. A FIFO no one has opened for writing reads as empty at once. Every failure is an
``OSError`` whose ``strerror`` says what happened (callers turn it into their one-line message).
"""
from __future__ import annotations

import errno
import os
import select
import stat
import time
from pathlib import Path

MAX_BYTES = 64 * 2**20
SILENCE = 10.0


def read_input(path: str | Path, *, max_bytes: int = MAX_BYTES, silence: float = SILENCE) -> bytes:
    """The bytes of ``path`` (see the module doc)."""
    p = Path(path)
    mode = os.stat(p).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return p.read_bytes()  # a directory raises IsADirectoryError, as before
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    chunks: list[bytes] = []
    size = 0
    try:
        last = time.monotonic()
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                left = silence - (time.monotonic() - last)
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise OSError(errno.ETIMEDOUT, f"nothing arrived for {silence:g} s (a FIFO or device, not a file)") \
                        from None
                continue
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            last = time.monotonic()
            if size > max_bytes:
                raise OSError(errno.EFBIG, f"more than {max_bytes} bytes (a device or FIFO, not a file)")
    finally:
        os.close(fd)
