"""The training methods, one entry of ``METHODS`` each: how to build the model, train one batch and
predict. Everything above the core (training, the planner, tables, the CLI) reaches a method only
through its entry, so a new method (a baseline, a variant) is one entry here.

- ``gd``: plain mini-batch gradient descent on the whole image (the paper's GD).
- ``gd-extended``: GD with PatchGD's head on the backbone's feature map (the paper's GD-extended).
- ``patchgd``: Algorithm 1 (``patchgd.train_batch``) on a grid of patches; patch size, sampling,
  max sampled and ε apply to it alone (``Method.patches``).
- ``gd-checkpoint``, ``gd-downscaled``: GD with its trunk activation-checkpointed, GD on the image
  resized to ``downscaled_side`` (``alternatives``); ``streaming``: Streaming SGD through lightstream
  (``streaming``), BatchNorm frozen; ``gd-frozen-bn``: GD with BatchNorm frozen alike, its baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import alternatives, gd, patchgd, streaming
from .models import GDExtended, PatchGDModel, backbone_of, classifier_model
from ..errors import KitError


@dataclass(frozen=True)
class StepSettings:
    """What a training step or a prediction needs besides the model and the batch."""
    k: int | None = None                 # PatchGD: patches per image per inner iteration
    inner_iterations: int | None = None  # PatchGD: ζ
    grad_accum: int = 1                  # PatchGD: ε
    fill_chunk: int = 256                # PatchGD: patches per backbone call while filling Z
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    generator: torch.Generator | None = None  # PatchGD: the patch sampler's random stream
    input_side: int | None = None        # gd-downscaled: the side images are resized to
    # More than one process (training's `distributed`): through(f) runs f(model) as the DDP wrapper's
    # forward, defer_sync() holds its gradient all-reduce back, share = (rank, processes).
    through: Callable | None = None
    defer_sync: Callable | None = None
    share: tuple[int, int] = (0, 1)


@dataclass(frozen=True)
class Method:
    name: str
    label: str                 # as the paper's tables name it
    patches: bool              # trains on a patch grid (patch size, sampling, max sampled, ε apply)
    build: Callable[[str, int, int, int | None, str | None], nn.Module]  # backbone, classes, image, patch, weights
    train_batch: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.optim.Optimizer, StepSettings],
                          tuple[torch.Tensor, int]]  # → (detached loss, optimizer steps)
    predict: Callable[[nn.Module, torch.Tensor, StepSettings], torch.Tensor]  # → logits, fp32
    needs: tuple[str, ...] = ()  # TrainConfig fields the method cannot run without (checked by validate)


def _gd_step(model, images, labels, optimizer, s: StepSettings):
    if s.through is not None:  # the forward through the DDP wrapper, which reduces the gradients in backward
        through = s.through
        model = lambda x: through(lambda net: net(x))  # noqa: E731
    return gd.train_batch(model, images, labels, optimizer, amp_dtype=s.amp_dtype, scaler=s.scaler)


def _gd_predict(model, images, s: StepSettings):
    return gd.predict(model, images, amp_dtype=s.amp_dtype)


def _downscaled_step(model, images, labels, optimizer, s: StepSettings):
    return _gd_step(model, alternatives.downscale(images, s.input_side), labels, optimizer, s)


def _downscaled_predict(model, images, s: StepSettings):
    return _gd_predict(model, alternatives.downscale(images, s.input_side), s)


def _streaming_step(model, images, labels, optimizer, s: StepSettings):
    if s.through is not None:
        raise KitError("streaming trains in one process: its trunk's gradients are not all-reduced")
    return streaming.train_batch(model, images, labels, optimizer, amp_dtype=s.amp_dtype, scaler=s.scaler)


def _streaming_predict(model, images, s: StepSettings):
    return streaming.predict(model, images, amp_dtype=s.amp_dtype)


def _patchgd_step(model, images, labels, optimizer, s: StepSettings):
    return patchgd.train_batch(model, images, labels, optimizer, k=s.k, inner_iterations=s.inner_iterations,
                               grad_accum=s.grad_accum, generator=s.generator, fill_chunk=s.fill_chunk,
                               amp_dtype=s.amp_dtype, scaler=s.scaler, through=s.through,
                               defer_sync=s.defer_sync, share=s.share)


def _patchgd_predict(model, images, s: StepSettings):
    return patchgd.predict(model, images, fill_chunk=s.fill_chunk, amp_dtype=s.amp_dtype)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gd", "GD", False, lambda backbone, classes, image, patch, weights: classifier_model(backbone, classes, weights),
           _gd_step, _gd_predict),
    Method("gd-extended", "GD-extended", False,
           lambda backbone, classes, image, patch, weights: GDExtended(backbone, classes, image, weights),
           _gd_step, _gd_predict),
    Method("patchgd", "PatchGD", True,
           lambda backbone, classes, image, patch, weights: PatchGDModel(backbone, classes, image, patch, weights=weights),
           _patchgd_step, _patchgd_predict),
    Method("gd-checkpoint", "GD-checkpoint", False,
           lambda backbone, classes, image, patch, weights: alternatives.checkpointed_classifier(backbone, classes,
                                                                                                 weights),
           _gd_step, _gd_predict),
    Method("gd-downscaled", "GD-downscaled", False,
           lambda backbone, classes, image, patch, weights: classifier_model(backbone, classes, weights),
           _downscaled_step, _downscaled_predict, needs=("downscaled_side",)),
    Method("streaming", "Streaming SGD", False,
           lambda backbone, classes, image, patch, weights: streaming.build(backbone, classes, image, weights),
           _streaming_step, _streaming_predict),
    Method("gd-frozen-bn", "GD, BatchNorm frozen", False,
           lambda backbone, classes, image, patch, weights: streaming.frozen_bn_classifier(backbone, classes, weights),
           _gd_step, _gd_predict),
)}


def method_of(name: str) -> Method:
    if name not in METHODS:
        raise KitError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def uses_patches(name: str) -> bool:
    """True for a method trained on a patch grid (PatchGD): patch size, sampling and ε apply."""
    return method_of(name).patches


def build_model(method: str, backbone: str, num_classes: int, image_size: int,
                patch_size: int | None = None, weights: str | None = None) -> nn.Module:
    """The model of a method around a torchvision backbone, its classifier or head set to the classes."""
    spec = method_of(method)
    backbone_of(backbone)
    if num_classes < 2:
        raise KitError(f"num_classes {num_classes} must be at least 2")
    if spec.patches and patch_size is None:
        raise KitError(f"{spec.label} needs a patch size")
    return spec.build(backbone, num_classes, image_size, patch_size if spec.patches else None, weights)
