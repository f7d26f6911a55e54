"""service/ has no import circle, counting imports inside functions too (they can hide one)."""

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out |= {alias.name for alias in node.names}
            elif node.level == 0 and (node.module or "").startswith("service."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("service.")}
    return out


def test_no_import_circle_in_service():
    modules = {p.stem: p for p in SERVICE.glob("*.py")}
    graph = {name: imports_of(path) & set(modules) for name, path in modules.items()}
    assert graph["app"] >= {"routes", "state"}
    assert {name for name, deps in graph.items() if "app" in deps} <= {"__main__"}  # only the entry point builds the app
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            assert state.get(dep) != 1, f"import circle: {' -> '.join(path + [name, dep])}"
            if dep not in state:
                visit(dep, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
