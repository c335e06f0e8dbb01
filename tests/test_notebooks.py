"""The committed teaching notebooks: their form (parameters cell, stripped outputs) and the runner."""
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
TEACHING = ["01_generate_ultramnist.ipynb", "02_zblock_filling.ipynb", "03_train_gd.ipynb",
            "04_train_patchgd.ipynb"]
# What `nbstripout` strips by default besides outputs and counts.
NBSTRIPOUT_KEYS = ["metadata.signature", "metadata.widgets", "cell.metadata.collapsed", "cell.metadata.ExecuteTime",
                   "cell.metadata.execution", "cell.metadata.heading_collapsed", "cell.metadata.hidden",
                   "cell.metadata.scrolled"]


def _read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _tags(cell):
    return cell.metadata.get("tags", [])


@pytest.mark.parametrize("name", TEACHING)
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


@pytest.mark.parametrize("name", TEACHING)
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


@pytest.mark.parametrize("name", TEACHING)
def test_plots_inline_and_never_set_the_backend(name):
    text = (NOTEBOOKS / name).read_text()
    assert "MPLBACKEND" not in text and "matplotlib.use" not in text
    assert "%matplotlib inline" in text


def test_unknown_parameter_is_an_error_before_anything_runs(tmp_path):
    with pytest.raises(KitError, match="no parameter.*profle.*allowed: profile"):
        run_notebook(NOTEBOOKS / TEACHING[0], tmp_path / "out.ipynb", {"profle": "smoke"})
    assert not (tmp_path / "out.ipynb").exists()


@pytest.mark.slow
def test_papermill_run_draws_the_widgets_into_ordinary_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = run_notebook(NOTEBOOKS / TEACHING[0], tmp_path / "01.ipynb", {"profile": "smoke", "interactive": False})
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    explorer = next(c for c in cells if "sample_explorer" in c.source)
    assert any("image/png" in o.get("data", {}) for o in explorer.outputs)
    assert (tmp_path / "runs" / "smoke" / "data").is_dir()
