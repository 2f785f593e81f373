"""The architecture as tests: no import cycles (lazy imports included), runtime code never imports
offline evaluation, and the engine never imports a strategy at module level.

The graph is read from the source, not from what one run happened to import: every ``import`` and
``from ... import`` statement of ``coe``, ``routers`` and ``aggregators``, at module level or inside a
function, is an edge. Imports under ``if TYPE_CHECKING:`` never execute and are left out. An edge goes
to the module named (``from coe.config import schema`` names ``coe.config.schema``); the parent
packages Python also initialises are not edges, so a package's ``__init__`` re-exporting its modules
does not count as every module depending on all its siblings.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT

PACKAGES = ("coe", "routers", "aggregators")
# Where requests are served from: the library, the server, batch mode, the Ray ingress, the commands
# that answer prompts, and every strategy's runtime. Everything these reach, lazily or not, is runtime.
RUNTIME_ROOTS = (
    "coe",
    "coe.orchestrator",
    "coe.server.app",
    "coe.batch.runner",
    "coe.deploy.ray",
    "coe.cli.ask",
    "coe.cli.serve",
    "coe.cli.batch",
    "coe.cli.experts",
)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function or class body


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines |= set(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def edges(name: str, path: Path, known: set[str]) -> Iterator[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    top = {id(n) for n in tree.body}
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skip:
            continue
        lazy = id(node) not in top
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            # `from pkg import mod` names the module pkg.mod when it is one, else an attribute of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                yield Edge(name, target, node.lineno, lazy)


def graph() -> dict[str, list[Edge]]:
    found = modules()
    known = set(found)
    return {name: list(edges(name, path, known)) for name, path in found.items()}


def find_cycle(g: dict[str, list[Edge]]) -> list[Edge] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[Edge] = []

    def visit(node: str) -> list[Edge] | None:
        state[node] = 1
        for edge in g.get(node, []):
            if state.get(edge.target) == 1:
                start = next(i for i, e in enumerate(stack) if e.source == edge.target) if stack else 0
                return [*stack[start:], edge]
            if edge.target not in state:
                stack.append(edge)
                if (cycle := visit(edge.target)) is not None:
                    return cycle
                stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def show(cycle: list[Edge]) -> str:
    return " -> ".join(f"{e.source} (line {e.line}{', lazy' if e.lazy else ''})" for e in cycle) + (
        f" -> {cycle[-1].target}"
    )


def test_there_are_no_import_cycles_lazy_imports_included() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + show(cycle or [])


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import() -> None:
    a_to_b = Edge("a", "b", 1, lazy=False)
    b_to_a = Edge("b", "a", 7, lazy=True)
    assert find_cycle({"a": [a_to_b], "b": [b_to_a]}) == [a_to_b, b_to_a]
    assert find_cycle({"a": [a_to_b], "b": []}) is None


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    g = graph()
    orchestrator = {e.target: e for e in g["coe.orchestrator"]}
    assert orchestrator["coe.retrieval.retriever"].lazy  # imported inside CoE.retriever
    assert not orchestrator["coe.types"].lazy
    assert "coe.batch.runner" in {e.target for e in g["coe.batch"]}


def runtime_modules(g: dict[str, list[Edge]]) -> dict[str, list[Edge]]:
    """Each module reachable from the runtime roots and every strategy's runtime, with the path that
    reaches it (for the failure message)."""
    roots = [*RUNTIME_ROOTS, *(m for m in g if m.startswith("aggregators."))]
    roots += [m for m in g if m.startswith("routers.") and m.endswith(".router")]
    paths: dict[str, list[Edge]] = {root: [] for root in roots}
    todo = list(roots)
    while todo:
        here = todo.pop()
        for edge in g.get(here, []):
            if edge.target not in paths:
                paths[edge.target] = [*paths[here], edge]
                todo.append(edge.target)
    return paths


def test_runtime_code_never_imports_offline_evaluation() -> None:
    """What serves requests (the engine, the server, every router's and aggregator's runtime) must not
    pull in evaluation code, directly or through another module, lazily or not."""
    reached = runtime_modules(graph())
    bad = [show(path) for module, path in reached.items() if module.split(".")[:2] == ["coe", "evaluation"]]
    assert bad == []


def test_the_runtime_set_reaches_through_lazy_imports() -> None:
    reached = runtime_modules(graph())
    assert "coe.retrieval.gates" in reached  # orchestrator -> (lazy) retriever -> gates
    assert "routers.category.classifiers" in reached
    assert "routers.category.training" not in reached and "coe.cli.eval" not in reached


def test_the_engine_never_imports_a_strategy_at_module_level() -> None:
    g = graph()
    bad = [
        f"{e.source}:{e.line} imports {e.target}"
        for source, out in g.items()
        if source.split(".")[0] == "coe"
        for e in out
        if not e.lazy and e.target.split(".")[0] in ("routers", "aggregators")
    ]
    assert bad == []


def test_the_coe_root_holds_at_most_twelve_modules() -> None:
    root_modules = sorted(p.name for p in (ROOT / "coe").glob("*.py"))
    assert len(root_modules) <= 12, root_modules


def test_each_strategy_room_holds_its_settings_runtime_and_training() -> None:
    for room, training in (("category", "training"), ("cost", "training"), ("skills", "build")):
        files = {p.stem for p in (ROOT / "routers" / room).glob("*.py")}
        assert {"__init__", "config", "router", training} <= files, (room, files)


def test_runtime_code_never_imports_signal_training_or_evaluation() -> None:
    """The signals stage (coe/signals) runs on every request; training a guard and measuring the
    signals (scikit-learn, data files) are offline and must not be reachable from what serves."""
    reached = runtime_modules(graph())
    assert "coe.signals.stage" in reached and "coe.signals.guard.model" in reached
    offline = ("coe.signals.guard.training", "coe.signals.evaluation", "coe.cli.signals")
    bad = [show(path) for module, path in reached.items() if module in offline]
    assert bad == []
