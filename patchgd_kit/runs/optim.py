"""The optimizer and learning-rate schedule of every run and pretraining: Adam without weight decay
(the official code), the new layers and the pretrained trunk at their own lr, a linear warm-up then a
linear decay."""
from __future__ import annotations

from typing import Callable

import torch

from ..core.models import trunk_of
from .config import TrainConfig


def adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam as every run and pretraining uses it (no weight decay: the official code). On a CPU, the
    fused kernel: the same update, and one step over ResNet50's 25 M parameters took 12 ms against
    the default's 56 on 2 cores, where its forward and backward of 3 images at 64 px took 93
    (docs/cpu-scale.md §10; `benchmarks/bench_adam.py`). Elsewhere the default: the Adam whose memory
    the planner measures."""
    return torch.optim.Adam(params, lr=lr, fused=True if device.type == "cpu" else None)


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam without weight decay (the official code): the new layers at lr (group 0, the lr the
    metrics report), the pretrained trunk at lr × trunk_lr_scale (group 1)."""
    trunk = {id(p) for p in trunk_of(model, config.backbone).parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in trunk], "lr": config.lr},
              {"params": [p for p in model.parameters() if id(p) in trunk], "lr": config.lr * config.trunk_lr_scale}]
    return adam(groups, config.lr, device)


def lr_lambda(config: TrainConfig, batches_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up from 0 over `warmup_epochs`, then linear decay to `final_lr_fraction` of the
    peak at the end of training; one step per batch."""
    warm = config.warmup_epochs * batches_per_epoch
    total = config.epochs * batches_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return step / warm
        return 1 - (1 - config.final_lr_fraction) * (step - warm) / max(1, total - warm)
    return factor
