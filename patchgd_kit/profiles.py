"""The one table of run sizes. A profile is a named set of values; a notebook parameter or CLI flag
overrides a single value (``get_profile("cpu", epochs=3)``).

``KIT_PROFILE`` in the environment picks the default profile: nbval injects no parameters, so the
environment is the only way to shrink a notebook run under CI (SPEC §6).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import KitError


@dataclass(frozen=True)
class Profile:
    name: str
    # UltraMNIST as the paper uses it (Tables 1, 2, 5/6, Figure 2): image 512, patch 256 (a 2x2 grid).
    image_size: int
    patch_size: int
    per_class_train: int
    per_class_test: int
    epochs: int
    warmup_epochs: float
    # PatchGD on UltraMNIST: k = 1 of the 4 cells per inner iteration, every cell once per batch.
    sampling: float
    max_sampled: float
    # Scale of the PANDA-shaped runs (Tables 3, 4): the paper's 512/2048/4096 divided by this.
    panda_scale: int
    # ... and each side of their patch grid divided by this (at least 2 patches a side remain):
    # ResNet50 costs about the same per patch at any patch size, so the paper's 32x32 grid at 4096
    # px would take hours on a CPU. 1 keeps the paper's grids.
    panda_grid_scale: int
    panda_per_class_train: int
    panda_per_class_test: int
    panda_epochs: int
    seeds: int
    # Batch sizes come from the memory planner at the paper's scale (SPEC §4), capped here so a
    # scaled run stays small; None means no cap.
    max_batch_size: int | None
    # Backbone initialisation of the reproduction runs: None (random) or "imagenet" (as the paper).
    weights: str | None
    description: str


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", image_size=64, patch_size=32, per_class_train=4, per_class_test=2, epochs=2,
        warmup_epochs=0.5, sampling=0.25, max_sampled=1.0, panda_scale=32, panda_grid_scale=4, panda_per_class_train=3,
        panda_per_class_test=2, panda_epochs=1, seeds=1, max_batch_size=8,
        weights=None, description="seconds to minutes on 2 CPU cores, for CI and nbval; the numbers mean nothing",
    ),
    "binder": Profile(
        name="binder", image_size=128, patch_size=64, per_class_train=20, per_class_test=8, epochs=3,
        warmup_epochs=1, sampling=0.25, max_sampled=1.0, panda_scale=16, panda_grid_scale=4, panda_per_class_train=8,
        panda_per_class_test=4, panda_epochs=2, seeds=1, max_batch_size=8,
        weights=None, description="fits Binder's 1-2 GB of RAM and its 1 CPU",
    ),
    # cpu: the 14 UltraMNIST runs of Figure 2 and Tables 1, 2, 5/6 (batches planned at the paper's
    # scale) cost, measured at 128 px with one thread (CPU time, so other load does not count):
    # 0.92 s per training image and epoch for the six ResNet50 runs, 0.20 s for the eight
    # MobileNetV2 ones, 0.24 s per test image and epoch; two threads run about 1.8x faster. 400 train
    # and 200 test images for 5 epochs: about 23 minutes, leaving a third of the hour to Tables 3-4.
    "cpu": Profile(
        name="cpu", image_size=128, patch_size=64, per_class_train=40, per_class_test=20, epochs=5,
        warmup_epochs=1, sampling=0.25, max_sampled=1.0, panda_scale=16, panda_grid_scale=4, panda_per_class_train=20,
        panda_per_class_test=8, panda_epochs=4, seeds=1, max_batch_size=None,
        weights=None, description="default without a GPU: every figure and table in at most 60 minutes on 2 cores, "
                    "images scaled to 1/4 of the paper's side",
    ),
    "paper": Profile(
        name="paper", image_size=512, patch_size=256, per_class_train=1000, per_class_test=200,
        epochs=100, warmup_epochs=2, sampling=0.25, max_sampled=1.0, panda_scale=1, panda_grid_scale=1,
        panda_per_class_train=1000, panda_per_class_test=200, panda_epochs=100, seeds=1,
        max_batch_size=None, weights="imagenet",
        description="the paper's settings (512 px, patch 256, 1000 images per class, 100 epochs); "
                    "needs a GPU",
    ),
}


def default_profile_name() -> str:
    return os.environ.get("KIT_PROFILE", "cpu")


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The named profile (default: ``$KIT_PROFILE`` or ``cpu``) with single values overridden."""
    name = name or default_profile_name()
    if name not in PROFILES:
        raise KitError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    fields = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise KitError(f"unknown profile field(s) {unknown}; allowed: {sorted(fields - {'name'})}")
    return dataclasses.replace(PROFILES[name], **overrides)


def runs_root() -> Path:
    """Where runs, data and reports live: ``$KIT_RUNS`` or ``runs/`` at the top of the kit."""
    return Path(os.environ.get("KIT_RUNS") or Path(__file__).resolve().parents[1] / "runs")


def profile_dir(profile: Profile | str) -> Path:
    """``runs/<profile>/``: everything one profile makes (data, runs, tables, the report)."""
    return runs_root() / (profile if isinstance(profile, str) else profile.name)


def profile_dataset(profile: Profile, seed: int = 0, progress: bool = True) -> Path:
    """The profile's UltraMNIST (made on first use, reused after) in ``runs/<profile>/data/``."""
    from .data import ensure_dataset
    return ensure_dataset(profile_dir(profile) / "data", profile.image_size, profile.per_class_train,
                          profile.per_class_test, seed, progress=progress)
