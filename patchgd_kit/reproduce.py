"""Reproduce the paper's figure and tables at a profile's scale.

- ``run_table("table1", profile, seeds)``: every row of a paper table (``results.PAPER``) as a run at
  the profile's scale, through the results store. The batch (and k) is the memory planner's answer at
  the paper's scale (512 px, patch 256, that backbone, that budget), capped by the profile's largest
  batch and its training set: a scaled run keeps the paper's memory regime, not its pixels.
- ``reproduce(profile, seeds, out)``: every numbered notebook (``notebooks/NN_*.ipynb``) headless with
  papermill, in order, then ``REPORT.md``. `python -m patchgd_kit reproduce` and `make reproduce` call it.
  Interrupted and rerun, it redoes only what is missing: finished runs come from the store, a
  half-finished one resumes from its last epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from . import gd, memory, panda, patchgd
from .data import MIN_DIGIT_SIDE, UltraMNIST
from .errors import KitError
from .files import atomic_write, check_writable_folder
from .models import build_model
from .profiles import Profile, get_profile, profile_dataset, profile_dir, profile_weights, runs_root
from .results import PAPER, RowResult, Table, grad_accum_of, is_finished, train_in_store, write_report
from .train import TrainConfig, use_channels_last, resolve_device

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


# --- the planner at the paper's scale -------------------------------------------------------------

def _planner_args(settings: dict) -> dict:
    args = {"method": settings["method"], "backbone": settings["backbone"], "image_size": settings["image_size"],
            "budget": settings["memory_budget"], "amp": settings.get("amp", False),
            "num_classes": settings["num_classes"]}
    if settings["method"] == "patchgd":
        args.update(patch_size=settings["patch_size"], sampling=settings["sampling"],
                    grad_accum=grad_accum_of(settings))
    return args


def paper_plan(settings: dict, cache: Path) -> dict:
    """The planner's batch size, k and estimated peak for a row at the paper's scale.

    Kept in the JSON file `cache`: planning takes seconds per row and every notebook asks. The
    planner's source is part of the key, so a changed planner plans again."""
    args = _planner_args(settings)
    planner = hashlib.sha256(Path(memory.__file__).read_bytes()).hexdigest()[:12]
    key = json.dumps({**args, "planner": planner}, sort_keys=True)
    cache = Path(cache)
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in known:
        plan = memory.plan(args.pop("method"), args.pop("backbone"), args.pop("image_size"), args.pop("budget"),
                           **args)
        known[key] = {"batch_size": plan.batch_size, "k": plan.k, "estimated_peak_bytes": plan.estimated_peak_bytes,
                      "estimator": plan.estimator}
        cache.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(known, indent=1, sort_keys=True)
        atomic_write(cache, lambda tmp: Path(tmp).write_text(text))
    return known[key]


# --- a paper row at a profile's scale ---------------------------------------------------------------

def _ultramnist_scale(profile: Profile, settings: dict) -> dict:
    """The paper's UltraMNIST (512 px, patch 256, 100 epochs) at the profile's size for the row's
    backbone: the same 2×2 grid."""
    profile = profile.for_backbone(settings["backbone"])
    return {"data": str(profile_dataset(profile, progress=False)), "image_size": profile.image_size,
            "patch_size": profile.patch_size, "epochs": profile.epochs, "warmup_epochs": profile.warmup_epochs}


# How a profile scales each dataset's runs: TrainConfig overrides (data, sizes, epochs).
SCALERS = {"ultramnist": _ultramnist_scale, "panda": panda.scale_row}


def scaled_batch(planned: int, profile: Profile, train_images: int) -> int:
    """The planner's batch at the paper's scale times the profile's batch_scale (at least 1), capped
    by the profile's largest batch and the training set: one factor for every row keeps the ratios
    between the budgets' batches, the regime the paper compares."""
    batch = max(1, round(planned * profile.batch_scale))
    return min(batch, profile.max_batch_size or batch, train_images)


def row_config(table: Table, row, profile: Profile, seed: int = 0) -> tuple[TrainConfig, dict, str]:
    """(TrainConfig, the planner's answer at the paper's scale, the scale in words) of a paper row."""
    settings = table.settings(row)
    plan = paper_plan(settings, profile_dir(profile) / "plans.json")
    if table.dataset not in SCALERS:
        raise KitError(f"{table.name} runs on {table.dataset!r} data, which this kit cannot scale yet; "
                       f"allowed: {', '.join(SCALERS)}")
    scaled = SCALERS[table.dataset](profile, settings)
    train_set = UltraMNIST(scaled["data"], "train", cache=False)
    train_images = len(train_set)
    test_images = len(UltraMNIST(scaled["data"], "test", cache=False))
    batch = scaled_batch(plan["batch_size"], profile, train_images)
    fields = {k: v for k, v in {**settings, **scaled}.items() if k in TRAIN_FIELDS}
    fields["grad_accum"] = grad_accum_of(fields)  # ε = ζ of the scaled grid
    config = TrainConfig(**{**fields, "batch_size": batch, "seed": seed, "trunk_lr_scale": profile.trunk_lr_scale,
                            "weights": profile_weights(profile.for_backbone(settings["backbone"]),
                                                       settings["backbone"], progress=False)})
    config.validate()
    patch = f", patch {config.patch_size}" if config.method == "patchgd" else ""
    floor = f", digits ≥ {train_set.min_digit_side} px" if train_set.min_digit_side != MIN_DIGIT_SIDE else ""
    factor = f"; batch = planned × {profile.batch_scale:g}" if profile.batch_scale != 1 else ""
    trunk_lr = f"; trunk lr × {config.trunk_lr_scale:g}" if config.trunk_lr_scale != 1 else ""
    scale = (f"{config.image_size} px{patch}{floor}; {train_images} train / {test_images} test images; "
             f"{config.epochs} epochs{factor}{trunk_lr}")
    return config, plan, scale


def run_table(name: str, profile: Profile | str | None = None, seeds: int | None = None, *,
              rows: tuple[str, ...] | None = None, progress: bool = True) -> list[RowResult]:
    """Every row of paper table `name` (or the rows with the ids `rows`), each with seeds 0..seeds-1,
    trained or read back from the profile's store. Prints which run is which as it goes."""
    table = PAPER[name]
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    seeds = seeds or profile.seeds
    chosen = [table.row(r) for r in rows] if rows else list(table.rows)
    folder = profile_dir(profile)
    results, total = [], len(chosen) * seeds
    for i, row in enumerate(chosen):
        config, plan, scale = row_config(table, row, profile)
        result = RowResult(table, row, config, plan, scale,
                           test_images=len(UltraMNIST(config.data, "test", cache=False)))
        for seed in range(seeds):
            run = dataclasses.replace(config, seed=seed)
            state = "from the store" if is_finished(run, folder) else "training"
            k = f", k {run.schedule()[0]}" if run.method == "patchgd" else ""
            if progress:
                print(f"[{i * seeds + seed + 1}/{total}] {table.name}: {row.label} "
                      f"{row.settings.get('memory_budget', '')}, seed {seed} (batch {run.batch_size}{k}): {state}",
                      flush=True)
            result.runs.append(train_in_store(run, folder, progress=progress))
        results.append(result)
    return results


# --- how long the paper profile takes --------------------------------------------------------------

# The one GPU speed the paper gives: ResNet50 (GD) inference on 512 px images on an A100 40 GB.
A100_RESNET50_512_IMG_S = PAPER["table3"].row("gd_512").paper["latency_img_s"]
# The paper profile's images per class and epochs for each dataset (Profile fields).
PAPER_SIZE_FIELDS = {"ultramnist": ("per_class_train", "per_class_test", "epochs"),
                     "panda": ("panda_per_class_train", "panda_per_class_test", "panda_epochs")}


@functools.lru_cache(maxsize=None)
def inference_speed(method: str, backbone: str, image_size: int, patch_size: int | None, device: str = "auto",
                    batch: int = 16, repeats: int = 3) -> float:
    """Inference images/s of a freshly built model on this machine, measured now."""
    config = TrainConfig(method=method, backbone=backbone, image_size=image_size, patch_size=patch_size,
                         device=device)
    dev = resolve_device(device)
    model = build_model(method, backbone, config.num_classes, image_size, patch_size).to(dev).eval()
    if use_channels_last(config, dev):  # as train() runs it
        model = model.to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, image_size, image_size, device=dev)
    predict = functools.partial(patchgd.predict, model) if method == "patchgd" else functools.partial(gd.predict, model)
    predict(images)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for _ in range(repeats):
        predict(images)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return batch * repeats / (time.perf_counter() - start)


def paper_gpu_hours(results: list[RowResult]) -> tuple[float, str]:
    """Estimated A100 hours of these rows under the `paper` profile (one seed), and how.

    An estimate, not a measurement, built so that the load on a shared machine cancels out: a row's
    A100 inference speed is the paper's ResNet50 figure times the speed of the row's model relative
    to ResNet50, both measured here now at the run's size (pixel count scaled to the paper's); its
    training speed follows from the ratio of training to evaluation images/s within the same run."""
    paper = get_profile("paper")
    seconds = 0.0
    for r in results:
        c = r.config
        paper_size = r.table.settings(r.row)["image_size"]
        relative = (inference_speed(c.method, c.backbone, c.image_size, c.patch_size, c.device)
                    / inference_speed("gd", "resnet50", c.image_size, None, c.device))
        gpu_eval = A100_RESNET50_512_IMG_S * relative * (512 / paper_size) ** 2
        run_eval = statistics.fmean(r.test_images / row["eval_seconds"] for run in r.runs for row in run["history"])
        gpu_train = gpu_eval * r.mean_over_epochs("train_images_per_s") / run_eval
        train, test, epochs = (getattr(paper, f) for f in PAPER_SIZE_FIELDS[r.table.dataset])
        seconds += epochs * c.num_classes * (train / gpu_train + test / gpu_eval)
    basis = ("estimated, not measured: the paper's A100 inference speed for ResNet50 at 512 px "
             f"({A100_RESNET50_512_IMG_S} images/s, Table 3), scaled to each row's model by their speed ratio "
             "measured here, and to training by each run's own ratio of training to evaluation speed; the "
             "paper profile's images and epochs, one seed. It assumes those ratios carry over to the GPU: a "
             "rough guide only")
    return seconds / 3600, basis


def paper_hours_footer(results: list[RowResult]) -> str:
    """The tables' closing line: the estimated A100 hours of these rows under the `paper` profile."""
    hours, basis = paper_gpu_hours(results)
    coarser = any(r.config.method == "patchgd" and r.config.image_size // r.config.patch_size
                  < r.table.settings(r.row)["image_size"] // r.table.settings(r.row)["patch_size"] for r in results)
    bound = (" The scaled PatchGD runs have coarser patch grids than the paper's, so read it as a lower bound."
             if coarser else "")
    return f"**The paper profile** (these rows, one seed): about {hours:.0f} A100 hours ({basis}).{bound}\n"


# --- every notebook, headless -----------------------------------------------------------------------

def numbered_notebooks(folder: Path = NOTEBOOKS, only: list[str] | None = None) -> list[Path]:
    """``NN_*.ipynb`` in `folder`, in order; `only`: the numbers to keep ("05", "06")."""
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = sorted(set(only) - {p.name[:2] for p in paths})
        if unknown:
            raise KitError(f"no notebook numbered {', '.join(unknown)} in {folder}; allowed: "
                           f"{', '.join(p.name[:2] for p in paths)}")
        paths = [p for p in paths if p.name[:2] in only]
    if not paths:
        raise KitError(f"no numbered notebooks (NN_*.ipynb) in {folder}")
    return paths


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the duration (the notebooks' kernels inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def reproduce(profile: str | None = None, seeds: int | None = None, out: str | Path | None = None, *,
              folder: Path = NOTEBOOKS, only: list[str] | None = None, progress: bool = True) -> Path:
    """Run the numbered notebooks headless into ``<out>/<profile>/`` (out: $KIT_RUNS or runs/) and
    write REPORT.md there. Each notebook gets the parameters it declares among profile, seeds and
    interactive (False); every one must declare `profile`. Returns the report's path."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from .notebook import run_notebook
    profile = get_profile(profile)
    if profile.name == "paper" and not torch.cuda.is_available():
        raise KitError("profile 'paper' (512 px, 10,000 images, 100 epochs per run) needs a CUDA GPU; "
                       "allowed here: smoke, cpu (the notebooks state the paper profile's GPU hours)")
    seeds = profile.seeds if seeds is None else seeds
    if seeds < 1:
        raise KitError(f"seeds {seeds} must be at least 1")
    root = Path(out).resolve() if out else runs_root().resolve()
    target = root / profile.name
    paths = numbered_notebooks(folder, only)
    check_writable_folder(target)  # before the first notebook: --out or $KIT_RUNS may be a file, or read-only
    given = {"profile": profile.name, "seeds": seeds, "interactive": False}
    timings = []
    start = time.perf_counter()
    with _environment(KIT_RUNS=str(root), KIT_PROFILE=profile.name):
        for i, path in enumerate(paths, 1):
            declared = papermill.inspect_notebook(str(path))
            if "profile" not in declared:
                raise KitError(f"{path.name} declares no `profile` parameter; every numbered notebook must")
            parameters = {k: v for k, v in given.items() if k in declared}
            executed = target / "notebooks" / path.name
            if progress:
                print(f"== notebook {i}/{len(paths)}: {path.name} "
                      f"({', '.join(f'{k}={v!r}' for k, v in parameters.items())})", flush=True)
            began = time.perf_counter()
            try:
                run_notebook(path, executed, parameters, cwd=folder, progress=progress,
                             echo=sys.stdout if progress else None)
            except PapermillExecutionError as e:
                raise KitError(f"{path.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}; the partial "
                               f"notebook is {executed}; rerun to resume (finished runs are kept)") from e
            timings.append((path.name, time.perf_counter() - began))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    title = (f"Profile **{profile.name}**: {profile.description}. Seeds: {seeds}. Device: {device}. "
             f"Made by `python -m patchgd_kit reproduce` on {datetime.date.today()} in "
             f"{(time.perf_counter() - start) / 60:.1f} min (runs already in the store are read back, not timed): "
             + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in timings) + ".\n")
    report = write_report(target, title)
    if progress:
        print(f"report: {report}", flush=True)
    return report
