"""The teaching runs of notebooks 03 and 04: a profile with single values overridden, the training runs
the two notebooks share, and the facts they print (papermill's runner is ``reproduce.notebooks``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ...core.methods import build_model, uses_patches
from ...core.models import count_parameters
from ...data.ultramnist import UltraMNIST
from ...errors import KitError
from ...paper.numbers import PAPER
from ...planner.estimate import estimate_peak
from ...runs.config import TrainConfig
from ...runs.profiles import Profile, get_profile, profile_dir
from ...runs.scaling import configure
from ...runs.store import run_folder

# The table whose 16 GB rows notebooks 03 and 04 train, per backbone (the paper's: ResNet50 in Table 1).
TEACHING_TABLE = {"mobilenet_v2": "table2", "resnet50": "table1"}


def profile_with(name: str | None, **values) -> Profile:
    """The named profile (None: $KIT_PROFILE or cpu) with the values that are not None overridden."""
    return get_profile(name, **{field: value for field, value in values.items() if value is not None})


def training_run(profile: Profile, method: str, *, backbone: str, batch_size: int | None = None, grad_accum: int = 1,
                 seed: int = 0, device: str = "auto", data=None) -> tuple[TrainConfig, Path]:
    """The TrainConfig of a teaching run on the profile's UltraMNIST, and its folder in the results store.

    ``batch_size`` None: the run is the paper's 16 GB row for this method and backbone (Table 2 for
    MobileNetV2, Table 1 for ResNet50) at this profile, with its planned batch and budget, so notebooks
    03 and 04 train the runs the reproduction's tables use (once: the store finds them by their hash).
    A batch size, ``grad_accum``, ``data`` (None: the profile's dataset) or the profile's sampling
    values make it a run of its own. The same choices in 03 and 04 give the same folder.
    """
    if backbone not in TEACHING_TABLE:
        raise KitError(f"backbone {backbone!r} has no UltraMNIST table; allowed: {', '.join(TEACHING_TABLE)}")
    table = PAPER[TEACHING_TABLE[backbone]]
    row_id = f"{method}_16gb"
    if row_id not in {row.id for row in table.rows}:
        methods = sorted({row.settings["method"] for row in table.rows})
        raise KitError(f"method {method!r} has no row in {table.title}; allowed: {', '.join(methods)}")
    config = configure(table, table.row(row_id), profile, seed)[0]
    changes = {"sampling": profile.sampling, "max_sampled": profile.max_sampled, "grad_accum": grad_accum,
               "device": device}
    if batch_size is not None:  # a batch of the reader's: no longer planned for the budget
        changes.update(batch_size=batch_size, memory_budget=None)
    if data:
        changes["data"] = str(Path(data).resolve())  # absolute: the run is found from anywhere
    config = dataclasses.replace(config, **changes)
    config.validate()
    return config, run_folder(config, profile_dir(profile))


def describe_run(config: TrainConfig) -> str:
    """What one epoch of a run does, in integers: parameters, batches and optimizer steps."""
    images = len(UltraMNIST(config.data, "train"))
    batches = images // config.batch_size  # the trainer drops the last, incomplete batch
    model = build_model(config.method, config.backbone, config.num_classes, config.image_size, config.patch_size)
    lines = [f"{config.method} {config.backbone} at {config.image_size} px: {count_parameters(model):,} parameters"]
    if uses_patches(config.method):
        k, zeta = config.schedule()
        m, n = model.grid
        steps = -(-zeta // config.grad_accum)
        lines += [f"  f_θ1 (backbone) {count_parameters(model.backbone):,} · g_θ2 (head) {count_parameters(model.head):,}",
                  f"  p = {config.patch_size}: grid m×n = {m}×{n}, k = {k} patches per image per inner iteration, "
                  f"ζ = {zeta} inner iterations, ε = {config.grad_accum}",
                  f"  {images} training images, batch {config.batch_size}: {batches} batches per epoch × "
                  f"{steps} optimizer steps = {batches * steps} steps per epoch"]
    else:
        lines.append(f"  {images} training images, batch {config.batch_size}: {batches} batches per epoch = "
                     f"{batches} optimizer steps per epoch")
    return "\n".join(lines)


def peak_memory_estimates(backbone: str, image_size: int, batch_size: int, patch_size: int, k: int,
                          grad_accum: int) -> dict[str, int]:
    """Estimated peak training memory (bytes) of one step of GD and of PatchGD with this patch
    size, k and ε, at the same batch size. The memory module caches estimates: a choice seen before
    is instant."""
    gd = estimate_peak("gd", backbone, image_size, batch_size)
    patchgd = estimate_peak("patchgd", backbone, image_size, batch_size, patch_size=patch_size, k=k,
                            grad_accum=grad_accum)
    return {f"GD, batch {batch_size}": gd.peak_bytes,
            f"PatchGD p={patch_size}, k={k}, batch {batch_size}": patchgd.peak_bytes}
