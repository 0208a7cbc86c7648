"""The plugin manager: hook specs, the ``ibtest`` entry-point group, local plugin files.

``get_plugin_manager(files)`` adds the specs, registers the built-in solvers and executors, loads every
package of the ``ibtest`` entry-point group (a package's modules are registered one by one, so
a new plugin is one new file), then the local files, and calls ``check_pending()``. The
:class:`Registry` then collects the specs per kind and refuses duplicate names.

Code is loaded from exactly two places: installed entry points and files the user names (``--plugin
FILE``, or a study's own ``plugins:`` list when the user runs that study). Never from a file the tool
reads as data (a certificate, a results store). With ``IBTEST_DISABLE_PLUGIN_AUTOLOAD`` set to a
non-empty value other than ``0`` (like pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), entry points of
every distribution other than ``ibtest`` itself are skipped: the built-in models, datasets, inits,
constructions and hypotheses (which register through the same group) stay, third-party packages do
not load, and ``--plugin FILE`` still works.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import pluggy

from ibtest.base.errors import PluginError, UserError
from ibtest.base.guard import PluginFailure, describe, plugin_call
from ibtest.plugin import hookspecs
from ibtest.plugin.spec_checks import spec_problems
from ibtest.plugin.specs import SPEC_TYPES

ENTRY_POINT_GROUP = "ibtest"
DISABLE_AUTOLOAD_ENV = "IBTEST_DISABLE_PLUGIN_AUTOLOAD"
OWN_DISTRIBUTION = "ibtest"
SINGULAR = {"models": "model", "datasets": "dataset", "inits": "init", "solvers": "solver",
            "constructions": "construction", "hypotheses": "hypothesis", "executors": "executor",
            "kinds": "claim kind", "families": "family"}


class _NamedSpec(Protocol):
    name: str


@dataclass(frozen=True)
class Registered:
    """A spec together with where it came from (for ``ibtest list`` and error messages)."""

    kind: str
    spec: Any
    plugin: str
    source: str


def _module_source(module: types.ModuleType) -> str:
    return str(getattr(module, "__file__", None) or module.__name__)


def _register_module(pm: pluggy.PluginManager, module: types.ModuleType, name: str) -> None:
    if pm.get_plugin(name) is not None or pm.is_registered(module):
        return
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name} ({_module_source(module)}): {exc}") from None


def _register_tree(pm: pluggy.PluginManager, module: types.ModuleType, name: str) -> None:
    """Register a module and, for a package, every public module below it."""
    _register_module(pm, module, name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", []) or []):
        if info.name.startswith("_"):
            continue
        full = f"{module.__name__}.{info.name}"
        try:
            sub = plugin_call(importlib.import_module, full)
        except Exception as exc:  # a broken plugin module names itself (sys.exit included)
            raise PluginError(f"plugin {full} failed to import: {describe(exc)}") from None
        _register_tree(pm, sub, f"{name}.{info.name}")


def load_plugin_file(pm: pluggy.PluginManager, path: str | Path) -> types.ModuleType:
    """Import a local ``.py`` file as a plugin module and register it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PluginError(f"plugin file {p}: " + ("not a regular file" if p.exists() else "no such file"))
    mod_name = f"ibtest_local_{abs(hash(str(p.resolve())))}_{p.stem}"
    if mod_name in sys.modules:
        module = sys.modules[mod_name]
    else:
        spec = importlib.util.spec_from_file_location(mod_name, p)
        if spec is None or spec.loader is None:
            raise PluginError(f"plugin file {p}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:  # whatever the file does on import (raise, sys.exit, KeyboardInterrupt, loop) is its failure
            plugin_call(spec.loader.exec_module, module)
        except Exception as exc:
            del sys.modules[mod_name]
            what = f"{describe(exc)} on import" if isinstance(exc, PluginFailure) else \
                f"raised on import: {type(exc).__name__}: {exc}"
            raise PluginError(f"plugin file {p} {what}") from None
    _register_module(pm, module, f"file:{p}")
    return module


#: The core's own plugins, imported by name when a manager is built (as pytest does with its
#: ``default_plugins``): the plugin layer sits below the layers that implement them, so it names
#: them instead of importing them.
BUILTIN_MODULES: tuple[str, ...] = ("ibtest.solve.solvers.builtin", "ibtest.run.executors", "ibtest.kinds",
                                    "ibtest.propose.kinds")


def autoload_disabled() -> bool:
    """True when ``IBTEST_DISABLE_PLUGIN_AUTOLOAD`` is set (to anything but ``""`` or ``"0"``)."""
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("", "0")


def _distribution(ep: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) or (dist.metadata["Name"] if dist is not None else None)
    return None if name is None else name.lower().replace("_", "-")


def entry_points_to_load() -> list[importlib.metadata.EntryPoint]:
    """The ``ibtest`` entry points this process loads: all, or only ibtest's own when autoload is off."""
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if autoload_disabled():
        eps = [ep for ep in eps if _distribution(ep) == OWN_DISTRIBUTION]
    return eps


def get_plugin_manager(
    plugin_files: Iterable[str | Path] = (), *, entry_points: bool = True
) -> pluggy.PluginManager:
    """A ready plugin manager: specs, built-in solvers, entry points, local files, checked."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_MODULES:
        _register_module(pm, importlib.import_module(name), name)
    if entry_points:
        for ep in entry_points_to_load():
            try:
                module = plugin_call(ep.load)
            except Exception as exc:
                raise PluginError(f"plugin {ep.name} (entry point {ep.value}) failed to import: {describe(exc)}") from None
            _register_tree(pm, module, ep.name)
    for f in plugin_files:
        load_plugin_file(pm, f)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin {name}: {exc}") from None
    return pm


class Registry:
    """Every spec registered in a plugin manager, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.items: dict[str, dict[str, Registered]] = {k: {} for k in SPEC_TYPES}
        for hook_name, kind in hookspecs.HOOK_KINDS.items():
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
                source = _module_source(impl.plugin) if isinstance(impl.plugin, types.ModuleType) else plugin_name
                try:
                    specs = plugin_call(impl.function)
                except Exception as exc:
                    raise PluginError(f"plugin {plugin_name} ({source}): {hook_name}() {describe(exc)}") from None
                self._add(kind, specs, plugin_name, source, hook_name)
        for reg in list(self.items["families"].values()):  # a family is judged as hypotheses of its own
            self._add("hypotheses", reg.spec.hypotheses(), reg.plugin, reg.source, "ibtest_families")
        self._check_kinds()

    def _check_kinds(self) -> None:
        """Every hypothesis's ``kind`` must be judged by a registered claim kind."""
        judged = {k.spec.judges for k in self.items["kinds"].values()} - {"*"}
        for name, reg in self.items["hypotheses"].items():
            kind = reg.spec.kind
            if not isinstance(kind, str) or kind not in judged:
                from ibtest.base.textsafe import clean

                raise PluginError(f"plugin {reg.plugin} ({reg.source}): hypothesis {clean(name)!r} has kind "
                                  f"{clean(repr(kind))}, which no registered claim kind judges (kinds: "
                                  f"{', '.join(sorted(judged))})")

    def kinds_for(self, hypothesis_kind: str) -> tuple[Any, ...]:
        """The claim kinds that judge each run of a hypothesis of this kind, in registration order
        (a kind with ``score`` and ``finish``; sweep-wide kinds, ``judges="*"``, are not among them)."""
        return tuple(r.spec for r in self.items["kinds"].values()
                     if r.spec.judges == hypothesis_kind and r.spec.score is not None and r.spec.finish is not None)

    def replayers_for(self, hypothesis_kind: str) -> tuple[Any, ...]:
        """The claim kinds whose certificates of a hypothesis of this kind ``ibtest verify`` replays:
        its own kinds and the sweep-wide ones (``judges="*"``)."""
        return tuple(r.spec for r in self.items["kinds"].values() if r.spec.judges in (hypothesis_kind, "*"))

    def _add(self, kind: str, specs: Any, plugin: str, source: str, hook_name: str) -> None:
        want = SPEC_TYPES[kind]
        if specs is None:
            return
        if not isinstance(specs, (list, tuple)):
            raise PluginError(
                f"plugin {plugin} ({source}): {hook_name}() must return a list of "
                f"ibtest.{want.__name__}, got {type(specs).__name__}"
            )
        for spec in specs:
            if not isinstance(spec, want):
                raise PluginError(
                    f"plugin {plugin} ({source}): {hook_name}() returned {type(spec).__name__}, "
                    f"expected ibtest.{want.__name__}"
                )
            name = cast(_NamedSpec, spec).name  # every class in SPEC_TYPES has a ``name: str`` field
            if not isinstance(name, str) or not name.strip():
                raise PluginError(f"plugin {plugin} ({source}): {hook_name}() returned a {SINGULAR[kind]} whose "
                                  f"name is {name!r}, expected a non-empty string")
            if name in self.items[kind]:
                other = self.items[kind][name]
                raise PluginError(
                    f"duplicate {SINGULAR[kind]} name {name!r}: registered by plugin {other.plugin} "
                    f"({other.source}) and again by plugin {plugin} ({source})"
                )
            problems = spec_problems(kind, spec)
            if problems:
                raise PluginError(f"plugin {plugin} ({source}): {SINGULAR[kind]} {name!r} from {hook_name}(): "
                                  + "; ".join(problems))
            self.items[kind][name] = Registered(kind, spec, plugin, source)

    def get(self, kind: str, name: str) -> Any:
        return self.items[kind][name].spec

    def names(self, kind: str) -> list[str]:
        return sorted(self.items[kind])


def load_registry(plugin_files: Iterable[str | Path] = ()) -> Registry:
    """Plugin manager plus registry in one call."""
    return Registry(get_plugin_manager(plugin_files))


def require_registered(reg: Registry, needs: Iterable[tuple[str, str]], *, what: str,
                       named_files: Iterable[str] = ()) -> None:
    """UserError (exit 2) naming every (kind, name) in ``needs`` that ``reg`` lacks.

    A certificate or a stored run names the plugin files it was made with (``named_files``);
    they are never imported on its say-so. The message lists them and the ``--plugin`` flag
    that loads one the user trusts.
    """
    from ibtest.base.textsafe import clean

    missing = [(k, n) for k, n in needs if n not in reg.items[k]]
    if not missing:
        return
    names = ", ".join(f"{SINGULAR[k]} {clean(n)!r}" for k, n in missing)
    files = [clean(f) for f in named_files]
    if files:
        hint = (f"it was made with plugin file(s) {', '.join(files)}; ibtest does not load code a file names: "
                f"if you trust it, pass --plugin FILE")
    else:
        hint = "install the package that provides it, or pass --plugin FILE"
    if autoload_disabled():
        hint += f" ({DISABLE_AUTOLOAD_ENV} is set: third-party entry points were not loaded)"
    raise UserError(f"{what} needs {names}, which {'is' if len(missing) == 1 else 'are'} not registered here: {hint}")
