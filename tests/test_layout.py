"""The package layout keeps its promises: dependencies point one way.

Entry points (``synrank.cli``, ``synrank.pipeline``) use the stages; stages (generate, annotate,
train, evaluate, study) use the lower layers; a stage never imports another stage (study, which
composes train and evaluate, excepted), and no stage or lower layer imports an entry point. The
graph is read from the source with ``ast``, function-level imports included, since a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "synrank"

STAGES = {"generate", "annotate", "train", "evaluate", "study"}
LOWER = {
    "data", "losses", "encoder", "encoder_onnx", "models", "model_files", "runtime", "storage", "llm", "text", "config", "recipes", "st",
}
ENTRY_POINTS = {"cli", "pipeline", "pipeline_cli", "models_cli", "fidelity_probe", "probe_cli", "__main__"}
# Within the lower layers: the data layer reads and shapes text; it must not pull in the model code
# (and torch with it) to do so. Text formatting lives in `synrank.text`, below both.
FORBIDDEN_LOWER = {("data", "encoder"), ("data", "models"), ("text", "encoder"), ("text", "data")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every synrank module ``path`` imports, absolute or relative, at any depth of the file."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from synrank import storage` imports the module synrank.storage
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "synrank" or name.startswith("synrank.")}


def component(module: str) -> str:
    """The layout unit a module belongs to: the subpackage or top-level module under synrank."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "synrank"


def existing(module: str) -> bool:
    relative = Path(*module.split(".")[1:]) if "." in module else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def dependency_edges() -> list[tuple[str, str]]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in imported_modules(path):
            if existing(target) and component(source) != component(target):
                edges.append((source, target))
    return edges


def layout_violations(edges: list[tuple[str, str]]) -> list[str]:
    bad = []
    for source, target in edges:
        a, b = component(source), component(target)
        if a in STAGES and b in STAGES and a != "study":
            bad.append(f"stage {a} imports stage {b}: {source} -> {target}")
        elif a in LOWER and b in STAGES:
            bad.append(f"lower layer {a} imports stage {b}: {source} -> {target}")
        elif (a, b) in FORBIDDEN_LOWER:
            bad.append(f"lower layer {a} imports {b}: {source} -> {target}")
        elif (a in STAGES or a in LOWER) and b in ENTRY_POINTS:
            bad.append(f"{a} imports the entry point {b}: {source} -> {target}")
    return bad


def test_every_top_level_unit_is_classified():
    units = {component(module_name(p)) for p in PACKAGE.rglob("*.py")} - {"synrank"}
    unclassified = units - STAGES - LOWER - ENTRY_POINTS
    assert not unclassified, f"add {sorted(unclassified)} to a layer in this test (and to the docs' layout)"


def test_dependencies_point_one_way():
    violations = layout_violations(dependency_edges())
    assert not violations, "layout violations:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    "edge, expected",
    [
        (("synrank.annotate.engine", "synrank.generate.pool"), "stage annotate imports stage generate"),
        (("synrank.data.groups", "synrank.train.collate"), "lower layer data imports stage train"),
        (("synrank.evaluate.cli", "synrank.cli"), "evaluate imports the entry point cli"),
        (("synrank.data.bm25", "synrank.encoder"), "lower layer data imports encoder"),
    ],
)
def test_the_check_catches_each_kind_of_violation(edge, expected):
    assert layout_violations([edge]) and layout_violations([edge])[0].startswith(expected)


def test_study_may_compose_train_and_evaluate():
    assert layout_violations([("synrank.study.trial", "synrank.train.trainer")]) == []


def test_relative_and_function_level_imports_are_seen():
    source = "from .levels import x\nfrom .. import storage\ndef f():\n    from synrank.generate.pool import EnginePool\n"
    found = imports_in(source, "synrank.data")
    assert {"synrank.data.levels", "synrank.storage", "synrank.generate.pool"} <= found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    cycles.append(sorted(members))
    return cycles


def module_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        # a package's own __init__ is imported on the way to any of its modules; not an edge
        graph[source] = {
            target for target in imported_modules(path)
            if existing(target) and target != source and not source.startswith(target + ".")
        }
    return graph


def test_no_import_cycles():
    cycles = import_cycles(module_graph())
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
