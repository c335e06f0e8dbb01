"""PANDA (Tables 3 and 4): the challenge's slides as kit datasets.

PANDA (Bulten et al. 2022, the Prostate cANcer graDe Assessment challenge) cannot be downloaded by
the kit. A user who has it points ``preprocess_panda`` at the challenge's folder:

    <root>/train.csv                 image_id, data_provider, isup_grade, gleason_score
    <root>/train_images/<id>.tiff    multi-resolution, JPEG-compressed tiles (tifffile + imagecodecs)

and gets, as Appendix B.1 says, every slide fitted into a 4096×4096 white canvas (aspect ratio kept,
centred, white borders), then that canvas shrunk to 2048 and 512: one dataset folder per size in the
kit's format (``train/`` and ``test/`` with images, manifest.csv and card.json; label = ISUP grade
0-5, ``num_classes`` 6, RGB, the train split's mean/std in the card), so ``train --data`` reads it.

``data.shrink_dataset`` shrinks any dataset folder by the same box filter: without PANDA, Tables 3 and 4
run on UltraMNIST made at 4096 px and shrunk so (``scaling.panda_data``). This module only makes
datasets: it knows nothing of models, training or tables.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .tiled import pyramid
from .ultramnist import SHRINK, SPLITS, csv_text, kit_version, save_png
from ..errors import KitError, check_int
from ..files import write_json, write_text
from ..progress import bar_disabled

PANDA_COLUMNS = ("image_id", "data_provider", "isup_grade", "gleason_score")
PANDA_CLASSES = 6  # ISUP grade groups 0-5
PAPER_SIZES = (4096, 2048, 512)  # the canvas first: the smaller sizes are shrunk from it
WHITE = 255
RECIPE_VERSION = 1  # bump when a change alters the bytes of the preprocessed images
PREPROCESS_CARD = "preprocess.json"
SKIPPED_REPORT = "skipped.csv"


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
            return use(pyramid(tif))
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
    save_png(image, paths[0])
    for size, path in zip(smaller, paths[1:]):
        save_png(image.resize((size, size), SHRINK), path)
    return image_id, True, None


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def channel_stats(images) -> dict:
    """Per-channel mean and std of uint8 RGB images (an iterable of (H, W, 3) arrays), in [0, 1] units."""
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for image in images:
        x = image.astype(np.float64).reshape(-1, 3) / 255
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0))
    return {"mean": mean.round(4).tolist(), "std": std.round(4).tolist()}


def _check_arguments(sizes, level, seed, workers) -> tuple[tuple[int, ...], int | None, int, int]:
    sizes = tuple(check_int("size", s, 1) for s in sizes)
    if not sizes or list(sizes) != sorted(set(sizes), reverse=True):
        raise KitError(f"sizes {sizes} are not allowed; allowed: distinct sizes, largest (the "
                       "canvas) first, e.g. 4096 2048 512")
    if level is not None:
        level = check_int("level", level, 0)
    seed = check_int("seed", seed, 0)
    workers = check_int("workers", min(2, os.cpu_count() or 1) if workers is None else workers, 1)
    return sizes, level, seed, workers


def _claim_output(out: Path, params: dict) -> None:
    """Make `out` this preprocessing's folder (a rerun with other parameters is refused), its image
    folders made and cleared of a killed run's partial files."""
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
    for size in params["sizes"]:
        for split in SPLITS:
            images = out / f"{size}px" / split / "images"
            images.mkdir(parents=True, exist_ok=True)
            for stale in images.glob(".*.partial"):  # left by a killed run
                stale.unlink()


def _process_slides(tasks: list[tuple[str, str]], init_args: tuple, workers: int,
                    progress: bool) -> tuple[dict[str, str], int]:
    """Every (split, image_id) through _preprocess_one: ({image_id: why skipped}, slides written now)."""
    skipped, written = {}, 0
    with contextlib.ExitStack() as stack:
        if workers == 1:
            _init_worker(*init_args)
            results = map(_preprocess_one, tasks)
        else:
            pool = stack.enter_context(multiprocessing.Pool(workers, _init_worker, init_args))
            results = pool.imap(_preprocess_one, tasks)
        bar = stack.enter_context(tqdm(total=len(tasks), desc=f"PANDA slides → {init_args[2][0]} px",
                                       disable=bar_disabled(progress)))
        for image_id, written_now, reason in results:
            written += written_now
            if reason is not None:
                skipped[image_id] = reason
                tqdm.write(f"skipped {image_id}: {reason}")
                bar.set_postfix(skipped=len(skipped))
            bar.update()
    return skipped, written


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
    sizes, level, seed, workers = _check_arguments(sizes, level, seed, workers)
    rows = read_train_csv(root)
    if not (root / "train_images").is_dir():
        raise KitError(f"no train_images/ folder in {root}; it holds the slides as <image_id>.tiff")
    splits = split_slides(rows, test_fraction, seed, per_class_train, per_class_test)
    params = {"sizes": list(sizes), "level": "auto" if level is None else level,
              "test_fraction": test_fraction, "seed": seed, "per_class_train": per_class_train,
              "per_class_test": per_class_test, "recipe_version": RECIPE_VERSION}
    _claim_output(out, params)
    tasks = [(split, r["image_id"]) for split in SPLITS for r in splits[split]]
    skipped, written = _process_slides(tasks, (str(root), str(out), sizes, level), workers, progress)
    report = csv_text([{"image_id": i, "split": s, "reason": skipped[i]} for s, i in tasks if i in skipped],
                       ["image_id", "split", "reason"])
    folders = {size: out / f"{size}px" for size in sizes}
    cards = [folders[size] / split / "card.json" for size in sizes for split in SPLITS]
    finished_before = (not written and all(c.is_file() for c in cards)
                       and (out / SKIPPED_REPORT).is_file()
                       and (out / SKIPPED_REPORT).read_text() == report)
    write_text(out / SKIPPED_REPORT, report)
    kept = {split: [r for r in splits[split] if r["image_id"] not in skipped] for split in SPLITS}
    if not kept["train"] or not kept["test"]:
        raise KitError(f"no slide could be read for the {'train' if not kept['train'] else 'test'} "
                       f"split ({len(skipped)} of {len(tasks)} skipped); the reasons are in "
                       f"{out / SKIPPED_REPORT}")
    if skipped:
        warnings.warn(f"{len(skipped)} of {len(tasks)} PANDA slides could not be read and were "
                      f"skipped; the list with reasons is {out / SKIPPED_REPORT}", stacklevel=2)
    if not finished_before:  # else: the same slides as the cards describe, nothing to rewrite
        _write_cards(out, sizes, splits, kept, params)
    return folders


def _write_cards(out: Path, sizes: tuple[int, ...], splits: dict, kept: dict, params: dict) -> None:
    stats = channel_stats(_png(_image_path(out, sizes[-1], "train", r["image_id"])) for r in kept["train"])
    stats["computed_on"] = f"the train split at {sizes[-1]} px"
    for size in sizes:
        for split in SPLITS:
            _write_split_files(out / f"{size}px" / split, size, split, kept[split], params, stats,
                               {"listed": len(splits[split]), "written": len(kept[split]),
                                "skipped": len(splits[split]) - len(kept[split])})


def _write_split_files(folder: Path, size: int, split: str, rows: list[dict], params: dict,
                       stats: dict, slides: dict) -> None:
    """manifest.csv and card.json of one PANDA split, each written atomically."""
    manifest = [{"image": f"images/{r['image_id']}.png", "label": r["isup_grade"], "digits": "[]",
                 "boxes": "[]", "image_id": r["image_id"], "data_provider": r["data_provider"],
                 "gleason_score": r["gleason_score"]} for r in rows]
    write_text(folder / "manifest.csv", csv_text(
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
