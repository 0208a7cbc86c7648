"""The layers of ``ibtest/`` follow the data flow, and a lower layer never imports a higher one.

base < plugin < study < solve < pairs < judge < cert < run < out < the top-level modules
(api, cli, testing, templates, kinds, and the propose package of ``ibtest fit``). Every
``import`` counts, also those inside functions (a lazy import is still a dependency).
``import ibtest`` / ``from ibtest import __version__`` is allowed everywhere: the package root
only exposes the plugin API (layer ``plugin``).
"""
from __future__ import annotations

import ast
import pathlib

import ibtest

PKG = pathlib.Path(ibtest.__file__).parent
LAYERS = ["base", "plugin", "study", "solve", "pairs", "judge", "cert", "run", "out"]
TOP = len(LAYERS)  # api, cli, testing, templates, the root


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    if module in ("ibtest", "ibtest._startup"):
        return -1  # below everything, importable from everywhere
    return TOP


def _modules() -> list[tuple[str, pathlib.Path]]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), p))
    return out


def _imports(module: str, path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ibtest"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "ibtest":
                continue
            # ``from ibtest.run import executors`` imports the module ibtest.run.executors
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.append((node.lineno, sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists()
                              or (PKG.parent / sub.replace(".", "/")).is_dir() else mod))
    return found


def test_every_module_is_in_a_layer_or_at_the_top():
    top = sorted(m for m, _ in _modules() if layer_of(m) == TOP and m.count(".") == 1)
    assert top == ["ibtest.api", "ibtest.cli", "ibtest.kinds", "ibtest.propose", "ibtest.templates", "ibtest.testing"], top
    for name in LAYERS:
        assert (PKG / name / "__init__.py").exists(), name


def test_a_lower_layer_never_imports_a_higher_one():
    bad = []
    for module, path in _modules():
        mine = TOP if module == "ibtest" else layer_of(module)  # the root is a facade over the layers
        for line, dep in _imports(module, path):
            if layer_of(dep) > mine:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {module} (layer "
                           f"{LAYERS[mine] if 0 <= mine < TOP else 'top'}) imports {dep}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a function-level upward import is found."""
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from ibtest.out.report import render\n")
    deps = _imports("ibtest.solve.fake", p)
    assert any(layer_of(d) > layer_of("ibtest.solve.fake") for _, d in deps)
