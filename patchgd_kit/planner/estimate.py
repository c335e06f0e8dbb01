"""The planner's estimate (SPEC §4): the peak GPU memory of one training step, without allocating it.

The method's own training step (``methods.METHODS``) runs on fake tensors (shapes and dtypes, no data)
while ``bytecount`` adds up the live tensor storages in CUDA's 512-byte blocks: the quantity
`torch.cuda.max_memory_allocated` reports. For PatchGD the step is the fill of Z and one inner iteration of k
patches per image (two when gradients accumulate, so that the second runs with the first one's gradients alive).
Adam's moments exist before the step, as from the second step on.

The fake tensors are CPU tensors: fake CUDA tensors run forward but fail in backward on a torch built without
CUDA. Where CUDA differs in memory, the step does as CUDA does: Adam's foreach implementation (its default on
CUDA), fp16 autocast for AMP. The estimate does not see cuDNN workspaces and the allocator's fragmentation (the
margin, ``budget``, covers them), the GradScaler's few scalars, nor the copy of the input that channels_last may make.

If the fake-tensor estimate fails (an operator without a fake kernel, a PyTorch that moved the private APIs
``bytecount`` uses), a rougher fallback runs the same step on meta tensors and adds up what autograd saves for
backward, plus parameters, gradients, Adam's moments and the inputs; it warns.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..core.methods import StepSettings, build_model, method_of, uses_patches
from ..core.patches import grid_shape
from ..errors import KitError
from .bytecount import LiveBytes, fake_mode


class Estimate(NamedTuple):
    peak_bytes: int
    estimator: str  # "fake-tensor", or "saved-tensors" when the fallback was used


@dataclass(frozen=True)
class Step:
    """One training step to estimate (hashable: estimates are cached per step)."""
    method: str
    backbone: str
    image_size: int
    batch_size: int
    patch_size: int | None
    k: int | None
    amp: bool
    num_classes: int
    inner_iterations: int  # 1, or 2 with gradient accumulation (ε ≥ 2)
    fill_chunk: int
    input_side: int | None = None  # gd-downscaled: the side the step resizes images to
    lazy: bool = False  # PatchGD on a tiled image read a patch at a time: the image is not an input

    @property
    def model_args(self) -> tuple:
        """build_model's arguments."""
        return self.method, self.backbone, self.num_classes, self.image_size, self.patch_size


class MadePatches:
    """The planner's lazy batch (``patches.read_patches``): patches are made as they are asked for, as a
    tiled image's are read, so the step holds Z, the patches in flight and their work, never the image."""

    def __init__(self, batch_size: int, image_size: int):
        self.shape = torch.Size((batch_size, 3, image_size, image_size))
        self.device = torch.device("cpu")

    def patches(self, image: torch.Tensor, a: torch.Tensor, b: torch.Tensor, patch_size: int) -> torch.Tensor:
        return torch.randn(len(image), 3, patch_size, patch_size)


def step_inputs(step: Step) -> tuple[torch.Tensor | MadePatches, torch.Tensor]:
    images = (MadePatches(step.batch_size, step.image_size) if step.lazy
              else torch.randn(step.batch_size, 3, step.image_size, step.image_size))
    return images, torch.zeros(step.batch_size, dtype=torch.long)


def _tensors(*values) -> list[torch.Tensor]:
    """The tensors among a step's inputs (a lazy batch holds none)."""
    return [v for v in values if isinstance(v, torch.Tensor)]


def run_step(step: Step, model, optimizer, images, labels, amp_dtype) -> None:
    """The method's real training step (the scaler is left out: its memory is a few scalars); with
    two inner iterations their gradients accumulate (ε = 2)."""
    settings = StepSettings(k=step.k, inner_iterations=step.inner_iterations, grad_accum=step.inner_iterations,
                            fill_chunk=step.fill_chunk, amp_dtype=amp_dtype, input_side=step.input_side)
    method_of(step.method).train_batch(model, images, labels, optimizer, settings)


def primed_model(model_args: tuple):
    """A model and its Adam with the moments made, as from the second step of training on."""
    model = build_model(*model_args)
    optimizer = torch.optim.Adam(model.parameters(), foreach=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def step_peak(step: Step, model, optimizer) -> int:
    """Peak live bytes of one step, counting the model, Adam's moments and the inputs."""
    images, labels = step_inputs(step)
    optimizer.zero_grad(set_to_none=True)  # an estimate that failed midway may have left gradients
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    with LiveBytes(*model.parameters(), *model.buffers(), *state, *_tensors(images, labels)) as live:
        run_step(step, model, optimizer, images, labels, torch.float16 if step.amp else None)
    return live.peak


@functools.lru_cache(maxsize=8)
def _fake_model(model_args: tuple):
    """A primed fake model, shared by the estimates of one model: a step leaves it as it found it."""
    with fake_mode():
        return primed_model(model_args)


def _fake_tensor_peak(step: Step) -> int:
    model, optimizer = _fake_model(step.model_args)
    with fake_mode():
        return step_peak(step, model, optimizer)


def _saved_tensor_peak(step: Step) -> int:
    """Fallback, public APIs only: parameters, gradients, Adam's two moments, buffers and inputs,
    plus the bytes autograd saves for backward in one step. It misses transients (the fill's
    activations, backward's temporaries) and, on meta tensors, autocast: fp32 throughout."""
    with torch.device("meta"):
        # SGD with lr 0 stands in for Adam: Adam's step reads its step count with .item(), which
        # meta tensors cannot do; Adam's moments are counted below.
        model = build_model(*step.model_args)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        images, labels = step_inputs(step)
        # Storages by id (views share one); the dicts hold them, so no id is reused.
        persistent = {id(s): s for s in (t.untyped_storage() for t in (*model.parameters(), *model.buffers(),
                                                                        *_tensors(images, labels)))}
        saved = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if id(storage) not in persistent:
                saved[id(storage)] = storage
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run_step(dataclasses.replace(step, inner_iterations=1), model, optimizer, images, labels, None)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return sum(s.nbytes() for s in (*persistent.values(), *saved.values())) + 3 * param_bytes


class BatchCannotTrain(KitError):
    """The step itself refuses the batch: BatchNorm in training needs more than one value per
    channel, which a batch of 1 lacks where a feature map is 1x1 (PatchGD's head on a 2x2 grid)."""


@functools.lru_cache(maxsize=None)
def _estimate(step: Step) -> Estimate | BatchCannotTrain:
    """The estimate, or the refusal of a batch (cached too: the planner asks about batch 1 often)."""
    try:
        return Estimate(_fake_tensor_peak(step), "fake-tensor")
    except KitError:
        raise
    except Exception as exc:
        if isinstance(exc, ValueError) and "more than 1 value per channel" in str(exc):
            return BatchCannotTrain(f"batch size {step.batch_size} cannot train {step.method} {step.backbone} at "
                                    f"{step.image_size} px ({exc}); allowed: a larger batch")
        # An operator without a fake kernel, or private APIs that changed.
        warnings.warn(f"memory estimate on fake tensors failed for {step.method} {step.backbone} at "
                      f"{step.image_size} px ({type(exc).__name__}: {exc}); falling back to saved-tensor "
                      f"accounting, which is rougher (no transients, fp32)", stacklevel=3)
    try:
        return Estimate(_saved_tensor_peak(step), "saved-tensors")
    except Exception as exc:
        raise KitError(f"cannot estimate the memory of {step.method} {step.backbone} at {step.image_size} px: "
                       f"{type(exc).__name__}: {exc}") from exc


def clear_caches() -> None:
    """Forget every cached estimate and fake model (after the estimator itself changed)."""
    for cache in (_estimate, _fake_model, fake_mode):
        cache.cache_clear()


def check_patchgd(image_size: int, patch_size: int | None, k: int | None) -> int:
    """The number of patch cells m·n, after checking the patch size and k."""
    if patch_size is None:
        raise KitError("PatchGD needs a patch size")
    m, n = grid_shape(image_size, patch_size)
    if k is not None and not 1 <= k <= m * n:
        raise KitError(f"k = {k} patches per image must be between 1 and the {m * n} patches of the grid")
    return m * n


def estimate_peak(method: str, backbone: str, image_size: int, batch_size: int, *, patch_size: int | None = None,
                  k: int | None = None, amp: bool = False, num_classes: int = 10, grad_accum: int = 1,
                  fill_chunk: int = 256, input_side: int | None = None, lazy: bool = False) -> Estimate:
    """Estimated peak GPU memory (bytes allocated) of one training step: forward, backward and the
    Adam step; for PatchGD the fill of Z and an inner iteration of `k` patches per image. `amp`:
    fp16 autocast. `lazy`: PatchGD on images read a patch at a time (``tiled``), so the image itself
    is not in memory: Z, the patches in flight and the per-patch work only. Cached in-process; the
    first estimate of a step takes about 0.5-5 s on a CPU."""
    patches = uses_patches(method)
    if lazy and not patches:
        raise KitError(f"{method} needs whole images; lazy (images read a patch at a time) applies to patchgd only")
    if patches:
        check_patchgd(image_size, patch_size, k)
        if k is None:
            raise KitError("PatchGD needs k, the patches per image per inner iteration")
    else:
        patch_size = k = None
    for name, value in (("batch size", batch_size), ("grad accumulation", grad_accum), ("fill chunk", fill_chunk),
                        ("image size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise KitError(f"{name} {value!r} must be a positive integer")
    # Only ε ≥ 2 changes the peak (gradients stay alive into the next inner iteration), not its size.
    inner = 2 if patches and grad_accum >= 2 else 1
    result = _estimate(Step(method, backbone, image_size, batch_size, patch_size, k, bool(amp), num_classes,
                             inner, fill_chunk, input_side, bool(lazy)))
    if isinstance(result, BatchCannotTrain):
        raise result
    return result
