"""Notebook plumbing: run a notebook headless with checked parameters, pick a profile with single
values overridden, the training runs that notebooks 03 and 04 share, and the facts they print."""
from __future__ import annotations

from pathlib import Path
from typing import TextIO

from .data import UltraMNIST
from .errors import KitError
from .memory import estimate_peak
from .config import TrainConfig
from .methods import build_model, uses_patches
from .models import count_parameters
from .profiles import Profile, get_profile, profile_dataset, profile_dir, profile_weights
from .store import teaching_folder


def run_notebook(path, out, parameters: dict | None = None, *, cwd=None, kernel: str = "python3",
                 progress: bool = False, echo: TextIO | None = None) -> Path:
    """Execute the notebook at `path` with papermill into `out` and return `out`.

    papermill only warns about a parameter the notebook does not declare and runs on without it; here
    that is a KitError naming the allowed parameters, raised before anything runs. The kernel is
    named explicitly and the working directory is the notebook's folder unless `cwd` says otherwise.
    A failing cell raises papermill's PapermillExecutionError; `out` then holds the partial run.
    `progress` shows papermill's bar of cells; `echo` (such as sys.stdout) receives what the cells
    print, as they print it: which run is training, one line per epoch.
    """
    import papermill

    path, out = Path(path), Path(out)
    parameters = parameters or {}
    declared = papermill.inspect_notebook(str(path))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise KitError(f"{path.name} has no parameter(s) {', '.join(unknown)}; allowed: {', '.join(declared)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name=kernel,
                               cwd=str(cwd or path.parent), progress_bar=progress,
                               stdout_file=echo, stderr_file=echo)
    return out


def profile_with(name: str | None, **values) -> Profile:
    """The named profile (None: $KIT_PROFILE or cpu) with the values that are not None overridden."""
    return get_profile(name, **{field: value for field, value in values.items() if value is not None})


def training_run(profile: Profile, method: str, *, backbone: str, batch_size: int | None = None, grad_accum: int = 1,
                 seed: int = 0, device: str = "auto", data=None) -> tuple[TrainConfig, Path]:
    """The TrainConfig of a teaching run on the profile's UltraMNIST, and its run folder
    ``runs/<profile>/teaching/<method>-<backbone>-seed<seed>-<hash of the config>`` (store.teaching_folder): the same
    choices in notebooks 03 and 04 give the same folder, so 04 reads 03's finished run back.

    The profile gives the image and patch sizes, sampling, epochs, warm-up and the backbone's initial
    weights. ``batch_size`` None: 16, capped by the profile. ``data`` None: the profile's dataset
    (made on first use).
    """
    profile = profile.for_backbone(backbone)
    if batch_size is None:
        batch_size = min(16, profile.max_batch_size or 16)
    data = Path(data).resolve() if data else profile_dataset(profile)  # absolute: the run is found from anywhere
    config = TrainConfig(method=method, backbone=backbone, data=str(data),
                         image_size=profile.image_size, patch_size=profile.patch_size, sampling=profile.sampling,
                         max_sampled=profile.max_sampled, grad_accum=grad_accum, epochs=profile.epochs,
                         warmup_epochs=profile.warmup_epochs, batch_size=batch_size,
                         weights=profile_weights(profile, backbone), trunk_lr_scale=profile.trunk_lr_scale,
                         seed=seed, device=device)
    config.validate()
    return config, teaching_folder(config, profile_dir(profile))


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
