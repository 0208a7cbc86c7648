"""The memory a study needs, estimated before anything is allocated, and the shape checks that
go with it (all datasets of a study share one input dimension d).

For N_d datasets of at most n points in d dimensions, N_i initializations of P parameters and
B = min(N_d·N_i, block_size) instances per block, in float64 (8 bytes a number):

    bytes ≈ 8 · [ N_d·(n·d + 2n) + N_i·P + W·B·(n·d + 2n + 2P) ]

The first two terms are the instance plan (every dataset and every θ0, once), the last the
block streamed through the pipeline (X, y, mask, θ0 and θ∞ of each instance) times W = 4 for
the solver's workspace, the partner datasets and the pairs. Constructions add their partners of
a block (each construction's declared ``size``: k instances of m points) the same way,
``8 · W · k · (m·d + 2m + 2P)``: a million rotations of a pair are counted before they are built.
The witness search (``verdict.search``, on by default) holds an n × n matrix per triple of a block
padded to its largest n (a construction that adds 100 000 points pads every triple of its block):
``8 · W · (B + Σk) · n_max²`` more. It is a lower bound on the peak,
meant to refuse the hopeless (``count: 1e9`` is 160 GB) before a long allocation or the OOM
killer does. A sweep runs its values one after another: the largest value counts. The limit is
half of the machine's physical memory (:func:`memory_limit`). The work a study asks for is
estimated next to its memory (:mod:`ibtest.study.work`) once its data are known
(:func:`check_plan_study`).
"""
from __future__ import annotations

import os
from typing import Any

from ibtest.base.errors import UserError
from ibtest.base.guard import describe, plugin_call
from ibtest.study.checks import check_n_params
from ibtest.study.yamlpos import format_path, line_of

BYTES = 8
WORK = 4
FRACTION = 0.5


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def memory_limit() -> int | None:
    """The most memory a study may be estimated to need: half of physical memory."""
    phys = physical_memory()
    return None if phys is None else int(FRACTION * phys)


def estimate(n_datasets: int, n: int, d: int, n_inits: int, P: int, block: int,
             partners: list[tuple[int, int]] | tuple = (), search: bool = False) -> int:
    """Bytes the study needs by the formula of the module doc; ``partners``: (instances, points)
    each construction adds to a block; ``search``: the witness search runs on it."""
    B = min(n_datasets * n_inits, block)
    extra = sum(k * (m * d + 2 * m + 2 * P) for k, m in partners)
    if search:
        n_max = max([n] + [m for _, m in partners])
        extra += (B + sum(k for k, _ in partners)) * n_max * n_max
    return BYTES * (n_datasets * (n * d + 2 * n) + n_inits * P + WORK * B * (n * d + 2 * n + 2 * P) + WORK * extra)


def partners_of(study: Any, B: int, n: int) -> list[tuple[int, int]]:
    """(instances, points) every construction of ``study`` adds to a block of B instances of n points."""
    from ibtest.study.work import built_by_constructions

    return [(k, m) for _, k, m in built_by_constructions(study, B, n)]


def human(nbytes: float) -> str:
    """``1.6e11`` -> ``'149 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} PiB"  # pragma: no cover


def too_big(n_datasets: int, n: int, d: int, n_inits: int, P: int, block: int,
            partners: list[tuple[int, int]] | tuple = (), search: bool = False) -> str | None:
    """Why a study of this size cannot run here (None when it fits or the limit is unknown)."""
    limit = memory_limit()
    need = estimate(n_datasets, n, d, n_inits, P, block, partners, search)
    if limit is None or need <= limit:
        return None
    made = sum(k for k, _ in partners)
    most = max([m for _, m in partners], default=n)
    extra = f", and {made:,} instances of up to {most:,} points built by constructions in each block" if made else ""
    return (f"the study needs about {human(need)} of memory ({n_datasets:,} datasets of n = {n:,} "
            f"points in d = {d:,} dimensions x {n_inits:,} inits of P = {P:,} parameters = "
            f"{n_datasets * n_inits:,} instances, in blocks of {min(n_datasets * n_inits, block):,}{extra}), "
            f"more than the {human(limit)} allowed (half of this machine's {human(physical_memory() or 0)}): "
            "lower count, n or d" + (" or the constructions' counts and points" if made else "")
            + (" (the witness search holds an n x n matrix per triple; verdict: {search: false} switches it off)"
               if search and need > estimate(n_datasets, n, d, n_inits, P, block, partners) * 2 else ""))


def d_mismatch(dims: list[tuple[str, int]]) -> str | None:
    """A message when the datasets ``[(label, d), ...]`` do not share one input dimension."""
    if len({d for _, d in dims}) <= 1:
        return None
    listed = "; ".join(f"{label} has d = {d}" for label, d in dims)
    return (f"all datasets of a study must have the same input dimension d (the model's theta has one "
            f"length for all of them): {listed}. Run them as separate studies")


def _label(use: Any, opts: dict[str, Any]) -> str:
    varying = [k for k, v in use.options.items() if isinstance(v, list) and use.spec.options[k].sweep]
    shown = ", ".join(f"{k}={opts[k]}" for k in varying)
    return f"{format_path(use.path)} {use.name}" + (f"({shown})" if shown else "")


def _declared_sizes(study: Any) -> tuple[list[tuple[str, int, int, int]], bool]:
    """[(label, k, n, d)] of every dataset whose plugin declares ``size``; False if one does not."""
    out, complete = [], True
    for use in study.datasets:
        size = getattr(use.spec, "size", None)
        for opts in use.expand():
            try:
                kd: tuple[int, int, int] | None = None
                if size is not None:
                    k, n, d = (int(v) for v in plugin_call(size, **opts))
                    kd = (k, n, d)
            except Exception:  # a size() that cannot say: checked once the data exist
                kd = None
            if kd is None:
                complete = False
                continue
            out.append((_label(use, opts), *kd))
    return out, complete


def check_study(study: Any, lines: dict) -> list[str]:
    """Problems (``FILE:LINE: field: reason``) of a validated study's size, for each sweep value."""
    from ibtest.study.sweep import variants

    src = study.source
    where = f"{src}:{line_of(lines, ('datasets',))}: datasets"
    for value, s in variants(study):
        suffix = "" if study.sweep is None else f" (with {study.sweep.path} = {value!r})"
        sizes, complete = _declared_sizes(s)
        msg = d_mismatch([(label, d) for label, _, _, d in sizes])
        if msg:
            return [f"{where}: {msg}{suffix}"]
        if not sizes or not complete:
            continue
        d = sizes[0][3]
        try:
            model = plugin_call(s.model.spec.factory, **s.model.options)
            P = check_n_params(plugin_call(model.n_params, d), s.model.name, d)
        except UserError as exc:
            return [f"{src}:{line_of(lines, ('model',))}: model: {exc}{suffix}"]
        except Exception as exc:  # noqa: BLE001 - a plugin's failure, named
            return [f"{src}:{line_of(lines, ('model',))}: model: {s.model.name!r}: n_params({d}) "
                    f"{describe(exc)}{suffix}"]
        n_inits = sum(len(u.expand()) * c for u, c in zip(s.inits, s.init_counts))
        n_data, n_max = sum(k for _, k, _, _ in sizes), max(n for _, _, n, _ in sizes)
        block = max(1, s.block_size)
        why = too_big(n_data, n_max, d, n_inits, P, block, partners_of(s, min(n_data * n_inits, block), n_max),
                      s.verdict.search)
        if why:
            return [f"{where}: {why}{suffix}"]
    return []


def check_plan(n_datasets: int, n: int, d: int, n_inits: int, P: int, block: int) -> None:
    """Raise a UserError when generated data of this size leave no room to run the study."""
    why = too_big(n_datasets, n, d, n_inits, P, block)
    if why:
        raise UserError(why)


def check_plan_study(study: Any, n_datasets: int, n: int, d: int, n_inits: int, P: int) -> list[str]:
    """The memory (constructions' partners included) and the work (:func:`ibtest.study.work.check`)
    of a study whose data are made: a UserError when it cannot run here, else its warnings."""
    from ibtest.study import work

    block = max(1, study.block_size)
    N = n_datasets * n_inits
    why = too_big(n_datasets, n, d, n_inits, P, block, partners_of(study, min(N, block), n), study.verdict.search)
    if why:
        raise UserError(f"study {study.source}: {why}")
    problems, warnings = work.check(study, N, n, d, P)
    if problems:
        raise UserError(f"study {study.source}: {problems[0]}")
    return warnings
