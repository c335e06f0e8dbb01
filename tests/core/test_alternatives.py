"""PatchGD's alternatives (issue #14): GD with activation checkpointing computes GD's gradients and
running statistics in less planned memory; GD on a downscaled image resizes by area and gets the
side that fits PatchGD's batch; every method's estimate grows with the image side."""
import json

import pytest
import torch
from torch.nn import functional as F

from patchgd_kit.planner import alternatives as altplan, budget, estimate as planner_estimate, paperrows
from patchgd_kit.runs import scaling
from patchgd_kit.paper.beyond import BEYOND, PATCH_SETTINGS, is_beyond, reads_full_resolution, rows_of
from patchgd_kit.core.alternatives import downscale
from patchgd_kit.cli import main
from patchgd_kit.runs.config import TrainConfig
from patchgd_kit.errors import KitError
from patchgd_kit.core.methods import METHODS, StepSettings, build_model, method_of
from patchgd_kit.paper.numbers import PAPER
from patchgd_kit.runs.profiles import get_profile


def _gradients(model, images, labels):
    torch.manual_seed(1)  # the same dropout masks for both models
    F.cross_entropy(model.train()(images), labels).backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_checkpointed_gd_has_gd_gradients_and_running_statistics(backbone):
    torch.manual_seed(0)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    plain, checkpointed = build_model("gd", backbone, 10, 64), build_model("gd-checkpoint", backbone, 10, 64)
    checkpointed.load_state_dict(plain.state_dict())
    expected, got = _gradients(plain, images, labels), _gradients(checkpointed, images, labels)
    assert max((a - b).abs().max().item() for a, b in zip(expected, got)) <= 1e-5
    # The recomputation in backward must not count the batch twice in BatchNorm's statistics.
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_checkpointed_gd_plans_a_larger_batch_than_gd():
    gd = budget.plan("gd", "mobilenet_v2", 128, "1GB")
    checkpointed = budget.plan("gd-checkpoint", "mobilenet_v2", 128, "1GB")
    assert checkpointed.batch_size > gd.batch_size
    assert checkpointed.estimator == "fake-tensor"


def _peak(method, image_size):
    extra = {"patch_size": 32, "k": 1} if method_of(method).patches else {}
    return planner_estimate.estimate_peak(method, "mobilenet_v2", image_size, 2, input_side=32, **extra).peak_bytes


# streaming: lightstream's statistics cannot run on fake tensors, and no tile fits these sides;
# altplan.streaming_peak estimates it (tests/core/test_streaming.py).
@pytest.mark.parametrize("method", sorted(set(METHODS) - {"streaming"}))
def test_every_methods_estimate_grows_with_the_image_side(method):
    peaks = [_peak(method, side) for side in (64, 128, 256)]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1], peaks


def test_downscale_averages_areas_and_refuses_a_missing_or_larger_side():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert torch.equal(downscale(images, 4), F.avg_pool2d(images, 2))
    assert downscale(images, 8) is images
    with pytest.raises(KitError, match="downscaled-side"):
        downscale(images, None)
    with pytest.raises(KitError, match="must not exceed"):
        downscale(images, 16)


def test_downscaled_gd_trains_and_predicts_at_its_side():
    model = build_model("gd-downscaled", "mobilenet_v2", 10, 64)
    seen = []
    model.features[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    optimizer = torch.optim.Adam(model.parameters())
    settings = StepSettings(input_side=32)
    METHODS["gd-downscaled"].train_batch(model, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]), optimizer, settings)
    assert METHODS["gd-downscaled"].predict(model.eval(), torch.randn(3, 3, 64, 64), settings).shape == (3, 10)
    assert seen == [32, 32]


def test_downscaled_gd_needs_its_side_and_leaves_other_keys_alone():
    with pytest.raises(KitError, match="--downscaled-side"):
        TrainConfig(method="gd-downscaled", image_size=64).validate()
    with pytest.raises(KitError, match="downscaled side"):
        TrainConfig(method="gd-downscaled", image_size=64, downscaled_side=128).validate()
    TrainConfig(method="gd-downscaled", image_size=64, downscaled_side=32).validate()
    assert "downscaled_side" not in TrainConfig(method="gd").key()


def test_downscaled_side_fits_patchgds_batch_and_the_next_side_does_not():
    found = altplan.downscaled_side_for("mobilenet_v2", 256, "1GB", patch_size=64, sampling=0.25)
    assert found.side % 32 == 0 and 32 <= found.side <= 256
    usable = budget.usable_bytes(budget.parse_budget("1GB"))
    assert found.estimated_peak_bytes <= usable
    if found.side < 256:
        assert planner_estimate.estimate_peak("gd-downscaled", "mobilenet_v2", 256, found.batch_size,
                                    input_side=found.side + 32).peak_bytes > usable
    assert found.batch_size == budget.plan("patchgd", "mobilenet_v2", 256, "1GB", patch_size=64,
                                           sampling=0.25).batch_size


@pytest.mark.parametrize("method, extra", [("gd-checkpoint", []), ("gd-downscaled", ["--downscaled-side", "32"])])
def test_the_alternatives_train_and_evaluate_from_the_command_line(tiny_data, tmp_path, capsys, method, extra):
    out = tmp_path / method
    args = ["train", "--data", str(tiny_data), "--out", str(out), "--quiet", "--method", method, "--backbone",
            "mobilenet_v2", "--image-size", "64", "--epochs", "1", "--batch-size", "8", *extra]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["method"] == method
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out)]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 100


def test_plan_table_has_gd_checkpoint_rows_beside_gds_not_in_the_paper():
    rows = paperrows.alternative_rows()
    tables = ("Table 1", "Table 2", "Table 3")
    gd_rows = [r for r in paperrows.memory_rows() if r.method == "gd" and r.source in tables]
    assert len(rows) == len(gd_rows) == 6
    assert all(r.method == "gd-checkpoint" and r.source.endswith("(not in the paper)") for r in rows)
    assert [(r.backbone, r.image_size, r.amp) for r in rows] == [(r.backbone, r.image_size, r.amp) for r in gd_rows]


def test_rows_not_in_the_paper_are_gds_rows_as_its_alternatives():
    for name, extra in BEYOND.items():
        table = PAPER[name]
        ids = [row.id for row in rows_of(table, (name,))]
        assert len(ids) == len(set(ids)) == len(table.rows) + len(extra)
        assert rows_of(table) == table.rows  # only a profile that names the table trains them
        for row in extra:
            assert not row.paper and row.label.endswith("(not in the paper)") and is_beyond(row)
            if reads_full_resolution(row.settings):  # PANDA's level 0: Table 3's best row at 32,768 px
                best = table.row("patchgd_fp16_4096_p256").settings
                assert row.settings == {**best, "image_size": 32768, "sampling": 0.02, "full_resolution": True}
                continue
            gd = table.row("gd_" + row.id.split("_", 1)[1])
            kept = {k: v for k, v in row.settings.items() if k not in PATCH_SETTINGS}
            assert kept == {**gd.settings, "method": row.settings["method"]}
    # gd-downscaled carries the matching PatchGD row's patch settings, for its plan.
    downscaled = next(r for r in BEYOND["table3"] if r.settings["method"] == "gd-downscaled")
    assert (downscaled.settings["patch_size"], downscaled.settings["sampling"]) == (128, 0.1)


def test_a_downscaled_row_plans_patchgds_batch_and_runs_at_its_side_scaled(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_RUNS", str(tmp_path))
    monkeypatch.setattr(paperrows, "SHIPPED", tmp_path / "none.json")  # plan, not read the kit's plans
    table = PAPER["table2"]
    row = next(r for r in BEYOND["table2"] if r.id == "gd-downscaled_16gb")
    plan = paperrows.paper_plan(table.settings(row), tmp_path / "plans.json")
    patchgd = paperrows.paper_plan(table.settings(table.row("patchgd_16gb")), tmp_path / "plans.json")
    assert plan["batch_size"] == patchgd["batch_size"] and 32 <= plan["downscaled_side"] < 512
    profile = get_profile("smoke")
    config, _, scale = scaling.configure(table, row, profile)
    assert config.method == "gd-downscaled" and config.grad_accum == 1
    assert config.downscaled_side == round(plan["downscaled_side"] * profile.image_size / 512)
    assert scale.startswith(f"64 px resized to {config.downscaled_side} px (paper scale: {plan['downscaled_side']});")
