"""The PatchGD step as the kit runs it (the fused Adam of `optim.adam`, the memory format the
kit picks per backbone) gives the same losses and gradients as a
plain reference of Algorithm 1 written here from the public pieces (fill_z, sample_schedule,
gather_patches): cells written one by one, a copy of Z per inner iteration, BatchNorm in train mode as
in training.

Float tolerance, not bit equality: the two sum in different orders. The optimizer is SGD at lr 0, so
every inner iteration of both runs sees the same parameters and each optimizer step's gradient (the
average over its ε group) is compared as such. Once parameters move, float noise grows: at these sizes
the last BatchNorms normalise over 4 values (4 patches of 1×1 features), and after one SGD step at lr
1e-2 the two runs' mean losses were 0.5-1.4% apart (measured); under Adam, whose first update is about
lr·sign(g), a gradient that is zero in exact arithmetic (the bias of a BatchNorm that the next
BatchNorm re-centres) is noise whose sign differs between any two orders of summation. The update
itself is torch's: the fused Adam is checked against the for-loop Adam on one set of gradients."""
import copy

import pytest
import torch
from torch import nn

from patchgd_kit.core import patchgd
from patchgd_kit.runs.config import TrainConfig, use_channels_last
from patchgd_kit.core.methods import build_model
from patchgd_kit.core.patches import gather_patches, sample_schedule
from patchgd_kit.runs.optim import adam


class Recorder:
    """An optimizer as train_batch uses it (step, zero_grad) that records the gradients of every step."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]):
        self.optimizer, self.params, self.grads = optimizer, params, []

    def step(self):
        self.grads.append([p.grad.detach().clone() for p in self.params])
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)


def reference_batch(model, images, labels, optimizer, schedule, grad_accum):
    """Algorithm 1, plainly: Z filled without gradient; per inner iteration the sampled patches through
    f_θ1 with gradient, Z' = Z with those cells replaced, loss on g_θ2(Z'), gradients averaged over ε,
    the new cells kept as constants."""
    p, (m, n) = model.patch_size, model.grid
    batch, zeta = images.shape[0], schedule.shape[0]
    z = patchgd.fill_z(model.backbone, images, p).flatten(2).clone()
    losses = []
    optimizer.zero_grad(set_to_none=True)
    for j in range(zeta):
        cells = schedule[j]
        start = j // grad_accum * grad_accum
        size = min(grad_accum, zeta - start)
        new = model.backbone(gather_patches(images, p, cells)).view(batch, cells.shape[1], -1)
        z_prime = z.clone()
        for i in range(batch):
            for c in range(cells.shape[1]):
                z_prime[i, :, cells[i, c]] = new[i, c]
        loss = nn.functional.cross_entropy(model.head(z_prime.view(batch, -1, m, n)), labels)
        (loss / size).backward()
        with torch.no_grad():
            for i in range(batch):
                for c in range(cells.shape[1]):
                    z[i, :, cells[i, c]] = new[i, c]
        losses.append(float(loss.detach()))
        if j + 1 - start == size:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return sum(losses) / len(losses)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float, floor: float = 1e-7) -> bool:
    return float((a - b).norm()) <= rel * float(b.norm()) + floor


def _grads_close(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> bool:
    """Every gradient within 1e-3 of its own norm plus 1e-5 of the whole gradient's (the zero-in-exact-
    arithmetic entries are float noise), and the whole gradient within 1e-4."""
    total = float(torch.cat([t.flatten() for t in theirs]).norm())
    whole = float(torch.cat([(a - b).flatten() for a, b in zip(ours, theirs)]).norm())
    return whole <= 1e-4 * total and all(_close(a, b, 1e-3, 1e-5 * total) for a, b in zip(ours, theirs))


# ResNet50 is left out: at 32-px patches and batch 4 its random-init gradients run to thousands and its
# first conv's differed by ~1e-3 relative between the two runs (which differ only in exact copies), over
# this tolerance; a tolerance or size for it was not settled on the loaded machine of issue 38 (a case took
# 5 minutes there).
@pytest.mark.parametrize("backbone, grad_accum", [("mobilenet_v2", 1), ("mobilenet_v2", 4)])
def test_optimised_step_equals_plain_reference(backbone, grad_accum):
    torch.manual_seed(0)
    plain = build_model("patchgd", backbone, 10, 64, 32).train()
    if use_channels_last(TrainConfig(backbone=backbone), torch.device("cpu")):
        # The kit's format for this backbone in both: at 32-px patches and 4 patches a BatchNorm, the
        # last blocks normalise over 4 values, which turns the float noise of another memory format
        # into a loss 4e-4 apart (measured), far above the rounding this test is to see.
        plain = plain.to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 4, 7, 2])
    k, zeta = 1, 4
    schedule = sample_schedule(4, 4, k, zeta, torch.Generator().manual_seed(2))

    plain_opt = Recorder(torch.optim.SGD(plain.parameters(), 0.0), list(plain.parameters()))
    torch.manual_seed(3)  # the head's dropout draws the same masks in both
    plain_loss = reference_batch(plain, images, labels, plain_opt, schedule, grad_accum)

    fast_opt = Recorder(torch.optim.SGD(fast.parameters(), 0.0), list(fast.parameters()))
    torch.manual_seed(3)
    fast_loss, steps = patchgd.train_batch(fast, images, labels, fast_opt, k=k, inner_iterations=zeta,
                                           grad_accum=grad_accum, generator=torch.Generator().manual_seed(2))

    assert steps == len(plain_opt.grads) == len(fast_opt.grads) == zeta // grad_accum
    assert float(fast_loss) == pytest.approx(plain_loss, rel=1e-5)
    for theirs, ours in zip(plain_opt.grads, fast_opt.grads):
        assert _grads_close(ours, theirs)
    for a, b in zip(fast.parameters(), plain.parameters()):
        assert _close(a.detach(), b.detach(), 1e-5)
    for a, b in zip(fast.buffers(), plain.buffers()):  # BatchNorm's running statistics moved alike
        assert _close(a.float(), b.float(), 1e-5)


def test_fused_adam_takes_the_for_loop_adams_steps():
    """optim.adam (fused on a CPU) beside torch's for-loop Adam: the same parameters after three steps
    on the same gradients, none of them zero."""
    torch.manual_seed(0)
    ours = [torch.randn(300, requires_grad=True), torch.randn(20, 30, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    fused, loop = adam(ours, 1e-3, torch.device("cpu")), torch.optim.Adam(theirs, 1e-3, foreach=False)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ours]
        for opt, params in ((fused, ours), (loop, theirs)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(ours, theirs))


def test_the_check_notices_a_different_step():
    """Without the fill (Z of zeros) the reference's gradients differ: the comparison can fail."""
    torch.manual_seed(0)
    plain = build_model("patchgd", "mobilenet_v2", 10, 64, 32).train()
    fast = copy.deepcopy(plain)
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 4, 7, 2])
    schedule = sample_schedule(4, 4, 1, 4, torch.Generator().manual_seed(2))
    plain_opt = Recorder(torch.optim.SGD(plain.parameters(), 0.0), list(plain.parameters()))
    fast_opt = Recorder(torch.optim.SGD(fast.parameters(), 0.0), list(fast.parameters()))
    real_fill = patchgd.fill_z
    try:
        patchgd.fill_z = lambda backbone, images, p, **kw: torch.zeros_like(real_fill(backbone, images, p))
        torch.manual_seed(3)
        reference_batch(plain, images, labels, plain_opt, schedule, 1)
    finally:
        patchgd.fill_z = real_fill
    torch.manual_seed(3)
    patchgd.train_batch(fast, images, labels, fast_opt, k=1, inner_iterations=4, grad_accum=1,
                        generator=torch.Generator().manual_seed(2))
    assert not _grads_close(fast_opt.grads[0], plain_opt.grads[0])
