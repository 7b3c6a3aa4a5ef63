"""The shape of the package, checked from the source (AST, nothing imported):

* no import cycles among rtlab modules;
* imports follow the layers of ``docs/architecture.md`` (:data:`ALLOWED`);
* no private name (``_x``) is imported from another module, or reached as ``module._x``;
* optional dependencies are reached only through :mod:`rtlab._lazy` (never imported directly);
* imports sit at module top (no import inside a function or class);
* no rtlab module imports a moved module's old name (:data:`SHIMS`);
* a module longer than 600 lines says why at its top (a ``Size:`` line in its docstring).
"""

from __future__ import annotations

import ast
from pathlib import Path


from rtlab._lazy import OPTIONAL

PKG = Path(__file__).resolve().parents[1] / "rtlab"

#: Layer of each top-level part of rtlab -> the layers it may import (besides itself).
#: Lowest first: base (``_util``, ``_lazy``) < core < {phantoms, io, dose, optimize, evaluate}
#: < methods < planning < batch < {widgets, reproduce} < cli.
ALLOWED = {
    "base": set(),
    "core": {"base"},
    "phantoms": {"base", "core"},
    "io": {"base", "core"},
    "dose": {"base", "core"},
    "optimize": {"base", "core"},
    "evaluate": {"base", "core"},
    "methods": {"base", "core", "phantoms", "dose", "optimize", "evaluate"},
    "planning": {"base", "core", "phantoms", "io", "dose", "optimize", "evaluate", "methods"},
    "batch": {"base", "core", "phantoms", "io", "dose", "optimize", "evaluate", "methods", "planning"},
    "widgets": {"base", "core", "phantoms", "io", "dose", "optimize", "evaluate", "methods", "planning", "batch"},
    "reproduce": {"base", "core", "phantoms", "io", "dose", "optimize", "evaluate", "methods", "planning", "batch"},
    "cli": {"base", "core", "phantoms", "io", "dose", "optimize", "evaluate", "methods", "planning", "batch",
            "widgets", "reproduce"},
    "root": {"base", "core"},
}

#: Old module names kept for one release (each only re-exports its new home; docs/architecture.md).
SHIMS = {
    "rtlab.geometry", "rtlab.case", "rtlab.materials", "rtlab.mlc", "rtlab.plan",
    "rtlab.metrics", "rtlab.compare", "rtlab.qa",
    "rtlab.dose.machines",
    "rtlab.methods.isocentres", "rtlab.methods.dose_learning", "rtlab.methods.geometry_gradients",
}

MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    top = parts[1]
    if top in ("_util", "_lazy"):
        return "base"
    return top


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path):
    """``(target module, imported names, node, inside a function/class)`` for every import."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            for sub in ast.walk(node):
                if sub is not node:
                    nested.add(id(sub))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node, id(node) in nested
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            yield _resolve(module, is_pkg, node), [a.name for a in node.names], node, id(node) in nested


def _edges(module: str, path: Path) -> set[str]:
    """rtlab modules that ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    out = set()
    for target, names, _, _ in _imports(module, path):
        if not target.startswith("rtlab"):
            continue
        subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
        out.update(subs)
        if len(subs) < len(names) or not names:
            out.add(target)
    out.discard(module)
    return out


GRAPH = {m: _edges(m, p) for m, p in MODULES.items()}


def test_no_import_cycles():
    """Depth-first search over the import graph of rtlab's modules; report one cycle per start."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if n not in GRAPH:
                continue
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_follow_the_layers():
    bad = []
    for m, targets in GRAPH.items():
        if m in SHIMS:
            continue
        src = _layer(m)
        for t in targets:
            dst = _layer(t)
            if dst != src and dst not in ALLOWED[src]:
                bad.append(f"{m} ({src}) imports {t} ({dst})")
    assert not bad, "imports against the layers (docs/architecture.md):\n" + "\n".join(sorted(bad))


def test_no_module_imports_a_moved_name():
    bad = [f"{m} imports {t}" for m, ts in GRAPH.items() if m not in SHIMS for t in ts if t in SHIMS]
    assert not bad, "use the new module paths inside rtlab:\n" + "\n".join(sorted(bad))


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for m, p in MODULES.items():
        for target, names, node, _ in _imports(m, p):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in MODULES:
                    bad.append(f"{m}:{node.lineno} imports {n} from {target}")
    assert not bad, "private names imported across modules (make them public or move them):\n" + "\n".join(bad)


def _module_aliases(module: str, path: Path) -> dict[str, str]:
    """Local names that are bound to another rtlab module (``import a.b as c``, ``from . import x``)."""
    out = {}
    for target, names, node, _ in _imports(module, path):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES and a.asname:
                    out[a.asname] = a.name
        else:
            for a in node.names:
                if f"{target}.{a.name}" in MODULES:
                    out[a.asname or a.name] = f"{target}.{a.name}"
    return out


def test_no_private_attribute_of_another_module():
    bad = []
    for m, p in MODULES.items():
        aliases = _module_aliases(m, p)
        if not aliases:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != m):
                bad.append(f"{m}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names of other modules (make them public or move them):\n" + "\n".join(bad)


def _optional_root(name: str) -> str | None:
    for key in OPTIONAL:
        if name == key or name.startswith(key + "."):
            return key
    return None


def test_optional_dependencies_go_through_lazy():
    bad = []
    for m, p in MODULES.items():
        if m == "rtlab._lazy":
            continue
        for target, names, node, _ in _imports(m, p):
            hits = {_optional_root(target)} | {_optional_root(f"{target}.{n}") for n in names}
            hits.discard(None)
            if hits:
                bad.append(f"{m}:{node.lineno} imports {sorted(hits)} directly; use rtlab._lazy.load")
    assert not bad, "\n".join(bad)


def test_imports_are_at_module_top():
    bad = [f"{m}:{node.lineno} imports {target or names} inside a function or class"
           for m, p in MODULES.items() for target, names, node, nested in _imports(m, p) if nested]
    assert not bad, "\n".join(bad)


def test_long_modules_say_why():
    bad = []
    for module, p in MODULES.items():
        text = p.read_text()
        n = len(text.splitlines())
        if n > MAX_LINES and "Size:" not in (ast.get_docstring(ast.parse(text)) or ""):
            bad.append(f"{module}: {n} lines")
    assert not bad, (f"modules over {MAX_LINES} lines without a 'Size:' line in their docstring saying why they "
                     "are one file (or split them):\n" + "\n".join(bad))


def test_layer_table_is_documented():
    doc = (PKG.parent / "docs" / "architecture.md").read_text()
    for layer in ALLOWED:
        if layer not in ("root", "base"):
            assert f"`{layer}`" in doc or f"rtlab.{layer}" in doc, f"docs/architecture.md does not describe {layer}"
    for shim in SHIMS:
        assert f"`{shim}`" in doc, f"docs/architecture.md does not list the moved module {shim}"
