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
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .specs import SolveResult

FILENAME = "results.sqlite"
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


def _pack(tensors: dict[str, torch.Tensor]) -> bytes:
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        a = t.detach().cpu().contiguous().numpy()
        b = a.tobytes()
        header[k] = {"dtype": str(a.dtype), "shape": list(a.shape), "offset": off, "size": len(b)}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + b"".join(blobs)


def _unpack(payload: bytes) -> dict[str, torch.Tensor]:
    hl = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + hl])
    body = payload[8 + hl :]
    out = {}
    for k, h in header.items():
        a = np.frombuffer(body[h["offset"] : h["offset"] + h["size"]], dtype=h["dtype"]).reshape(h["shape"])
        out[k] = torch.from_numpy(a.copy())
    return out


def solve_key(tensors: list[torch.Tensor], settings: dict[str, Any]) -> str:
    """SHA-256 over the inputs of a solver call (tensor bytes and shapes, settings as JSON)."""
    h = hashlib.sha256()
    for t in tensors:
        a = t.detach().cpu().contiguous().numpy()
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


class Store:
    """A run directory's SQLite store. Every write is committed at once."""

    def __init__(self, run_dir: str | Path, *, create: bool = True):
        self.dir = Path(run_dir)
        path = self.dir / FILENAME
        if not create and not path.exists():
            raise UserError(f"run {self.dir}: no {FILENAME} here (not an ibtest run directory)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=30)
        self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.hits = 0
        self.misses = 0

    def close(self) -> None:
        self.db.close()

    # -- meta ------------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    # -- solves ----------------------------------------------------------------------------
    def get_solve(self, key: str) -> SolveResult | None:
        row = self.db.execute("SELECT payload FROM solves WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        d = _unpack(row[0])
        info = {k[5:]: v for k, v in d.items() if k.startswith("info.")}
        return SolveResult(d["theta"], d["status"], d["loss"], info)

    def put_solve(self, key: str, phase: str, res: SolveResult, seconds: float) -> None:
        tensors = {"theta": res.theta, "status": res.status, "loss": res.loss}
        tensors.update({f"info.{k}": v for k, v in res.info.items() if isinstance(v, torch.Tensor)})
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO solves VALUES (?, ?, ?, ?, ?, ?)",
                            (key, phase, int(res.theta.shape[0]), seconds, _pack(tensors), time.time()))

    def n_solves(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM solves").fetchone()[0])

    # -- readable tables ---------------------------------------------------------------------
    def clear_tables(self) -> None:
        """Empty the triples and pairs tables (a run, or a resumed one, rewrites them block by block)."""
        with self.db:
            self.db.execute("DELETE FROM triples")
            self.db.execute("DELETE FROM pairs")

    def write_triples(self, t, offset: int = 0) -> None:
        """Append a block of triples; run-wide index = ``offset`` + position (parents likewise)."""
        from . import status as st

        theta = t.theta.detach().cpu().to(torch.float64).numpy()
        theta0 = t.theta0.detach().cpu().to(torch.float64).numpy()
        status = [st.name(c) for c in t.status.tolist()]
        parent = torch.where(t.parent >= 0, t.parent + offset, t.parent).tolist()
        rows = [(offset + i, t.origin[i], t.labels[i], t.init_labels[i], p, status[i], loss, theta[i].tobytes(),
                 theta0[i].tobytes()) for i, (p, loss) in enumerate(zip(parent, t.loss.tolist()))]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO triples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def write_pairs(self, p, offset: int = 0, first_id: int = 0) -> None:
        """Append a block of pairs (ids from ``first_id``; triple indices shifted by ``offset``)."""
        src = [p.names[c] for c in p.code.tolist()]
        rows = list(zip(range(first_id, first_id + len(p)), (p.a + offset).tolist(), (p.b + offset).tolist(), src,
                        p.same_init.int().tolist(), p.distinct.int().tolist(), p.cross_ab.tolist(),
                        p.cross_ba.tolist()))
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def write_results(self, results: dict[str, Any]) -> None:
        """Store a finished run's JSON (a sweep: ``{"sweep": path, "runs": [...]}``) and its verdicts."""
        if "runs" in results:  # a sweep: one verdict row per (value, member)
            rows = [(f"{results['sweep']}={r['sweep_value']}: {v['label']}", v["hypothesis"], v["verdict"],
                     v["expect"], json.dumps(v)) for r in results["runs"] for v in r["verdicts"]]
        else:
            rows = [(v["label"], v["hypothesis"], v["verdict"], v["expect"], json.dumps(v)) for v in results["verdicts"]]
        with self.db:
            self.db.execute("DELETE FROM verdicts")
            self.db.executemany("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?)", rows)
            self.db.execute("INSERT OR REPLACE INTO results VALUES (1, ?)", (json.dumps(results),))

    def results(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT json FROM results WHERE id = 1").fetchone()
        return None if row is None else json.loads(row[0])


def open_run(run_dir: str | Path) -> Store:
    """Open an existing run directory's store (a clear error if there is none)."""
    p = Path(run_dir)
    if not p.is_dir():
        raise UserError(f"run {p}: no such directory")
    return Store(p, create=False)
