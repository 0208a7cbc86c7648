"""The ``ray`` executor: a study's blocks as Ray tasks on a cluster.

Each task rebuilds the run from its :class:`~ibtest.run.executors.Recipe` (cached per worker process)
and runs one block: solve, own pairs, constructions, partner solves and the member scores. It
returns the block's triples, pairs, new solves and member scores (each member's block totals and
the positions of its candidates); the driver stores, tallies and retains them. The driver keeps at
most ``max_in_flight`` blocks submitted and not yet applied, takes results with ``ray.wait`` as
they finish, stores their solves at once and applies them in block order. A worker that dies is
Ray's business: the task is retried (``max_retries``), and since the driver applies each block
once, by its index, nothing is counted twice.

Ray is an optional extra (``pip install "ibtest[ray]"``) and is imported only here.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ibtest.base import deadline
from ibtest.base.errors import UserError
from ibtest.base.guard import PluginFailure, plugin_call
from ibtest.base.textsafe import clean
from ibtest.run.executors import BlockJob, BlockResult, ExecutorBase, Recipe, run_recipe_block

INSTALL = 'pip install "ibtest[ray]"'


def import_ray() -> Any:
    """The ``ray`` module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise UserError(f"executor 'ray' needs Ray, which is not installed here ({exc}): {INSTALL}") from None
    return ray


def _remote_block(recipe: Recipe, start: int, stop: int, threads: int) -> BlockResult:
    """The body of a block task (runs on a worker)."""
    import torch

    torch.set_num_threads(threads)  # one task, its own CPUs: no oversubscription of the cores
    return run_recipe_block(recipe, start, stop)


#: seconds to wait for a cluster's port to accept a connection, and for ray.init to join it
CONNECT_TIMEOUT = 5.0
JOIN_TIMEOUT = 15.0


def cluster_address(address: str | None) -> tuple[str, str] | None:
    """(address, where it came from) of the cluster ``ray.init`` would join over the network, or
    None when it starts one here (``local``, or nothing named and no ``RAY_ADDRESS``)."""
    import os

    if address is None:
        env = os.environ.get("RAY_ADDRESS", "").strip()
        return (env, "RAY_ADDRESS") if env and env not in ("auto", "local") else None
    if address in ("auto", "local"):
        return None
    return address, "executor.address"


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT) -> None:
    """A UserError within ``timeout`` seconds, naming the address, when the cluster ``ray.init``
    would join does not answer on its port (``ray.init`` itself retries for minutes)."""
    import socket
    import urllib.parse

    got = cluster_address(address)
    if got is None:
        return
    addr, origin = got
    parsed = urllib.parse.urlsplit(addr if "://" in addr else f"//{addr}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise UserError(f"executor 'ray': cannot read the cluster address {clean(addr)!r} (from {origin}): "
                        "expected HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UserError(f"executor 'ray': cannot reach the cluster at {clean(addr)} (from {origin}): {clean(why)} "
                        f"within {timeout:g} s; start it ('ray start --head'), fix the address, or run with "
                        "--executor local") from None


class RayExecutor(ExecutorBase):
    name = "ray"
    remote = True

    def __init__(self, address: str | None = None, num_cpus_per_task: int = 1, max_in_flight: int = 0,
                 max_retries: int = 3):
        self.ray = import_ray()
        if num_cpus_per_task < 1:
            raise UserError(f"executor.num_cpus_per_task: expected at least 1, got {num_cpus_per_task}")
        if max_in_flight < 0 or max_retries < 0:
            raise UserError("executor.max_in_flight and executor.max_retries: expected 0 or more")
        self.address = address
        self.cpus = num_cpus_per_task
        self.max_in_flight = max_in_flight
        self.max_retries = max_retries
        self._owned = False
        self._workers = 1

    def start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            check_reachable(self.address)
            self._join()
            self._owned = True
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if cpus < self.cpus:
            raise UserError(f"executor 'ray': the cluster has {cpus:g} CPUs, fewer than num_cpus_per_task={self.cpus}")
        self._workers = max(1, int(cpus // self.cpus))

    def check(self) -> None:
        """Fail within seconds when the cluster to join does not answer (before a run writes
        anything): its port must accept a connection, and Ray must join it within JOIN_TIMEOUT."""
        check_reachable(self.address)
        if cluster_address(self.address) is not None and not self.ray.is_initialized():
            self._join()
            self.ray.shutdown()

    def _join(self) -> None:
        """``ray.init``; joining a remote cluster that does not answer takes at most JOIN_TIMEOUT."""
        ray = self.ray
        remote = cluster_address(self.address)
        try:  # ray.init retries a cluster that does not answer for minutes
            with deadline.policy(JOIN_TIMEOUT if remote else None):
                plugin_call(ray.init, address=self.address, include_dashboard=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            where = f"{clean(remote[0])} (from {remote[1]})" if remote else clean(self.address or "default")
            why = f"no answer within {JOIN_TIMEOUT:g} s" if isinstance(exc, PluginFailure) and exc.timed_out \
                else clean(exc)
            raise UserError(f"executor 'ray': cannot join the cluster at {where}: {why}; start it ('ray start "
                            "--head'), fix the address, or run with --executor local") from None

    def workers(self) -> int:
        return self._workers

    def close(self) -> None:
        if self._owned:
            self.ray.shutdown()
            self._owned = False

    def _get(self, ref: Any, start: int, stop: int) -> BlockResult:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UserError):  # e.g. a plugin file that fails to load on the worker
                raise cause from None
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as exc:
            raise UserError(f"executor 'ray': block of instances {start}..{stop - 1} failed after "
                            f"{self.max_retries} retries ({type(exc).__name__}); what finished is stored: "
                            "finish the run with 'ibtest run --resume RUN'") from None

    def run(self, job: BlockJob) -> Iterator[BlockResult]:
        ray = self.ray
        task = ray.remote(num_cpus=self.cpus, max_retries=self.max_retries)(_remote_block)
        window = self.max_in_flight or 2 * self._workers
        here = {s for s in job.starts if job.stored(s)}  # resumed: stored blocks run on the driver
        queue = [s for s in job.starts if s not in here][::-1]
        recipe = ray.put(job.recipe)
        pending: dict[Any, int] = {}  # task -> block start
        ready: dict[int, BlockResult] = {}
        try:
            for start in job.starts:
                while True:
                    while queue and len(pending) + len(ready) < window:
                        s = queue.pop()
                        pending[task.remote(recipe, s, job.stop(s), self.cpus)] = s
                    if start in here or start in ready:
                        break
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        s = pending.pop(ref)
                        res = self._get(ref, s, job.stop(s))
                        job.received(res)
                        ready[s] = res
                yield job.run_here(start, quiet=True) if start in here else ready.pop(start)
        finally:
            for ref in pending:
                ray.cancel(ref)
