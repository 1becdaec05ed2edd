"""Layering of ``qmri_models``: no import cycles between its packages, inference never imports training.

The graph is read from the source with ``ast`` (every import, also the lazy ones inside functions and those under
``TYPE_CHECKING``), between the units of the package: its subpackages (``qmri_models.networks``,
``qmri_models.training`` ...) and its top-level modules (``qmri_models.puq_evaluation``, ``qmri_models.metrics`` ...).
"""

import ast
import subprocess
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

from gadgets.runtime import registry

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "qmri_models"
GADGET_MODULES = (*registry.GADGET_MODULES, "gadgets.external", "gadgets.gadgetron_config", "gadgets.runtime.server")
"""Everything that runs on a stream: the registered gadgets, the Gadgetron external and the server."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Yield every module name an import in ``path`` names (``from a import b`` names ``a`` and ``a.b``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def _units() -> set[str]:
    """Return the units of ``qmri_models``: its own ``__init__``, its subpackages and its top-level modules."""
    packages = {f"qmri_models.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    modules = {f"qmri_models.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {"qmri_models"} | packages | modules


def _unit_of(module: str, units: set[str]) -> str | None:
    """Return the unit ``module`` belongs to (None outside ``qmri_models``, or for a name that is no unit)."""
    unit = ".".join(module.split(".")[:2])
    return unit if unit in units else None


def unit_graph() -> dict[str, dict[str, list[str]]]:
    """Return, for every unit, the units it imports, each with where (``module:import``)."""
    units = _units()
    graph: dict[str, dict[str, list[str]]] = {unit: {} for unit in units}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _unit_of(_module_name(path), units)
        assert source is not None, path
        for imported in _imports(path):
            target = _unit_of(imported, units)
            if target is not None and target != source:
                graph[source].setdefault(target, []).append(f"{_module_name(path)} imports {imported}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """Return one cycle of the graph as its units in order (first repeated last), or None when it is acyclic."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = "open"
        stack.append(unit)
        for target in sorted(graph[unit]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[unit] = "done"
        return None

    for unit in sorted(graph):
        if unit not in state and (cycle := visit(unit)) is not None:
            return cycle
    return None


def test_the_graph_sees_the_known_layers() -> None:
    """The parser finds real edges, lazy imports included (a graph without edges is trivially acyclic)."""
    graph = unit_graph()
    assert "qmri_models.networks" in graph["qmri_models.pretrained"]
    assert "qmri_models.pretrained" in graph["qmri_models.training"]
    assert "qmri_models.signal_models" in graph["qmri_models.fitting"]


def test_find_cycle_reports_the_cycle() -> None:
    graph: dict[str, dict[str, list[str]]] = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {}}) is None


def test_qmri_models_has_no_import_cycles() -> None:
    graph = unit_graph()
    cycle = find_cycle(graph)
    if cycle is not None:
        steps = [f"{a} -> {b}: {'; '.join(graph[a][b])}" for a, b in pairwise(cycle)]
        raise AssertionError("import cycle in qmri_models:\n  " + "\n  ".join(steps))


def test_inference_never_imports_training() -> None:
    """Importing every gadget (and the server) leaves ``qmri_models.training`` unimported."""
    code = (
        "import importlib, sys\n"
        f"for name in {GADGET_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(m for m in sys.modules if m == 'qmri_models.training' "
        "or m.startswith('qmri_models.training.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"gadgets import training modules: {result.stdout.split()}"


def test_qmri_models_never_imports_gadgets() -> None:
    offenders = [
        f"{_module_name(path)} imports {imported}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for imported in _imports(path)
        if imported == "gadgets" or imported.startswith("gadgets.")
    ]
    assert offenders == []
