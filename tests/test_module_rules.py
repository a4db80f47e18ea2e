"""The shape of the package (docs/design.md): no import circles, the forward walk, pure modules pure.

The imports are read from the source (``ast``), so these rules hold for every import a module
makes, at its top or inside a function; the circle rules count imports for annotations only
(under ``TYPE_CHECKING``) too.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "doras_oras"

#: Modules that must not do I/O: they import no network, file or process module of ours or Python's.
PURE = ("reference", "descriptor", "algorithms", "plan", "platforms", "redact", "urls", "errors")
IO_MODULES = {"requests", "urllib3", "socket", "subprocess", "oras"}
#: Layers, low to high: a module imports only from its own layer or below (the forward walk
#: cli -> pull -> registry fetch | edge conversation -> codecs -> layout, read bottom up).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "reference", "descriptor", "algorithms", "redact", "urls", "platforms", "plan", "backoff",
     "_writeback", "stream", "schemas"),
    ("codecs",),
    ("layout", "budget", "trust"),
    ("transport", "auth", "sdnotify"),
    ("registry_client", "extract", "signatures"),
    ("edgeapi", "stored_deltas"),
    ("full", "publish"),
    ("pull",),
    ("watch", "registry"),
    ("cli", "__init__", "__main__"),
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, typing: bool = False) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved).

    With ``typing`` the imports under ``if TYPE_CHECKING:`` count too.
    """
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    typing_only = set() if typing else {
        id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
        and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)}  # imports for annotations only: not made at run time
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            submodules = set()
            for alias in node.names:  # "from . import pull" imports the module doras_oras.pull
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                        PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py").exists():
                    submodules.add(candidate)
            found.update(submodules)
            if len(submodules) < len(node.names):  # some names come from the package itself
                found.add(target)
    return found


def _graph(*, typing: bool = False) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph[name] = {m for m in _imports(path, typing=typing) if m.startswith("doras_oras") and m != name}
    return graph


def _top(module: str) -> str:
    """``doras_oras.layout.store`` -> ``layout``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _library_graph(*, typing: bool = False) -> dict[str, set[str]]:
    """The graph between the library's top-level modules and packages (``testing`` excluded)."""
    graph: dict[str, set[str]] = {}
    for module, deps in _graph(typing=typing).items():
        if _top(module) == "testing":
            continue
        graph.setdefault(_top(module), set()).update(
            _top(d) for d in deps if _top(d) not in (_top(module), "testing"))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_circle_rules_count_imports_for_annotations_only() -> None:
    source = PACKAGE / "auth.py"  # it names the Transport in annotations only
    assert "doras_oras.transport" not in _imports(source)
    assert "doras_oras.transport" in _imports(source, typing=True)


def test_no_import_circle_between_modules() -> None:
    """Not even inside a package, not through imports made inside functions, nor for annotations only."""
    graph = {m: {d for d in deps if not d.startswith("doras_oras.testing")}
             for m, deps in _graph(typing=True).items() if not m.startswith("doras_oras.testing")}
    # a package's __init__ importing its own submodules is how a package exports: not a circle
    for module, deps in graph.items():
        graph[module] = {d for d in deps if not module.startswith(d + ".")}
    assert _cycles(graph) == []


def test_no_import_circle_between_top_level_modules_and_packages() -> None:
    assert _cycles(_library_graph(typing=True)) == []


def test_every_module_imports_only_its_layer_or_below() -> None:
    rank = {name: level for level, names in enumerate(LAYERS) for name in names}
    graph = _library_graph()
    assert set(graph) <= set(rank), f"modules missing from LAYERS: {set(graph) - set(rank)}"
    upward = sorted((module, dep) for module, deps in graph.items() for dep in deps if rank[dep] > rank[module])
    assert upward == []


def test_pure_modules_import_no_io() -> None:
    for name in PURE:
        imports = _imports(PACKAGE / f"{name}.py")
        assert not {m.split(".")[0] for m in imports} & IO_MODULES, (name, imports)
        ours = {_top(m) for m in imports if m.startswith("doras_oras")}
        assert ours <= set(PURE) | {"__init__"}, (name, ours)


def test_codecs_know_only_streams() -> None:
    for path in (PACKAGE / "codecs").glob("*.py"):
        tops = {_top(m) for m in _imports(path) if m.startswith("doras_oras")}
        assert tops <= {"codecs", "errors", "algorithms", "descriptor", "_writeback", "stream"}, (path.name, tops)


def test_the_library_never_imports_the_test_bed() -> None:
    for module, deps in _graph().items():
        if not module.startswith("doras_oras.testing"):
            assert not [d for d in deps if d.startswith("doras_oras.testing")], module


def test_only_the_facade_imports_oras_py() -> None:
    users = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if "oras" in {
        m.split(".")[0] for m in _imports(p)} and not _module_name(p).startswith("doras_oras.testing"))
    assert users == ["doras_oras.registry"]


@pytest.mark.parametrize("module", ["doras_oras.cli.main", "doras_oras.pull", "doras_oras.edgeapi"])
def test_the_command_and_the_pull_do_not_load_oras_py(module: str) -> None:
    code = f"import sys, {module}; print('oras' in sys.modules or 'oras.provider' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_only_the_command_prints() -> None:
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name.startswith(("doras_oras.cli", "doras_oras.testing")):
            continue
        calls = [node for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
        assert calls == [], name


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def _message_strings(node: ast.AST) -> list[str]:
    """The string pieces of every literal and f-string under ``node``."""
    return [part.value for part in ast.walk(node) if isinstance(part, ast.Constant) and isinstance(part.value, str)]


def test_the_library_never_names_a_command_line_flag() -> None:
    """What the library raises (and the fixes it words) speaks of its parameters, never of the command's
    flags: ``--from`` is the command's word for ``from_ref``."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name.startswith(("doras_oras.cli", "doras_oras.testing")):
            continue
        tree = ast.parse(path.read_text())
        messages = [node for node in ast.walk(tree) if isinstance(node, ast.Raise)]
        if name == "doras_oras.errors":  # the fixes' words: the values of its dictionaries
            messages += [value for node in ast.walk(tree) if isinstance(node, ast.Dict) for value in node.values]
        found += [(name, text) for node in messages for text in _message_strings(node) if FLAG.search(text)]
    assert found == []


def test_the_flag_rule_finds_a_flag() -> None:
    raised = ast.parse('raise InvalidArgumentError(f"--from {x} is not in the repository")')
    assert [text for text in _message_strings(raised) if FLAG.search(text)] == ["--from "]
