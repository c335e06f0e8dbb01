"""PANDA (Tables 3 and 4): the challenge's slides as kit datasets, and a labelled stand-in without them.

PANDA (Bulten et al. 2022, the Prostate cANcer graDe Assessment challenge) cannot be downloaded by
the kit. A user who has it points ``preprocess_panda`` at the challenge's folder:

    <root>/train.csv                 image_id, data_provider, isup_grade, gleason_score
    <root>/train_images/<id>.tiff    multi-resolution, JPEG-compressed tiles (tifffile + imagecodecs)

and gets, as Appendix B.1 says, every slide fitted into a 4096×4096 white canvas (aspect ratio kept,
centred, white borders), then that canvas shrunk to 2048 and 512: one dataset folder per size in the
kit's format (``train/`` and ``test/`` with images, manifest.csv and card.json; label = ISUP grade
0-5, ``num_classes`` 6, RGB, the train split's mean/std in the card), so ``train --data`` reads it.

Without PANDA, Tables 3 and 4 run on a stand-in of the same shapes, named "stand-in" wherever it
appears: UltraMNIST generated at 4096 px (digits scaled with the image), then shrunk to 2048 and 512
exactly as the slides are, so the three resolutions show the same images with less detail, as
PANDA's do. Its classes are UltraMNIST's 10 digit sums: ordinal, so QWK is meaningful, but 10
classes, not PANDA's 6. Scaled profiles divide every image size by ``profile.panda_scale`` and each
side of the patch grids by ``profile.panda_grid_scale``.

Tables 3 and 4 are ``results.PAPER["table3"]`` and ``["table4"]``; ``scale_row`` is their scaler in
``reproduce.SCALERS``, and ``write_panda_table`` writes them with the data's name in every row and,
for Table 3, the parameter counts and the inference latency.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import multiprocessing
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm

from . import gd, patchgd
from .data import SPLITS, UltraMNIST, check_int, kit_version, ensure_dataset
from .errors import KitError
from .files import atomic_write, building, locked, write_json
from .models import build_model, count_parameters
from .profiles import Profile, profile_dir
from .results import RowResult, run_folder, write_table
from .train import TrainConfig, autocast_dtype, use_channels_last, resolve_device

PANDA_COLUMNS = ("image_id", "data_provider", "isup_grade", "gleason_score")
PANDA_CLASSES = 6  # ISUP grade groups 0-5
PAPER_SIZES = (4096, 2048, 512)  # the canvas first: the smaller sizes are shrunk from it
WHITE = 255
# Shrinking the canvas averages the source pixels under each target pixel (PIL's box filter): no
# ringing at the white borders or on the stand-in's black background.
SHRINK = Image.Resampling.BOX
RECIPE_VERSION = 1  # bump when a change alters the bytes of the preprocessed images
PREPROCESS_CARD = "preprocess.json"
SKIPPED_REPORT = "skipped.csv"


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically: a rerun sees a finished file or none (level 1 encodes fast)."""
    tmp = path.with_name(f".{path.name}.partial")
    image.save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


# --- the challenge's files ---------------------------------------------------------------------

def read_train_csv(root) -> list[dict]:
    """The rows of ``<root>/train.csv``, checked: the four columns, unique ids, grades 0-5."""
    path = Path(root) / "train.csv"
    if not path.is_file():
        raise KitError(f"no train.csv in {root}; a PANDA folder holds train.csv and train_images/ "
                       "(the challenge's layout)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PANDA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise KitError(f"{path} lacks the column(s) {', '.join(missing)}; required: "
                           f"{', '.join(PANDA_COLUMNS)}")
        rows, seen = [], set()
        for line, row in enumerate(reader, start=2):
            image_id, grade = row["image_id"], (row["isup_grade"] or "").strip()
            if not grade.isdigit() or int(grade) >= PANDA_CLASSES:
                raise KitError(f"{path} line {line}: isup_grade {grade!r} of {image_id!r} is not "
                               f"allowed; allowed: an integer 0..{PANDA_CLASSES - 1}")
            if not image_id or image_id in seen:
                raise KitError(f"{path} line {line}: image_id {image_id!r} is empty or repeated; "
                               "each slide must be listed once")
            seen.add(image_id)
            rows.append({**{c: row[c] for c in PANDA_COLUMNS}, "isup_grade": int(grade)})
    if not rows:
        raise KitError(f"{path} lists no slides")
    return rows


def _pyramid(tif) -> list:
    """The slide's levels, finest first. A pyramid series has them as levels; PANDA's files store
    one page per level, which tifffile reads as one series each."""
    levels = tif.series[0].levels if len(tif.series[0].levels) > 1 else tif.series
    return sorted(levels, key=lambda s: s.shape[0] * s.shape[1], reverse=True)


def slide_level_shapes(path) -> list[tuple[int, ...]]:
    """The shape (H, W, C) of every level of a slide, level 0 (the finest) first."""
    return _read(path, lambda levels: [tuple(s.shape) for s in levels])


def choose_level(shapes: list[tuple[int, ...]], canvas: int) -> int:
    """The coarsest level whose longer side reaches the canvas (no upscaling), else level 0.

    The official script (pandas/get_images.py) means to pick this level, as we read it, but its
    loop stops at the coarsest level whenever that level's shorter side is below the target, as
    PANDA's 1/16 level nearly always is at 4096: its images are then upscaled from that level."""
    fitting = [i for i, shape in enumerate(shapes) if max(shape[:2]) >= canvas]
    return fitting[-1] if fitting else 0


def _read(path, use):
    """Open a slide and hand its levels to ``use``; any failure becomes a KitError naming it."""
    import tifffile  # only the PANDA path needs it

    path = Path(path)
    if not path.is_file():
        raise KitError(f"slide {path.name} is missing: no file {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            return use(_pyramid(tif))
    except KitError:
        raise
    except Exception as e:  # tifffile and the codecs raise many types for a damaged file
        raise KitError(f"slide {path.name} is unreadable: {type(e).__name__}: {e}") from e


def read_slide(path, level: int | None = None, canvas: int = PAPER_SIZES[0]) -> np.ndarray:
    """One level of a slide as uint8 (H, W, 3) RGB. ``level`` None picks it with choose_level."""
    if level is not None:
        level = check_int("level", level, 0)

    def decode(levels):
        shapes = [tuple(s.shape) for s in levels]
        chosen = choose_level(shapes, canvas) if level is None else level
        if chosen >= len(levels):
            raise KitError(f"slide {Path(path).name} has levels 0..{len(levels) - 1} "
                           f"(shapes {shapes}); level {chosen} is not one of them")
        image = levels[chosen].asarray()
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise KitError(f"slide {Path(path).name} level {chosen} is {image.dtype} {image.shape}; "
                           "expected uint8 RGB (H, W, 3) or RGBA")
        return image[:, :, :3]
    return _read(path, decode)


# --- preprocessing -----------------------------------------------------------------------------

def fit_to_canvas(image: np.ndarray, canvas: int) -> Image.Image:
    """Resize so the longer side is ``canvas`` (aspect ratio kept; Lanczos) and centre the result
    on a white canvas × canvas square."""
    h, w = image.shape[:2]
    scale = canvas / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    fitted = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)
    out = Image.new("RGB", (canvas, canvas), (WHITE,) * 3)
    out.paste(fitted, ((canvas - size[0]) // 2, (canvas - size[1]) // 2))
    return out


def split_slides(rows: list[dict], test_fraction: float, seed: int,
                 per_class_train: int | None = None, per_class_test: int | None = None
                 ) -> dict[str, list[dict]]:
    """A deterministic split stratified by ISUP grade: per grade, the slides sorted by id are
    shuffled by (seed, grade) and the first n · test_fraction (rounded half up) go to test. The
    caps keep the first n of each grade's train / test slides (for scaled runs). Row order in the
    CSV and the caps do not change which split a slide is in."""
    if not 0 < test_fraction < 1:
        raise KitError(f"test fraction {test_fraction!r} is not allowed; allowed: between 0 and 1")
    caps = {"train": per_class_train, "test": per_class_test}
    for split, cap in caps.items():
        if cap is not None:
            check_int(f"per_class_{split}", cap, 1)
    out = {split: [] for split in SPLITS}
    for grade in range(PANDA_CLASSES):
        slides = sorted((r for r in rows if r["isup_grade"] == grade), key=lambda r: r["image_id"])
        order = np.random.default_rng([seed, grade]).permutation(len(slides))
        cut = math.floor(len(slides) * test_fraction + 0.5)
        parts = {"test": [slides[i] for i in order[:cut]], "train": [slides[i] for i in order[cut:]]}
        for split in SPLITS:
            out[split] += parts[split][:caps[split]]
    empty = [split for split in SPLITS if not out[split]]
    if empty:
        raise KitError(f"the {empty[0]} split is empty: {len(rows)} slides are too few for test "
                       f"fraction {test_fraction}; allowed: a fraction that leaves slides in both")
    return out


# Worker state, set once per process by _init_worker.
_worker = {}


def _init_worker(root: str, out: str, sizes: tuple[int, ...], level: int | None) -> None:
    _worker.update(root=Path(root), out=Path(out), sizes=sizes, level=level)


def _image_path(out: Path, size: int, split: str, image_id: str) -> Path:
    return out / f"{size}px" / split / "images" / f"{image_id}.png"


def _preprocess_one(task: tuple[str, str]) -> tuple[str, bool, str | None]:
    """(image_id, written now, None) once the slide is on disk at every size, or (image_id, False,
    why it was skipped)."""
    split, image_id = task
    w = _worker
    paths = [_image_path(w["out"], size, split, image_id) for size in w["sizes"]]
    if all(p.is_file() for p in paths):
        return image_id, False, None  # finished by an earlier run
    canvas, *smaller = w["sizes"]
    try:
        image = fit_to_canvas(read_slide(w["root"] / "train_images" / f"{image_id}.tiff",
                                         w["level"], canvas), canvas)
    except KitError as e:
        return image_id, False, str(e)
    _save_png(image, paths[0])
    for size, path in zip(smaller, paths[1:]):
        _save_png(image.resize((size, size), SHRINK), path)
    return image_id, True, None


def _channel_stats(paths: list[Path]) -> dict:
    """Per-channel mean and std of uint8 RGB images, in [0, 1] units."""
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for path in paths:
        with Image.open(path) as im:
            x = np.asarray(im, dtype=np.float64).reshape(-1, 3) / 255
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0))
    return {"mean": mean.round(4).tolist(), "std": std.round(4).tolist()}


def _csv_text(rows: list[dict], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def preprocess_panda(root, out, sizes=PAPER_SIZES, level: int | None = None,
                     test_fraction: float = 0.2, seed: int = 0, per_class_train: int | None = None,
                     per_class_test: int | None = None, workers: int | None = None,
                     progress: bool = True) -> dict[int, Path]:
    """Preprocess PANDA (Appendix B.1) into ``out/<size>px/{train,test}/``; returns {size: folder}.

    ``sizes``: the canvas first (4096), then the sizes shrunk from it (2048, 512). ``level``: the
    pyramid level read, or None for choose_level's. The split is split_slides's (20% test, like the
    official code's 5 folds). Resumable: a rerun skips every slide written at all sizes. A slide
    that cannot be read is reported by name, skipped and listed with its reason in
    ``out/skipped.csv``; the cards count it. A rerun with other parameters is refused.
    """
    root, out = Path(root), Path(out)
    sizes = tuple(check_int("size", s, 1) for s in sizes)
    if not sizes or list(sizes) != sorted(set(sizes), reverse=True):
        raise KitError(f"sizes {sizes} are not allowed; allowed: distinct sizes, largest (the "
                       "canvas) first, e.g. 4096 2048 512")
    if level is not None:
        level = check_int("level", level, 0)
    seed = check_int("seed", seed, 0)
    workers = check_int("workers", min(2, os.cpu_count() or 1) if workers is None else workers, 1)
    rows = read_train_csv(root)
    if not (root / "train_images").is_dir():
        raise KitError(f"no train_images/ folder in {root}; it holds the slides as <image_id>.tiff")
    splits = split_slides(rows, test_fraction, seed, per_class_train, per_class_test)

    params = {"sizes": list(sizes), "level": "auto" if level is None else level,
              "test_fraction": test_fraction, "seed": seed, "per_class_train": per_class_train,
              "per_class_test": per_class_test, "recipe_version": RECIPE_VERSION}
    out.mkdir(parents=True, exist_ok=True)
    card_path = out / PREPROCESS_CARD
    if card_path.exists():
        existing = json.loads(card_path.read_text())
        differ = [f"{k}={existing.get(k)!r} (asked {v!r})" for k, v in params.items()
                  if existing.get(k) != v]
        if differ:
            raise KitError(f"{out} holds PANDA preprocessed with {', '.join(differ)}; use another "
                           "output folder or delete it")
    write_json(card_path, params)
    for size in sizes:
        for split in SPLITS:
            images = out / f"{size}px" / split / "images"
            images.mkdir(parents=True, exist_ok=True)
            for stale in images.glob(".*.partial"):  # left by a killed run
                stale.unlink()

    tasks = [(split, r["image_id"]) for split in SPLITS for r in splits[split]]
    init_args = (str(root), str(out), sizes, level)
    skipped, written = {}, 0
    with contextlib.ExitStack() as stack:
        if workers == 1:
            _init_worker(*init_args)
            results = map(_preprocess_one, tasks)
        else:
            pool = stack.enter_context(multiprocessing.Pool(workers, _init_worker, init_args))
            results = pool.imap(_preprocess_one, tasks)
        bar = stack.enter_context(tqdm(total=len(tasks), desc=f"PANDA slides → {sizes[0]} px",
                                       disable=not progress))
        for image_id, written_now, reason in results:
            written += written_now
            if reason is not None:
                skipped[image_id] = reason
                tqdm.write(f"skipped {image_id}: {reason}")
                bar.set_postfix(skipped=len(skipped))
            bar.update()

    report = _csv_text([{"image_id": i, "split": s, "reason": skipped[i]} for s, i in tasks if i in skipped],
                       ["image_id", "split", "reason"])
    folders = {size: out / f"{size}px" for size in sizes}
    cards = [folders[size] / split / "card.json" for size in sizes for split in SPLITS]
    finished_before = (not written and all(c.is_file() for c in cards)
                       and (out / SKIPPED_REPORT).is_file()
                       and (out / SKIPPED_REPORT).read_text() == report)
    _atomic_text(out / SKIPPED_REPORT, report)
    kept = {split: [r for r in splits[split] if r["image_id"] not in skipped] for split in SPLITS}
    if not kept["train"] or not kept["test"]:
        raise KitError(f"no slide could be read for the {'train' if not kept['train'] else 'test'} "
                       f"split ({len(skipped)} of {len(tasks)} skipped); the reasons are in "
                       f"{out / SKIPPED_REPORT}")
    if skipped:
        warnings.warn(f"{len(skipped)} of {len(tasks)} PANDA slides could not be read and were "
                      f"skipped; the list with reasons is {out / SKIPPED_REPORT}", stacklevel=2)
    if finished_before:  # the same slides as the cards describe: nothing to rewrite
        return folders
    stats = _channel_stats([_image_path(out, sizes[-1], "train", r["image_id"]) for r in kept["train"]])
    stats["computed_on"] = f"the train split at {sizes[-1]} px"
    for size in sizes:
        for split in SPLITS:
            _write_split_files(out / f"{size}px" / split, size, split, kept[split], params, stats,
                               {"listed": len(splits[split]), "written": len(kept[split]),
                                "skipped": len(splits[split]) - len(kept[split])})
    return folders


def _write_split_files(folder: Path, size: int, split: str, rows: list[dict], params: dict,
                       stats: dict, slides: dict) -> None:
    """manifest.csv and card.json of one PANDA split, each written atomically."""
    manifest = [{"image": f"images/{r['image_id']}.png", "label": r["isup_grade"], "digits": "[]",
                 "boxes": "[]", "image_id": r["image_id"], "data_provider": r["data_provider"],
                 "gleason_score": r["gleason_score"]} for r in rows]
    _atomic_text(folder / "manifest.csv", _csv_text(
        manifest, ["image", "label", "digits", "boxes", "image_id", "data_provider", "gleason_score"]))
    counts = np.bincount([r["isup_grade"] for r in rows], minlength=PANDA_CLASSES)
    write_json(folder / "card.json", {
        "dataset": "PANDA (Bulten et al. 2022), preprocessed as PatchGD Appendix B.1",
        "params": {**params, "split": split, "image_size": size},
        "num_classes": PANDA_CLASSES,
        "normalization": stats,
        "num_images": len(rows),
        "counts_per_class": {str(c): int(n) for c, n in enumerate(counts)},
        "slides": {**slides, "report": f"../../{SKIPPED_REPORT}"},
        "kit_version": kit_version(),
        "recipe": {
            "label": "ISUP grade 0-5 (train.csv isup_grade)",
            "level": "the coarsest pyramid level whose longer side reaches the canvas, else level 0"
                     if params["level"] == "auto" else f"pyramid level {params['level']}",
            "canvas": f"longer side resized to {params['sizes'][0]} px (Lanczos), centred on a "
                      "white square: aspect ratio kept",
            "smaller_sizes": "the canvas shrunk with PIL's box filter (area average)",
            "split": "per ISUP grade, slides sorted by id, shuffled by numpy default_rng([seed, "
                     "grade]); the first n * test_fraction (rounded half up) are test",
        },
    })


# --- the stand-in and the profile's datasets ---------------------------------------------------

def scaled_sizes(profile: Profile) -> dict[int, int]:
    """{paper size: this profile's size}: 4096, 2048 and 512 divided by ``profile.panda_scale``."""
    scale = profile.panda_scale
    if any(size % scale for size in PAPER_SIZES):
        raise KitError(f"panda_scale {scale} of profile {profile.name!r} is not allowed; allowed: a "
                       f"power of two up to 512 (it must divide {PAPER_SIZES})")
    return {size: size // scale for size in PAPER_SIZES}


def _shrunk(final: Path, derived: dict) -> bool:
    """True when `final` holds the split shrunk as `derived` says; one shrunk from another is refused."""
    if not final.exists():
        return False
    if json.loads((final / "card.json").read_text()).get("shrunk_from") != derived:
        raise KitError(f"{final} was shrunk from another dataset; delete it")
    return True


def _shrink_split(split_dir: Path, folder: Path, card: dict, size: int, derived: dict, progress: bool) -> None:
    """The split in `split_dir` with every image and box shrunk to `size`, into the empty `folder`."""
    (folder / "images").mkdir()
    original = card["params"]["image_size"]
    with open(split_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in tqdm(rows, desc=f"shrink {split_dir.name} {original}→{size} px", disable=not progress):
        with Image.open(split_dir / row["image"]) as im:
            _save_png(im.resize((size, size), SHRINK), folder / row["image"])
        boxes = json.loads(row["boxes"])
        row["boxes"] = json.dumps([[round(v * size / original) for v in box] for box in boxes],
                                  separators=(",", ":"))
    (folder / "manifest.csv").write_text(_csv_text(rows, list(rows[0])))
    card["params"]["image_size"] = size
    card["shrunk_from"] = derived
    write_json(folder / "card.json", card)


def shrink_dataset(source, size: int, progress: bool = True) -> Path:
    """A copy of the dataset folder ``source`` (kit format: train/ and test/) with every image
    shrunk to size × size by the same box filter as the PANDA canvas, boxes scaled to match.
    Made once, in the sibling folder ``<source>_box<size>px``; each split is made by one process at
    a time in a temporary folder and renamed, so it is complete or absent."""
    source = Path(source)
    target = source.with_name(f"{source.name}_box{size}px")
    for split in SPLITS:
        card = json.loads((source / split / "card.json").read_text())
        derived = {"folder": source.name, "image_size": card["params"]["image_size"],
                   "filter": "PIL box (area average)"}
        final = target / split
        if _shrunk(final, derived):
            continue
        target.mkdir(parents=True, exist_ok=True)
        with locked(target / f".{split}.lock", f"shrinking into {final}"):
            if _shrunk(final, derived):  # by another process since the look above
                continue
            with building(final) as tmp:
                _shrink_split(source / split, tmp, card, size, derived, progress)
    return target


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
    caps = (None, None) if profile.panda_scale == 1 else (profile.panda_per_class_train,
                                                          profile.panda_per_class_test)
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


def scale_row(profile: Profile, settings: dict) -> dict:
    """TrainConfig values of a Table 3 or 4 row (paper-scale ``settings``) at the profile's scale:
    its data, image and patch size, classes and epochs. reproduce.row_config calls it."""
    data = panda_data(profile, progress=False)
    paper_size = settings["image_size"]
    values = {"data": str(data.folders[paper_size]), "image_size": paper_size // profile.panda_scale,
              "num_classes": data.num_classes, "epochs": profile.panda_epochs,
              "warmup_epochs": profile.warmup_epochs}
    if settings["method"] == "patchgd":
        values["patch_size"] = scaled_patch(profile, paper_size, settings["patch_size"])
    return values


# --- Table 3's extra columns: parameters and latency -------------------------------------------

LATENCY_WARMUP = 2    # untimed passes first (cuDNN autotuning, allocator, caches)
LATENCY_REPEATS = 3   # timed passes, each synchronised; images/s = batch / mean seconds


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def precision(config: TrainConfig) -> str:
    """What "fp16" became on the device that ran: TrainConfig.amp is fp16 on CUDA, bf16 on a CPU."""
    if not config.amp:
        return "fp32"
    if resolve_device(config.device).type == "cuda":
        return "fp16 (CUDA autocast + loss scaling)"
    return "bf16 autocast (the CPU stand-in for fp16)"


@functools.cache
def paper_parameters_m(method: str, image_size: int, patch_size: int | None) -> float:
    """Millions of parameters of the ResNet50 model of a row built at the paper's scale with 6 classes,
    truncated to 2 decimals as the paper prints them (26.396 → 26.39)."""
    model = build_model(method, "resnet50", PANDA_CLASSES, image_size, patch_size)
    return math.floor(count_parameters(model) / 1e4) / 100


def measure_latency(config: TrainConfig, warmup: int = LATENCY_WARMUP,
                    repeats: int = LATENCY_REPEATS) -> dict:
    """Inference images/s of the run's model as the official code measures it: random images of the
    run's batch size on the device, no gradient, ``warmup`` untimed passes, then ``repeats`` timed
    ones, each ended by a device synchronisation. PatchGD infers g(fill(X)), every patch once."""
    device = resolve_device(config.device)
    model = build_model(config.method, config.backbone, config.num_classes, config.image_size,
                        config.patch_size).to(device).eval()
    if use_channels_last(config, device):  # as train() runs it
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = autocast_dtype(config, device)
    images = torch.rand(config.batch_size, 3, config.image_size, config.image_size, device=device)

    def infer() -> None:
        if config.method == "patchgd":
            patchgd.predict(model, images, fill_chunk=config.fill_chunk, amp_dtype=amp_dtype)
        else:
            gd.predict(model, images, amp_dtype=amp_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        infer()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        infer()
        seconds.append(time.perf_counter() - start)
    return {"images_per_s": config.batch_size / statistics.fmean(seconds), "device": device_name(device),
            "batch_size": config.batch_size, "precision": precision(config), "warmup": warmup,
            "repeats": repeats}


def run_latency(result: RowResult, profile: Profile) -> dict:
    """measure_latency for a row's run, kept in its store folder (``latency.json``) and measured
    again only on another device or with other passes."""
    path = run_folder(result.config, profile_dir(profile)) / "latency.json"
    setup = {"device": device_name(resolve_device(result.config.device)), "warmup": LATENCY_WARMUP,
             "repeats": LATENCY_REPEATS}
    if path.exists():
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in setup} == setup:
            return saved
    latency = measure_latency(result.config)
    write_json(path, latency)
    return latency


# --- writing Tables 3 and 4 --------------------------------------------------------------------

def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def write_panda_table(results: list[RowResult], folder, data: PandaData, profile: Profile,
                      footer: str = "") -> pd.DataFrame:
    """``table3`` or ``table4`` (.csv, .md) in ``folder`` through results.write_table, with the
    data's name in the title and in every row, the paper's settings of each row, and for Table 3
    the parameters and inference latency beside the paper's; ``footer`` ends the Markdown."""
    settings = [r.table.settings(r.row) for r in results]
    columns = {
        "data": [data.name] * len(results),
        "resolution (paper)": [s["image_size"] for s in settings],
        "patch (paper)": [s.get("patch_size") or "–" for s in settings],
        "sampling %": [_percent(s.get("sampling")) for s in settings],
        "max sampled %": [_percent(s["max_sampled"]) if "sampling" in s else "–" for s in settings],
        "precision": [precision(r.config) for r in results],
    }
    notes = [f"- data: {data.description}"]
    if profile.panda_grid_scale > 1:
        notes.append(f"- patch grids: each side is the paper's divided by {profile.panda_grid_scale} "
                     "(at least 2), so that ResNet50 PatchGD fits this profile's time; the 'scale' "
                     "column gives the patch used, the 'patch (paper)' column the paper's")
    notes.append("- fp16 rows: mixed precision (TrainConfig.amp): fp16 autocast with loss scaling on "
                 "CUDA, bf16 autocast on a CPU; the 'precision' column says which ran")
    if "params_m" in results[0].row.paper:
        latencies = [run_latency(r, profile) for r in results]
        columns.update({
            "paper params (M)": [f"{r.row.paper['params_m']:.2f}" for r in results],
            "params (M)": [f"{paper_parameters_m(s['method'], s['image_size'], s.get('patch_size')):.2f}"
                           for s in settings],
            "paper latency img/s": [f"{r.row.paper['latency_img_s']:.2f}" for r in results],
            "latency img/s": [f"{lat['images_per_s']:.2f}" for lat in latencies],
            "latency device": [lat["device"] for lat in latencies],
        })
        notes += [
            "- params (M): the ResNet50 models built here at the paper's sizes with 6 classes, "
            "truncated to 2 decimals as the paper prints them; the runs' own models differ in the "
            "head's last layer (their grid and classes)",
            f"- latency: inference images/s at this scale, measured as the official code does (random "
            f"images, no gradient, {LATENCY_WARMUP} warm-up passes, mean of {LATENCY_REPEATS} "
            "synchronised passes), batch = the run's batch, on the device named; the paper's: an "
            "A100 40 GB filled with images. The paper gives its fp16 rows the fp32 rows' latencies "
            "(39.04, 32.52); here each row runs in its own precision",
        ]
    title = results[0].table.title
    if data.name != "PANDA":
        title += f" — run on the {data.name} (UltraMNIST, 10 ordinal classes), not on PANDA"
    return write_table(results, folder, footer, title=title, columns=columns,
                       note="\n".join(notes) + "\n")


def plot_resolutions(data: PandaData, index: int = 0) -> Figure:
    """One test image of the data at its three sizes, drawn at the same display size."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    for ax, paper_size in zip(fig.subplots(1, len(PAPER_SIZES)), PAPER_SIZES):
        split = UltraMNIST(data.folders[paper_size], "test", cache=False)
        image = split.raw(index)
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(f"paper {paper_size} px, here {split.image_size} px", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{data.name}: test image {index}, label {split.labels[index]}")
    return fig
