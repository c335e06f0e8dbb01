"""The planner's budgets (SPEC §4): a budget parsed, the largest batch (for PatchGD: the batch for a k,
or the k for a batch) whose estimated peak (``estimate``) fits it, and the budget enforced on CUDA.

Budgets are "4GB", "16 GiB", "16G", "512MB" or a number of bytes. GB means GiB (2^30 bytes): the paper's budgets
are GPU sizes, and a GPU sold as "16 GB" has 16 GiB.

Margin: a plan keeps the estimated peak under the budget less the CUDA context (512 MiB, which lives outside the
allocator and so outside its cap), less 10% of the rest for cuDNN workspaces and fragmentation (peak reserved
runs above peak allocated).
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from ..core.methods import uses_patches
from ..core.patches import patches_per_iteration
from ..errors import KitError
from .estimate import BatchCannotTrain, check_patchgd, estimate_peak

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
    cells = check_patchgd(image_size, patch_size, None) if uses_patches(method) else None
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
