"""Patch grids and patch sampling (the paper's p, m×n, k and ζ).

Patches are views into the image tensor, never a Python loop over cells: an image (B, C, H, W) is
reshaped to (B, m, n, C, p, p) and cells are picked with tensor indexing. A lazily read batch (a
gigapixel image left in its tiled TIFF, ``tiled.LazyBatch``) is read at the same cells instead:
``read_patches`` is the one place that tells the two apart, so the fill of Z and Algorithm 1 run the
same code on both.
"""
from __future__ import annotations

import math

import torch

from ..errors import KitError


def grid_shape(image_size: int, patch_size: int) -> tuple[int, int]:
    """(m, n) for a square image of side M = N = image_size tiled by p × p patches, stride p."""
    if patch_size < 1 or patch_size > image_size:
        raise KitError(f"patch size {patch_size} must be between 1 and the image size {image_size}")
    if image_size % patch_size:
        raise KitError(f"image size {image_size} is not a multiple of the patch size {patch_size}; "
                       f"allowed patch sizes divide {image_size}")
    m = image_size // patch_size
    return m, m


def patches_per_iteration(sampling: float, num_cells: int) -> int:
    """k: patches sampled per image per inner iteration. "Sampling %" is k / (m·n), rounded down as
    in the paper ("at 512 px, 10% sampling leads to only one patch"), at least one."""
    if not 0 < sampling <= 1:
        raise KitError(f"sampling {sampling} must be in (0, 1] (a fraction of the {num_cells} patches)")
    return max(1, int(sampling * num_cells + 1e-9))


def inner_iterations(sampling: float, max_sampled: float, num_cells: int) -> int:
    """ζ: inner iterations per batch, so that ζ·k covers "Max Sampled %" of the m·n cells (rounded
    up: max sampled 100% visits every cell)."""
    k = patches_per_iteration(sampling, num_cells)  # checks sampling first
    if not 0 < max_sampled <= 1:
        raise KitError(f"max sampled {max_sampled} must be in (0, 1]")
    if max_sampled < sampling:
        raise KitError(f"max sampled {max_sampled} is below sampling {sampling}; it must be at least "
                       f"the sampling fraction")
    return max(1, math.ceil(max_sampled * num_cells / k - 1e-9))


def schedule_for(image_size: int, patch_size: int, sampling: float, max_sampled: float) -> tuple[int, int]:
    """(k, ζ) of a square image of side `image_size` tiled by patches of side `patch_size`."""
    m, n = grid_shape(image_size, patch_size)
    return patches_per_iteration(sampling, m * n), inner_iterations(sampling, max_sampled, m * n)


def patch_grid(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, m, n, C, p, p) as a view (no copy); [:, a, b] is patch x_ab."""
    b, c, h, w = images.shape
    m, n = h // patch_size, w // patch_size
    return images.view(b, c, m, patch_size, n, patch_size).permute(0, 2, 4, 1, 3, 5)


def patch_view(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, m·n, C, p, p); cell index a·n + b is patch x_ab. A copy of every patch:
    merging m and n cannot stay a view (the m stride is p·W, not n·p), so training paths index
    `patch_grid` and copy only the cells they pick."""
    grid = patch_grid(images, patch_size)
    b, m, n, c, p, _ = grid.shape
    return grid.reshape(b, m * n, c, p, p)


def read_patches(images, patch_size: int, image: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Patch x_ab of images[image] for each (image, a, b) index, as one batch (len, C, p, p).

    `images` is a tensor (B, C, H, W), indexed as a view (advanced indexing copies only the picked
    cells), or a lazy batch: any object with `.shape` (B, C, H, W), `.device` and
    `.patches(image, a, b, patch_size)` that reads just those patches (``tiled.LazyBatch``)."""
    if isinstance(images, torch.Tensor):
        return patch_grid(images, patch_size)[image, a, b]
    return images.patches(image, a, b, patch_size)


def gather_patches(images, patch_size: int, cells: torch.Tensor) -> torch.Tensor:
    """The patches at `cells` (B, k) of every image (a tensor or a lazy batch), as one batch (B·k, C, p, p)."""
    n = images.shape[3] // patch_size
    rows = torch.arange(images.shape[0], device=cells.device).unsqueeze(1).expand_as(cells)
    return read_patches(images, patch_size, rows.flatten(), (cells // n).flatten(), (cells % n).flatten())


def sample_schedule(batch_size: int, num_cells: int, k: int, zeta: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Cells to visit, (ζ, B, k): per image a random order of all cells without replacement, cut
    into ζ groups of k. When ζ·k exceeds m·n (k does not divide it) the last group is topped up
    with cells already visited, so every group keeps k cells."""
    order = torch.argsort(torch.rand(batch_size, num_cells, generator=generator), dim=1)
    need = zeta * k
    while order.shape[1] < need:
        extra = torch.argsort(torch.rand(batch_size, num_cells, generator=generator), dim=1)
        order = torch.cat([order, extra], dim=1)
    return order[:, :need].view(batch_size, zeta, k).transpose(0, 1).contiguous()
