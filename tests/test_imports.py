"""No import circle in src/hsrl: module-level and function-level imports both count (read with `ast`).

An import of `a.b.c` is an arrow to module `a.b.c` (or to the nearest enclosing module that exists); `from a.b import
x` is an arrow to `a.b.x` when that is a module, else to `a.b` (its `__init__`). Parent packages' `__init__` files,
which Python runs first, are not arrows of their own: every package re-exports from its modules.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(src: Path, package: str = "hsrl") -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` under `src`."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph(src: Path, package: str = "hsrl") -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its file (top level, functions, classes)."""
    modules = module_files(src, package)

    def nearest(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(nearest(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package `level - 1` above this module's package
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else nearest(base))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each as one circle's path, sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_path(graph, group) for group in groups)


def _path(graph, group: list[str]) -> list[str]:
    """One circle through the group's first module, e.g. [a, b, c, a]: shortest path back, by breadth-first search."""
    start, members = group[0], set(group)
    previous, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]  # back from v to start, then reversed
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return group


def test_no_import_circle_in_hsrl():
    circles = import_circles(import_graph(SRC))
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_a_function_level_import_makes_a_circle(tmp_path):
    """The check can fail: a circle made by an import inside a function is found, and named."""
    pkg = tmp_path / "hsrl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from hsrl.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("from hsrl.sub import b\n\ndef f():\n    return b\n")
    (pkg / "sub" / "b.py").write_text("import json\n\ndef g():\n    from hsrl.sub.c import h\n    return h\n")
    (pkg / "sub" / "c.py").write_text("def h():\n    pass\n")
    (pkg / "top.py").write_text("from hsrl.sub import f\n")
    assert import_circles(import_graph(tmp_path)) == []
    (pkg / "sub" / "c.py").write_text("def h():\n    from hsrl.sub.a import f\n    return f\n")
    assert import_circles(import_graph(tmp_path)) == [["hsrl.sub.a", "hsrl.sub.b", "hsrl.sub.c", "hsrl.sub.a"]]
    (pkg / "sub" / "c.py").write_text("from .. import top\n")  # relative, through a package __init__
    assert import_graph(tmp_path)["hsrl.sub.c"] == {"hsrl.top"}
    assert import_circles(import_graph(tmp_path)) == [["hsrl.sub", "hsrl.sub.a", "hsrl.sub.b", "hsrl.sub.c",
                                                       "hsrl.top", "hsrl.sub"]]


def test_every_name_imported_from_hsrl_exists():
    """`from hsrl.x import name` anywhere (function-level imports too, in src, tests and benchmarks) names something
    that module has: a name moved to another module is caught here, not when a rarely run function first runs."""
    import importlib

    root = SRC.parent
    missing = []
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                        and node.module.split(".")[0] == "hsrl"):
                    continue
                if "vllm" in node.module:  # needs the vLLM environment
                    continue
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if alias.name != "*" and not hasattr(module, alias.name) \
                            and f"{node.module}.{alias.name}" not in module_files(SRC):
                        missing.append(f"{path.relative_to(root)}:{node.lineno}: {node.module}.{alias.name}")
    assert not missing, missing
