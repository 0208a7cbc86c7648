"""The results store: one SQLite file per run directory (``results.sqlite``).

Written as the run goes, so an interrupted run (Ctrl-C, a killed process) loses at most the
chunk being solved:

* ``meta``: the study text, its path, plugin files, versions, state (running / finished);
* ``solves``: every solver call on a chunk of instances, keyed by a SHA-256 of its inputs
  (X, y, mask, θ0, solver name and settings, model name and options). A resumed run replays the
  same deterministic pipeline and takes every stored chunk from here instead of solving it;
* ``triples``, ``pairs``, ``verdicts``: tables of what the run produced (θ as raw float64 bytes);
* ``results``: the finished run's JSON, from which ``ibtest report`` re-renders without solving.

Tensors are stored as raw float64 / int64 bytes with their shape.

A run writes in WAL mode and switches back to a plain rollback journal when it finishes
(:meth:`Store.finish`), so a finished run is one self-contained file. ``report`` and ``diff``
open it read-only (``readonly=True``) and create or change no file, not even SQLite's ``-shm``:
a store with no ``-wal`` or ``-journal`` beside it is opened ``mode=ro&immutable=1``; one with
them (a run still running, one killed mid-write, a garbage ``-wal``) is copied with them into a
private temporary directory and read there. They work on read-only media. Every SQLite or
file-system failure (a damaged or foreign file, a read-only store, a full disk) is a
:class:`~ibtest.base.errors.UserError` naming the run and what to do.

A store is opened for writing (a run, ``--resume``) only under the run directory's lock
(:mod:`ibtest.run.lock`: a second run into it is refused with a message), and an existing file
only once its tables show it is an ibtest store: a foreign database is refused before anything
is written to it.

Integrity: every stored solve carries a SHA-256 of its key and bytes (:func:`_pack`), checked on
read: a payload that was damaged or edited (even one that still parses) is not used; the chunk
is solved again and the run says how many were (:attr:`Store.rejected`). The finished results
JSON carries its SHA-256 in ``meta`` (``results_sha256``), checked by ``report`` and ``diff``. A
checksum finds damage and edits that did not also recompute it; it is not a signature.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ibtest.base.errors import UserError
from ibtest.plugin.specs import SolveResult
from ibtest.run.lock import RunLock

FILENAME = "results.sqlite"
RESULTS_SUM = "results_sha256"  # meta key: SHA-256 of the results JSON
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS solves (key TEXT PRIMARY KEY, phase TEXT, n INTEGER, seconds REAL,
                                   payload BLOB, created REAL);
CREATE TABLE IF NOT EXISTS triples (idx INTEGER PRIMARY KEY, origin TEXT, dataset TEXT, init TEXT,
                                    parent INTEGER, status TEXT, loss REAL, theta BLOB, theta0 BLOB);
CREATE TABLE IF NOT EXISTS pairs (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER, source TEXT,
                                  same_init INTEGER, distinct_ INTEGER, cross_ab REAL, cross_ba REAL);
CREATE TABLE IF NOT EXISTS verdicts (label TEXT PRIMARY KEY, hypothesis TEXT, verdict TEXT,
                                     expect TEXT, row TEXT);
CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT);
"""


MAGIC = b"IBTSUM1\n"  # a payload with a checksum: MAGIC, sha256(key, body), body


class ChecksumError(ValueError):
    """A stored payload whose checksum does not match (or that has none)."""


def _digest(key: str, body: bytes) -> bytes:
    return hashlib.sha256(key.encode() + b"\0" + body).digest()


def _pack(tensors: dict[str, torch.Tensor], key: str = "") -> bytes:
    """Tensors as bytes (a JSON header of dtypes, shapes and offsets, then the raw data), behind
    MAGIC and a SHA-256 of ``key`` and those bytes."""
    body = _pack_body(tensors)
    return MAGIC + _digest(key, body) + body


def _unpack(payload: bytes, key: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a :func:`_pack` payload; ChecksumError when it fails its checksum (or has none)."""
    if not isinstance(payload, bytes) or not payload.startswith(MAGIC):
        raise ChecksumError("no checksum")
    digest, body = payload[len(MAGIC): len(MAGIC) + 32], payload[len(MAGIC) + 32:]
    if digest != _digest(key, body):
        raise ChecksumError("checksum mismatch")
    return _unpack_body(body)


def _pack_body(tensors: dict[str, torch.Tensor]) -> bytes:
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        a = t.detach().cpu().contiguous().numpy()
        b = a.tobytes()
        header[k] = {"dtype": str(a.dtype), "shape": list(a.shape), "offset": off, "size": len(b)}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + b"".join(blobs)


def _unpack_body(payload: bytes) -> dict[str, torch.Tensor]:
    hl = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + hl])
    body = payload[8 + hl :]
    out = {}
    for k, h in header.items():
        a = np.frombuffer(body[h["offset"] : h["offset"] + h["size"]], dtype=h["dtype"]).reshape(h["shape"])
        out[k] = torch.from_numpy(a.copy())
    return out


class Store:
    """A run directory's SQLite store. Every write is committed at once.

    ``create``: make the directory and the file if missing (else a missing store is an error).
    ``readonly``: open an existing store for reading only (creates and writes nothing).
    """

    def __init__(self, run_dir: str | Path, *, create: bool = True, readonly: bool = False):
        self.dir = Path(run_dir)
        self.path = path = self.dir / FILENAME
        self.readonly = readonly
        self.hits = 0
        self.misses = 0
        self.rejected_keys: set[str] = set()  # stored solves that failed their checksum
        self.lock: RunLock | None = None
        self._copy: Path | None = None  # the private copy a read-only open reads (see the module doc)
        if (readonly or not create) and not path.exists():
            raise UserError(f"run {self.dir}: no {FILENAME} here (not an ibtest run directory)")
        if path.exists() and not path.is_file():
            raise UserError(f"run {self.dir}: {path} is not a file (an ibtest results store is one SQLite file)")
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"run {self.dir}: exists and is not a directory (choose another --out)")
        if readonly:
            with self.guard("open the results store"):
                self.db = self._open_readonly(path)
                self._check_tables()
            return
        with self.guard("open the results store"):
            self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.dir).acquire()
        try:
            with self.guard("open the results store"):
                existed = path.exists()
                self.db = sqlite3.connect(str(path), timeout=30)
                if existed:  # nothing is written to a file before it shows it is an ibtest store
                    self._check_tables(("meta", "solves", "results"))
                self.db.executescript(SCHEMA)
                self.db.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            self.close()
            raise

    def _open_readonly(self, path: Path) -> sqlite3.Connection:
        """A connection that cannot create or change a file next to ``path`` (see the module doc)."""
        side = [Path(f"{path}{s}") for s in ("-wal", "-journal") if Path(f"{path}{s}").exists()]
        if not side:
            uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro&immutable=1"
            return sqlite3.connect(uri, uri=True, timeout=30)
        self._copy = Path(tempfile.mkdtemp(prefix="ibtest-read-"))
        for f in [path, *side]:
            shutil.copyfile(f, self._copy / f.name)
        return sqlite3.connect(str(self._copy / path.name), timeout=30)

    def _check_tables(self, needed: tuple[str, ...] = ("meta", "results")) -> None:
        names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in needed if t not in names]
        if missing:
            raise UserError(f"run {self.dir}: {FILENAME} is not an ibtest results store (no table "
                            f"{', '.join(missing)}): damaged, or written by another program")

    @contextlib.contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Turn a SQLite or file-system failure during ``action`` into a UserError naming the run."""
        try:
            yield
        except sqlite3.Error as exc:
            raise UserError(self._explain(action, exc)) from None
        except OSError as exc:
            raise UserError(f"run {self.dir}: cannot {action}: {exc.strerror or exc}"
                            f"{_hint(exc, self.dir)}") from None

    def _explain(self, action: str, exc: sqlite3.Error) -> str:
        msg = str(exc)
        low = msg.lower()
        head = f"run {self.dir}: cannot {action}"
        if "full" in low:
            return (f"{head}: the disk is full ({msg}). What was stored is kept: free some space, then "
                    f"finish the run with 'ibtest run --resume {self.dir}'")
        if "readonly" in low or "read-only" in low:
            return f"{head}: {self.path} is read-only ({msg})"
        if "not a database" in low or "malformed" in low or "no such table" in low or "no such column" in low:
            return (f"run {self.dir}: {FILENAME} is damaged or not an ibtest results store ({msg}); "
                    "a damaged run cannot be reported or resumed: run the study again")
        if "unable to open" in low:
            return f"{head}: SQLite cannot open {self.path} ({msg})"
        return f"{head}: {type(exc).__name__}: {msg}"

    @property
    def rejected(self) -> int:
        """How many stored solves failed their checksum (and were solved again)."""
        return len(self.rejected_keys)

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def finish(self) -> None:
        """Leave WAL mode (fold the log into the file): a finished run is one read-only-able file."""
        if not self.readonly:
            with self.guard("finish the results store"):
                self.db.execute("PRAGMA journal_mode=DELETE")

    # -- meta ------------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.guard("write to the results store"), self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def meta(self) -> dict[str, Any]:
        """Every meta value; a value that is not JSON is a UserError naming its key."""
        with self.guard("read the results store"):
            rows = self.db.execute("SELECT key, value FROM meta").fetchall()
        out = {}
        for k, v in rows:
            try:
                out[k] = json.loads(v)
            except (TypeError, ValueError):
                raise UserError(f"run {self.dir}: {FILENAME} is damaged: meta value {k!r} is not JSON") from None
        return out

    # -- solves ----------------------------------------------------------------------------
    def get_solve(self, key: str) -> SolveResult | None:
        """The stored solve of ``key``; None when missing or when its payload cannot be read."""
        with self.guard("read the results store"):
            row = self.db.execute("SELECT payload FROM solves WHERE key = ?", (key,)).fetchone()
        try:
            d = _unpack(row[0], key) if row is not None else None
            res = None if d is None else SolveResult(
                d["theta"], d["status"], d["loss"], {k[5:]: v for k, v in d.items() if k.startswith("info.")})
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError):
            res = None  # a damaged or edited payload: the chunk is solved again (and the run says so)
            self.rejected_keys.add(key)
        if res is None:
            self.misses += 1
        else:
            self.hits += 1
        return res

    def put_solve(self, key: str, phase: str, res: SolveResult, seconds: float) -> None:
        tensors = {"theta": res.theta, "status": res.status, "loss": res.loss}
        tensors.update({f"info.{k}": v for k, v in res.info.items() if isinstance(v, torch.Tensor)})
        with self.guard("write to the results store"), self.db:
            self.db.execute("INSERT OR REPLACE INTO solves VALUES (?, ?, ?, ?, ?, ?)",
                            (key, phase, int(res.theta.shape[0]), seconds, _pack(tensors, key), time.time()))

    def n_solves(self) -> int:
        with self.guard("read the results store"):
            return int(self.db.execute("SELECT COUNT(*) FROM solves").fetchone()[0])

    # -- readable tables ---------------------------------------------------------------------
    def clear_tables(self) -> None:
        """Empty the triples and pairs tables (a run, or a resumed one, rewrites them block by block)."""
        with self.guard("write to the results store"), self.db:
            self.db.execute("DELETE FROM triples")
            self.db.execute("DELETE FROM pairs")

    def write_triples(self, t, offset: int = 0) -> None:
        """Append a block of triples; run-wide index = ``offset`` + position (parents likewise)."""
        from ibtest.base import status as st

        theta = t.theta.detach().cpu().to(torch.float64).numpy()
        theta0 = t.theta0.detach().cpu().to(torch.float64).numpy()
        status = [st.name(c) for c in t.status.tolist()]
        parent = torch.where(t.parent >= 0, t.parent + offset, t.parent).tolist()
        rows = [(offset + i, t.origin[i], t.labels[i], t.init_labels[i], p, status[i], loss, theta[i].tobytes(),
                 theta0[i].tobytes()) for i, (p, loss) in enumerate(zip(parent, t.loss.tolist()))]
        with self.guard("write to the results store"), self.db:
            self.db.executemany("INSERT OR REPLACE INTO triples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def write_pairs(self, p, offset: int = 0, first_id: int = 0) -> None:
        """Append a block of pairs (ids from ``first_id``; triple indices shifted by ``offset``)."""
        src = [p.names[c] for c in p.code.tolist()]
        rows = list(zip(range(first_id, first_id + len(p)), (p.a + offset).tolist(), (p.b + offset).tolist(), src,
                        p.same_init.int().tolist(), p.distinct.int().tolist(), p.cross_ab.tolist(),
                        p.cross_ba.tolist()))
        with self.guard("write to the results store"), self.db:
            self.db.executemany("INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def write_results(self, results: dict[str, Any]) -> None:
        """Store a finished run's JSON (a sweep: ``{"sweep": path, "runs": [...]}``) and its verdicts."""
        if "runs" in results:  # a sweep: one verdict row per (value, member)
            rows = [(f"{results['sweep']}={r['sweep_value']}: {v['label']}", v["hypothesis"], v["verdict"],
                     v["expect"], json.dumps(v)) for r in results["runs"] for v in r["verdicts"]]
        else:
            rows = [(v["label"], v["hypothesis"], v["verdict"], v["expect"], json.dumps(v)) for v in results["verdicts"]]
        text = json.dumps(results)
        with self.guard("write to the results store"), self.db:
            self.db.execute("DELETE FROM verdicts")
            self.db.executemany("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?)", rows)
            self.db.execute("INSERT OR REPLACE INTO results VALUES (1, ?)", (text,))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            (RESULTS_SUM, json.dumps(hashlib.sha256(text.encode()).hexdigest())))

    def results(self) -> dict[str, Any] | None:
        """The finished run's JSON (None before the run finished); damaged JSON is a UserError."""
        with self.guard("read the results store"):
            row = self.db.execute("SELECT json FROM results WHERE id = 1").fetchone()
        if row is None:
            return None
        with self.guard("read the results store"):
            stored = self.db.execute("SELECT value FROM meta WHERE key = ?", (RESULTS_SUM,)).fetchone()
        if stored is not None and (not isinstance(row[0], str)
                                   or json.dumps(hashlib.sha256(row[0].encode()).hexdigest()) != stored[0]):
            raise UserError(f"run {self.dir}: {FILENAME} is damaged: the stored results fail their checksum (edited "
                            f"or damaged since they were written); re-render them with 'ibtest run --resume {self.dir}'")
        try:
            res = json.loads(row[0])
            if res is None:
                raise ValueError("null")
            return res
        except (TypeError, ValueError):
            raise UserError(f"run {self.dir}: {FILENAME} is damaged: the stored results are not JSON; "
                            f"re-render them with 'ibtest run --resume {self.dir}'") from None


def _hint(exc: OSError, run_dir: Path) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return f". What was stored is kept: free some space, then 'ibtest run --resume {run_dir}'"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return " (choose a writable --out)"
    return ""


def open_run(run_dir: str | Path, *, readonly: bool = False) -> Store:
    """Open an existing run directory's store (a clear error if there is none)."""
    p = Path(run_dir)
    if not p.is_dir():
        raise UserError(f"run {p}: no such directory" if not p.exists() else f"run {p}: not a directory")
    return Store(p, create=False, readonly=readonly)
