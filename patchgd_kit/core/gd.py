"""Plain mini-batch gradient descent (the paper's GD and GD-extended baselines), and the precision
helpers that PatchGD's steps share with it."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """Mixed precision when `dtype` is set (fp16 on CUDA, bf16 on CPU), else a no-op context."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                optimizer: torch.optim.Optimizer, *, amp_dtype: torch.dtype | None = None,
                scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, int]:
    """One forward/backward over the whole images and one optimizer step: (detached loss, optimizer
    steps). The loss stays a tensor so that no step forces a device sync (or breaks under fake tensors)."""
    with autocast(images.device, amp_dtype):
        loss = nn.functional.cross_entropy(model(images), labels)
    backward(loss, scaler)
    optimizer_step(optimizer, scaler)
    return loss.detach(), 1


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    with autocast(images.device, amp_dtype):
        return model(images).float()
