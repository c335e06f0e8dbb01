"""The planner's part for PatchGD's alternatives: the side a downscaled GD gets under a
budget, so that it trains the same batch as PatchGD there; Streaming SGD's peak and plan,
which fake tensors cannot trace whole (lightstream's statistics call nonzero and numpy)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..core import streaming
from ..core.models import backbone_of
from ..core.patches import patches_per_iteration
from ..errors import KitError
from .budget import Plan, format_bytes, parse_budget, plan, usable_bytes
from .estimate import BatchCannotTrain, estimate_peak

FP32 = 4


@dataclass(frozen=True)
class DownscaledSide:
    side: int                # the largest side (a multiple of the backbone's stride) that fits
    batch_size: int          # PatchGD's planned batch under the budget, which gd-downscaled trains
    estimated_peak_bytes: int


def downscaled_side_for(backbone: str, image_size: int, budget: int | str, *, patch_size: int, sampling: float,
                        amp: bool = False, num_classes: int = 10, grad_accum: int = 1,
                        fill_chunk: int = 256, device: str = "cuda") -> DownscaledSide:
    """The largest side, a multiple of the backbone's stride up to the image side, at which
    gd-downscaled fits PatchGD's planned batch for the same budget: the two then train the same
    number of images per step in the same memory, one on every pixel in patches, one on fewer
    pixels whole. Memory grows with the side, so a bisection over the sides finds it."""
    batch = plan("patchgd", backbone, image_size, budget, patch_size=patch_size, sampling=sampling, amp=amp,
                 num_classes=num_classes, grad_accum=grad_accum, fill_chunk=fill_chunk, device=device).batch_size
    usable = usable_bytes(parse_budget(budget), device)
    stride = backbone_of(backbone).stride

    def peak(side: int) -> int:
        return estimate_peak("gd-downscaled", backbone, image_size, batch, amp=amp, num_classes=num_classes,
                             input_side=side).peak_bytes

    low, high = 1, image_size // stride  # in strides
    if peak(low * stride) > usable:
        raise KitError(f"gd-downscaled cannot fit PatchGD's batch {batch} under {budget} even at "
                       f"{low * stride} px: the full-size inputs alone take most of it")
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if peak(mid * stride) <= usable else (low, mid - 1)
    return DownscaledSide(low * stride, batch, peak(low * stride))


def memory_by_side(backbone: str, sides: tuple[int, ...], *, amp: bool = False, batch_size: int = 1,
                   patch_size: int = 256, sampling: float = 0.1, downscaled_side: int = 512,
                   num_classes: int = 10) -> list[dict]:
    """The estimated peak of one training step of every method at each image side (one row each):
    streaming where a tile fits the image (``streaming_peak``), GD and gd-checkpoint on the whole image,
    gd-downscaled at `downscaled_side` (its full-size input still grows), PatchGD with patches of
    `patch_size` and `sampling` of them per inner iteration (k and Z grow with the grid). A step that cannot train a batch of `batch_size` is left out."""
    rows = []
    for side in sides:
        k = patches_per_iteration(sampling, (side // patch_size) ** 2)
        extra = {"gd": {}, "gd-checkpoint": {}, "gd-downscaled": {"input_side": min(downscaled_side, side)},
                 "patchgd": {"patch_size": patch_size, "k": k}}
        try:
            rows.append({"side": side, "method": "streaming", "precision": "fp16" if amp else "fp32",
                         "peak_bytes": streaming_peak(backbone, side, batch_size, amp=amp, num_classes=num_classes)})
        except KitError:  # an image smaller than the smallest usable tile: streaming cannot apply
            pass
        for method, args in extra.items():
            try:
                peak = estimate_peak(method, backbone, side, batch_size, amp=amp, num_classes=num_classes,
                                     **args).peak_bytes
            except BatchCannotTrain:  # e.g. a BatchNorm that sees one value per channel
                continue
            rows.append({"side": side, "method": method, "precision": "fp16" if amp else "fp32",
                         "peak_bytes": peak})
    return rows


def _map_channels(backbone: str) -> int:
    with torch.device("meta"):  # the architecture only: no weights allocated
        model = backbone_of(backbone).constructor(weights=None)
    return backbone_of(backbone).channels(model)


def streaming_peak(backbone: str, image_size: int, batch_size: int, *, amp: bool = False, num_classes: int = 10,
                   tile_size: int | None = None) -> int:
    """Estimated peak of one Streaming SGD step (``streaming.train_batch``): GD's step on one tile,
    fake-tensor traced (the tile's re-forward with autograd, the weights, their gradients and Adam's
    moments, the head), plus per image what stays whole: the image, the trunk's output map and that
    map's gradient (fp32: lightstream keeps the map in the module's dtype). The tile forward without
    autograd holds less than the re-forward, so it does not set the peak."""
    tile = tile_size or streaming.tile_for(backbone, image_size)
    streaming.check_tile(backbone, tile)
    stride = backbone_of(backbone).stride
    tile_step = estimate_peak("gd", backbone, tile, 1, amp=amp, num_classes=num_classes).peak_bytes
    side = -(-image_size // stride)
    per_image = 3 * image_size**2 * FP32 + 2 * _map_channels(backbone) * side**2 * FP32
    return tile_step + batch_size * per_image


def streaming_plan(backbone: str, image_size: int, budget: int | str, *, batch_size: int | None = None,
                   amp: bool = False, num_classes: int = 10) -> Plan:
    """The largest batch of Streaming SGD under `budget` (its peak is affine in the batch: images are
    streamed one at a time, so only their inputs and maps add up), or a given batch checked."""
    budget_bytes = parse_budget(budget)
    usable = usable_bytes(budget_bytes)
    peak = functools.partial(streaming_peak, backbone, image_size, amp=amp, num_classes=num_classes)
    base, per_image = peak(0), peak(1) - peak(0)
    largest = (usable - base) // per_image
    config = f"streaming {backbone} at {image_size} px (tile {streaming.tile_for(backbone, image_size)})"
    if largest < (batch_size or 1):
        raise KitError(f"memory budget {format_bytes(budget_bytes)} cannot hold {config} at batch size "
                       f"{batch_size or 1}: it needs an estimated {format_bytes(peak(batch_size or 1))}, "
                       f"{format_bytes(usable)} is usable")
    chosen = batch_size or largest
    return Plan("streaming", backbone, image_size, None, bool(amp), num_classes, 1, 256, budget_bytes,
                budget_bytes - usable, chosen, None, "" if batch_size else "batch_size", peak(chosen),
                None if batch_size else peak(chosen + 1),
                f"tile {streaming.tile_for(backbone, image_size)} px traced (fake-tensor) + whole maps")
