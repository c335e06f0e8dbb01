"""Memory budgets: the fake-tensor estimate matches real tensors and PyTorch's own tracker, grows as
the algorithms say, the planner picks the largest batch (or k) that fits, and bad input is refused
in one line. Small MobileNetV2 steps keep the file fast; fake tensors make large images cheap."""
import dataclasses
import json

import pytest
import torch

from patchgd_kit.planner import budget as planner_budget, bytecount, estimate as planner_estimate, paperrows
from patchgd_kit.cli import main
from patchgd_kit.errors import KitError
from patchgd_kit.core.models import LATENT_DIM
from patchgd_kit.planner.paperrows import memory_rows

MiB = 2**20


def _step(method="gd", image_size=64, batch_size=4, patch_size=None, k=None, fill_chunk=256):
    return planner_estimate.Step(method, "mobilenet_v2", image_size, batch_size, patch_size, k, False, 10, 1, fill_chunk)


def _estimate(step):
    return planner_estimate.estimate_peak(step.method, step.backbone, step.image_size, step.batch_size,
                                patch_size=step.patch_size, k=step.k, fill_chunk=step.fill_chunk).peak_bytes


@pytest.fixture
def fresh_caches():
    """Tests that break the estimator must neither see nor leave cached estimates."""
    planner_estimate.clear_caches()
    yield
    planner_estimate.clear_caches()


# ---- budgets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("4GB", 4 * 2**30), ("16 GiB", 16 * 2**30), ("16G", 16 * 2**30), ("24gb", 24 * 2**30),
    ("512MB", 512 * MiB), ("1.5 GB", 3 * 2**29), ("2048", 2048), (12345, 12345)])
def test_parse_budget_reads_binary_units(text, expected):
    assert planner_budget.parse_budget(text) == expected


def test_budget_for_a_peak_is_the_smallest_that_holds_it():
    for peak in (1, 10**6, 3 * 2**30 + 7):
        assert planner_budget.usable_bytes(planner_budget.budget_for(peak)) >= peak > planner_budget.usable_bytes(planner_budget.budget_for(peak) - 3)


@pytest.mark.parametrize("text", ["lots", "4XB", "-1GB", "0", 0, "16 iB", True, "GB"])
def test_parse_budget_refuses_what_is_not_a_size(text):
    with pytest.raises(KitError, match="memory budget"):
        planner_budget.parse_budget(text)


# ---- the estimate -----------------------------------------------------------------------------

@pytest.mark.parametrize("step", [_step("gd"), _step("gd-extended"), _step("patchgd", 64, 2, 32, 2)],
                         ids=["gd", "gd-extended", "patchgd"])
def test_fake_estimate_matches_the_same_step_on_real_tensors(step):
    torch.manual_seed(0)
    real = planner_estimate.step_peak(step, *planner_estimate.primed_model(step.model_args))
    assert _estimate(step) == pytest.approx(real, rel=0.05)


def test_live_bytes_agrees_with_pytorch_memtracker():
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    step = _step("gd")
    model, optimizer = planner_estimate.primed_model(step.model_args)
    ours = planner_estimate.step_peak(step, model, optimizer)
    images, labels = planner_estimate.step_inputs(step)
    tracker = mem_tracker.MemTracker()
    tracker.track_external(model, optimizer, images, labels)
    with tracker:
        planner_estimate.run_step(step, model, optimizer, images, labels, None)
    theirs = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("method, image_size, patch_size, k, batches", [
    ("gd", 128, None, None, (4, 8, 12, 16)), ("patchgd", 256, 64, 2, (2, 3, 4, 5))])
def test_estimate_grows_linearly_with_batch(method, image_size, patch_size, k, batches):
    peaks = [_estimate(_step(method, image_size, b, patch_size, k)) for b in batches]
    steps = [b - a for a, b in zip(peaks, peaks[1:])]
    assert min(steps) > 0
    assert max(steps) - min(steps) <= 0.02 * min(steps)


def test_patchgd_peak_grows_with_the_image_only_by_the_images_and_z():
    """Beyond the images themselves, only Z-sized tensors (Z, the fill's outputs, the head's maps)
    may grow with the image: a small fill chunk is full at every size, so its activations are
    the same at 512, 2048 and 4096 px. GD, for contrast, grows with every activation."""
    def peak(size):
        return _estimate(_step("patchgd", size, 2, 256, 2, fill_chunk=8))

    def images_and_z(size):
        cells = (size // 256) ** 2
        return 2 * 3 * size * size * 4, 2 * LATENT_DIM * cells * 4

    base, (image_base, z_base) = peak(512), images_and_z(512)
    for size in (2048, 4096):
        images, z = images_and_z(size)
        beyond_images = peak(size) - base - (images - image_base)
        assert 0 <= beyond_images <= 4 * (z - z_base) + MiB
    gd_growth = _estimate(_step("gd", 2048, 2)) - _estimate(_step("gd", 512, 2))
    assert gd_growth > 50 * (peak(2048) - base)


def test_fallback_warns_and_stays_close(fresh_caches, monkeypatch):
    step = _step("gd", 128, 8)
    fake = _estimate(step)
    planner_estimate.clear_caches()

    def unsupported():
        raise NotImplementedError("aten::some_op has no fake kernel")
    monkeypatch.setattr(planner_estimate, "fake_mode", unsupported)
    with pytest.warns(UserWarning, match="falling back to saved-tensor accounting"):
        fallback = planner_estimate.estimate_peak("gd", "mobilenet_v2", 128, 8)
    assert fallback.estimator == "saved-tensors"
    assert 0.5 * fake < fallback.peak_bytes < 1.5 * fake


def test_missing_private_apis_take_the_fallback(fresh_caches, monkeypatch):
    monkeypatch.setattr(bytecount, "PRIVATE_API_ERROR", ImportError("FakeTensorMode moved"))
    with pytest.warns(UserWarning, match="FakeTensorMode moved"):
        assert planner_estimate.estimate_peak("gd", "mobilenet_v2", 64, 2).estimator == "saved-tensors"


def test_batch_one_that_cannot_train_is_named_and_planning_starts_at_two():
    # PatchGD's head on a 2x2 grid ends on a 1x1 map: BatchNorm cannot train on one value.
    with pytest.raises(planner_estimate.BatchCannotTrain, match="batch size 1 cannot train"):
        planner_estimate.estimate_peak("patchgd", "mobilenet_v2", 64, 1, patch_size=32, k=1)
    budget = planner_budget.budget_for(_estimate(_step("patchgd", 64, 3, 32, 1)))
    assert planner_budget.plan("patchgd", "mobilenet_v2", 64, budget, patch_size=32, sampling=0.25).batch_size == 3


# ---- planning ---------------------------------------------------------------------------------

def test_planner_picks_the_largest_batch_that_fits():
    plan = planner_budget.plan("gd", "mobilenet_v2", 128, "1GB")
    usable = plan.budget_bytes - plan.margin_bytes
    assert usable == planner_budget.usable_bytes(2**30)
    assert _estimate(_step("gd", 128, plan.batch_size)) == plan.estimated_peak_bytes <= usable
    assert _estimate(_step("gd", 128, plan.batch_size + 1)) == plan.next_peak_bytes > usable
    assert plan.planned == "batch_size" and plan.k is None and plan.estimator == "fake-tensor"


def test_planner_picks_the_largest_k_for_a_batch():
    plan = planner_budget.plan("patchgd", "mobilenet_v2", 256, "1GB", patch_size=64, batch_size=8)
    usable = plan.budget_bytes - plan.margin_bytes
    assert plan.planned == "k" and 1 <= plan.k < 16
    assert _estimate(_step("patchgd", 256, 8, 64, plan.k)) <= usable < _estimate(_step("patchgd", 256, 8, 64, plan.k + 1))


def test_budget_too_small_for_batch_one_says_what_batch_one_needs():
    with pytest.raises(planner_budget.BudgetTooSmall, match=r"batch size 1 needs an estimated .*at least") as err:
        planner_budget.plan("gd", "mobilenet_v2", 128, "520MB")
    assert err.value.needs_bytes == _estimate(_step("gd", 128, 1))


def test_explicit_batch_that_does_not_fit_is_refused_with_both_numbers():
    largest = planner_budget.plan("gd", "mobilenet_v2", 128, "1GB").batch_size
    with pytest.raises(KitError, match=rf"batch size 500 does not fit .* largest batch that fits is {largest}$"):
        planner_budget.plan("gd", "mobilenet_v2", 128, "1GB", batch_size=500)
    assert planner_budget.plan("gd", "mobilenet_v2", 128, "1GB", batch_size=largest).planned == ""


def test_plan_for_config_follows_the_train_config():
    from patchgd_kit import TrainConfig
    config = TrainConfig(method="gd", backbone="mobilenet_v2", image_size=128, batch_size=None, memory_budget="1GB")
    assert planner_budget.plan_for_config(config) == planner_budget.plan("gd", "mobilenet_v2", 128, "1GB")


@pytest.mark.slow
def test_train_records_the_plan_and_refuses_a_batch_over_budget(tmp_path):
    from patchgd_kit.data.ultramnist import ensure_dataset
    from patchgd_kit import TrainConfig, train
    data = ensure_dataset(tmp_path / "data", 32, 1, 1, 0, progress=False)
    config = TrainConfig(method="gd", backbone="mobilenet_v2", data=str(data), image_size=32, epochs=1,
                         batch_size=2, memory_budget="1GB", device="cpu")
    train(config, tmp_path / "run", progress=False)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["batch_size"] == 2 and plan["budget_bytes"] == 2**30 and plan["estimated_peak_bytes"] > 0
    with pytest.raises(KitError, match="batch size 5000 does not fit"):
        train(config, tmp_path / "too-big", progress=False, batch_size=5000)
    assert not (tmp_path / "too-big").exists()


# ---- the paper's matrix and the CLI -----------------------------------------------------------

def test_memory_rows_cover_every_paper_configuration_once():
    rows = memory_rows()
    sources = [row.source for row in rows]
    assert [sources.count(f"Table {t}") for t in ("1", "2", "3", "4", "5/6")] == [3, 3, 9, 6, 3]
    assert {row.paper_budget for row in rows if row.source in ("Table 1", "Table 2")} == {"16, 4"}
    assert all(row.paper_budget == "24" for row in rows if row.amp)
    assert {row.grad_accum for row in rows if row.source == "Table 5/6"} == {1, 2, 4}
    # PANDA's PatchGD accumulates over all ζ inner iterations: 2048/128 at 10% is 256 cells, k 25, ζ 11
    ablation = [row for row in rows if row.source == "Table 4"]
    assert {(row.sampling, row.max_sampled, row.grad_accum) for row in ablation} >= {(0.1, 1.0, 11), (0.1, 0.3, 4)}


def test_memory_table_marks_budgets_that_hold_no_batch():
    row = paperrows.PaperRow("test", "gd", "mobilenet_v2", 128)
    cells = paperrows.memory_table([row], budgets=("520MB", "1GB"), workers=1)
    assert cells[0]["batch_size"] is None and cells[0]["needs_bytes"] > 0
    assert cells[1]["batch_size"] == planner_budget.plan("gd", "mobilenet_v2", 128, "1GB").batch_size
    table = paperrows.format_table(cells)
    assert "does not fit (B=1 needs" in table and f"B={cells[1]['batch_size']} ·" in table


def test_cli_plan_json(capsys):
    assert main(["plan", "--method", "gd", "--backbone", "mobilenet_v2", "--image-size", "128",
                 "--budget", "1GB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch_size"] == planner_budget.plan("gd", "mobilenet_v2", 128, "1GB").batch_size
    assert out["k"] is None and out["estimated_peak_bytes"] > 0 and out["budget_bytes"] == 2**30


@pytest.mark.parametrize("argv, message", [
    (["--budget", "lots"], "memory budget 'lots' is not a size"),
    (["--budget", "520MB"], "batch size 1 needs an estimated"),
    (["--budget", "1GB", "--batch-size", "500"], "batch size 500 does not fit"),
    ([], "plan needs --budget"),
])
def test_cli_plan_errors_are_one_line_with_exit_2(capsys, argv, message):
    base = ["plan", "--method", "gd", "--backbone", "mobilenet_v2", "--image-size", "128"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


# ---- CUDA: enforcement and the estimate against the allocator ---------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cap_is_enforced_and_the_estimate_matches_the_allocator():
    device = torch.device("cuda")
    torch.cuda.empty_cache()  # a cached 2 GiB block would be handed out without asking the cap
    planner_budget.limit_cuda_memory(device, 2 * 2**30)  # a cap of 1.5 GiB for the allocator
    try:
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(2 * 2**30, dtype=torch.uint8, device=device)
    finally:
        planner_budget.limit_cuda_memory(device, None)
    torch.empty(2 * 2**30, dtype=torch.uint8, device=device)  # the cap is lifted

    step = planner_estimate.Step("gd", "resnet50", 224, 16, None, None, False, 10, 1, 256)
    with torch.device(device):
        model, optimizer = planner_estimate.primed_model(step.model_args)
        images, labels = planner_estimate.step_inputs(step)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    planner_estimate.run_step(step, model, optimizer, images, labels, None)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated(device)
    # cuDNN workspaces come on top of the estimate; the plan's margin is there for them.
    assert measured == pytest.approx(planner_estimate.estimate_peak("gd", "resnet50", 224, 16).peak_bytes, rel=0.2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_out_of_memory_under_the_budget_is_a_kit_error(tmp_path, monkeypatch):
    from patchgd_kit.runs import training as train_module
    from patchgd_kit.data.ultramnist import ensure_dataset
    data = ensure_dataset(tmp_path / "data", 128, 7, 1, 0, progress=False)
    # A planner that wrongly claims batch 64 of ResNet50 fits 1 GB: the cap must stop the run.
    wrong = dataclasses.replace(planner_budget.plan("gd", "resnet50", 128, "24GB"), batch_size=64, budget_bytes=2**30,
                                margin_bytes=2**30 - planner_budget.usable_bytes(2**30))
    monkeypatch.setattr(train_module, "plan_for_config", lambda config: wrong)
    config = train_module.TrainConfig(method="gd", backbone="resnet50", data=str(data), image_size=128, epochs=1,
                                      batch_size=None, memory_budget="1GB", device="cuda")
    try:
        with pytest.raises(KitError, match=r"CUDA out of memory under the 1.00 GiB budget at batch size 64"):
            train_module.train(config, tmp_path / "run", progress=False)
    finally:
        planner_budget.limit_cuda_memory(torch.device("cuda"), None)
