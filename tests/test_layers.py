"""The package's floors: each module imports only from its own floor and the floors above it, so that
data never knows models or runs, the core never knows runs or the face, and the paper's numbers
depend on nothing. A new module must be given a floor here."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "patchgd_kit"
FLOORS = ["ground", "data", "paper", "core", "runs", "report", "face"]
FLOOR_OF = {
    "errors": "ground", "files": "ground", "progress": "ground",
    "digits": "data", "data": "data", "splitfiles": "data", "panda": "data", "tiled": "data",
    "paper": "paper", "beyond": "paper",
    "patches": "core", "models": "core", "patchgd": "core", "gd": "core", "methods": "core",
    "livebytes": "core", "memory": "core", "stepmeasure": "core", "alternatives": "core", "altplan": "core",
    "wall": "runs",
    "streaming": "core",
    "config": "runs", "runfolder": "runs", "training": "runs", "store": "runs", "profiles": "runs",
    "pretrain": "runs", "paperplans": "runs", "scaling": "runs", "distributed": "runs",
    "orderings": "report", "latency": "report", "report": "report", "figure": "report",
    "viz": "face", "schematic": "face", "profile_times": "face", "curves": "face", "live": "face", "widgets": "face", "notebook": "face", "reproduce": "face",
    "gpuplan": "runs", "gpuestimate": "runs", "gpureport": "report", "gpucheck": "face", "cli": "face", "__main__": "face", "__init__": "face",
}


def kit_imports(path: Path) -> set[str]:
    """The kit modules a module imports (relative imports, at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {alias.name for alias in node.names}
    return names


def test_every_module_has_a_floor():
    assert {p.stem for p in PACKAGE.glob("*.py")} == set(FLOOR_OF)


@pytest.mark.parametrize("module", sorted(FLOOR_OF))
def test_a_module_imports_only_from_its_floor_and_those_above(module):
    own = FLOORS.index(FLOOR_OF[module])
    for imported in kit_imports(PACKAGE / f"{module}.py"):
        assert FLOORS.index(FLOOR_OF[imported]) <= own, f"{module} ({FLOOR_OF[module]}) imports {imported}"


def test_panda_reads_slides_and_nothing_more():
    assert kit_imports(PACKAGE / "panda.py") <= {"data", "errors", "files", "progress", "tiled"}
