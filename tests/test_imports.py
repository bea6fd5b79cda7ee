"""The package's imports run one way: no module of robustkit imports, directly or through others, a module
that imports it (function-local imports included), so every module can be read and loaded on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import robustkit

ROOT = Path(robustkit.__file__).resolve().parent


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = ("robustkit", *path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "robustkit.commands.group" in graph and "robustkit.cli" in graph
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def plugin_packages_and_folders() -> dict[str, Path]:
    """``{import package: distribution folder}`` of every distribution under plugins/."""
    return {init.parent.name: init.parent.parent.parent for init in (ROOT.parent / "plugins").glob("*/src/*/__init__.py")}


def test_the_core_imports_no_plugin_distribution():
    """The core hosts methods; it never names one: no module of robustkit imports a package shipped under plugins/."""
    plugin_packages = set(plugin_packages_and_folders())
    assert "robustkit_torchattacks" in plugin_packages
    offending = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            offending += [f"{path.relative_to(ROOT.parent)}: {n}" for n in names if n.split(".")[0] in plugin_packages]
    assert offending == []


def _imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    return [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_plugins_use_each_other_only_through_declared_dependencies_and_the_public_core():
    import tomllib

    packages = plugin_packages_and_folders()
    problems = []
    for package, dist_dir in packages.items():
        declared = tomllib.loads((dist_dir / "pyproject.toml").read_text())["project"]["dependencies"]
        allowed = {package} | {p for p, d in packages.items() if any(dep.startswith(d.name) for dep in declared)}
        for path in (dist_dir / "src").rglob("*.py"):
            for node in _imports(path):
                if isinstance(node, ast.ImportFrom) and node.level:
                    continue
                modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for module in modules:
                    top = module.split(".")[0]
                    if top in packages and top not in allowed:
                        problems.append(f"{path.relative_to(ROOT.parent)} imports {module} without depending on it")
                    if top == "robustkit" and (any(part.startswith("_") for part in module.split("."))
                                               or isinstance(node, ast.ImportFrom)
                                               and any(a.name.startswith("_") for a in node.names)):
                        problems.append(f"{path.relative_to(ROOT.parent)} imports a private name of the core "
                                        f"({module})")
    assert problems == []
