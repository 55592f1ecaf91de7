"""
``.. module-graph::``: the package's modules and the imports between them,
drawn with graphviz from the source at build time, so the picture cannot
drift from the code.

Each private module is a node; a subpackage (``_redis``, ``_check``,
``_testing``) is a box around its modules.  An arrow ``a -> b`` says that
``a`` imports ``b``; arrows implied by a longer road are left out
(transitive reduction), so what remains shows the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.ext.graphviz import graphviz
from sphinx.util.docutils import SphinxDirective

PACKAGE = "twisted_sse"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*base, node.module] if node.module else base)
    else:
        prefix = node.module or ""
    # "from . import _x" names modules; "from ._x import y" names one.
    if node.module is None:
        return [f"{prefix}.{alias.name}" for alias in node.names]
    return [prefix]


def imports(root: Path) -> dict[str, set[str]]:
    """Each module of the package, and the package modules it imports."""
    modules: dict[str, Path] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        modules[_module_name(path, root)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text("utf-8"))
        # Imports for annotations only (under ``if TYPE_CHECKING:``) are
        # not roads: a module may name a type of a module that imports it.
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                candidates = _resolve(name, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def _reduce(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    def reachable(start: str, skip: tuple[str, str]) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            here = todo.pop()
            for there in graph.get(here, ()):
                if (here, there) != skip and there not in seen:
                    seen.add(there)
                    todo.append(there)
        return seen

    return {
        source: {
            target
            for target in targets
            if target not in reachable(source, (source, target))
        }
        for source, targets in graph.items()
    }


def dot(root: Path) -> str:
    """The graph in graphviz's language."""
    graph = imports(root)
    # The public faces import everything; they would hide the layers.
    hidden = {PACKAGE, f"{PACKAGE}.__main__"}
    graph = {
        source: {target for target in targets if target not in hidden}
        for source, targets in graph.items()
        if source not in hidden
    }
    graph = _reduce(graph)
    # A subpackage's __init__ that imports nothing is only a name.
    linked = {name for targets in graph.values() for name in targets}
    graph = {
        source: targets
        for source, targets in graph.items()
        if targets or source in linked
    }
    lines = [
        "digraph modules {",
        '  rankdir=BT; node [shape=box, fontname="Helvetica", fontsize=10];',
        '  edge [color="#777777", arrowsize=0.6];',
    ]
    clusters: dict[str, list[str]] = {}
    for name in graph:
        short = name.removeprefix(PACKAGE + ".")
        group = short.split(".")[0] if "." in short else ""
        clusters.setdefault(group, []).append(name)
    for group, names in sorted(clusters.items()):
        if group:
            lines.append(f'  subgraph "cluster_{group}" {{ label="{group}";')
        for name in sorted(names):
            label = name.removeprefix(PACKAGE + ".").removeprefix(group + ".")
            lines.append(f'    "{name}" [label="{label}"];')
        if group:
            lines.append("  }")
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            lines.append(f'  "{source}" -> "{target}";')
    lines.append("}")
    return "\n".join(lines)


class ModuleGraph(SphinxDirective):
    """The directive: a graphviz node of :func:`dot`."""

    has_content = False

    def run(self) -> list[Any]:
        root = Path(self.env.app.confdir).parent
        node = graphviz()
        node["code"] = dot(root)
        node["options"] = {}
        node["alt"] = "The modules of twisted_sse and their imports"
        return [node]


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.graphviz")
    app.add_directive("module-graph", ModuleGraph)
    return {"parallel_read_safe": True}
