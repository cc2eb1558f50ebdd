"""The house rules of the package, checked on its source (issue 19): no import circle, no module
over 450 lines, and no part importing a part downstream of it in the data flow.

Every import statement of an `rtml` module counts, wherever it is: at the top, inside a function
(a lazy import is still a dependency), and under `if TYPE_CHECKING:` (a type names what the
module knows about). The allow-lists name what was there when the rule was written: they may
only shrink. A new circle, a new long module or a new upstream-to-downstream import fails; so
does an entry that no longer holds, so that the list is cut when one is fixed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rtml

PACKAGE = Path(rtml.__file__).resolve().parent
MAX_LINES = 450
# The data flow, upstream first: a part may import its own modules and those of parts before it.
FLOW = ("sources", "stream", "aggregate", "archive", "features", "quality", "model", "serving", "monitoring", "ops")
# Shared by every part, importing none: the data contracts, the settings, the storage helpers,
# the spool of the PostgreSQL stores and the outage reporter.
SHARED = {
    "rtml", "rtml.config", "rtml.storage", "rtml.spool", "rtml.outage",
    "rtml.contracts", "rtml.contracts.records", "rtml.contracts.validate", "rtml.contracts.batch",
}
# Composition roots, which may import any part and which no part imports: the pipeline's
# wiring, the CLI (its entry point and each part's `commands` module) and the demo.
ROOTS = {"rtml.pipeline", "rtml.cli", "rtml.__main__", "rtml.commands", "rtml.demo"}

# Known when this test was written (issue 19); remove an entry when it is fixed, never add one.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_LONG: set[str] = set()
KNOWN_UPSTREAM_IMPORTS: set[tuple[str, str]] = {
    # The ingest pipeline of a source writes to the dedup and the stream itself.
    ("rtml.sources.ingest", "rtml.stream"),
    ("rtml.sources.ingest", "rtml.stream.dedup"),
    # The drift check's reference window is the champion's training window, read from the registry.
    ("rtml.quality.sources", "rtml.model.registry"),
    # The event log lives in monitoring, but every part records events.
    ("rtml.model.registry", "rtml.monitoring.events"),
    ("rtml.model.train", "rtml.monitoring.events"),
    ("rtml.quality.reports", "rtml.monitoring.events"),
    # Issue 18: ingest keeps a ledger of what the stream held, and the engine re-derives minutes
    # of a lost stream from the raw archive.
    ("rtml.sources.ingest", "rtml.stream.ledger"),
    ("rtml.aggregate.recovery", "rtml.archive.parquet_lake"),
    # /metrics reports the supervised components from the supervisor's state file.
    ("rtml.monitoring.metrics", "rtml.ops.supervisor"),
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the rtml modules it imports (a name imported from a module counts as that module)."""

    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in found.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(resolve(alias.name) for alias in node.names if alias.name.startswith("rtml"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.startswith("rtml"):
                    # `from rtml.x import y`: the module y when there is one, else the module rtml.x.
                    names = (f"{base}.{alias.name}" for alias in node.names)
                    targets.update(name if name in found else resolve(base) for name in names)
        targets -= {None, module}
        graph[module] = {t for t in targets if t is not None}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
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
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def layer(module: str) -> str:
    """`shared`, `root`, or the part (the folder) the module belongs to."""
    if module in SHARED:
        return "shared"
    if module in ROOTS or module.endswith(".commands"):
        return "root"
    return module.split(".")[1]


def upstream_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, imported) pairs that break the flow: a part importing a downstream part or a
    composition root, or a shared module importing anything but shared ones."""
    wrong = set()
    for module, targets in graph.items():
        mine = layer(module)
        for target in targets:
            theirs = layer(target)
            if mine == "root" or theirs == "shared" or mine == theirs:
                continue
            if mine == "shared" or theirs == "root" or FLOW.index(theirs) > FLOW.index(mine):
                wrong.add((module, target))
    return wrong


def long_modules(found: dict[str, Path]) -> dict[str, int]:
    return {m: n for m, p in found.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}


def test_every_module_is_in_a_known_layer() -> None:
    parts = {layer(m) for m in modules()} - {"shared", "root"}
    assert parts <= set(FLOW), f"modules outside the data flow's parts: {sorted(parts - set(FLOW))}"


def test_no_import_circle() -> None:
    found = cycles(import_graph(modules()))
    new = {c for c in found if not any(c <= known for known in KNOWN_CYCLES)}
    assert not new, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)
    fixed = {k for k in KNOWN_CYCLES if not any(c <= k and len(c & k) > 1 for c in found)}
    assert not fixed, f"no longer a circle, remove from KNOWN_CYCLES: {[sorted(k) for k in fixed]}"


def test_no_module_over_the_limit() -> None:
    found = long_modules(modules())
    assert not set(found) - KNOWN_LONG, f"modules over {MAX_LINES} lines: {found}"
    assert not KNOWN_LONG - set(found), f"now under {MAX_LINES} lines, remove from KNOWN_LONG: {KNOWN_LONG - set(found)}"


def test_no_part_imports_a_downstream_one() -> None:
    found = upstream_imports(import_graph(modules()))
    assert not found - KNOWN_UPSTREAM_IMPORTS, "upstream imports downstream: " + ", ".join(
        f"{a} -> {b}" for a, b in sorted(found - KNOWN_UPSTREAM_IMPORTS)
    )
    stale = KNOWN_UPSTREAM_IMPORTS - found
    assert not stale, f"fixed, remove from KNOWN_UPSTREAM_IMPORTS: {sorted(stale)}"


def test_the_checker_sees_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    """The graph is built from the source, lazy imports included: a circle closed only inside a
    function is still found, and a relative import resolves to its module."""
    (tmp_path / "rtml" / "a").mkdir(parents=True)
    (tmp_path / "rtml" / "__init__.py").write_text("")
    (tmp_path / "rtml" / "a" / "__init__.py").write_text("")
    (tmp_path / "rtml" / "a" / "x.py").write_text("from .y import f\n")
    (tmp_path / "rtml" / "a" / "y.py").write_text("def f():\n    from rtml.a import x\n")
    (tmp_path / "rtml" / "a" / "z.py").write_text("from rtml.a.y import f\n")
    found = {
        ".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (tmp_path / "rtml").rglob("*.py")
    }
    graph = import_graph(found)
    assert graph["rtml.a.z"] == {"rtml.a.y"}
    assert cycles(graph) == {frozenset({"rtml.a.x", "rtml.a.y"})}
