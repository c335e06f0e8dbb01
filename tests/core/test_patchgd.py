"""Algorithm 1 and 2 behave as the paper says: fill, sampling, gradient isolation, accumulation."""
import pytest
import torch
from torch import nn

from patchgd_kit.core import patchgd
from patchgd_kit.errors import KitError
from patchgd_kit.core.methods import build_model
from patchgd_kit.core.models import count_parameters
from tiny import RecordingOptimizer, TinyPatchGD
from patchgd_kit.core.patches import (gather_patches, inner_iterations, patches_per_iteration,
                                      sample_schedule)


def _images(b=3, size=32, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_fill_z_equals_per_patch_outputs_at_grid_positions():
    model = TinyPatchGD().eval()
    x = _images()
    z = patchgd.fill_z(model.backbone, x, 8, chunk=7)  # a chunk that splits images
    assert z.shape == (3, 8, 4, 4)
    with torch.no_grad():
        for a in range(4):
            for b in range(4):
                ref = model.backbone(x[:, :, a * 8:(a + 1) * 8, b * 8:(b + 1) * 8])
                torch.testing.assert_close(z[:, :, a, b], ref, rtol=1e-5, atol=1e-6)


def test_fill_z_real_backbone_matches_patches():
    model = build_model("patchgd", "mobilenet_v2", 10, 64, 32).eval()
    x = _images(2, 64)
    z = patchgd.fill_z(model.backbone, x, 32, chunk=3)
    with torch.no_grad():
        ref = model.backbone(x[:, :, 32:64, 0:32])
    torch.testing.assert_close(z[:, :, 1, 0], ref, rtol=1e-4, atol=1e-5)


def test_gather_patches_picks_the_cells_asked_for():
    x = _images(2, 32)
    cells = torch.tensor([[0, 5], [15, 6]])
    got = gather_patches(x, 8, cells)
    torch.testing.assert_close(got[1], x[0, :, 8:16, 8:16])    # cell 5 = row 1, col 1
    torch.testing.assert_close(got[2], x[1, :, 24:32, 24:32])  # cell 15 = row 3, col 3
    torch.testing.assert_close(got[3], x[1, :, 8:16, 16:24])   # cell 6 = row 1, col 2


def test_schedule_covers_every_cell_exactly_once_at_max_sampled_100():
    k = patches_per_iteration(0.25, 16)
    zeta = inner_iterations(0.25, 1.0, 16)
    assert (k, zeta) == (4, 4)
    schedule = sample_schedule(5, 16, k, zeta, torch.Generator().manual_seed(1))
    assert schedule.shape == (4, 5, 4)
    per_image = schedule.permute(1, 0, 2).reshape(5, 16)
    for row in per_image:
        assert sorted(row.tolist()) == list(range(16))
    # Images are sampled independently (Algorithm 1 samples per image).
    assert not all(torch.equal(per_image[0], r) for r in per_image[1:])


def test_schedule_when_k_does_not_divide_the_grid_still_covers_all():
    k, zeta = patches_per_iteration(0.1, 256), inner_iterations(0.1, 1.0, 256)
    assert (k, zeta) == (25, 11)  # the paper's 2048/128 at 10%: 25 patches per inner iteration
    schedule = sample_schedule(2, 256, k, zeta, torch.Generator().manual_seed(0))
    for b in range(2):
        assert set(schedule[:, b].flatten().tolist()) == set(range(256))
        assert len(set(schedule[:, b].flatten()[:256].tolist())) == 256  # no repeats before full coverage


def test_schedule_at_partial_max_sampled_never_repeats():
    k, zeta = patches_per_iteration(0.1, 256), inner_iterations(0.1, 0.5, 256)
    schedule = sample_schedule(3, 256, k, zeta, torch.Generator().manual_seed(0))
    for b in range(3):
        cells = schedule[:, b].flatten().tolist()
        assert len(cells) == len(set(cells)) == k * zeta


def test_gradient_flows_only_through_cells_sampled_in_this_inner_iteration():
    model = TinyPatchGD()
    x = _images().requires_grad_(True)
    y = torch.tensor([0, 1, 2])
    opt = RecordingOptimizer(model.parameters())
    patchgd.train_batch(model, x, y, opt, k=3, inner_iterations=1, grad_accum=1,
                        generator=torch.Generator().manual_seed(7))
    schedule = sample_schedule(3, 16, 3, 1, torch.Generator().manual_seed(7))[0]
    grad_per_cell = x.grad.view(3, 3, 4, 8, 4, 8).abs().sum(dim=(1, 3, 5)).flatten(1)  # (B, 16)
    for b in range(3):
        sampled = set(schedule[b].tolist())
        for cell in range(16):
            if cell in sampled:
                assert grad_per_cell[b, cell] > 0
            else:
                assert grad_per_cell[b, cell] == 0


def test_gradient_equals_loss_with_unsampled_cells_as_constants():
    torch.manual_seed(0)
    model = TinyPatchGD().eval()
    x, y = _images(), torch.tensor([0, 3, 4])
    opt = RecordingOptimizer(model.parameters())
    patchgd.train_batch(model, x, y, opt, k=2, inner_iterations=1, grad_accum=1,
                        generator=torch.Generator().manual_seed(3))
    cells = sample_schedule(3, 16, 2, 1, torch.Generator().manual_seed(3))[0]
    # Reference written out by hand: Z from the fill is a constant; only the sampled cells are recomputed.
    z = patchgd.fill_z(model.backbone, x, 8).flatten(2).clone()
    fresh = model.backbone(gather_patches(x, 8, cells)).view(3, 2, -1)
    for b in range(3):
        for i in range(2):
            z = z.clone()
            z[b, :, cells[b, i]] = fresh[b, i]
    loss = nn.functional.cross_entropy(model.head(z.view(3, -1, 4, 4)), y)
    ref = torch.autograd.grad(loss, list(model.parameters()))
    assert len(opt.steps) == 1
    for got, want in zip(opt.steps[0], ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("zeta,eps,expected_steps", [(4, 1, 4), (4, 2, 2), (4, 4, 1), (5, 2, 3)])
def test_optimizer_steps_per_batch_and_gradient_is_the_average(zeta, eps, expected_steps):
    torch.manual_seed(0)
    model = TinyPatchGD().eval()  # eval: no dropout/batch-stat noise between the two runs
    x, y = _images(2), torch.tensor([1, 2])
    per_iteration = RecordingOptimizer(model.parameters())
    patchgd.train_batch(model, x, y, per_iteration, k=1, inner_iterations=zeta, grad_accum=1,
                        generator=torch.Generator().manual_seed(5))
    accumulated = RecordingOptimizer(model.parameters())
    patchgd.train_batch(model, x, y, accumulated, k=1, inner_iterations=zeta, grad_accum=eps,
                        generator=torch.Generator().manual_seed(5))
    assert len(accumulated.steps) == expected_steps
    for step, grads in enumerate(accumulated.steps):
        group = per_iteration.steps[step * eps:(step + 1) * eps]
        for i, got in enumerate(grads):
            want = torch.stack([g[i] for g in group]).mean(0)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_replaced_cells_keep_their_new_values_for_later_inner_iterations():
    """With parameters fixed, two inner iterations that revisit nothing must give the same loss as
    recomputing: the Z a later iteration sees carries the earlier iteration's outputs."""
    model = TinyPatchGD().eval()
    x, y = _images(1), torch.tensor([2])
    opt = RecordingOptimizer(model.parameters())
    loss, steps = patchgd.train_batch(model, x, y, opt, k=8, inner_iterations=2, grad_accum=2,
                                      generator=torch.Generator().manual_seed(0))
    # Parameters never change, so every Z' equals the full fill: both losses equal head(fill_z).
    with torch.no_grad():
        ref = nn.functional.cross_entropy(patchgd.predict(model, x), y).item()
    assert steps == 1 and loss.item() == pytest.approx(ref, rel=1e-5)


def test_inference_is_head_of_fill_z():
    model = build_model("patchgd", "mobilenet_v2", 10, 64, 32).eval()
    x = _images(2, 64)
    with torch.no_grad():
        want = model.head(patchgd.fill_z(model.backbone, x, 32))
    torch.testing.assert_close(patchgd.predict(model, x), want)


def test_real_patchgd_step_changes_both_parts():
    model = build_model("patchgd", "mobilenet_v2", 10, 64, 32)
    before = [p.detach().clone() for p in (model.backbone.net[-1].weight, model.head.fc.weight)]
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss, steps = patchgd.train_batch(model, _images(4, 64), torch.tensor([0, 1, 2, 3]), opt, k=1,
                                      inner_iterations=4, grad_accum=2)
    assert steps == 2 and loss > 0
    after = (model.backbone.net[-1].weight, model.head.fc.weight)
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("image,patch,params", [(2048, 128, "26.40"), (512, 128, "26.39"), (4096, 128, "26.41"),
                                                (4096, 256, "26.40")])
def test_patchgd_resnet50_parameter_counts_match_paper_table3(image, patch, params):
    model = build_model("patchgd", "resnet50", 6, image, patch)
    assert f"{int(count_parameters(model) / 1e4) / 100:.2f}" == params  # the paper truncates


def test_gd_resnet50_parameter_count_matches_paper_table3():
    assert f"{count_parameters(build_model('gd', 'resnet50', 6, 2048)) / 1e6:.2f}" == "23.52"


@pytest.mark.parametrize("method", ["gd", "gd-extended"])
@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet_v2"])
def test_baselines_give_logits(method, backbone):
    model = build_model(method, backbone, 10, 64).eval()
    with torch.no_grad():
        assert model(_images(2, 64)).shape == (2, 10)


@pytest.mark.parametrize("kwargs,message", [
    (dict(image_size=100, patch_size=32), "not a multiple"),
    (dict(image_size=64, patch_size=128), "between 1 and the image size"),
])
def test_bad_grids_are_refused(kwargs, message):
    with pytest.raises(KitError, match=message):
        build_model("patchgd", "resnet50", 10, **kwargs)


def test_bad_sampling_is_refused():
    with pytest.raises(KitError, match=r"sampling 1.5 must be in \(0, 1\]"):
        patches_per_iteration(1.5, 16)
    with pytest.raises(KitError, match="below sampling"):
        inner_iterations(0.5, 0.25, 16)
    with pytest.raises(KitError, match="unknown backbone"):
        build_model("patchgd", "vgg16", 10, 64, 32)
