"""A paper row at a profile's scale: the profile's data for each dataset (UltraMNIST; PANDA from
``$PANDA_ROOT`` or its labelled stand-in), image and patch sizes, epochs, and the batch the memory
planner gives at the paper's scale times the profile's one batch factor. ``prepare`` makes what rows
need (plans, datasets, pretrained trunks); ``row_config`` then turns a row of ``paper.PAPER`` into the
TrainConfig that runs it, computing only.

The stand-in for PANDA: UltraMNIST generated at the profile's 4096 px (digits scaled with the image),
then shrunk to its 2048 and 512 exactly as the slides are, so the three resolutions show the same
images with less detail, as PANDA's do; named "stand-in" wherever it appears. Scaled profiles divide
every image size by ``profile.panda_scale`` and each side of the patch grids by
``profile.panda_grid_scale``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.methods import uses_patches
from ..data.panda import PANDA_CLASSES, PAPER_SIZES, preprocess_panda, read_train_csv, slide_level_shapes
from ..data.pandafull import full_resolution_dataset, level_for_downsample
from ..data.ultramnist import MIN_DIGIT_SIDE, UltraMNIST, ensure_dataset, shrink_dataset
from ..errors import KitError
from ..paper.beyond import reads_full_resolution
from ..paper.numbers import Table
from ..planner.paperrows import grad_accum_of, paper_plans
from .config import TrainConfig
from .profiles import Profile, profile_dataset, profile_dir, profile_weights
from .store import run_trunk_path

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def scaled_sizes(profile: Profile) -> dict[int, int]:
    """{paper size: this profile's size}: 4096, 2048 and 512 divided by ``profile.panda_scale``."""
    scale = profile.panda_scale
    if any(size % scale for size in PAPER_SIZES):
        raise KitError(f"panda_scale {scale} of profile {profile.name!r} is not allowed; allowed: a "
                       f"power of two up to 512 (it must divide {PAPER_SIZES})")
    return {size: size // scale for size in PAPER_SIZES}


def standin_datasets(profile: Profile, seed: int = 0, progress: bool = True) -> dict[int, Path]:
    """{paper size: folder} of the stand-in: UltraMNIST at the profile's 4096, shrunk to its 2048
    and 512. Made once in ``runs/<profile>/data/``."""
    sizes = scaled_sizes(profile)
    canvas = ensure_dataset(profile_dir(profile) / "data", sizes[4096], profile.panda_per_class_train,
                            profile.panda_per_class_test, seed, progress=progress)
    return {paper: canvas if paper == 4096 else shrink_dataset(canvas, size, progress)
            for paper, size in sizes.items()}


PANDA_ROOT_ENV = "PANDA_ROOT"  # where the challenge's files are; unset: Tables 3 and 4 use the stand-in


@dataclass(frozen=True)
class PandaData:
    """The data of Tables 3 and 4 at a profile's scale: PANDA, or the stand-in."""
    name: str                  # "PANDA" or "stand-in": written into every table row and title
    description: str
    num_classes: int
    folders: dict[int, Path]   # paper size (4096, 2048, 512) → dataset folder at the profile's size


def panda_caps(profile: Profile) -> tuple[int | None, int | None]:
    """Slides per class (train, test) a profile takes from PANDA: all of them at the paper's scale."""
    if profile.panda_scale == 1:
        return None, None
    return profile.panda_per_class_train, profile.panda_per_class_test


def panda_data(profile: Profile, progress: bool = True) -> PandaData:
    """PANDA from ``$PANDA_ROOT`` preprocessed at the profile's sizes, or the stand-in when it is
    unset. Made once in ``runs/<profile>/data/``. At the paper's scale every slide is used; scaled
    profiles take their per-class counts of slides."""
    sizes = scaled_sizes(profile)
    root = os.environ.get(PANDA_ROOT_ENV)
    if not root:
        return PandaData(
            "stand-in",
            f"stand-in, not PANDA: UltraMNIST made at {sizes[4096]} px ({profile.panda_per_class_train} "
            f"train / {profile.panda_per_class_test} test images per class) and shrunk to {sizes[2048]} "
            f"and {sizes[512]} px as the slides are; 10 ordinal classes (digit sums 0-9) where PANDA has "
            "6 ISUP grades. Set PANDA_ROOT to the challenge's folder to run on PANDA.",
            10, standin_datasets(profile, progress=progress))
    caps = panda_caps(profile)
    out = profile_dir(profile) / "data" / f"panda_{sizes[4096]}px_{caps[0] or 'all'}-{caps[1] or 'all'}pc"
    folders = preprocess_panda(root, out, tuple(sizes.values()), per_class_train=caps[0],
                               per_class_test=caps[1], progress=progress)
    return PandaData("PANDA", f"PANDA from {root}, preprocessed as Appendix B.1 into {out}",
                     PANDA_CLASSES, {paper: folders[size] for paper, size in sizes.items()})


def scaled_patch(profile: Profile, image_size: int, patch_size: int) -> int:
    """The patch side at the profile's scale for a paper row (image_size, patch_size): the grid side
    divided by ``panda_grid_scale`` (at least 2) over the image side divided by ``panda_scale``."""
    side = max(2, image_size // patch_size // profile.panda_grid_scale)
    return image_size // profile.panda_scale // side


def panda_root_present() -> bool:
    return bool(os.environ.get(PANDA_ROOT_ENV))


def full_resolution_data(profile: Profile, side: int) -> Path:
    """PANDA's slides framed at `side` / panda_scale, read lazily (pandafull.full_resolution_dataset) from
    their level that is panda_scale times smaller than level 0, as stored (level 0 at the paper's scale;
    PANDA's levels are 4x apart, so the cpu profile's 16 reads level 2). Made once in ``runs/<profile>/data/``."""
    root = os.environ.get(PANDA_ROOT_ENV)
    if not root:
        raise KitError(f"this row reads PANDA's slides at full resolution, which the stand-in has not; set "
                       f"{PANDA_ROOT_ENV} to the challenge's folder")
    first = Path(root) / "train_images" / f"{read_train_csv(root)[0]['image_id']}.tiff"
    level = level_for_downsample(slide_level_shapes(first), profile.panda_scale)
    caps = panda_caps(profile)
    side //= profile.panda_scale
    out = profile_dir(profile) / "data" / f"panda_full_{side}px_level{level}_{caps[0] or 'all'}-{caps[1] or 'all'}pc"
    return full_resolution_dataset(root, out, side, per_class_train=caps[0], per_class_test=caps[1], level=level)


def scale_panda_row(profile: Profile, settings: dict) -> dict:
    """TrainConfig values of a Table 3 or 4 row (paper-scale ``settings``) at the profile's scale:
    its data, image and patch size, classes and epochs (made here on first use)."""
    paper_size = settings["image_size"]
    if reads_full_resolution(settings):
        folder, classes = full_resolution_data(profile, paper_size), PANDA_CLASSES
    else:
        data = panda_data(profile, progress=False)
        folder, classes = data.folders[paper_size], data.num_classes
    values = {"data": str(folder), "image_size": paper_size // profile.panda_scale,
              "num_classes": classes, "epochs": profile.panda_epochs,
              "warmup_epochs": profile.warmup_epochs}
    if uses_patches(settings["method"]):
        values["patch_size"] = scaled_patch(profile, paper_size, settings["patch_size"])
    return values


def _ultramnist_scale(profile: Profile, settings: dict) -> dict:
    """The paper's UltraMNIST (512 px, patch 256, 100 epochs) at the profile's size for the row's
    backbone: the same 2×2 grid."""
    profile = profile.for_backbone(settings["backbone"])
    return {"data": str(profile_dataset(profile, progress=False)), "image_size": profile.image_size,
            "patch_size": profile.patch_size, "epochs": profile.epochs, "warmup_epochs": profile.warmup_epochs}


# How a profile scales each dataset's runs: TrainConfig overrides (data, sizes, epochs).
SCALERS = {"ultramnist": _ultramnist_scale, "panda": scale_panda_row}


def scaled_batch(planned: int, profile: Profile, train_images: int) -> int:
    """The planner's batch at the paper's scale times the profile's batch_scale (at least 2, or 1 where
    the paper's is 1), capped by the profile's largest batch and the training set: one factor for
    every row keeps the ratios between the budgets' batches, the regime the paper compares."""
    # never below 2 where the paper's batch was 2 or more: BatchNorm in training needs two values per
    # channel, and a PatchGD head on a small grid sees one per image (Table 4 at the cpu profile)
    batch = max(min(2, planned), round(planned * profile.batch_scale))
    return min(batch, profile.max_batch_size or batch, train_images)


@dataclass(frozen=True)
class RowInputs:
    """What ``prepare`` made for one paper row, so that ``row_config`` only computes: the planner's
    answer at the paper's scale, the row's TrainConfig values at the profile's scale (its data among
    them), the data's sizes, the profile's trunk, and for an Appendix C row (``init_from``) the inputs
    of the row whose trunk it starts from."""
    plan: dict
    scaled: dict
    train_images: int
    test_images: int
    min_digit_side: int
    weights: str | None
    source: RowInputs | None = None


def prepare(table: Table, rows, profile: Profile) -> dict[str, RowInputs]:
    """{row id: RowInputs} of `rows` of `table` at `profile`: the missing plans (in parallel), the
    datasets and the pretrained trunks, each made once in ``runs/<profile>/`` and read back after."""
    if table.dataset not in SCALERS:
        raise KitError(f"{table.name} runs on {table.dataset!r} data, which this kit cannot scale yet; "
                       f"allowed: {', '.join(SCALERS)}")
    rows = list(rows)
    needed = rows + [table.row(row.init_from) for row in rows if row.init_from]
    found = paper_plans([table.settings(row) for row in needed], profile_dir(profile) / "plans.json")
    plans = {row.id: plan for row, plan in zip(needed, found)}
    return {row.id: _prepare_row(table, row, profile, plans) for row in rows}


def _prepare_row(table: Table, row, profile: Profile, plans: dict[str, dict]) -> RowInputs:
    settings = table.settings(row)
    scaled = SCALERS[table.dataset](profile, settings)
    train_set = UltraMNIST(scaled["data"], "train", cache=False)
    test_images = len(UltraMNIST(scaled["data"], "test", cache=False))
    if row.init_from:
        source, weights = _prepare_row(table, table.row(row.init_from), profile, plans), None
    else:
        backbone = settings["backbone"]
        source, weights = None, profile_weights(profile.for_backbone(backbone), backbone, progress=False)
    return RowInputs(plans[row.id], scaled, len(train_set), test_images, train_set.min_digit_side, weights, source)


def source_config(table: Table, row, profile: Profile, inputs: RowInputs, seed: int = 0) -> TrainConfig:
    """The config of the run whose trunk an Appendix C row (``row.init_from``) starts from."""
    return row_config(table, table.row(row.init_from), profile, inputs.source, seed)[0]


def row_config(table: Table, row, profile: Profile, inputs: RowInputs,
               seed: int = 0) -> tuple[TrainConfig, dict, str]:
    """(TrainConfig, the planner's answer at the paper's scale, the scale in words) of a paper row,
    computed from what ``prepare`` made for it; nothing is read or written."""
    settings, plan = table.settings(row), inputs.plan
    # backbone_scale holds values of one backbone's UltraMNIST rows, its batch factor among them
    batch_profile = profile.for_backbone(settings["backbone"]) if table.dataset == "ultramnist" else profile
    batch = scaled_batch(plan["batch_size"], batch_profile, inputs.train_images)
    fields = {k: v for k, v in {**settings, **inputs.scaled}.items() if k in TRAIN_FIELDS}
    # ε = ζ of the scaled grid; gd-downscaled carries PatchGD's patch settings for its plan only
    fields["grad_accum"] = grad_accum_of(fields) if uses_patches(fields["method"]) else 1
    if "downscaled_side" in plan:  # gd-downscaled: the side planned at the paper's scale, scaled alike
        fields["downscaled_side"] = max(1, round(plan["downscaled_side"] * fields["image_size"]
                                                 / settings["image_size"]))
    weights, init = inputs.weights, ""
    if row.init_from:  # Appendix C: the trunk file of that row's run (reproduce.run_table trains it first)
        weights = str(run_trunk_path(source_config(table, row, profile, inputs, seed), profile_dir(profile)))
        init = f"; backbone from the {table.row(row.init_from).name} run (Appendix C)"
    config = TrainConfig(**{**fields, "batch_size": batch, "seed": seed, "trunk_lr_scale": profile.trunk_lr_scale,
                            "weights": weights})
    config.validate()
    patch = f", patch {config.patch_size}" if uses_patches(config.method) else ""
    floor = f", digits ≥ {inputs.min_digit_side} px" if inputs.min_digit_side != MIN_DIGIT_SIDE else ""
    factor = f"; batch = planned × {batch_profile.batch_scale:g}" if batch_profile.batch_scale != 1 else ""
    trunk_lr = f"; trunk lr × {config.trunk_lr_scale:g}" if config.trunk_lr_scale != 1 else ""
    resized = (f" resized to {config.downscaled_side} px (paper scale: {plan['downscaled_side']})"
               if config.downscaled_side else "")
    scale = (f"{config.image_size} px{resized}{patch}{floor}; {inputs.train_images} train / "
             f"{inputs.test_images} test images; {config.epochs} epochs{factor}{trunk_lr}{init}")
    return config, plan, scale


def configure(table: Table, row, profile: Profile, seed: int = 0) -> tuple[TrainConfig, dict, str]:
    """``row_config`` of one row after ``prepare`` made its inputs: for a single row (a notebook, a test)."""
    return row_config(table, row, profile, prepare(table, [row], profile)[row.id], seed)
