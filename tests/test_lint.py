"""pyflakes over the kit, its tests and benchmarks (names unused, undefined, or shadowed by a loop
variable), and the one shadowing pyflakes leaves alone: a parameter named like a module-level import.
That class cost a CI run: a parameter `budget` hid the planner's `budget` module in the function that
called it. A line that keeps an unused name on purpose says so with `# noqa`."""
import ast
from pathlib import Path

from pyflakes.api import checkPath
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("patchgd_kit", "tests", "benchmarks", "data_gen", "docs/probes")


class Collect(Reporter):
    def __init__(self):
        self.found = []

    def unexpectedError(self, filename, message):
        self.found.append(f"{filename}: {message}")

    def syntaxError(self, filename, message, lineno, offset, text):
        self.found.append(f"{filename}:{lineno}: {message}")

    def flake(self, message):
        line = Path(message.filename).read_text().splitlines()[message.lineno - 1]
        if "# noqa" not in line:
            self.found.append(str(message))


def test_pyflakes_finds_nothing():
    reporter = Collect()
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            checkPath(str(path), reporter)
    assert reporter.found == []


def _imported_names(tree: ast.Module) -> set[str]:
    return {(alias.asname or alias.name).split(".")[0] for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}


def test_no_parameter_hides_a_module_level_import():
    # beyond pyflakes: `def _plan(row, budget)` then `budget.plan_for_config(...)` in its body
    found = []
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            imported = _imported_names(tree)
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    a = node.args
                    names = [arg.arg for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if arg]
                    found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names if name in imported]
    assert found == []
