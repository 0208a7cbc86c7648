"""The plugin manager: hook specs, the ``ibtest`` entry-point group, local plugin files.

``get_plugin_manager(files)`` adds the specs, registers the built-in solvers and executors, loads every
package of the ``ibtest`` entry-point group (a package's modules are registered one by one, so
a new plugin is one new file), then the local files, and calls ``check_pending()``. The
:class:`Registry` then collects the specs per kind and refuses duplicate names.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PluginError
from .specs import SPEC_TYPES

ENTRY_POINT_GROUP = "ibtest"
SINGULAR = {"models": "model", "datasets": "dataset", "inits": "init", "solvers": "solver",
            "constructions": "construction", "hypotheses": "hypothesis", "executors": "executor"}


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
            sub = importlib.import_module(full)
        except Exception as exc:  # a broken plugin module names itself
            raise PluginError(f"plugin {full} failed to import: {type(exc).__name__}: {exc}") from exc
        _register_tree(pm, sub, f"{name}.{info.name}")


def load_plugin_file(pm: pluggy.PluginManager, path: str | Path) -> types.ModuleType:
    """Import a local ``.py`` file as a plugin module and register it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PluginError(f"plugin file {p}: no such file")
    mod_name = f"ibtest_local_{abs(hash(str(p.resolve())))}_{p.stem}"
    if mod_name in sys.modules:
        module = sys.modules[mod_name]
    else:
        spec = importlib.util.spec_from_file_location(mod_name, p)
        if spec is None or spec.loader is None:
            raise PluginError(f"plugin file {p}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise PluginError(
                f"plugin file {p} raised on import: {type(exc).__name__}: {exc}"
            ) from exc
    _register_module(pm, module, f"file:{p}")
    return module


def get_plugin_manager(
    plugin_files: Iterable[str | Path] = (), *, entry_points: bool = True
) -> pluggy.PluginManager:
    """A ready plugin manager: specs, built-in solvers, entry points, local files, checked."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    from .solvers import builtin

    _register_module(pm, builtin, "ibtest.solvers")
    from . import executors

    _register_module(pm, executors, "ibtest.executors")
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name} (entry point {ep.value}) failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
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
                    specs = impl.function()
                except Exception as exc:
                    raise PluginError(
                        f"plugin {plugin_name} ({source}): {hook_name}() raised "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                self._add(kind, specs, plugin_name, source, hook_name)

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
            if spec.name in self.items[kind]:
                other = self.items[kind][spec.name]
                raise PluginError(
                    f"duplicate {SINGULAR[kind]} name {spec.name!r}: registered by plugin {other.plugin} "
                    f"({other.source}) and again by plugin {plugin} ({source})"
                )
            self.items[kind][spec.name] = Registered(kind, spec, plugin, source)

    def get(self, kind: str, name: str) -> Any:
        return self.items[kind][name].spec

    def names(self, kind: str) -> list[str]:
        return sorted(self.items[kind])


def load_registry(plugin_files: Iterable[str | Path] = ()) -> Registry:
    """Plugin manager plus registry in one call."""
    return Registry(get_plugin_manager(plugin_files))
