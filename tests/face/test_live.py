"""Algorithm 1 run live: what notebook 02 shows is what `patchgd.train_batch` does."""
import pytest
import torch

from patchgd_kit.core import patchgd
from patchgd_kit.face.teaching import watch
from patchgd_kit.errors import KitError
from patchgd_kit.core.methods import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("patchgd", "mobilenet_v2", num_classes=10, image_size=64, patch_size=16).eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_input_gradient_is_non_zero_exactly_on_the_sampled_cells_and_z_gradient_everywhere(model, image):
    before = [p.clone() for p in model.parameters()]
    batch = watch.run_live_batch(model, image, 3, k=3, inner_iterations=5, grad_accum=2, seed=1)
    assert batch.schedule.shape == (5, 3) and batch.grad_x.shape == batch.grad_z.shape == (5, 4, 4)
    for cells, grad_x, grad_z in zip(batch.schedule, batch.grad_x, batch.grad_z):
        assert set(torch.nonzero(grad_x.flatten()).flatten().tolist()) == set(cells.tolist())
        assert bool((grad_z != 0).all())  # the head reads every cell of Z
    assert batch.steps_after == [2, 4, 5]  # every ε = 2, and the shorter last group
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # a copy trained


def test_the_table_counts_what_each_inner_iteration_did(model, image):
    table = watch.live_table(watch.run_live_batch(model, image, 0, k=4, inner_iterations=4, grad_accum=4, seed=0))
    assert table["∂L/∂X ≠ 0 on"].tolist() == [4] * 4 and table["exactly the sampled"].all()
    assert table["∂L/∂Z ≠ 0 on"].tolist() == [16] * 4
    assert table["optimizer step after j"].tolist() == ["no", "no", "no", "yes"]


@pytest.mark.parametrize("k, zeta, eps, message", [
    (0, 4, 1, "k = 0 must be between 1 and the m·n = 16 cells"),
    (17, 4, 1, "k = 17 must be between 1 and the m·n = 16 cells"),
    (4, 0, 1, "ζ = 0 must be at least 1"),
    (4, 4, 5, "ε = 5 must be between 1 and the number of inner iterations ζ = 4"),
])
def test_bad_choices_are_one_line_errors(model, image, k, zeta, eps, message):
    with pytest.raises(KitError, match=message):
        watch.run_live_batch(model, image, 0, k=k, inner_iterations=zeta, grad_accum=eps)


def test_every_line_of_algorithm1_sits_beside_the_source_that_carries_it_out():
    shown = watch.SourceBesideAlgorithm()
    text, table = str(shown), shown._repr_html_()
    assert text.startswith("def train_batch(")
    for step, marker, _ in watch.ALGORITHM1:
        line = next(line for line in text.splitlines() if marker in line)
        assert f"◀ {step}" in line
        assert step.replace("<", "&lt;") in table
    with pytest.raises(RuntimeError, match="no line with"):
        watch.SourceBesideAlgorithm(patchgd.predict)
