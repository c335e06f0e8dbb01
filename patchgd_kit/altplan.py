"""The planner's part for PatchGD's alternatives (issue #14): the side a downscaled GD gets under a
budget, so that it trains the same batch as PatchGD there."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import KitError
from .memory import BatchCannotTrain, estimate_peak, parse_budget, plan, usable_bytes
from .models import backbone_of
from .patches import patches_per_iteration


@dataclass(frozen=True)
class DownscaledSide:
    side: int                # the largest side (a multiple of the backbone's stride) that fits
    batch_size: int          # PatchGD's planned batch under the budget, which gd-downscaled trains
    estimated_peak_bytes: int


def downscaled_side_for(backbone: str, image_size: int, budget: int | str, *, patch_size: int, sampling: float,
                        amp: bool = False, num_classes: int = 10, grad_accum: int = 1,
                        fill_chunk: int = 256) -> DownscaledSide:
    """The largest side, a multiple of the backbone's stride up to the image side, at which
    gd-downscaled fits PatchGD's planned batch for the same budget: the two then train the same
    number of images per step in the same memory, one on every pixel in patches, one on fewer
    pixels whole. Memory grows with the side, so a bisection over the sides finds it."""
    batch = plan("patchgd", backbone, image_size, budget, patch_size=patch_size, sampling=sampling, amp=amp,
                 num_classes=num_classes, grad_accum=grad_accum, fill_chunk=fill_chunk).batch_size
    usable = usable_bytes(parse_budget(budget))
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
    GD and gd-checkpoint on the whole image, gd-downscaled at `downscaled_side` (its full-size input
    still grows), PatchGD with patches of `patch_size` and `sampling` of them per inner iteration (k
    and Z grow with the grid). A step that cannot train a batch of `batch_size` is left out."""
    rows = []
    for side in sides:
        k = patches_per_iteration(sampling, (side // patch_size) ** 2)
        extra = {"gd": {}, "gd-checkpoint": {}, "gd-downscaled": {"input_side": min(downscaled_side, side)},
                 "patchgd": {"patch_size": patch_size, "k": k}}
        for method, args in extra.items():
            try:
                peak = estimate_peak(method, backbone, side, batch_size, amp=amp, num_classes=num_classes,
                                     **args).peak_bytes
            except BatchCannotTrain:  # e.g. a BatchNorm that sees one value per channel
                continue
            rows.append({"side": side, "method": method, "precision": "fp16" if amp else "fp32",
                         "peak_bytes": peak})
    return rows
