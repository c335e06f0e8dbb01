"""The committed notebooks: their form (parameters cell, stripped outputs) and the runner."""
import ast
import copy
from pathlib import Path

import nbformat
import papermill
import pytest
from nbstripout import strip_output

from patchgd_kit.errors import KitError
from patchgd_kit.reproduce.notebooks import run_notebook

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ALL = sorted(path.name for path in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
TEACHING = ALL[:4]  # 01-04 teach, 05-10 reproduce the paper's figure and tables, 11 the alternatives, 12 gigapixel images
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# What `nbstripout` strips by default besides outputs and counts.
NBSTRIPOUT_KEYS = ["metadata.signature", "metadata.widgets", "cell.metadata.collapsed", "cell.metadata.ExecuteTime",
                   "cell.metadata.execution", "cell.metadata.heading_collapsed", "cell.metadata.hidden",
                   "cell.metadata.scrolled"]


def _read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _tags(cell):
    return cell.metadata.get("tags", [])


def test_all_twelve_notebooks_are_checked():
    assert len(ALL) == 12 and TEACHING[-1] == "04_train_patchgd.ipynb"


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_valid_and_parameterised(name):
    nb = _read(name)
    nbformat.validate(nb)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in _tags(code_cells[0]), "the first code cell must be tagged 'parameters'"
    assert not any("parameters" in _tags(c) for c in code_cells[1:])
    # papermill cannot recompute derived values: the parameters cell holds `name = literal` lines only.
    names = []
    for statement in ast.parse(code_cells[0].source).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.unparse(statement)
        assert isinstance(statement.targets[0], ast.Name), ast.unparse(statement)
        ast.literal_eval(statement.value)  # raises ValueError for anything but a literal
        names.append(statement.targets[0].id)
    # papermill skips a line with a second "=" (in a comment, say): that parameter could not be passed.
    assert list(papermill.inspect_notebook(str(NOTEBOOKS / name))) == names


@pytest.mark.parametrize("name", ALL)
def test_only_checked_cells_keep_their_outputs(name):
    nb = _read(name)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        checked = "# NBVAL_CHECK_OUTPUT" in cell.source
        assert checked == ("keep_output" in _tags(cell)), cell.source
        if checked:
            assert cell.outputs and cell.execution_count, f"checked cell saved without output: {cell.source}"
            assert all(out.get("name") != "stderr" for out in cell.outputs), cell.source
        else:
            assert not cell.outputs and cell.execution_count is None, f"unstripped cell: {cell.source}"
    # What `nbstripout --keep-count` would commit is exactly what is committed.
    stripped = strip_output(copy.deepcopy(nb), keep_output=False, keep_count=True, keep_id=False,
                            extra_keys=NBSTRIPOUT_KEYS)
    assert stripped == nb


@pytest.mark.parametrize("name", ALL)
def test_plots_inline_and_never_set_the_backend(name):
    text = (NOTEBOOKS / name).read_text()
    assert "MPLBACKEND" not in text and "matplotlib.use" not in text
    assert "%matplotlib inline" in text


def test_unknown_parameter_is_an_error_before_anything_runs(tmp_path):
    with pytest.raises(KitError, match="no parameter.*profle.*allowed: profile"):
        run_notebook(NOTEBOOKS / TEACHING[0], tmp_path / "out.ipynb", {"profle": "smoke"})
    assert not (tmp_path / "out.ipynb").exists()


def _exercises(name):
    """The notebook's "## Summary" cell and its exercise cells: from "## Exercises" to an "## Appendix"
    (folded reference material) or the end."""
    cells = _read(name).cells
    start = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises"))
    end = next((i for i, c in enumerate(cells) if i > start and c.cell_type == "markdown"
                and c.source.startswith("## Appendix")), len(cells))
    summary = next(c for c in reversed(cells[:start]) if c.cell_type == "markdown")
    return summary, cells[start:end]


@pytest.mark.parametrize("name", TEACHING)
def test_teaching_notebooks_end_with_a_summary_and_exercises_with_folded_answers(name):
    summary, exercises = _exercises(name)
    assert summary.source.startswith("## Summary")
    text = "".join(c.source for c in exercises if c.cell_type == "markdown")
    answers = text.count("<details><summary>Answer</summary>")
    assert 3 <= answers <= 8 and answers == text.count("</details>")


@pytest.mark.parametrize("name", TEACHING)
def test_teaching_notebooks_have_coding_exercises_with_checks(name):
    """At least two exercises make the reader write or break code: a code cell in the exercises that
    checks what the reader wrote (it runs as committed, doing nothing until the reader fills it in)."""
    _, exercises = _exercises(name)
    checks = [c for c in exercises if c.cell_type == "code" and ("assert" in c.source or "gradients_beside" in c.source
                                                                 or "check" in c.source)]
    assert len(checks) >= 2


@pytest.mark.parametrize("name", ALL[4:])
def test_reproduction_notebooks_say_what_to_look_for_and_ask(name):
    sources = [c.source for c in _read(name).cells if c.cell_type == "markdown"]
    assert any(source.startswith("## What to look for") for source in sources)
    questions = next(source for source in sources if source.startswith("## Questions"))
    assert 1 <= questions.count("<details>") <= 2


def _image_outputs(cell):
    return [o for o in cell.outputs if "image/png" in o.get("data", {})]


@pytest.mark.slow
def test_papermill_without_parameters_draws_the_widgets_as_static_pngs(tmp_path, monkeypatch):
    """`papermill 02_zblock_filling.ipynb out.ipynb`, no -p: the widgets see no frontend and draw PNGs
    into ordinary outputs, which GitHub, nbviewer and exported HTML show."""
    monkeypatch.setenv("KIT_PROFILE", "smoke")  # the environment, as under nbval: no parameter is passed
    monkeypatch.setenv("KIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    executed = {}
    for name in TEACHING[:2]:
        out = run_notebook(NOTEBOOKS / name, tmp_path / name)
        executed[name] = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
        # TQDM_DISABLE=1: no progress bar leaves a widget view either (the kit passes disable= itself).
        assert not [c.source for c in executed[name] if any(WIDGET_VIEW in o.get("data", {}) for o in c.outputs)]
        widget_cells = [c for c in executed[name] if "widgets." in c.source]
        assert widget_cells
        for cell in widget_cells:
            assert _image_outputs(cell), f"{name}: no PNG from {cell.source}"
            assert not any(WIDGET_VIEW in o.get("data", {}) for o in cell.outputs), cell.source
    cells = executed[TEACHING[1]]
    source = next(c for c in cells if "SourceBesideAlgorithm" in c.source)
    assert "def train_batch(" in source.outputs[0]["data"]["text/plain"]
    assert "Algorithm 1 (the paper)" in source.outputs[0]["data"]["text/html"]
    live = next(c for c in cells if "algorithm1_player" in c.source)
    assert "exactly the sampled" in live.outputs[0]["text"] and len(_image_outputs(live)) == 1
    assert (tmp_path / "runs" / "smoke" / "data").is_dir()
