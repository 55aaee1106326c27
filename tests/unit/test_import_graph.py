"""The import graph of the packages: no cycle, and the layers point one way.

Read from the source with ``ast``, so an import under ``if TYPE_CHECKING:``
or inside a function counts as much as one at the top of a module: a cycle
that only the type checker follows is still two modules that cannot be
understood (or moved) one without the other. ``protocol/`` is the sans-I/O
core and imports nothing from ``server/`` or ``storage/``; ``storage/``
imports nothing from ``server/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "hubbub"
"""The top-level folders install as hubbub.server, hubbub.storage, ... (pyproject.toml's package-dir)."""
PACKAGES = ("server", "storage", "protocol", "loadtest")
MAY_NOT_IMPORT = {"protocol": {"server", "storage"}, "storage": {"server"}}


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = [NAMESPACE, *path.relative_to(ROOT).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement may load (a ``from`` import's names may be modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Each module of PACKAGES and the modules of PACKAGES it imports."""
    modules = _modules()

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for dotted in _imported(name, path, node):
                    target = owner(dotted)
                    if target is not None and target != name:
                        graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "hubbub.server.session" in graph["hubbub.server.app"]
    assert "hubbub.server.config" in graph["hubbub.server.connection"]  # an import at the top
    assert "hubbub.server.connection" in graph["hubbub.server.session"]  # an import under TYPE_CHECKING


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_point_one_way() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _layer(target) in MAY_NOT_IMPORT.get(_layer(module), set())
    ]
    assert wrong == []


def _layer(module: str) -> str:
    """``hubbub.server.session`` -> ``server``."""
    return module.split(".")[1]


def test_every_module_is_in_the_graph_under_its_installed_name() -> None:
    graph = import_graph()
    assert graph and all(_layer(name) in PACKAGES and name.startswith(f"{NAMESPACE}.") for name in graph)
    assert "hubbub.protocol.frames" in graph["hubbub.protocol.codec"]
