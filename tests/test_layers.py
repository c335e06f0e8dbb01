"""The package's floors are its folders: a module imports only from its own floor and the floors below
it, so that data never knows models or runs, the core never knows runs or the face, and the paper's
numbers depend on nothing. A new module needs no entry here: its folder is its floor.

The root holds the ground (errors, files, progress) and the doors (``cli``, ``__main__``, ``__init__``),
which reach every floor, lazily, and are reached by none."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "patchgd_kit"
# The floors, lowest first: a folder's modules import only from their floor and those before it.
FLOORS = ["ground", "data", "paper", "core", "planner", "runs", "report", "reproduce", "gpu", "face"]
DOORS = {"cli", "__main__", "__init__"}
ALONE = {"paper"}  # floors that import nothing of the kit but themselves


def module_name(path: Path) -> str:
    """patchgd_kit/core/methods.py → "core.methods"; patchgd_kit/data/__init__.py → "data"."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def floor_of(module: str) -> str:
    """A module's floor: its top folder; at the root "ground", or "door" for the doors."""
    top = module.split(".")[0]
    if "." in module or (PACKAGE / top).is_dir():
        return top
    return "door" if module in DOORS else "ground"


def kit_imports(module: str) -> set[str]:
    """The kit modules `module` imports, at any depth of its file (the lazy imports inside functions
    too): relative imports resolved, a name that is a module of the package taken as that module."""
    path = MODULES[module]
    package = [] if module == "__init__" else module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found |= {".".join(n.split(".")[1:]) or "__init__" for n in names if n and n.split(".")[0] == "patchgd_kit"}
            continue
        else:
            continue
        for alias in node.names:
            submodule = ".".join(base + [alias.name])
            found.add(submodule if submodule in MODULES else ".".join(base) or "__init__")
    return found - {module}


def test_every_folder_is_a_floor_and_the_root_holds_the_ground_and_the_doors():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(FLOORS) - {"ground"}
    assert set(FLOORS) | {"door"} >= {floor_of(m) for m in MODULES}


def test_every_import_names_a_module_of_the_kit():
    for module in MODULES:
        assert kit_imports(module) <= set(MODULES), module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if floor_of(m) != "door"))
def test_a_module_imports_only_from_its_floor_and_those_below(module):
    own = FLOORS.index(floor_of(module))
    for imported in kit_imports(module):
        floor = floor_of(imported)
        assert floor != "door", f"{module} imports the door {imported}"
        assert FLOORS.index(floor) <= own, f"{module} ({FLOORS[own]}) imports {imported} ({floor}), a higher floor"
        if FLOORS[own] in ALONE:
            assert floor == FLOORS[own], f"{module} imports {imported}: the paper's numbers depend on nothing"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` (node → the nodes it reaches), or None."""
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_import_cycle_between_modules():
    assert _cycle({m: kit_imports(m) for m in MODULES if floor_of(m) != "door"}) is None


def test_no_import_cycle_between_folders():
    def folder(module):
        return module.rpartition(".")[0] if "." in module else ""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        if floor_of(module) != "door":
            graph.setdefault(folder(module), set()).update(
                folder(m) for m in kit_imports(module) if folder(m) != folder(module))
    assert _cycle(graph) is None


def test_the_import_reader_sees_every_form_of_import():
    """The rules above are not vacuous: `from . import x`, `from ..floor.module import y`, imports
    inside functions and the doors' lazy imports are all read."""
    assert {"core.gd", "core.patchgd", "core.streaming", "errors"} <= kit_imports("core.methods")
    assert {"runs.config", "planner.budget", "core.methods", "data.ultramnist"} <= kit_imports("runs.training")
    assert {"gpu.check", "reproduce.notebooks", "planner.paperrows"} <= kit_imports("cli")
    assert "reproduce.tableruns" in kit_imports("gpu.check")  # inside check_slice
    assert floor_of("face.teaching.watch") == "face" and floor_of("errors") == "ground" and floor_of("cli") == "door"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_panda_reads_slides_and_nothing_more():
    for module in ("data.panda", "data.pandafull"):
        assert kit_imports(module) <= {"data.panda", "data.ultramnist", "errors", "files", "progress", "data.tiled"}
