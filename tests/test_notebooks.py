"""The committed notebooks: their form (parameters cell, stripped outputs) and the runner."""
import ast
import copy
from pathlib import Path

import nbformat
import papermill
import pytest
from nbstripout import strip_output

from patchgd_kit.errors import KitError
from patchgd_kit.notebook import run_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
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


@pytest.mark.parametrize("name", TEACHING)
def test_teaching_notebooks_end_with_a_summary_and_exercises_with_folded_answers(name):
    cells = [c for c in _read(name).cells if c.cell_type == "markdown"]
    summary, exercises = cells[-2].source, cells[-1].source
    assert summary.startswith("## Summary") and exercises.startswith("## Exercises")
    answers = exercises.count("<details><summary>Answer</summary>")
    assert 3 <= answers <= 5 and answers == exercises.count("</details>")


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
