"""The memory wall on this machine (notebook 04): one budget, applied to every way of training under it.

The paper's premise is that a full-resolution image does not fit: under a budget, GD trains a batch
several times smaller than PatchGD's, or none. On a CPU the budget is the rise of the process's peak
resident memory (RSS) over its baseline during a training step: the memory a training step takes
from the machine (on a GPU, the allocator's peak, as the paper's budgets). Every row gets two numbers:

- **estimated**: the planner's peak of the step (``memory.plan`` with the device: live tensor bytes
  against the budget less a margin measured for that device), which decides the row's batch (or,
  for gd-downscaled, the side);
- **measured**: the peak of two real training steps in a fresh process, set up as ``train()`` sets
  it up (model, memory format, Adam, the method's step), on random images.

A row fits when its measured peak is at most the budget.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ...core.methods import method_of
from ...data.ultramnist import ensure_dataset
from ...errors import KitError
from ...planner.alternatives import downscaled_side_for
from ...planner.budget import BudgetTooSmall, parse_budget, plan
from ...planner.estimate import estimate_peak
from ...runs.config import TrainConfig, resolve_device
from ...runs.optim import make_optimizer
from ...runs.profiles import Profile, profile_dir, profile_weights
from ...runs.training import model_on, step_settings


@dataclass(frozen=True)
class WallRow:
    """One way of training under the budget: its run (None for a configuration shown only to mark
    the wall, such as GD at PatchGD's batch), the planner's estimate and the measured peak."""
    name: str
    config: TrainConfig
    estimated_bytes: int
    trains: bool = True            # False: shown for its memory only
    measured: dict | None = None   # measure_peak's answer

    @property
    def measured_bytes(self) -> int | None:
        return self.measured["peak_bytes"] if self.measured else None


def wall_config(profile: Profile, backbone: str = "mobilenet_v2", seed: int = 0, device: str = "auto",
                progress: bool = True) -> TrainConfig:
    """PatchGD at the profile's UltraMNIST size, digits and init: the config every row of the wall
    starts from (each row changes its method, batch and, for gd-downscaled, the side). Its dataset
    has ``wall_per_class_test`` test images per class, so that a paired comparison can decide, and
    ``wall_per_class_train`` training images per class (the profile's when None)."""
    profile = profile.for_backbone(backbone)
    data = ensure_dataset(profile_dir(profile) / "data", profile.image_size,
                          profile.wall_per_class_train or profile.per_class_train, profile.wall_per_class_test, seed,
                          progress=progress, min_digit_side=profile.min_digit_side)
    config = TrainConfig(method="patchgd", backbone=backbone, data=str(data), image_size=profile.image_size,
                         patch_size=profile.patch_size, sampling=profile.sampling, max_sampled=profile.max_sampled,
                         epochs=profile.epochs, warmup_epochs=profile.warmup_epochs, batch_size=None,
                         memory_budget=None, seed=seed, trunk_lr_scale=profile.trunk_lr_scale,
                         weights=profile_weights(profile, backbone, progress=progress), device=device)
    return config


def _budget_device(config: TrainConfig) -> str:
    """What the budget bounds: CUDA's allocator on a GPU, the resident set on a CPU."""
    return resolve_device(config.device).type


def _planned(config: TrainConfig, method: str, budget: str) -> tuple[int, int] | None:
    """(batch, estimated peak) of `method` under the CPU budget, or None when not even the smallest
    batch fits."""
    patch = dict(patch_size=config.patch_size, sampling=config.sampling,
                 grad_accum=config.grad_accum) if method == "patchgd" else {}
    try:
        answer = plan(method, config.backbone, config.image_size, budget, num_classes=config.num_classes,
                      device=_budget_device(config), **patch)
    except BudgetTooSmall:
        return None
    return answer.batch_size, answer.estimated_peak_bytes


def plan_rows(config: TrainConfig, budget: str) -> list[WallRow]:
    """Every way of training `config`'s images under `budget` on this CPU, planned: GD at full
    resolution with the batch that fits, gd-checkpoint with its larger batch, gd-downscaled at the
    largest side that fits PatchGD's batch, PatchGD with its planned batch; and GD at PatchGD's batch,
    which marks the wall (its memory only). A method that fits no batch is a row that does not train."""
    patchgd = _planned(config, "patchgd", budget)
    if patchgd is None:
        raise KitError(f"budget {budget} cannot hold even PatchGD's smallest step at {config.image_size} px; "
                       "allowed: a larger budget (the planner's word: python -m patchgd_kit plan)")
    batch, peak = patchgd
    rows = []
    for method, name in (("gd", "GD"), ("gd-checkpoint", "GD-checkpoint")):
        planned = _planned(config, method, budget)
        at = planned or (2, estimate_peak(method, config.backbone, config.image_size, 2).peak_bytes)
        rows.append(WallRow(name, dataclasses.replace(config, method=method, batch_size=at[0]), at[1],
                            trains=planned is not None))
    side = downscaled_side_for(config.backbone, config.image_size, budget, patch_size=config.patch_size,
                               sampling=config.sampling, num_classes=config.num_classes,
                               device=_budget_device(config))
    rows.append(WallRow(f"GD-downscaled to {side.side} px",
                        dataclasses.replace(config, method="gd-downscaled", batch_size=batch,
                                            downscaled_side=side.side), side.estimated_peak_bytes))
    rows.append(WallRow("PatchGD", dataclasses.replace(config, batch_size=batch), peak))
    gd_at_batch = estimate_peak("gd", config.backbone, config.image_size, batch).peak_bytes
    rows.append(WallRow(f"GD at PatchGD's batch ({batch})", dataclasses.replace(config, method="gd", batch_size=batch),
                        gd_at_batch, trains=False))
    return rows


def measure_rows(rows: list[WallRow]) -> list[WallRow]:
    """Each row with its measured peak (a fresh process each: a few seconds a row)."""
    return [dataclasses.replace(row, measured=measure_peak(row.config)) for row in rows]


def measure_peak(config: TrainConfig, steps: int = 2) -> dict:
    """Peak RSS rise (bytes) of `steps` training steps of `config` in a fresh process, over the RSS
    before its model is built, on random images of the config's size: {"peak_bytes", "baseline_bytes",
    "seconds_per_step"}. The first step creates Adam's moments; the second is a step as every later
    one. On CUDA: the allocator's peak over what was allocated before the model."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    kit_parent = str(Path(__file__).resolve().parents[3])  # the child imports this kit, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (kit_parent, os.environ.get("PYTHONPATH"))))}
    code = f"from patchgd_kit.face.teaching.wall import _measure_here; _measure_here({fields!r}, {steps})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise KitError(f"measuring one {config.method} step at batch {config.batch_size} failed "
                       f"(exit {out.returncode}): {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match[1]) * 1024


def _reset_high_water(device: torch.device) -> int:
    """The memory in use now, the high-water mark set to it: importing torch (a CUDA build maps
    libraries and frees scratch) leaves a high-water mark above what a small step ever reaches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
        return _status_bytes("VmRSS")
    except OSError:  # no /proc: the high-water mark as it is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _high_water(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    try:
        return _status_bytes("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _measure_here(fields: dict, steps: int) -> None:
    """measure_peak's child: prints one JSON line."""
    import time
    config = TrainConfig(**fields)
    device = resolve_device(config.device)
    baseline = _reset_high_water(device)
    images = torch.randn(config.batch_size, 3, config.image_size, config.image_size, device=device)
    labels = torch.arange(config.batch_size, device=device) % config.num_classes
    model = model_on(config, device).train()
    optimizer = make_optimizer(model, config, device)
    step, settings = method_of(config.method).train_batch, step_settings(config, device)
    start = time.perf_counter()
    for _ in range(steps):
        step(model, images, labels, optimizer, settings)
    seconds = (time.perf_counter() - start) / steps
    print(json.dumps({"peak_bytes": _high_water(device) - baseline, "baseline_bytes": baseline,
                      "memory": "CUDA peak allocated" if device.type == "cuda" else "peak RSS",
                      "seconds_per_step": seconds}))


def fits(row: WallRow, budget: str) -> bool:
    """The row's measured peak (its estimate until measured) is within the budget."""
    return (row.measured_bytes if row.measured else row.estimated_bytes) <= parse_budget(budget)


def train_rows(rows: list[WallRow], profile: Profile, progress: bool = True) -> dict[str, dict]:
    """{row name: train()'s result} of every row that trains, each in the results store: a rerun reads
    finished rows back and resumes a half-finished one."""
    from ...runs.store import train_in_store
    return {row.name: train_in_store(row.config, profile_dir(profile), progress=progress)
            for row in rows if row.trains}
