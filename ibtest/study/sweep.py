"""Sweeps: one study repeated for each value of one plugin option (``sweep: {path, values}``).

:func:`check_sweep` (during validation) requires that ``path`` = ``KIND.OPTION`` names an option
every plugin of that kind has, and coerces every value to its type; :func:`apply_sweep` sets the
option on every plugin of the kind; :func:`variants` lists (value, study) for each run.
"""
from __future__ import annotations

from typing import Any

import pydantic

from ibtest.plugin.manager import SINGULAR
from ibtest.study.coerce import coerce, describe_type, short
from ibtest.study.typed import Study, SweepSettings
from ibtest.study.yamlpos import format_path, line_of


def check_sweep(sweep: SweepSettings, uses: dict[str, list], src: str, lines: dict, problems: list[str]) -> None:
    """``sweep.path`` names an option every plugin of its kind has; every value is valid for it.

    The values are replaced by their validated form (``"1e-3"`` read as 0.001 where the option
    is a float), as :func:`apply_sweep` sets them on every plugin of that kind.
    """
    head, _, opt = sweep.path.partition(".")
    where = f"{src}:{line_of(lines, ('sweep', 'path'))}: sweep.path"
    if head not in uses or not opt:
        problems.append(f"{where}: expected init.OPTION, model.OPTION, solver.OPTION or datasets.OPTION, "
                        f"got {sweep.path!r}")
        return
    coerced: list[Any] | None = None
    for use in uses[head]:
        if use is None:
            continue
        option = use.spec.options.get(opt)
        if option is None:
            allowed = ", ".join(sorted(use.spec.options)) or "none"
            hint = " (count is not an option: list several inits instead)" if opt == "count" else ""
            problems.append(f"{where}: {SINGULAR[use.kind]} {use.name!r} ({format_path(use.path)}) has no "
                            f"option {opt!r} (options: {allowed}){hint}")
            continue
        values = []
        for k, v in enumerate(sweep.values):
            try:
                values.append(coerce(v, option, opt))
            except (pydantic.ValidationError, ValueError) as exc:
                detail = exc.errors()[0]["msg"] if isinstance(exc, pydantic.ValidationError) else str(exc)
                problems.append(f"{src}:{line_of(lines, ('sweep', 'values', k))}: sweep.values[{k}]: {detail} "
                                f"(expected {describe_type(option.type)} for {sweep.path}, got {short(v)})")
        if coerced is None:
            coerced = values
    if coerced is not None and len(coerced) == len(sweep.values):
        sweep.values = coerced


def apply_sweep(study: Study, value: Any) -> Study:
    """The study with ``study.sweep.path`` set to ``value`` on every plugin of that kind."""
    import copy

    if study.sweep is None:
        raise ValueError(f"study {study.name}: no sweep to apply")
    s = copy.copy(study)
    head, opt = study.sweep.path.split(".", 1)
    if head == "init":
        s.inits = [copy.copy(u) for u in study.inits]
        for u in s.inits:
            u.options = {**u.options, opt: value}
    elif head == "datasets":
        s.datasets = [copy.copy(d) for d in study.datasets]
        for d in s.datasets:
            d.options = {**d.options, opt: value}
    else:
        use = copy.copy(getattr(study, head))
        use.options = {**use.options, opt: value}
        setattr(s, head, use)
    return s


def variants(study: Study) -> list[tuple[Any, Study]]:
    """(sweep value, study) for each run a study makes: one (None, study) without a sweep."""
    if study.sweep is None:
        return [(None, study)]
    return [(v, apply_sweep(study, v)) for v in study.sweep.values]

