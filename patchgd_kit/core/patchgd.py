"""Patch Gradient Descent: Algorithm 2 (Z-filling) and Algorithm 1 (one training batch).

Notation as in the paper: images X (B, C, M, N), patch size p, grid m×n, backbone f_θ1, head g_θ2,
latent block Z (B, s, m, n), k patches per image per inner iteration, ζ inner iterations, gradient
accumulation over ε inner iterations.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from .gd import autocast, backward, optimizer_step
from .patches import gather_patches, read_patches, sample_schedule


@torch.no_grad()
def fill_z(backbone: nn.Module, images, patch_size: int, *, chunk: int = 256,
           amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Algorithm 2: every patch x_ab through f_θ1 without gradient, written to Z[:, :, a, b].

    `images` is a tensor (B, C, M, N) or a lazy batch (``patches.read_patches``). Patches are read and
    go through the backbone `chunk` at a time, so memory stays bounded for any image size. Returns
    Z (B, s, m, n) in fp32.
    """
    b, _, h, w = images.shape
    m, n = h // patch_size, w // patch_size
    cell = torch.arange(b * m * n, device=images.device)
    outputs = []
    with autocast(images.device, amp_dtype):
        for start in range(0, b * m * n, chunk):
            # Per chunk: flattening B with the cells would copy (or read) every image at once.
            idx = cell[start:start + chunk]
            image, ab = idx // (m * n), idx % (m * n)
            outputs.append(backbone(read_patches(images, patch_size, image, ab // n, ab % n)).float())
    z = torch.cat(outputs)  # (B·m·n, s), cell order a·n + b within each image
    return z.view(b, m * n, -1).transpose(1, 2).reshape(b, -1, m, n)


def train_batch(model: nn.Module, images, labels: torch.Tensor,
                optimizer: torch.optim.Optimizer, *, k: int, inner_iterations: int, grad_accum: int,
                generator: torch.Generator | None = None, fill_chunk: int = 256,
                amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                through: Callable | None = None, defer_sync: Callable | None = None,
                share: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, int]:
    """Algorithm 1 on one batch. Returns (mean loss over the inner iterations, a detached tensor;
    optimizer steps). `images`: a tensor (B, C, M, N) or a lazy batch, whose fill reads every patch
    chunk by chunk and whose inner iterations read only their k sampled patches per image.

    `model` has `.backbone` (f_θ1), `.head` (g_θ2) and `.patch_size`. An optimizer step follows
    every ε = `grad_accum` inner iterations with the gradients averaged over them; when ε does not
    divide ζ the last, shorter group is averaged over its own length.

    More than one process (`distributed`): `through(f)` runs f(model) as the forward of the DDP
    wrapper, so that DDP sees every backward of an inner iteration (fill_z, without gradient, needs
    no wrapper); `defer_sync()` (DDP's no_sync) keeps the gradients local in the inner iterations
    of an ε group but its last: the step needs only the group's sum, so they are all-reduced once
    per optimizer step, not ε times. `share` = (rank, processes): the schedule is drawn for the
    global batch and this process takes its images' rows, so the cells do not depend on the split.
    """
    p, zeta, eps = model.patch_size, inner_iterations, grad_accum
    batch, (m, n) = images.shape[0], model.grid
    z = fill_z(model.backbone, images, p, chunk=fill_chunk, amp_dtype=amp_dtype).flatten(2)  # (B, s, m·n)
    s = z.shape[1]
    rank, processes = share
    schedule = sample_schedule(batch * processes, m * n, k, zeta, generator)  # (ζ, B, k) of the global batch
    schedule = schedule[:, rank * batch:(rank + 1) * batch].to(images.device)
    optimizer.zero_grad(set_to_none=True)
    losses, steps = [], 0
    for j in range(1, zeta + 1):
        cells = schedule[j - 1]                                            # positions v, (B, k)
        index = cells.unsqueeze(1).expand(batch, s, k)

        def inner_iteration(net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            with autocast(images.device, amp_dtype):
                z_new = net.backbone(gather_patches(images, p, cells))      # f_θ1(P_X,j), with grad
                z_new = z_new.float().view(batch, k, s).transpose(1, 2)    # (B, s, k)
                # Z[v] = z: out of place, so gradient reaches θ1 only through the replaced cells.
                z_prime = z.scatter(2, index, z_new)
                loss = nn.functional.cross_entropy(net.head(z_prime.view(batch, s, m, n)), labels)
            return loss, z_new

        group_start = (j - 1) // eps * eps
        group_size = min(eps, zeta - group_start)
        last = j - group_start == group_size
        with contextlib.nullcontext() if last or defer_sync is None else defer_sync():
            loss, z_new = through(inner_iteration) if through else inner_iteration(model)
            backward(loss / group_size, scaler)  # U += dL/dθ / ε: the average over the group
        z.scatter_(2, index, z_new.detach())  # later inner iterations see the new cells as constants
        losses.append(loss.detach())
        if last:
            optimizer_step(optimizer, scaler)
            steps += 1
    return torch.stack(losses).mean(), steps


@torch.no_grad()
def predict(model: nn.Module, images, *, fill_chunk: int = 256,
            amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Inference: g_θ2(fill(X))."""
    z = fill_z(model.backbone, images, model.patch_size, chunk=fill_chunk, amp_dtype=amp_dtype)
    with autocast(images.device, amp_dtype):
        return model.head(z).float()
