"""The house's rules (docs/GUIDE.md, "How the code is laid out"), read off the import graph: no import
cycle, a lazy import inside a function included; `gtsrb` imports nothing of `study` or `ui`; `ui`
imports nothing of `study` but `study.records`."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("gtsrb", "study", "ui")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, anywhere in its file (top level or in a function)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_the_graph_sees_every_package_and_a_known_edge():
    graph = import_graph()
    assert {"gtsrb.train", "study.recipe", "ui.app", "study.records"} <= set(graph)
    assert "gtsrb.config" in graph["gtsrb.train"] and "gtsrb" not in graph["gtsrb.train"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_a_cycle_is_found_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_library_imports_nothing_above_it():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("gtsrb"):
            assert not {t for t in targets if t.split(".")[0] in ("study", "ui")}, name


def test_the_ui_reads_study_only_through_its_records():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("ui"):
            assert {t for t in targets if t.split(".")[0] == "study"} <= {"study", "study.records"}, name
