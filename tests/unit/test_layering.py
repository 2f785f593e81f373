"""The architecture as tests: no import cycle of any kind, runtime code never imports offline
evaluation, and the engine never imports a strategy.

The graph is read from the source, not from what one run happened to import, and it holds every edge
a reader (or mypy) follows: each ``import`` and ``from ... import`` of ``coe``, ``routers`` and
``aggregators``, at module level, inside a function (lazy) or under ``if TYPE_CHECKING:``. An edge goes
to the module named (``from coe.config import schema`` names ``coe.config.schema``) and also to each
parent package that import initialises: ``import coe.config.routing`` from ``coe.plugins`` runs
``coe/config/__init__.py``, which is how ``coe.config.routing`` importing nothing circular still put
``coe.plugins`` in a circle. A package the importing module itself lives in is not such an edge: Python
initialised it before the module ran.

The checks are functions over a graph, and ``graph`` takes extra edges, so the tests below can plant an
edge and show that each check fails on it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT

PACKAGES = ("coe", "routers", "aggregators")
STRATEGIES = ("routers", "aggregators")
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

Graph = dict[str, list["Edge"]]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool = False  # inside a function or class body
    type_checking: bool = False  # under `if TYPE_CHECKING:`
    via: str | None = None  # a parent package initialised by importing this module

    def __str__(self) -> str:
        how = [k for k, on in (("lazy", self.lazy), ("TYPE_CHECKING", self.type_checking)) if on]
        if self.via:
            how.append(f"initialised by importing {self.via}")
        return f"{self.source}:{self.line} -> {self.target}" + (f" ({', '.join(how)})" if how else "")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def ancestors(module: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``: the packages Python initialises before the module."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines |= set(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _lazy_imports(tree: ast.Module) -> set[int]:
    """The ids of imports that run only when a function is called (or a class body runs)."""
    bodies = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {
        id(node)
        for scope in ast.walk(tree)
        if isinstance(scope, bodies)
        for node in ast.walk(scope)
        if isinstance(node, ast.Import | ast.ImportFrom)
    }


def _named(name: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The modules one import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    # `from pkg import mod` names the module pkg.mod when it is one, else an attribute of pkg
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def edges(name: str, path: Path, known: set[str]) -> Iterator[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    checking = _type_checking_lines(tree)
    lazy = _lazy_imports(tree)
    own = set(ancestors(name))
    seen: set[Edge] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        flags = {"lazy": id(node) in lazy, "type_checking": node.lineno in checking}
        for target in _named(name, path.name == "__init__.py", node, known):
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target not in known:
                continue
            found = [Edge(name, target, node.lineno, **flags)] if target != name else []
            found += [
                Edge(name, parent, node.lineno, via=target, **flags)
                for parent in ancestors(target)
                if parent in known and parent != name and parent not in own
            ]
            for edge in found:
                if edge not in seen:
                    seen.add(edge)
                    yield edge


def graph(extra: Iterable[Edge] = ()) -> Graph:
    """The import graph of the source tree, plus ``extra`` edges (planted by tests)."""
    found = modules()
    known = set(found)
    g: Graph = {name: list(edges(name, path, known)) for name, path in found.items()}
    for edge in extra:
        g.setdefault(edge.source, []).append(edge)
        g.setdefault(edge.target, [])
    return g


def components(g: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components: every module of one component reaches every other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in g.get(node, []):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            found.append(sorted(component))

    for node in sorted(g):
        if node not in index:
            visit(node)
    return found


def _shortest_cycle(g: Graph, start: str, members: set[str]) -> list[Edge]:
    """One shortest circle through ``start``, inside its component (breadth first)."""
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in g.get(node, []):
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                if edge.target in members and edge.target not in came:
                    came[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component of two or more always has one


def cycles(g: Graph) -> list[list[Edge]]:
    """Circles among modules that import each other, whatever the kind of edge: for each group of
    modules that all reach each other, shortest circles until every module of it is on one (so two
    circles that share a module are both shown)."""
    found: list[list[Edge]] = []
    for component in components(g):
        members = set(component)
        covered: set[str] = set()
        for start in component if len(component) > 1 else ():
            if start not in covered:
                found.append(_shortest_cycle(g, start, members))
                covered |= {e.source for e in found[-1]}
    return found


def show(path: list[Edge]) -> str:
    return "\n    ".join(str(e) for e in path)


def engine(module: str) -> bool:
    """The engine is ``coe`` but its command line: ``coe.cli`` is where the program is put together,
    and a strategy's own commands (``coe train-router``, ``coe eval router``, ``coe profile``) import
    that strategy there, inside the command. Nothing in the engine imports the command line."""
    return module.split(".")[0] == "coe" and module.split(".")[:2] not in (
        ["coe", "cli"],
        ["coe", "__main__"],
    )


def engine_strategy_imports(g: Graph) -> list[Edge]:
    """Every edge from the engine to a strategy: the engine finds strategies by name (coe/plugins.py)."""
    return [
        e for source, out in g.items() if engine(source) for e in out if e.target.split(".")[0] in STRATEGIES
    ]


def runtime_modules(g: Graph) -> dict[str, list[Edge]]:
    """Each module reachable from the runtime roots and every strategy's runtime, with the path that
    reaches it (for the failure message)."""
    roots = [*RUNTIME_ROOTS, *(m for m in g if m.startswith("aggregators."))]
    roots += [m for m in g if m.startswith("routers.") and m.endswith(".router")]
    return paths_from(g, roots)


def paths_from(g: Graph, roots: Iterable[str]) -> dict[str, list[Edge]]:
    """Each module the roots reach (their parent packages included), with one path to it."""
    roots = list(roots)
    paths: dict[str, list[Edge]] = {m: [] for m in [*roots, *(p for r in roots for p in ancestors(r))]}
    todo = list(paths)
    while todo:
        here = todo.pop()
        for edge in g.get(here, []):
            if edge.target not in paths:
                paths[edge.target] = [*paths[here], edge]
                todo.append(edge.target)
    return paths


def runtime_evaluation_imports(g: Graph) -> list[str]:
    reached = runtime_modules(g)
    return [show(path) for module, path in reached.items() if module.split(".")[:2] == ["coe", "evaluation"]]


# ------------------------------------------------------------------------------------ the rules


def test_there_is_no_import_cycle_of_any_kind() -> None:
    """Lazy imports, TYPE_CHECKING imports and package initialisation included: each module is
    imported in one direction only."""
    g = graph()
    groups = "\n  ".join(", ".join(c) for c in components(g) if len(c) > 1)
    found = cycles(g)
    assert found == [], f"modules that import each other:\n  {groups}\none circle through each:\n  " + (
        "\n  ".join(show(c) for c in found)
    )


def test_the_engine_never_imports_a_strategy() -> None:
    """Not at module level, not lazily, not for type checking: ``coe`` reaches routers and aggregators
    only through the names in coe/plugins.py, imported with importlib."""
    bad = engine_strategy_imports(graph())
    assert bad == [], "\n".join(str(e) for e in bad)


def test_the_engine_never_imports_the_command_line() -> None:
    """What lets the command line import strategies: nothing below it imports it back."""
    g = graph()
    bad = [
        str(e) for s, out in g.items() if engine(s) for e in out if e.target.split(".")[:2] == ["coe", "cli"]
    ]
    assert bad == []


def test_runtime_code_never_imports_offline_evaluation() -> None:
    """What serves requests (the engine, the server, every router's and aggregator's runtime) must not
    pull in evaluation code, directly or through another module, lazily or not."""
    assert runtime_evaluation_imports(graph()) == []


def test_the_request_path_records_traces_but_never_loads_the_offline_tools() -> None:
    """Serving writes trace records (coe.traces: record, store, writer); replay, refit and the judge
    (numpy, the fit-map solver, an expert as judge) are for commands, never the request path."""
    reached = runtime_modules(graph())
    assert {"coe.traces", "coe.traces.trace_queue", "coe.traces.store"} <= set(reached)
    offline = ("coe.traces.replay", "coe.traces.refit", "coe.traces.judge")
    assert [show(reached[m]) for m in offline if m in reached] == []


def test_runtime_code_never_imports_signal_training_or_evaluation() -> None:
    """The signals stage (coe/signals) runs on every request; training a guard and measuring the
    signals (scikit-learn, data files) are offline and must not be reachable from what serves."""
    reached = runtime_modules(graph())
    assert "coe.signals.stage" in reached and "coe.signals.guard.model" in reached
    offline = ("coe.signals.guard.training", "coe.signals.evaluation", "coe.cli.signals")
    bad = [show(path) for module, path in reached.items() if module in offline]
    assert bad == []


def test_the_coe_root_holds_at_most_twelve_modules() -> None:
    root_modules = sorted(p.name for p in (ROOT / "coe").glob("*.py"))
    assert len(root_modules) <= 12, root_modules


def test_each_strategy_room_holds_its_settings_runtime_and_training() -> None:
    for room, training in (("category", "training"), ("cost", "training"), ("skills", "build")):
        files = {p.stem for p in (ROOT / "routers" / room).glob("*.py")}
        assert {"__init__", "config", "router", training} <= files, (room, files)


# ----------------------------------------------------------------- the checker sees what it must


def test_the_graph_sees_lazy_type_checking_relative_and_package_edges() -> None:
    g = graph()
    parts = {e.target: e for e in g["coe.pipeline.parts"]}
    assert parts["coe.retrieval.retriever"].lazy  # imported inside Parts.retriever
    assert not parts["coe.config"].lazy
    assert "coe.batch.runner" in {e.target for e in g["coe.batch"]}
    checking = {e.target: e for e in g["routers.category"]}  # the router, for mypy only
    assert checking["routers.category.router"].type_checking
    # a strategy importing coe.types initialises the coe package; a module of coe does not
    assert any(e.target == "coe" and e.via == "coe.types" for e in g["aggregators.first"])
    assert all(e.target != "coe" for e in g["coe.orchestrator"])


def test_the_cycle_check_fails_on_a_planted_cycle_of_each_kind() -> None:
    """coe.retrieval (its __init__) imports coe.retrieval.retriever, which imports coe.errors, which
    imports nothing: an edge back closes a circle whatever its kind, and any circle through
    coe.errors leaves it by the planted edge."""
    g = graph()
    assert g["coe.errors"] == [] and "coe.retrieval.retriever" in {e.target for e in g["coe.retrieval"]}
    assert "coe.errors" in {e.target for e in g["coe.retrieval.retriever"]}
    for planted in (
        Edge("coe.errors", "coe.retrieval.retriever", 1),
        Edge("coe.errors", "coe.retrieval.retriever", 1, lazy=True),
        Edge("coe.errors", "coe.retrieval.retriever", 1, type_checking=True),
        Edge("coe.errors", "coe.retrieval", 1, via="coe.retrieval.gates"),
    ):
        found = cycles(graph([planted]))
        assert any(planted in cycle for cycle in found), planted


def test_the_cycle_check_finds_every_circle_not_only_the_first() -> None:
    planted = [Edge("a", "b", 1), Edge("b", "a", 2, lazy=True), Edge("c", "d", 3), Edge("d", "c", 4)]
    g: Graph = {"a": planted[:1], "b": planted[1:2], "c": planted[2:3], "d": planted[3:], "e": []}
    assert cycles(g) == [planted[:2], planted[2:]]
    assert cycles({"a": planted[:1], "b": []}) == []


def test_the_strategy_check_fails_on_a_planted_engine_import_of_any_kind() -> None:
    for planted in (
        Edge("coe.traces.refit", "routers.category.fit_map", 1, lazy=True),
        Edge("coe.signals.guard.model", "routers.category", 1, type_checking=True),
        Edge("coe.server.app", "aggregators", 1, via="aggregators.vote"),
    ):
        assert planted in engine_strategy_imports(graph([planted]))


def test_the_command_line_may_import_a_strategy_inside_a_command() -> None:
    """``coe train-router`` runs the category router's training: the command line is not the engine."""
    planted = Edge("coe.cli.router_tools", "routers.category.training", 1, lazy=True)
    assert engine_strategy_imports(graph([planted])) == engine_strategy_imports(graph())


def test_the_evaluation_check_fails_on_a_planted_lazy_import_from_the_request_path() -> None:
    planted = Edge("coe.retrieval.gates", "coe.evaluation.curves", 1, lazy=True)
    assert runtime_evaluation_imports(graph([planted])) != []


def test_the_runtime_set_reaches_through_lazy_imports() -> None:
    reached = runtime_modules(graph())
    assert "coe.retrieval.gates" in reached  # orchestrator -> (lazy) retriever -> gates
    assert "routers.category.classifiers" in reached
    assert "routers.category.training" not in reached and "coe.cli.eval" not in reached
