"""A training run's settings (``TrainConfig``), their checks, and the device choices derived from them.

Each field carries its help text: the CLI's `train` options are built from these fields, so a new
field is one line here. ``key()`` is what defines a run's result (the store hashes it); fields added
after the first version are left out of it at their default, so adding a field orphans no stored run.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from ..core.methods import METHODS, method_of, uses_patches
from ..core.models import BACKBONES
from ..core.patches import grid_shape, schedule_for
from ..data.digits import MAX_IMAGE_SIZE, MAX_TILED_IMAGE_SIZE
from ..errors import KitError, check_int, check_number

MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which train() calls, takes no more
# Bounds on what one command may be asked to do, so that no input runs for ever.
MAX_EPOCHS = 10_000  # the paper trains 100
# Patches per image: the README's 65,536 px image at patch 256 plans in about 3 minutes, the fake-tensor
# trace growing by about 1 ms a patch; a fill of more would take days on a CPU.
MAX_PATCHES = 2**16
MAX_BUDGET_BYTES = 2**40  # 1 TiB: more than any one GPU holds


def _field(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    method: str = _field("patchgd", " | ".join(METHODS))
    backbone: str = _field("resnet50", " | ".join(BACKBONES) + " (torchvision)")
    data: str = _field("data/ultramnist", "dataset folder with train/ and test/ (from `generate`)")
    image_size: int = _field(512, "image side in px; must match the data")
    patch_size: int | None = _field(256, "PatchGD patch side p; divides the image size")
    sampling: float = _field(0.25, "PatchGD: fraction of the m·n patches sampled per image per inner iteration "
                                   "(k = floor(f·m·n), at least 1)")
    max_sampled: float = _field(1.0, "PatchGD: fraction of the patches visited per batch; sets the inner "
                                     "iterations ζ = ceil(max·m·n / k)")
    grad_accum: int = _field(1, "PatchGD: ε, inner iterations per optimizer step (gradients averaged), 1..ζ")
    epochs: int = _field(100, "epochs (paper: 100)")
    batch_size: int | None = _field(16, "images per batch (None: planned from the memory budget)")
    memory_budget: str | None = _field(None, "plan the batch for a GPU memory budget such as 4GB, and enforce "
                                             "it on CUDA")
    seed: int = _field(0, "random seed (init, data order, patch sampling)")
    device: str = _field("auto", "auto | cpu | cuda")
    amp: bool = _field(False, "mixed precision: fp16 with loss scaling on CUDA, bf16 on a CPU with native bf16 (else fp32)")
    lr: float = _field(1e-3, "peak learning rate of Adam (paper: 1e-3)")
    trunk_lr_scale: float = _field(1.0, "the pretrained trunk's lr is lr times this, in (0, 1] (paper: 1, one "
                                        "lr for all)")
    warmup_epochs: float = _field(2.0, "linear warm-up from 0 (paper: 2)")
    final_lr_fraction: float = _field(0.5, "linear decay to this fraction of the peak lr (Appendix C: half)")
    weights: str | None = _field(None, "backbone init: none (default), imagenet (download), or a local "
                                       "state-dict file")
    num_classes: int = _field(10, "classes of the data (UltraMNIST 10, PANDA 6)")
    fill_chunk: int = _field(256, "patches per backbone call while filling Z")
    channels_last: str = _field("auto", "auto | on | off (auto: measured choice per backbone)")
    workers: int = _field(0, "DataLoader worker processes")
    sync_bn: bool = _field(False, "under torchrun on CUDA: SyncBatchNorm, batch statistics over every process's "
                                  "images (for small per-GPU batches, such as under a 4 GB budget)")
    downscaled_side: int | None = _field(None, "gd-downscaled: side in px the images are resized to (area "
                                               "interpolation); altplan.downscaled_side_for plans it")

    def validate(self) -> None:
        if self.method not in METHODS:
            raise KitError(f"unknown method {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.backbone not in BACKBONES:
            raise KitError(f"unknown backbone {self.backbone!r}; allowed: {', '.join(BACKBONES)}")
        for name in ("image_size", "fill_chunk"):
            check_int(name.replace("_", " "), getattr(self, name), 1)
        check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        check_int("num classes", self.num_classes, 2)
        check_int("seed", self.seed, 0, MAX_SEED)
        # More worker processes than cores only add memory: each one keeps its own image cache.
        check_int("workers", self.workers, 0, os.cpu_count() or 1)
        if self.batch_size is None and self.memory_budget is None:
            raise KitError("give a batch size or a memory budget")
        if self.batch_size is not None:
            check_int("batch size", self.batch_size, 1)
        if self.memory_budget is not None:
            check_budget(self.memory_budget)
        validate_device(self.device)
        if self.channels_last not in ("auto", "on", "off"):
            raise KitError(f"channels_last {self.channels_last!r} is not one of auto, on, off")
        check_number("lr", self.lr, "a number in (0, 1] (paper: 1e-3)", lambda v: 0 < v <= 1)
        check_number("warm-up epochs", self.warmup_epochs, "a number >= 0 (paper: 2)", lambda v: v >= 0)
        check_number("final lr fraction", self.final_lr_fraction, "a number in (0, 1]", lambda v: 0 < v <= 1)
        check_number("trunk lr scale", self.trunk_lr_scale, "a number in (0, 1] (paper: 1)", lambda v: 0 < v <= 1)
        for name in method_of(self.method).needs:
            if getattr(self, name) is None:
                raise KitError(f"{self.method} needs --{name.replace('_', '-')}")
        if self.downscaled_side is not None:
            check_int("downscaled side", self.downscaled_side, 1, self.image_size)
        if uses_patches(self.method):
            if self.patch_size is None:
                raise KitError("PatchGD needs --patch-size")
            check_patches(self.image_size, self.patch_size)
            zeta = self.schedule()[1]
            if not 1 <= self.grad_accum <= zeta:
                raise KitError(f"grad accumulation ε = {self.grad_accum} must be between 1 and the "
                               f"number of inner iterations ζ = {zeta}")

    def schedule(self) -> tuple[int, int] | tuple[None, None]:
        """(k, ζ) of a patch method; (None, None) for the others."""
        if not uses_patches(self.method):
            return None, None
        return schedule_for(self.image_size, self.patch_size, self.sampling, self.max_sampled)

    def key(self) -> dict:
        """What defines the run's result: everything except where to find things (workers). Fields
        added after the first version are left out at their default; the patch fields of methods
        without patches are left out."""
        d = dataclasses.asdict(self)
        d.pop("workers")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in set(d) - FIRST_VERSION_FIELDS:
            if d[name] == defaults[name]:
                d.pop(name)
        if not uses_patches(self.method):
            for name in PATCH_FIELDS:
                d.pop(name)
        return d


# The fields every stored run's key has always held; any other field joins a key only when it is
# set to something other than its default.
FIRST_VERSION_FIELDS = frozenset({
    "method", "backbone", "data", "image_size", "patch_size", "sampling", "max_sampled", "grad_accum", "epochs",
    "batch_size", "memory_budget", "seed", "device", "amp", "lr", "warmup_epochs", "final_lr_fraction", "weights",
    "num_classes", "fill_chunk", "channels_last"})
PATCH_FIELDS = ("patch_size", "sampling", "max_sampled", "grad_accum", "fill_chunk")


def check_patches(image_size: int, patch_size: int) -> None:
    """A patch size that divides the image into at most MAX_PATCHES patches."""
    m, n = grid_shape(check_int("image size", image_size, 1), check_int("patch size", patch_size, 1))
    if m * n > MAX_PATCHES:
        raise KitError(f"patch size {patch_size} cuts a {image_size} px image into {m * n:,} patches; allowed: at "
                       f"most {MAX_PATCHES:,} per image (a patch size of at least {image_size // 256})")


def check_budget(budget) -> int:
    """The bytes of a memory budget, at most MAX_BUDGET_BYTES."""
    from ..planner.budget import parse_budget  # here: the planner's imports (fake tensors) are for runs with a budget
    value = parse_budget(budget)
    if value > MAX_BUDGET_BYTES:
        raise KitError(f"memory budget {budget!r} is not allowed; allowed: at most 1 TiB (more than any one GPU holds)")
    return value


def check_plan_size(method: str, image_size, patch_size, budget, lazy: bool) -> None:
    """The plan command's bounds, checked before any trace: the trace grows with the image and its
    patches, and a budget beyond any GPU plans batches of billions."""
    highest = MAX_TILED_IMAGE_SIZE if lazy else MAX_IMAGE_SIZE
    if not isinstance(image_size, int) or not 1 <= image_size <= highest:
        raise KitError(f"image size {image_size!r} is not allowed; allowed: an integer in 1..{highest:,}"
                       + ("" if lazy else f" ({MAX_TILED_IMAGE_SIZE:,} with --lazy, read a patch at a time)"))
    if uses_patches(method):
        if patch_size is None:
            raise KitError(f"{method} needs --patch-size")
        check_patches(image_size, patch_size)
    check_budget(budget)


def validate_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda"):
        raise KitError(f"device {device!r} is not one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise KitError("device 'cuda' was asked for but no CUDA device is available; use auto or cpu")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 and later). Without it bf16 autocast is
    emulated: measured 10-40x slower than fp32 on an AVX2-only AMD EPYC (docs/cpu-scale.md §11)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe and probe())


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """fp16 on CUDA (the paper's fp16 rows); a CPU has no fast fp16, so bf16 stands in where it is
    native and fp32 runs where it is not (precision() names it; each epoch records it)."""
    if not config.amp:
        return None
    if device.type == "cuda":
        return torch.float16
    # PatchGD under CPU bf16 autocast diverged: the bf16 weight gradient of a 3×3 stride-2 convolution
    # on a 1×1 map (a small patch in ResNet50's layer4) can hold NaN in its padding-only taps
    # (docs/probes/bf16_conv_weight_grad.py); so PatchGD runs fp32 on a CPU.
    return torch.bfloat16 if cpu_has_native_bf16() and not uses_patches(config.method) else None


def precision(config: TrainConfig) -> str:
    """What "fp16" becomes on this machine (autocast_dtype): fp16 on CUDA, bf16 on a CPU with native
    bf16, fp32 on one without. Each epoch of a run records it (training.train_one_epoch): the report
    reads what ran, not what the machine writing the report would run."""
    dtype = autocast_dtype(config, resolve_device(config.device))
    if dtype == torch.float16:
        return "fp16 (CUDA autocast + loss scaling)"
    if dtype == torch.bfloat16:
        return "bf16 autocast (the CPU stand-in for fp16)"
    if not config.amp:
        return "fp32"
    if cpu_has_native_bf16():
        return "fp32 (fp16 row; PatchGD diverged under CPU bf16 autocast)"
    return "fp32 (fp16 row; this CPU has no native bf16)"


def use_channels_last(config: TrainConfig, device: torch.device) -> bool:
    if config.channels_last != "auto":
        return config.channels_last == "on"
    # Measured on 2 CPU cores (SPEC §7): 1.4-3.2x for MobileNetV2, mixed for ResNet50.
    # On CUDA it pays under AMP (tensor cores want NHWC).
    return config.backbone == "mobilenet_v2" or (device.type == "cuda" and config.amp)
