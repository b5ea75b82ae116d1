"""The package's import graph, read from source (AST, nothing executed): no cycles, Airflow only at
the edge.

An import inside a function counts like one at the top: a cycle that only function-level imports
keep from breaking is still a cycle (it breaks as soon as someone moves an import up). Imports under
``if TYPE_CHECKING:`` never run and do not count. An edge is an import as written: ``from a.b import
c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; a module is not counted as
importing its parent packages, or every package whose ``__init__`` re-exports its modules would
be a cycle.

Guards: the layering described in docs/architecture.md (the subprocess test in
``test_boundary.py`` proves the same boundary by running the code with Airflow blocked).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

from harness import REPO

PACKAGE = "airflow_flowspec"
#: Code that needs Airflow lives here, and only here.
EDGE_PACKAGES = (
    "airflow_flowspec.airflow",
    "airflow_flowspec.operators",
    "airflow_flowspec.plugins",
    "airflow_flowspec.triggers",
    "airflow_flowspec.xcom_backend",
)
#: Kept at the top level because users write this path in airflow.cfg.
EDGE_MODULES = ("airflow_flowspec.discovery",)
#: The only imports from the rest of the package into the edge: lazy (inside a function), named.
LAZY_ENTRY_POINTS = {
    ("airflow_flowspec.flowspec", "airflow_flowspec.airflow.registration"),  # a DagBag import builds the DAG
    ("airflow_flowspec.cli", "airflow_flowspec.airflow.local_run"),  # python flow.py run
    ("airflow_flowspec.cli", "airflow_flowspec.airflow.discovery"),  # python flow.py check
    ("airflow_flowspec.shell", "airflow_flowspec.airflow.run_states"),  # gc asks Airflow what runs
    ("airflow_flowspec.shell", "airflow_flowspec.airflow.local_services"),  # airflow up|down|status
}
AIRFLOW_ONLY = ("airflow", "moto")
#: The local AWS (test support that ships with the package) is the one place outside the edge that
#: may import moto; it imports no Airflow, and nothing else in the package imports it. Its modules
#: have no cycle among them, not even through an import made only for type checking.
MOTO_PACKAGES = ("airflow_flowspec.testing",)


class Import(NamedTuple):
    importer: str
    imported: str  # a module of the package, or a third-party top-level name
    line: int
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(root: Path, package: str) -> tuple[set[str], list[Import]]:
    """Every module of ``package`` (found under ``root``) and every import each one makes."""
    paths = sorted((root / package).rglob("*.py"))
    modules = {module_name(path, root) for path in paths}
    imports: list[Import] = []
    for path in paths:
        importer = module_name(path, root)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        for node, in_function in _import_nodes(tree):
            for target in _targets(node, importer, is_package, modules):
                imports.append(Import(importer, target, node.lineno, in_function))
    return modules, imports


def _import_nodes(tree: ast.AST):
    """(import node, inside a function?) for every import that can run."""
    pending: list[tuple[ast.AST, bool]] = [(tree, False)]
    while pending:
        node, in_function = pending.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                pending.extend((stmt, in_function) for stmt in child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            pending.append((child, nested))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]):
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield _owning_module(alias.name, modules)
        return
    base = node.module or ""
    if node.level:
        anchor = importer.split(".") if is_package else importer.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        yield candidate if candidate in modules else _owning_module(base, modules)


def _owning_module(name: str, modules: set[str]) -> str:
    """The longest prefix of ``name`` that is one of our modules, else its top-level name."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return parts[0]


def find_cycles(modules: set[str], imports: list[Import]) -> list[list[str]]:
    """Every strongly connected group of modules with more than one member, or importing itself."""
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for edge in imports:
        if edge.imported in modules:
            graph[edge.importer].add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph):  # iterative Tarjan: the graph is small, recursion would do too
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
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph[node]:
                    cycles.append(sorted(group))
    return cycles


def is_edge(module: str) -> bool:
    return module in EDGE_MODULES or any(
        module == package or module.startswith(package + ".") for package in EDGE_PACKAGES
    )


#: The one module that may use Airflow's private names (each with a note of why and what would
#: replace it); tests/airflow/test_airflow_internals.py pins every one of them.
AIRFLOW_COMPAT = "airflow_flowspec.airflow._internals"
#: Modules allowed a private Airflow name besides the compat module: none.
PRIVATE_AIRFLOW_EXCEPTIONS: tuple[str, ...] = ()
#: Airflow paths that are not its public interface, beyond any path segment or name starting with
#: ``_``: the task runner's and the DAG processor's machinery, the execution API, serialization,
#: migrations, core's config and metrics (``airflow.sdk.conf`` is the public config), the
#: definitions and bases behind ``airflow.sdk``'s public names, and the function dag.test() uses
#: to create its run. The metadata database's ORM classes, states and sessions
#: (``airflow.models``, ``airflow.utils.state``, ``airflow.utils.session``, ``airflow.settings``),
#: plugin, timetable and trigger bases, auth managers and the providers are allowed.
PRIVATE_AIRFLOW_PATHS = (
    "airflow.sdk.execution_time",
    "airflow.sdk.definitions",
    "airflow.sdk.bases",
    "airflow.sdk.api",
    "airflow.api_fastapi.execution_api",
    "airflow.dag_processing",
    "airflow.serialization",
    "airflow.utils.db",
    "airflow.configuration",
    "airflow.observability",
    "airflow.models.dagrun.get_or_create_dagrun",
    "cadwyn",
)


class AirflowName(NamedTuple):
    module: str  # the package's module that names it
    name: str  # as imported (``airflow.a.b.c``) or as a string naming a module (``sys.modules[...]``)
    line: int


def airflow_names(root: Path, package: str) -> list[AirflowName]:
    """Every Airflow (or cadwyn) name imported by ``package``'s modules, and every string constant
    that names one of its modules (a ``sys.modules`` lookup reaches a module without importing it)."""
    names = []
    for path in sorted((root / package).rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), str(path))
        for node, _ in _import_nodes(tree):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif node.level == 0 and node.module:
                found = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            names.extend(AirflowName(module, name, node.lineno) for name in found if _names_airflow(name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_airflow(node.value):
                if " " not in node.value and node.value.count(".") >= 2:  # a dotted path, not prose
                    names.append(AirflowName(module, node.value, node.lineno))
    return names


def _names_airflow(name: str) -> bool:
    return name.split(".")[0] in ("airflow", "cadwyn")


def is_private_airflow_name(name: str) -> bool:
    parts = name.split(".")
    return any(part.startswith("_") and part != "__init__" for part in parts) or any(
        name == path or name.startswith(path + ".") for path in PRIVATE_AIRFLOW_PATHS
    )


def test_the_private_airflow_rule_sees_private_names():
    """Guards the guard: the rule tells known private names from public ones."""
    assert is_private_airflow_name("airflow.sdk.definitions._internal.contextmanager.DagContext")
    assert is_private_airflow_name("airflow.sdk.execution_time.lazy_sequence.LazyXComSequence")
    assert is_private_airflow_name("airflow._shared.observability.metrics")
    assert is_private_airflow_name("airflow.configuration.conf")
    assert is_private_airflow_name("airflow.models.dagrun.get_or_create_dagrun")
    assert is_private_airflow_name("airflow.providers.amazon.aws.operators.batch._private")
    assert not is_private_airflow_name("airflow.sdk.SkipMixin")
    assert not is_private_airflow_name("airflow.sdk.conf")
    assert not is_private_airflow_name("airflow.models.dagrun.DagRun")
    names = {(name.module, name.name) for name in airflow_names(REPO, PACKAGE)}
    assert (AIRFLOW_COMPAT, "airflow.sdk.definitions._internal.contextmanager") in names  # a string
    assert (AIRFLOW_COMPAT, "airflow.sdk.execution_time.lazy_sequence.LazyXComSequence") in names


def test_only_the_compat_module_uses_airflows_private_names():
    def excepted(module: str) -> bool:
        return module == AIRFLOW_COMPAT or any(
            module == known or module.startswith(known + ".") for known in PRIVATE_AIRFLOW_EXCEPTIONS
        )

    private = [
        f"{name.module} line {name.line}: {name.name}"
        for name in airflow_names(REPO, PACKAGE)
        if is_private_airflow_name(name.name) and not excepted(name.module)
    ]
    assert private == [], (
        "Airflow's private names outside airflow_flowspec/airflow/_internals.py (use a public "
        "airflow.sdk name, or add a function there with why it is needed and pin it in "
        "tests/airflow/test_airflow_internals.py): " + "; ".join(private)
    )


MODULES, IMPORTS = read_imports(REPO, PACKAGE)


def test_the_reader_sees_imports_at_every_level():
    """Guards the guard: known imports of each kind are found, so the checks below cannot pass on
    an empty graph."""
    found = {(edge.importer, edge.imported, edge.in_function) for edge in IMPORTS}
    assert ("airflow_flowspec.runtime.step_runner", "airflow_flowspec.datastore.views", False) in found
    assert ("airflow_flowspec.flowspec", "airflow_flowspec.airflow.registration", True) in found
    assert ("airflow_flowspec.operators.step_task", "airflow", False) in found
    assert ("airflow_flowspec.lint", "airflow_flowspec.lint.names", False) in found  # from . import x
    assert len(MODULES) > 40


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import helper\n")
    (package / "b.py").write_text("def helper():\n    from pkg import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.d\n")
    (package / "d.py").write_text("import pkg.c\n")
    modules, imports = read_imports(tmp_path, "pkg")
    assert find_cycles(modules, imports) == [["pkg.a", "pkg.b"]]  # c <-> d is type-checking only


def test_the_package_has_no_import_cycles():
    cycles = find_cycles(MODULES, IMPORTS)
    assert cycles == [], "import cycles (break them by moving what both sides need downward): " + "; ".join(
        " <-> ".join(group) for group in cycles
    )


def is_moto_allowed(module: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package in MOTO_PACKAGES)


def test_airflow_and_moto_are_imported_only_at_the_edge():
    outside = [
        f"{edge.importer} imports {edge.imported} (line {edge.line})"
        for edge in IMPORTS
        if edge.imported in AIRFLOW_ONLY
        and not is_edge(edge.importer)
        and not (edge.imported == "moto" and is_moto_allowed(edge.importer))
    ]
    assert outside == [], (
        "Airflow outside airflow_flowspec/{airflow,operators,triggers,xcom_backend}: " + ", ".join(outside)
    )


def test_the_local_aws_is_reached_by_nothing_else_in_the_package():
    """Importing airflow_flowspec must never import moto: only the local AWS's own modules import
    them."""
    inward = [
        f"{edge.importer} imports {edge.imported} (line {edge.line})"
        for edge in IMPORTS
        if is_moto_allowed(edge.imported) and not is_moto_allowed(edge.importer)
    ]
    assert inward == [], ", ".join(inward)
    assert any(edge.imported == "moto" and is_moto_allowed(edge.importer) for edge in IMPORTS)


def test_the_rest_of_the_package_reaches_the_edge_only_through_its_lazy_entry_points():
    crossings = {
        (edge.importer, edge.imported, edge.in_function)
        for edge in IMPORTS
        if edge.imported in MODULES and is_edge(edge.imported) and not is_edge(edge.importer)
    }
    assert {(importer, imported) for importer, imported, _ in crossings} == LAZY_ENTRY_POINTS
    assert all(in_function for _, _, in_function in crossings), "an entry point imported at module level"


def test_the_local_aws_has_no_cycle_even_for_type_checking():
    """The local AWS runs its jobs through a job class that knows it only by a protocol: counting
    the imports under ``if TYPE_CHECKING:`` as well, its modules import each other one way."""
    paths = sorted((REPO / "airflow_flowspec" / "testing").glob("*.py"))
    edges = [
        Import(importer, target, node.lineno, False)
        for path in paths
        for importer in [module_name(path, REPO)]
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for target in _targets(node, importer, path.name == "__init__.py", MODULES)
    ]
    testing_modules = {module_name(path, REPO) for path in paths}
    assert ("airflow_flowspec.testing.local_aws", "airflow_flowspec.testing.process_job") in {
        (edge.importer, edge.imported) for edge in edges
    }
    assert find_cycles(testing_modules, [edge for edge in edges if edge.imported in testing_modules]) == []


#: The package's layers, lowest first: a module may import its own layer and the ones below it,
#: never one above (docs/architecture.md draws the same picture). The name is the package or
#: top-level module under ``airflow_flowspec``; ``""`` is ``airflow_flowspec/__init__.py``.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("errors and terminal text", frozenset({"errors", "terminal"})),
    ("settings and names", frozenset({"config", "identity", "run_tags", "current"})),
    (
        "authoring, graph and lint",
        frozenset({"decorators", "parameters", "flowspec", "graph", "lint", "flow_loader"}),
    ),
    ("storage", frozenset({"datastore"})),
    ("execution", frozenset({"runtime", "aws_batch"})),
    ("reading results", frozenset({"client"})),
    (
        "commands and test support",
        frozenset({"", "cli", "flow_commands", "shell", "preload", "preloaders", "provider", "testing"}),
    ),
    (
        "the Airflow edge",
        frozenset({"airflow", "operators", "triggers", "plugins", "xcom_backend", "discovery"}),
    ),
)
#: Imports up the layers that start a program, not share code: what ``python flow.py`` runs
#: (``FlowSpec`` hands its command line to the CLI) and the edge's lazy entry points.
UPWARD_ENTRY_POINTS = LAZY_ENTRY_POINTS | {("airflow_flowspec.flowspec", "airflow_flowspec.cli")}
#: Imports up the layers kept on purpose: none.
UPWARD_EXCEPTIONS: set[tuple[str, str]] = set()


def layer_of(module: str) -> int:
    unit = module.removeprefix(PACKAGE).removeprefix(".").split(".")[0]
    for number, (_, units) in enumerate(LAYERS):
        if unit in units:
            return number
    raise AssertionError(f"{module} is in no layer of LAYERS: add its package to the one it belongs to")


def test_every_module_has_a_layer():
    assert all(layer_of(module) >= 0 for module in MODULES)


def test_no_module_imports_a_layer_above_its_own():
    """Guards the layering: storage knows nothing of the runtime, settings nothing of decorators
    or AWS Batch, the runtime nothing of the client or the commands, and so on up; a function-level
    import counts like any other."""
    upward = sorted(
        f"{edge.importer} ({LAYERS[layer_of(edge.importer)][0]}) imports {edge.imported} "
        f"({LAYERS[layer_of(edge.imported)][0]}), line {edge.line}"
        for edge in IMPORTS
        if edge.imported in MODULES
        and layer_of(edge.imported) > layer_of(edge.importer)
        and (edge.importer, edge.imported) not in UPWARD_ENTRY_POINTS | UPWARD_EXCEPTIONS
    )
    assert upward == [], "imports up the layers (move what both need down): " + "; ".join(upward)


def test_the_layer_rule_sees_an_upward_import():
    """Guards the guard: the layer of a storage module is below the runtime's."""
    assert layer_of("airflow_flowspec.datastore.views") < layer_of("airflow_flowspec.runtime.step_runner")
    assert layer_of("airflow_flowspec") > layer_of("airflow_flowspec.client.objects")
