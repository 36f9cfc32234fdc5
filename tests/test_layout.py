"""The package's module graph: every import resolves, and no two modules import each other, directly or
through others (deferred imports inside functions count too: they hide cycles rather than remove them)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "analogize"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set) -> set:
    """The package modules ``path`` imports, anywhere in its body."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in modules and module != name}


def module_graph() -> dict:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) for name, path in paths.items()}


def test_every_relative_import_names_a_module_of_the_package():
    graph = module_graph()
    assert "analogize.cli" in graph and graph["analogize.runtime.sessions"]


def test_no_import_cycles():
    graph = module_graph()
    # a module's package __init__ runs before it: importing one's own package is not a cycle
    edges = {name: {m for m in targets if not name.startswith(m + ".")} for name, targets in graph.items()}
    cycles, state = [], {}

    def visit(name, stack):
        state[name] = "open"
        for target in sorted(edges[name]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", ["ops", "native", "runtime", "passes", "export", "evaluate", "training", "report",
                                     "planning", "cli"])
def test_each_subpackage_says_what_it_is(package):
    init = PACKAGE / package / "__init__.py"
    assert init.exists() and ast.get_docstring(ast.parse(init.read_text()))
