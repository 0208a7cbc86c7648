"""One writer per run directory: ``results.sqlite.lock``, held while a run or a resume writes.

Two ``ibtest run`` (or ``--resume``) into the same directory at once would interleave their
blocks in one store; the second is refused at once with a message that names the directory and
the process that holds it. The lock is an advisory ``flock`` on the lock file, released by the
kernel when the process ends however it ends (a killed run never leaves a stale lock); the file
holds the holder's pid and start time for the message and is removed when the run lets go.
``report`` and ``diff`` only read, and take no lock. Where ``fcntl`` does not exist (Windows)
there is no lock.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
from pathlib import Path
from typing import IO

from ibtest.base.errors import UserError
from ibtest.base.textsafe import clean

NAME = "results.sqlite.lock"


class RunLock:
    """The lock of run directory ``run_dir`` (:meth:`acquire`, :meth:`release`)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.path = self.dir / NAME
        self._fh: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise a UserError saying who holds it (the directory must exist)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        for _ in range(10):
            try:
                fh = open(self.path, "a+")  # noqa: SIM115 - held until release()
            except OSError as exc:
                raise UserError(f"run {clean(str(self.dir))}: cannot create the lock file {NAME}: "
                                f"{clean(exc.strerror or exc)}") from None
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                who = fh.read(200).strip()
                fh.close()
                raise UserError(in_use(self.dir, who)) from None
            try:  # the file may have been removed by a holder that just let go: lock the one that is there
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if same:
                fh.seek(0)
                fh.truncate()
                fh.write(f"pid {os.getpid()}, since {_dt.datetime.now().isoformat(timespec='seconds')}")
                fh.flush()
                self._fh = fh
                return self
            fh.close()
        raise UserError(f"run directory {clean(str(self.dir))}: cannot take its lock {NAME} (it keeps changing)")

    def release(self) -> None:
        """Let go (the lock file is removed first, so no one waits on a file that is gone)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            fh.close()

    def held(self) -> bool:
        return self._fh is not None


def in_use(run_dir: str | Path, who: str) -> str:
    """The message for a run directory another process writes."""
    return (f"run directory {clean(str(run_dir))} is in use by another ibtest run "
            f"({clean(who) or 'a process that is still running'}): wait for it to finish, or choose another --out")


def holder(run_dir: str | Path) -> str | None:
    """Who holds the lock of ``run_dir`` now (its pid and start), or None when no one does."""
    path = Path(run_dir) / NAME
    try:
        import fcntl

        fh = open(path)  # noqa: SIM115 - closed below
    except (ImportError, OSError):
        return None
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return fh.read(200).strip() or "a process that is still running"
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return None
