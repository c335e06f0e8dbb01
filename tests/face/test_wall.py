"""Notebook 04's memory wall: one budget planned for every way of training, each row's peak measured
in a fresh process, and PatchGD compared with each row on the same test images."""
import dataclasses

import pytest

from patchgd_kit.face.teaching import wall
from patchgd_kit.planner import budget as planner_budget
from patchgd_kit.runs.config import TrainConfig
from patchgd_kit.report.orderings import paired_difference

BUDGET = "256MiB"


@pytest.fixture(scope="module")
def rows(tiny_data):
    config = TrainConfig(method="patchgd", backbone="mobilenet_v2", data=str(tiny_data), image_size=64, patch_size=32,
                         sampling=0.25, epochs=1, batch_size=None, device="cpu", weights=None)
    return wall.plan_rows(config, BUDGET)


def test_a_cpu_budget_keeps_a_margin_for_what_the_step_holds_besides_its_tensors():
    budget = planner_budget.parse_budget(BUDGET)
    assert 0 < planner_budget.usable_bytes(budget, "cpu") < budget
    assert planner_budget.usable_bytes(planner_budget.budget_for(100 * 2**20, "cpu"), "cpu") >= 100 * 2**20
    # a CUDA budget keeps the CUDA context out instead: 256 MiB leaves nothing
    assert planner_budget.usable_bytes(budget) == 0


def test_the_wall_gives_patchgd_a_larger_batch_than_gd_and_gd_at_that_batch_does_not_fit(rows):
    by_name = {row.name: row for row in rows}
    gd, patchgd = by_name["GD"], by_name["PatchGD"]
    assert [row.trains for row in rows] == [True, True, True, True, False]
    assert patchgd.config.batch_size >= 2 * gd.config.batch_size
    assert by_name["GD-checkpoint"].config.batch_size > gd.config.batch_size
    downscaled = next(row for row in rows if row.config.method == "gd-downscaled")
    assert downscaled.config.batch_size == patchgd.config.batch_size
    assert downscaled.config.downscaled_side < downscaled.config.image_size
    usable = planner_budget.usable_bytes(planner_budget.parse_budget(BUDGET), "cpu")
    assert all(row.estimated_bytes <= usable for row in rows if row.trains)
    assert rows[-1].estimated_bytes > usable and not wall.fits(rows[-1], "100MiB")


def test_the_planned_rows_fit_the_budget_when_measured(rows):
    """The planner's CPU margin covers what a real step takes: GD's and PatchGD's planned steps, run
    twice in a fresh process, stay within the budget; GD at PatchGD's batch takes more than GD."""
    measured = wall.measure_rows([row for row in rows if row.name in ("GD", "PatchGD")] + [rows[-1]])
    for row in measured[:2]:
        assert 0 < row.measured_bytes and wall.fits(row, BUDGET), (row.name, row.measured_bytes)
    assert measured[2].measured_bytes > measured[0].measured_bytes


def test_paired_difference_is_exact_on_the_same_images_and_refuses_other_images():
    labels = [0, 1, 2, 3] * 25
    right = {"test_labels": labels, "test_predictions": labels}
    half = {"test_labels": labels, "test_predictions": [p if i % 2 else (p + 1) % 4 for i, p in enumerate(labels)]}
    assert paired_difference(right, right) == (0.0, 0.0, 0.0)
    diff, low, high = paired_difference(right, half)
    assert diff == 50.0 and 35 < low < diff < high < 65
    with pytest.raises(ValueError):
        paired_difference(right, dict(half, test_labels=labels[::-1]))


def test_a_budget_too_small_for_patchgd_is_one_clear_error(rows):
    config = dataclasses.replace(rows[-2].config, batch_size=None)
    with pytest.raises(Exception, match="cannot hold even PatchGD"):
        wall.plan_rows(config, "64MiB")
