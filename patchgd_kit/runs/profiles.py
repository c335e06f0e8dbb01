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

from ..errors import KitError


@dataclass(frozen=True)
class Profile:
    name: str
    # UltraMNIST as the paper uses it (Tables 1, 2, 5/6, Figure 2): image 512, patch 256 (a 2x2 grid).
    image_size: int
    patch_size: int
    # Digits smaller than this (px) are drawn at this size; the recipe's floor is 4 (data.MIN_DIGIT_SIDE).
    min_digit_side: int
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
    # Batch sizes come from the memory planner at the paper's scale (SPEC §4), all multiplied by
    # batch_scale (so their ratios, the budget regime, stay) and capped by max_batch_size (None: no cap).
    batch_scale: float
    max_batch_size: int | None
    # Backbone initialisation of the reproduction runs: None (random), "imagenet" (as the paper) or
    # "digits" (pretrain.py: made on first use with pretrain_steps steps, the offline stand-in).
    weights: str | None
    pretrain_steps: int
    # The pretrained trunk's lr as a fraction of the peak lr (TrainConfig.trunk_lr_scale): the paper
    # uses one lr for all (1); fine-tuning a pretrained trunk 10x slower than the new layers is the
    # kit's choice at small scale, where the paper's lr on a few hundred steps unlearns the digits.
    trunk_lr_scale: float
    description: str
    # Peak lr of the digits pretraining (pretrain.py; Adam, warm-up and decay as its own schedule).
    pretrain_lr: float = 1e-3
    # Tables whose rows not in the paper (beyond.py: GD's alternatives, gd-checkpoint and gd-downscaled)
    # the reproduction trains beside the paper's rows.
    beyond: tuple[str, ...] = ()
    # Notebook 04's memory wall (``wall``): one budget on the peak memory of a training step on this
    # machine, under which every way of training is measured, on a dataset of its own: a test split
    # large enough for a paired comparison to decide, a training split that keeps the four runs in
    # about ten minutes on 2 cores (docs/memory-wall.md). None: the profile's per_class_train.
    wall_budget: str = "512MiB"
    wall_per_class_test: int = 100
    wall_per_class_train: int | None = None
    # Values that differ for one backbone's UltraMNIST runs, e.g. {"resnet50": {"image_size": 64}}:
    # ResNet50 costs 4-6x MobileNetV2 per image on a CPU, so its rows may run at a smaller scale.
    backbone_scale: dict = dataclasses.field(default_factory=dict)
    # Numbered notebooks `reproduce` leaves out at this profile, each with the reason it prints.
    skip_notebooks: dict = dataclasses.field(default_factory=dict)

    def for_backbone(self, backbone: str) -> "Profile":
        """This profile with `backbone`'s own values (backbone_scale) in place."""
        return dataclasses.replace(self, **self.backbone_scale.get(backbone, {}))


# The gpu profile's training set and epochs: sized by gpuestimate to fit the hour (README's profile table).
GPU_PER_CLASS_TRAIN, GPU_EPOCHS = 500, 6

PROFILES: dict[str, Profile] = {
    # smoke: every notebook's real path at the smallest sizes, for CI (nbval on every notebook in
    # about 6 minutes on 2 cores). A ResNet50 run costs about 3 s besides its steps (the memory check,
    # checkpoints of 25 M parameters and Adam's moments), so ResNet50 rows train one epoch
    # (MobileNetV2 rows keep two: the multi-epoch path) and PANDA rows see 20 images.
    "smoke": Profile(
        name="smoke", image_size=64, patch_size=32, min_digit_side=4, per_class_train=4, per_class_test=2, epochs=2,
        warmup_epochs=0.5, sampling=0.25, max_sampled=1.0, panda_scale=32, panda_grid_scale=4, panda_per_class_train=2,
        panda_per_class_test=1, panda_epochs=1, seeds=1, batch_scale=1.0, max_batch_size=8,
        weights="digits", pretrain_steps=2, trunk_lr_scale=0.1,
        description="seconds to minutes on 2 CPU cores, for CI and nbval (ResNet50 rows 1 epoch); the numbers mean nothing",
        beyond=("table2",),  # the path of every table's alternatives; Table 3's ResNet50 plans at 2048 px cost a minute
        wall_budget="256MiB", wall_per_class_test=2,
        backbone_scale={"resnet50": {"epochs": 1}},
    ),
    "binder": Profile(
        name="binder", image_size=128, patch_size=64, min_digit_side=12, per_class_train=20, per_class_test=8, epochs=3,
        warmup_epochs=1, sampling=0.25, max_sampled=1.0, panda_scale=16, panda_grid_scale=4, panda_per_class_train=8,
        panda_per_class_test=4, panda_epochs=2, seeds=1, batch_scale=1.0, max_batch_size=8,
        weights="digits", pretrain_steps=100, trunk_lr_scale=0.1, description="fits Binder's 1-2 GB of RAM and its 1 CPU",
        wall_budget="384MiB", wall_per_class_test=8,  # the wall beside the kernel in 2 GB
    ),
    # cpu: designed to learn on 2 CPU cores, every run above chance: readable digits, backbones pretrained
    # on single digits and fine-tuned at a tenth of the lr, many distinct images, more optimizer steps;
    # ResNet50 rows at half the side. Why each value, measured: docs/cpu-scale.md ("The cpu profile's
    # values and why", moved from here, and §1-13).
    "cpu": Profile(
        name="cpu", image_size=128, patch_size=64, min_digit_side=24, per_class_train=450, per_class_test=50,
        epochs=2, warmup_epochs=0.5, sampling=0.25, max_sampled=1.0, panda_scale=16, panda_grid_scale=4,
        panda_per_class_train=8, panda_per_class_test=4, panda_epochs=1, seeds=1, batch_scale=0.25,
        max_batch_size=None, weights="digits", pretrain_steps=1200, pretrain_lr=3e-3, trunk_lr_scale=0.1,
        wall_per_class_train=300,
        description="default without a GPU: every figure and table on 2 cores (docs/cpu-scale.md); UltraMNIST "
                    "at 128 px on 4,500 images x 2 epochs (ResNet50 rows 64 px, 3,000 x 2), digits of at least "
                    "24 px (16 px), digits-pretrained backbones with trunk lr x 0.1, planned batches x 1/4 (x 1/2)",
        # GD's alternatives (beyond.py) are left out of this profile: Table 2's four alone took 23 minutes
        # (docs/alternatives.md). `reproduce --alternatives` trains them beside Tables 1-3.
        backbone_scale={"resnet50": {"image_size": 64, "patch_size": 32, "min_digit_side": 16,
                                     "pretrain_steps": 750, "per_class_train": 300, "epochs": 2,
                                     "batch_scale": 0.5}},
    ),
    # gpu: the paper's UltraMNIST (512 px, patch 256, the recipe's digits, planned batches at the real
    # budgets, fp32, ImageNet init) on one GPU in an hour for Figure 2 and Tables 1, 2, 5/6 by the kit's
    # own estimate (`reproduce --profile gpu --estimate`, gpuestimate.py: images/s from a committed
    # gpu-check, else the paper's A100 latency). 2,000 test images decide the orderings' bootstrap
    # intervals better than the cpu profile's 500. Offline, the ImageNet weights fall back to the
    # digits-pretrained stand-in (profile_weights says so in one line; every table names the init).
    "gpu": Profile(
        name="gpu", image_size=512, patch_size=256, min_digit_side=4, per_class_train=GPU_PER_CLASS_TRAIN,
        per_class_test=200, epochs=GPU_EPOCHS, warmup_epochs=1, sampling=0.25, max_sampled=1.0, panda_scale=1,
        panda_grid_scale=1, panda_per_class_train=1000, panda_per_class_test=200, panda_epochs=100, seeds=1,
        batch_scale=1.0, max_batch_size=None, weights="imagenet", pretrain_steps=1200, pretrain_lr=3e-3,
        trunk_lr_scale=1.0,
        description=f"one GPU, about an hour (estimated): UltraMNIST at 512 px, patch 256, the recipe's digits, "
                    f"{GPU_PER_CLASS_TRAIN * 10:,} train / 2,000 test images x {GPU_EPOCHS} epochs, planned "
                    "batches at the real budgets, fp32, ImageNet init (offline: the digits-pretrained stand-in); "
                    "Tables 3/4 only at the paper's scale (profile paper)",
        wall_budget="4GB",  # on a GPU: the allocator's peak, Table 2's 4 GB budget (as paper)
        skip_notebooks={n: f"Table {t} runs on PANDA at the paper's sizes (512-4096 px), hundreds of A100 "
                           f"hours; the gpu profile leaves it to `--profile paper`"
                        for n, t in (("09", 3), ("10", 4))},
    ),
    "paper": Profile(
        name="paper", image_size=512, patch_size=256, min_digit_side=4, per_class_train=1000, per_class_test=200,
        epochs=100, warmup_epochs=2, sampling=0.25, max_sampled=1.0, panda_scale=1, panda_grid_scale=1,
        panda_per_class_train=1000, panda_per_class_test=200, panda_epochs=100, seeds=1,
        batch_scale=1.0, max_batch_size=None, weights="imagenet", pretrain_steps=0, trunk_lr_scale=1.0,
        description="the paper's settings (512 px, patch 256, 1000 images per class, 100 epochs); "
                    "needs a GPU: about 1,700 A100 hours for every table, one seed (estimated; the tables' footers)",
        beyond=("table1", "table2", "table3"),
        wall_budget="4GB",  # on a GPU: the allocator's peak, Table 2's 4 GB budget
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
    return Path(os.environ.get("KIT_RUNS") or Path(__file__).resolve().parents[2] / "runs")


def profile_dir(profile: Profile | str) -> Path:
    """``runs/<profile>/``: everything one profile makes (data, runs, tables, the report)."""
    return runs_root() / (profile if isinstance(profile, str) else profile.name)


def profile_dataset(profile: Profile, seed: int = 0, progress: bool = True) -> Path:
    """The profile's UltraMNIST (made on first use, reused after) in ``runs/<profile>/data/``."""
    from ..data.ultramnist import ensure_dataset
    return ensure_dataset(profile_dir(profile) / "data", profile.image_size, profile.per_class_train,
                          profile.per_class_test, seed, progress=progress, min_digit_side=profile.min_digit_side)


def profile_weights(profile: Profile, backbone: str, progress: bool = True) -> str | None:
    """The backbone init of the profile's runs: None, "imagenet", or for "digits" the path of the
    digits-pretrained trunk, made on first use in ``runs/<profile>/weights/`` (pretrain.py). For
    "imagenet" where torchvision cannot fetch them (no network), one line says so and the digits
    stand-in is used instead; the tables name every run's init (report.init_name)."""
    if profile.weights == "imagenet":
        missing = imagenet_unavailable(backbone)
        if missing is None:
            return "imagenet"
        if backbone not in _FALLBACK_SAID:
            _FALLBACK_SAID.add(backbone)
            print(f"ImageNet weights for {backbone} could not be downloaded ({missing}); profile {profile.name!r} "
                  f"uses the digits-pretrained stand-in ({profile.pretrain_steps} steps), named in every table",
                  flush=True)
    elif profile.weights != "digits":
        return profile.weights
    from .pretrain import pretrain_backbone
    crop = profile.patch_size
    path = (profile_dir(profile) / "weights" / f"{backbone}-digits-{profile.image_size}px-crop{crop}-"
            f"min{profile.min_digit_side}px-{profile.pretrain_steps}steps-lr{profile.pretrain_lr:g}-seed0.pt")
    pretrain_backbone(backbone, profile.image_size, crop, path, steps=profile.pretrain_steps,
                      lr=profile.pretrain_lr, min_digit_side=profile.min_digit_side, progress=progress)
    return str(path)


_IMAGENET_TRIED: dict[str, str | None] = {}  # backbone → why its download failed (None: it worked)
_FALLBACK_SAID: set[str] = set()  # backbones whose ImageNet fallback line this process has printed


def imagenet_unavailable(backbone: str) -> str | None:
    """None when torchvision's ImageNet weights of `backbone` are in torch's cache or can be downloaded
    into it now; else why not, in a few words (the download's error)."""
    import torch
    import torchvision
    url = torchvision.models.get_model_weights(backbone).DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name  # where torchvision looks first
    if cached.is_file():
        return None
    if backbone not in _IMAGENET_TRIED:  # one try per process: a failed download fails again
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), progress=False)
            _IMAGENET_TRIED[backbone] = None
        except Exception as e:  # noqa: BLE001 - no network, a proxy, a full disk: all mean "use the stand-in"
            _IMAGENET_TRIED[backbone] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else url}"
    return _IMAGENET_TRIED[backbone]
