"""GD's memory-saving alternatives to PatchGD, each a method of ``methods.METHODS``:

- ``gd-checkpoint``: plain GD whose trunk is activation-checkpointed: exact gradients, less memory,
  one extra forward of the trunk per step.
- ``gd-downscaled``: GD on the image resized (area interpolation) to a smaller side: GD's memory at
  a smaller image, at the price of the detail the resize throws away.

(``streaming``, Streaming SGD through lightstream, is in ``streaming``.)
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .models import backbone_of, classifier_model
from ..errors import KitError


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module):
    """BatchNorm layers that normalise as in training but leave their running statistics alone:
    the recomputation in backward must not count the batch a second time."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    tracked = [m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in zip(norms, momenta, tracked):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


class CheckpointedSequential(nn.Sequential):
    """An nn.Sequential stage whose forward, when gradients are wanted, keeps only the inputs of
    ⌈√n⌉ segments of its n blocks and recomputes each segment in backward (Chen et al. 2016: √n
    segments hold O(√n) activations for one extra forward). Same children, same state-dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and self.training and len(self) > 1):
            return super().forward(x)
        blocks = list(self)
        size = math.ceil(len(blocks) / math.ceil(math.sqrt(len(blocks))))
        segments = [nn.Sequential(*blocks[start:start + size]) for start in range(0, len(blocks), size)]
        # As checkpoint_sequential (which takes no context_fn): every segment but the last, whose
        # backward comes first, keeps only its input.
        for segment in segments[:-1]:
            x = checkpoint(segment, x, use_reentrant=False,
                           context_fn=lambda seg=segment: (contextlib.nullcontext(), _frozen_running_stats(seg)))
        return segments[-1](x)


def checkpointed_classifier(backbone: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """GD's model (the torchvision classifier) with each stage of its trunk checkpointed.

    Segments: the backbone's ``stages`` (ResNet50: layer1-layer4, the residual stages, each a
    Sequential of 3-6 bottlenecks; MobileNetV2: ``features``, its 19 blocks). A stage's blocks are
    cut into ⌈√n⌉ segments: ResNet50 keeps 2-3 block inputs per stage instead of every activation
    inside its bottlenecks, MobileNetV2 5 of its 19. The stem (ResNet's conv1 to maxpool) and the
    classifier stay as they are: one conv and a pool, cheap to keep. The class of each stage is
    swapped in place, so the state dict, the trunk (``models.trunk_of``) and weights files are GD's."""
    model = classifier_model(backbone, num_classes, weights)
    for stage in backbone_of(backbone).stages(model):
        stage.__class__ = CheckpointedSequential
    return model


def downscale(images: torch.Tensor, side: int | None) -> torch.Tensor:
    """Images resized to side × side by area interpolation (each output pixel the mean of the input
    pixels it covers: the resize that keeps the most of small details)."""
    if side is None:
        raise KitError("gd-downscaled needs the side to resize images to (--downscaled-side)")
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    if side > min(images.shape[-2:]):
        raise KitError(f"downscaled side {side} must not exceed the image side {images.shape[-1]}")
    return F.interpolate(images, size=(side, side), mode="area")
