"""The notebooks' figures and widgets, without a notebook."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from patchgd_kit.face import curves, viz, widgets
from patchgd_kit.face.teaching import watch
from patchgd_kit.data.ultramnist import UltraMNIST, normalize_uint8
from patchgd_kit.data.digits import generate_image, load_digit_pools
from patchgd_kit.core.methods import build_model


@pytest.fixture(scope="module")
def pool():
    return load_digit_pools("bundled")["train"]


@pytest.fixture(scope="module")
def image(pool):
    return generate_image(np.random.default_rng(0), pool, 9, 128)


def test_dataset_figures_and_integer_summary(tiny_data):
    splits = {split: UltraMNIST(tiny_data, split) for split in ("train", "test")}
    summary = viz.dataset_summary(splits)
    assert summary.loc["train", "images"] == 30 and summary.loc["test", "per class"] == "2-2"
    assert summary.loc["train", ["3 digits", "4 digits", "5 digits"]].sum() == 30
    assert isinstance(viz.show_samples(splits["train"], count=6, columns=4), Figure)
    assert isinstance(viz.plot_dataset_stats(splits), Figure)


def test_recipe_side_fractions_sum_to_one():
    fractions = viz.recipe_side_fractions(512)
    assert sum(fractions.values()) == pytest.approx(1)
    assert fractions[14] == pytest.approx(0.10)  # f = 1 halved: 14 px, half of f = 1's weight 0.20
    floored = viz.recipe_side_fractions(128, min_digit_side=24)  # the cpu profile: f <= 3 drawn at 24 px
    assert floored[24] == pytest.approx(0.20 + 0.16 + 0.12) and min(floored) == 24
    assert floored[63] == pytest.approx(fractions[252])  # above the floor, the recipe's mix


def test_downscaling_shrinks_every_digit_by_the_same_factor(image):
    picture, digits, boxes = image
    text = viz.describe_downscaling(digits, boxes, 128, (128, 32))
    side = boxes[0][2] - boxes[0][0]
    assert text.splitlines()[0] == f"digit {digits[0]}: {side} px at 128, {round(side / 4, 2):g} px at 32"
    assert viz.downscale(picture, 32).shape == (32, 32)
    assert isinstance(viz.show_downscaling(picture, digits, boxes, (128, 64, 32)), Figure)


def test_latent_rgb_is_a_picture_in_unit_range():
    rgb = viz.latent_rgb(torch.randn(256, 4, 4))
    assert rgb.shape == (4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert np.all(viz.latent_rgb(torch.ones(256, 2, 2)) == 0)  # identical cells: one colour, no NaN


def test_schedule_facts_count_steps_and_coverage():
    facts = viz.schedule_table({"x": (512, 64, 0.1, 0.5, 3)}).loc["x"]
    # 64 cells, k = 6, ζ = ceil(32 / 6) = 6, ε = 3 → 2 optimizer steps, 36 distinct cells
    assert (facts["k"], facts["ζ"], facts["optimizer steps"], facts["cells visited"]) == (6, 6, 2, 36)
    assert facts["coverage %"] == 56


def test_inner_iteration_pictures_for_short_and_long_schedules(image):
    picture = image[0]
    for k, zeta in ((4, 4), (1, 16)):
        schedule = viz.one_image_schedule(16, k, zeta, seed=0)
        assert schedule.shape == (zeta, k)
        assert isinstance(viz.plot_inner_iterations(picture, 32, schedule, grad_accum=3), Figure)
    assert isinstance(viz.plot_z_filling(picture, np.zeros((4, 4, 3)), 32, [1, 16]), Figure)


def test_memory_plot_hides_budgets_far_beyond_the_bars():
    small = curves.plot_memory({"GD, batch 8": 80 * 2**20, "PatchGD p=32, k=1, batch 8": 90 * 2**20})
    assert "MiB" in small.axes[0].get_xlabel() and not small.axes[0].lines
    large = curves.plot_memory({"GD, batch 16": 6 * 2**30, "PatchGD p=64, k=16, batch 16": 2**30})
    assert len(large.axes[0].lines) == 1  # the 4 GB line; 16 GB is out of reach


def test_history_figures_and_comparison_table():
    row = {"epoch": 1, "train_loss": 2.3, "test_loss": 2.2, "accuracy": 12.5, "qwk": 0.1, "train_images_per_s": 5.0,
           "peak_rss_bytes": 2**30}
    run = {"history": [row], "final": row, "config": {"batch_size": 8}}
    assert isinstance(curves.plot_history([row], epochs=3), Figure)
    assert isinstance(curves.plot_histories({"GD": run, "PatchGD": run}), Figure)
    table = curves.comparison_table({"GD": run})
    assert table.loc["GD", "peak memory (measured)"] == "1024 MiB process RSS (CPU)"
    plot = curves.TrainingPlot(epochs=3)  # outside IPython nothing is displayed, and nothing fails
    plot(row)
    plot.show([row, {**row, "epoch": 2}])
    assert len(plot.history) == 2


def test_invalid_widget_choices_print_one_line_instead_of_raising(image, capsys, monkeypatch):
    picture = image[0]
    bad = dict(backbone="mobilenet_v2", patch_size=48, sampling=0.25, max_sampled=1.0, grad_accum=1)
    assert widgets.schedule_explorer(picture, **bad) is None  # no frontend here: drawn, not a widget
    assert "Not a valid choice: image size 128 is not a multiple of the patch size 48" in capsys.readouterr().out
    monkeypatch.setattr(widgets, "has_frontend", lambda: True)
    assert widgets.schedule_explorer(picture, **bad) is not None
    assert "Not a valid choice: image size 128 is not a multiple of the patch size 48" in capsys.readouterr().out
    widgets.schedule_explorer(picture, **{**bad, "patch_size": 64, "grad_accum": 9})
    assert "ε = 9 must be between 1 and the number of inner iterations ζ = 4" in capsys.readouterr().out


class FakeKernel:
    def __init__(self, metadata, allow_stdin=True):
        self.request = {"content": {"code": "", "allow_stdin": allow_stdin}, "metadata": metadata}

    def get_parent(self, channel):
        return self.request


def _shell(metadata, allow_stdin=True):
    return type("Shell", (), {"kernel": FakeKernel(metadata, allow_stdin)})()


LAB = {"deletedCells": [], "recordTiming": False, "cellId": "7d2f"}


@pytest.mark.parametrize("shell, expected", [
    (None, False),                                                               # plain Python
    (object(), False),                                                           # an IPython terminal: no kernel
    (_shell({}, allow_stdin=False), False),                                      # papermill, nbconvert, nbval
    (_shell({}), False),                                                         # jupyter console
    (_shell(LAB), True),                                                         # JupyterLab, Notebook 7
    (_shell({"cellId": "vscode-notebook-cell:/home/a/01.ipynb#W1sZmlsZQ"}), True),  # VS Code
])
def test_widgets_know_whether_a_frontend_can_draw_them(monkeypatch, shell, expected):
    monkeypatch.setattr(widgets, "get_ipython", lambda: shell)
    assert widgets.has_frontend() is expected


def test_widgets_draw_once_when_not_interactive(pool, image, capsys):
    assert widgets.sample_explorer(pool, image_size=64, seed=3, scale_range=(1, 2), interactive=False) is None
    assert widgets.z_filling_player(image[0], np.zeros((4, 4, 3)), 32, interactive=False) is None
    assert widgets.schedule_explorer(image[0], backbone="mobilenet_v2", patch_size=64, sampling=0.25,
                                     max_sampled=1.0, grad_accum=2, batch_size=2, interactive=False) is None
    out = capsys.readouterr().out
    assert "k 1 · ζ 4 · ε 2 · optimizer steps 2 · cells visited 4 · coverage % 100" in out
    assert out.count("Figure") == 4  # outside IPython, display() prints each figure's repr


def test_algorithm1_player_draws_the_live_batch_and_refuses_bad_values(image, capsys):
    picture, digits, _ = image
    torch.manual_seed(0)
    model = build_model("patchgd", "mobilenet_v2", num_classes=10, image_size=128, patch_size=32).eval()
    x = normalize_uint8(torch.from_numpy(picture))
    assert widgets.algorithm1_player(model, picture, x, sum(digits), k=4, zeta=4, grad_accum=2) is None
    out = capsys.readouterr().out
    assert "exactly the sampled" in out and out.count("Figure") == 1
    widgets.algorithm1_player(model, picture, x, sum(digits), k=4, zeta=2, grad_accum=3)
    assert capsys.readouterr().out.strip() == ("Not a valid choice: ε = 3 must be between 1 and the number of "
                                               "inner iterations ζ = 2")


def test_live_batch_figure_for_short_and_long_schedules(image):
    picture = image[0]
    for k, zeta in ((4, 4), (1, 9)):
        batch = watch.LiveBatch(viz.one_image_schedule(16, k, zeta, seed=0), torch.rand(zeta, 4, 4),
                               torch.rand(zeta, 4, 4), [zeta], 2.3)
        assert isinstance(viz.plot_live_batch(picture, 32, batch), Figure)
