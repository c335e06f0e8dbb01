"""The kit's size bars (issue #33): the architecture shows in folders, a reader takes in a module at a
sitting and a function on a screen."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "patchgd_kit"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_the_floors_are_folders_and_the_root_is_small():
    assert len(list(PACKAGE.glob("*/**/__init__.py"))) >= 5
    assert len(list(PACKAGE.glob("*.py"))) <= 6


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long


def test_no_function_over_60_lines():
    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = lines
    assert not long
