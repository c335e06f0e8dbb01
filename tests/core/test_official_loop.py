"""benchmarks/bench_official_loop.py's `official_batch` (the official repository's loop structure)
does the kit's math: from the same weights at the same positions, one batch of it and one of
`patchgd.train_batch` give the same mean loss and the same parameters after their optimizer steps.

Both models in eval mode: BatchNorm on its running statistics and Dropout off, so neither the
grouping of patches into backbone calls (k·B per call in the official fill, up to 256 in the kit's)
nor random masks enter. SGD, not Adam: Adam's first update is about lr·sign(g), so a gradient that
is zero up to float noise could move either way. ε = 1 with ζ = 4 makes Z's update matter: the
cells written in inner iteration 2 come from stepped weights and iteration 3 reads them; the
backbone's lr (`sgd`) moves Z by ~20% in a batch, so a harness that left Z as filled, wrote cells
transposed, stepped once or did not divide by ε fails here (each tried)."""
import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from patchgd_kit.core.methods import build_model

SPEC = importlib.util.spec_from_file_location(
    "bench_official_loop", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_official_loop.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)
BACKBONE_LR = 50.0


@pytest.fixture
def one_thread():
    """One intra-op thread: at these sizes more only wait on each other (on a busy 2-core machine
    a batch took 20 s with 2 threads, 0.15 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sgd(model):
    """At random initialisation f_θ1's gradients are tiny (Z's entries are ~0.01): at the head's lr
    its weights would barely move and a stale Z would pass unnoticed, so the backbone's lr is large."""
    return torch.optim.SGD([{"params": model.backbone.parameters(), "lr": BACKBONE_LR},
                            {"params": model.head.parameters()}], lr=0.05)


@pytest.mark.parametrize("k, zeta, eps", [(1, 4, 1), (2, 2, 2)])
def test_official_structure_matches_kit(k, zeta, eps, one_thread):
    torch.manual_seed(0)
    batch, size, p = 2, 32, 16
    images = torch.randn(batch, 3, size, size)
    labels = torch.tensor([3, 7])
    kit = build_model("patchgd", "mobilenet_v2", 10, size, p).eval()
    official = copy.deepcopy(kit)
    start = {name: t.detach().clone() for name, t in kit.named_parameters()}
    kit_opt, official_opt = sgd(kit), sgd(official)
    order = torch.randperm(4)
    official_loss = bench.official_batch(official, images, labels, official_opt, k=k, inner_iterations=zeta,
                                         grad_accum=eps, order=order)
    kit_loss = bench.kit_batch(kit, images, labels, kit_opt, k=k, inner_iterations=zeta, grad_accum=eps,
                               schedule=bench.shared_schedule(order, batch, k, zeta))
    assert official_loss == pytest.approx(kit_loss, rel=1e-5)
    moved = 0
    for (name, a), (_, b) in zip(official.named_parameters(), kit.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(a, start[name])
    assert moved > 0


def test_official_batch_rejects_a_schedule_it_cannot_run():
    model = build_model("patchgd", "mobilenet_v2", 10, 32, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError):
        bench.official_batch(model, torch.randn(1, 3, 32, 32), torch.tensor([0]), opt, k=2, inner_iterations=2,
                             grad_accum=3)
