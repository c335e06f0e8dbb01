"""Memory budgets (SPEC §4): estimate the peak GPU memory of one training step without allocating it, plan the
largest batch (for PatchGD: the batch for a k, or the k for a batch) that fits a budget, and enforce the budget
on CUDA.

Budgets are "4GB", "16 GiB", "16G", "512MB" or a number of bytes. GB means GiB (2^30 bytes): the paper's budgets
are GPU sizes, and a GPU sold as "16 GB" has 16 GiB.

Estimate: the method's own training step (``methods.METHODS``) runs on fake tensors (shapes and dtypes, no data)
while ``livebytes`` adds up the live tensor storages in CUDA's 512-byte blocks: the quantity
`torch.cuda.max_memory_allocated` reports. For PatchGD the step is the fill of Z and one inner iteration of k
patches per image (two when gradients accumulate, so that the second runs with the first one's gradients alive).
Adam's moments exist before the step, as from the second step on.

The fake tensors are CPU tensors: fake CUDA tensors run forward but fail in backward on a torch built without
CUDA. Where CUDA differs in memory, the step does as CUDA does: Adam's foreach implementation (its default on
CUDA), fp16 autocast for AMP. The estimate does not see cuDNN workspaces and the allocator's fragmentation (the
margin covers them), the GradScaler's few scalars, nor the copy of the input that channels_last may make.

Margin: a plan keeps the estimated peak under the budget less the CUDA context (512 MiB, which lives outside the
allocator and so outside its cap), less 10% of the rest for cuDNN workspaces and fragmentation (peak reserved
runs above peak allocated).

If the fake-tensor estimate fails (an operator without a fake kernel, a PyTorch that moved the private APIs
``livebytes`` uses), a rougher fallback runs the same step on meta tensors and adds up what autograd saves for
backward, plus parameters, gradients, Adam's moments and the inputs; it warns.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from .errors import KitError
from .livebytes import LiveBytes, fake_mode
from .methods import StepSettings, build_model, method_of, uses_patches
from .patches import grid_shape, patches_per_iteration

GiB = 2**30
CUDA_CONTEXT_BYTES = 512 * 2**20  # 0.3-0.5 GB on current GPUs, outside the caching allocator
ALLOCATOR_HEADROOM = 0.10         # of the rest: cuDNN workspaces, fragmentation (reserved > allocated)
# A CPU budget bounds the rise of the resident set during a step, which runs above the live tensors:
# thread pools and oneDNN's caches (about constant), malloc's arenas (a share: PatchGD's measured peak
# is 1.4-1.55x its estimate, GD's 1.2x + 50 MiB on 2 cores). Measured: docs/memory-wall.md.
CPU_RUNTIME_BYTES = 48 * 2**20
CPU_HEADROOM = 0.35


# ---- budgets ---------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_budget(budget: int | str) -> int:
    """Bytes in a budget: an int (bytes) or a number with a unit K, M, G or T, optionally followed
    by B or iB ("4GB", "16 GiB", "16G", "1.5 GB"). Units are binary: GB = GiB = 2^30 bytes."""
    if isinstance(budget, int) and not isinstance(budget, bool):
        value = budget
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?\s*", str(budget), re.IGNORECASE)
        if not match or (match[3] and match[3].lower() == "ib" and not match[2]):
            raise KitError(f"memory budget {budget!r} is not a size; allowed: bytes or a number with a "
                           f"unit K, M, G, T (binary: GB = GiB = 2^30 bytes), e.g. 4GB, '16 GiB', 16G")
        value = int(float(match[1]) * _UNITS[match[2].lower()])
    if value <= 0:
        raise KitError(f"memory budget {budget!r} must be positive")
    return value


def format_bytes(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB // 10 else f"{n / 2**20:.1f} MiB"


def usable_bytes(budget_bytes: int, device: str = "cuda") -> int:
    """What a plan may fill: on CUDA the budget less the CUDA context, less the allocator headroom;
    on a CPU (a budget on the rise of the process's resident memory) less what a step takes there
    besides its live tensors (measured: ``wall``)."""
    if device == "cpu":
        return max(0, int(budget_bytes * (1 - CPU_HEADROOM) - CPU_RUNTIME_BYTES))
    return max(0, int((budget_bytes - CUDA_CONTEXT_BYTES) * (1 - ALLOCATOR_HEADROOM)))


def budget_for(peak_bytes: int, device: str = "cuda") -> int:
    """The smallest budget whose usable part holds an estimated peak (+1 byte against rounding)."""
    if device == "cpu":
        return math.ceil((peak_bytes + CPU_RUNTIME_BYTES) / (1 - CPU_HEADROOM)) + 1
    return math.ceil(peak_bytes / (1 - ALLOCATOR_HEADROOM)) + CUDA_CONTEXT_BYTES + 1


# ---- the estimate ------------------------------------------------------------------------------

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


def _check_patchgd(image_size: int, patch_size: int | None, k: int | None) -> int:
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
        _check_patchgd(image_size, patch_size, k)
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


# ---- planning ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """A batch size (and for PatchGD k) whose estimated peak fits `budget_bytes - margin_bytes`."""
    method: str
    backbone: str
    image_size: int
    patch_size: int | None
    amp: bool
    num_classes: int
    grad_accum: int
    fill_chunk: int
    budget_bytes: int
    margin_bytes: int
    batch_size: int
    k: int | None                    # PatchGD: patches per image per inner iteration
    planned: str                     # what the planner chose: "batch_size", "k", or "" (checked only)
    estimated_peak_bytes: int
    next_peak_bytes: int | None      # the estimate one step further (batch + 1 or k + 1): does not fit
    estimator: str                   # "fake-tensor", or "saved-tensors" (the rougher fallback)
    lazy: bool = False               # PatchGD on images read a patch at a time (tiled TIFFs)

    def summary(self) -> str:
        what = f"batch size {self.batch_size}" + (f", k = {self.k}" if self.k is not None else "")
        return (f"{self.method} {self.backbone} {self.image_size} px"
                + (f", patch {self.patch_size}" if self.patch_size else "") + (", fp16" if self.amp else "")
                + (", read lazily" if self.lazy else "")
                + f": {what} under {format_bytes(self.budget_bytes)}; estimated peak "
                f"{format_bytes(self.estimated_peak_bytes)} of {format_bytes(self.budget_bytes - self.margin_bytes)} "
                f"usable (margin {format_bytes(self.margin_bytes)}: CUDA context and allocator headroom); "
                f"estimator: {self.estimator}")


class BudgetTooSmall(KitError):
    """Even batch 1 (PatchGD: and k = 1, or the given k) does not fit the budget."""

    def __init__(self, message: str, needs_bytes: int):
        super().__init__(message)
        self.needs_bytes = needs_bytes  # the estimated peak of the smallest configuration


def _largest_fitting(peak_at: Callable[[int], int], usable: int, lowest: int,
                     highest: int | None) -> tuple[int, int | None]:
    """The largest x in lowest..highest with peak_at(x) <= usable (peak_at(lowest) fits), and the
    peak at x + 1 (None when x is `highest`).

    Memory is about affine in the batch and in k, so the next guess lies on a line through the
    largest fitting estimate: to the smallest failing one once there is one, else to its nearest
    other estimate. The search ends when x fits and x + 1 does not, usually after four estimates
    (lowest, lowest + 1, x, x + 1)."""
    known = {lowest: peak_at(lowest)}
    fits, fails = lowest, (highest + 1 if highest is not None else None)
    guess = lowest + 1
    while fails is None or fails - fits > 1:
        guess = max(fits + 1, guess if fails is None else min(guess, fails - 1))
        known[guess] = peak_at(guess)
        if known[guess] <= usable:
            fits = guess
        else:
            fails = guess
        # Across the bracket: near x = 1 the fill's peak can dominate, and a line through that
        # plateau points far off.
        other = fails if fails in known else min((x for x in known if x != fits), key=lambda x: abs(x - fits))
        slope = (known[other] - known[fits]) / (other - fits)
        guess = fits + (int((usable - known[fits]) / slope) if slope > 0 else fits)
    return fits, known.get(fits + 1)


def plan(method: str, backbone: str, image_size: int, budget: int | str, *, patch_size: int | None = None,
         sampling: float | None = None, batch_size: int | None = None, amp: bool = False,
         num_classes: int = 10, grad_accum: int = 1, fill_chunk: int = 256, input_side: int | None = None,
         lazy: bool = False, device: str = "cuda") -> Plan:
    """The largest batch that fits `budget`; for PatchGD at k = floor(sampling · m·n). For PatchGD
    with a `batch_size` and no `sampling`: the largest k for that batch. With both (or GD with a
    batch size): check that the configuration fits, and refuse it, naming both numbers, if not.
    `device` "cpu": the budget bounds the rise of the process's resident memory (``usable_bytes``)."""
    budget_bytes = parse_budget(budget)
    usable = usable_bytes(budget_bytes, device)
    cells = _check_patchgd(image_size, patch_size, None) if uses_patches(method) else None
    if cells and sampling is None and batch_size is None:
        raise KitError("PatchGD planning needs a sampling fraction (to plan the batch) or a batch size (to plan k)")
    k = patches_per_iteration(sampling, cells) if cells and sampling is not None else None
    planned = "batch_size" if batch_size is None else "k" if cells and k is None else ""
    common = dict(amp=amp, num_classes=num_classes, grad_accum=grad_accum, fill_chunk=fill_chunk, input_side=input_side,
                  lazy=lazy)
    estimate = functools.partial(estimate_peak, method, backbone, image_size, patch_size=patch_size, **common)
    peak_at = {"batch_size": lambda b: estimate(b, k=k).peak_bytes,
               "k": lambda kk: estimate(batch_size, k=kk).peak_bytes,
               "": lambda _: estimate(batch_size, k=k).peak_bytes}[planned]
    lowest = 1
    try:
        smallest = peak_at(1)
    except BatchCannotTrain:
        if planned != "batch_size":
            raise
        lowest, smallest = 2, peak_at(2)  # BatchNorm on a 1x1 map needs two images

    if smallest > usable:
        config = (f"{method} {backbone} at {image_size} px" + (f", patch {patch_size}" if cells else "")
                  + (", fp16" if amp else ""))
        at = f"batch size {batch_size or lowest}" + (f", k = {k or 1}" if cells else "")
        if planned == "":  # a given configuration that does not fit: say what would
            largest = plan(method, backbone, image_size, budget_bytes, patch_size=patch_size, sampling=sampling,
                           device=device, **common)
            raise KitError(f"{at} does not fit the {format_bytes(budget_bytes)} budget for {config}: it needs an "
                           f"estimated {format_bytes(smallest)}, {format_bytes(usable)} is usable; the largest "
                           f"batch that fits is {largest.batch_size}")
        raise BudgetTooSmall(f"memory budget {format_bytes(budget_bytes)} cannot hold {config}: {at} needs an "
                             f"estimated {format_bytes(smallest)}, so a budget of at least "
                             f"{format_bytes(budget_for(smallest, device))} (with the margin)", smallest)
    next_peak = None
    if planned == "batch_size":
        batch_size, next_peak = _largest_fitting(peak_at, usable, lowest, None)
    elif planned == "k":
        k, next_peak = _largest_fitting(peak_at, usable, 1, cells)
    final = estimate(batch_size, k=k)
    return Plan(method, backbone, image_size, patch_size if cells else None, bool(amp), num_classes,
                grad_accum if cells else 1, fill_chunk, budget_bytes, budget_bytes - usable, batch_size, k,
                planned, final.peak_bytes, next_peak, final.estimator, bool(lazy))


def plan_for_config(config) -> Plan:
    """The plan for a TrainConfig with a memory budget: its batch size when it has none, else a
    check that its batch size fits (a KitError naming both numbers when it does not)."""
    if config.memory_budget is None:
        raise KitError("planning needs a memory budget (--memory-budget)")
    patch_fields = dict(patch_size=config.patch_size, sampling=config.sampling, grad_accum=config.grad_accum,
                        fill_chunk=config.fill_chunk) if uses_patches(config.method) else {}
    return plan(config.method, config.backbone, config.image_size, config.memory_budget, batch_size=config.batch_size,
                amp=config.amp, num_classes=config.num_classes, input_side=config.downscaled_side, **patch_fields)


# ---- enforcement on CUDA -----------------------------------------------------------------------

def limit_cuda_memory(device: torch.device, budget_bytes: int | None) -> None:
    """Cap this process's CUDA caching allocator at the budget less the CUDA context (the context
    lives outside the allocator), or lift the cap when there is no budget. Call it before the first
    CUDA allocation; it creates the context."""
    total = torch.cuda.get_device_properties(device).total_memory
    if budget_bytes is None:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        return
    cap = budget_bytes - CUDA_CONTEXT_BYTES
    if not 0 < cap <= total:
        raise KitError(f"memory budget {format_bytes(budget_bytes)} does not fit this GPU of {format_bytes(total)}; "
                       f"allowed: more than the {format_bytes(CUDA_CONTEXT_BYTES)} CUDA context and at most "
                       f"{format_bytes(total + CUDA_CONTEXT_BYTES)}")
    torch.cuda.set_per_process_memory_fraction(cap / total, device)


def out_of_memory_error(plan: Plan, batch_size: int) -> KitError:
    """The error for a CUDA out-of-memory under a budget: the budget, the batch, the planner's word."""
    return KitError(f"CUDA out of memory under the {format_bytes(plan.budget_bytes)} budget at batch size "
                    f"{batch_size}; the planner estimated {format_bytes(plan.estimated_peak_bytes)} for batch "
                    f"{plan.batch_size} ({plan.estimator}); use a batch size below {batch_size} or a larger budget")
