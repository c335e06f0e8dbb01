"""PANDA beyond the paper: the slides' full-resolution level as a dataset read a patch at a time.

``full_resolution_dataset`` writes manifests naming the slides themselves (no 4096 px downscale,
nothing copied): each item is level 0 (or a coarser level, as stored) framed on a white square, which
``tiled.TiledImage`` reads tile by tile for PatchGD (``data_gen/panda.py --full-resolution SIDE``).
The split is ``panda.split_slides``'s, so the same slides are train and test as in the paper's sizes.
"""
from __future__ import annotations

import json
from pathlib import Path

from .panda import (PANDA_CLASSES, RECIPE_VERSION, WHITE, channel_stats, read_slide, read_train_csv,
                    slide_level_shapes, split_slides)
from .tiled import TiledImage
from .ultramnist import SPLITS, csv_text, kit_version
from ..errors import KitError, check_int
from ..files import building, locked, write_json, write_text


def level_for_downsample(shapes: list[tuple[int, ...]], downsample: int) -> int:
    """The coarsest level of a slide (shapes finest first) that is at most `downsample` times smaller
    than level 0: the level a profile that divides every PANDA size by `downsample` reads, as stored."""
    longest = max(shapes[0][:2])
    return max(i for i, shape in enumerate(shapes) if longest / max(shape[:2]) <= downsample * 1.05)


def full_resolution_dataset(root, out, side: int, test_fraction: float = 0.2, seed: int = 0,
                            per_class_train: int | None = None, per_class_test: int | None = None,
                            level: int = 0) -> Path:
    """A dataset folder whose images are the slides' level 0 itself (or `level`, as stored), no 4096 px
    downscale: each item is a ``tiled.TiledImage`` framing the slide on a white `side` × `side` square
    (centred; cropped where the slide is larger), read a patch at a time by PatchGD. Nothing is
    copied: the manifests name the slides, relative to the slide folder the card names (``image_root``: the
    one place outside the dataset its reader opens). Same split as preprocess_panda; mean/std from the train
    slides' coarsest level. Each split is written whole or not at all; a slide that is not a tiled
    TIFF, or lacks the level, is refused, naming it."""
    root, out = Path(root), Path(out)
    side, level = check_int("side", side, 1), check_int("level", level, 0)
    rows = read_train_csv(root)
    splits = split_slides(rows, test_fraction, seed, per_class_train, per_class_test)
    slides = (root / "train_images").resolve()
    slide = {r["image_id"]: slides / f"{r['image_id']}.tiff" for r in rows}
    for r in splits["train"] + splits["test"]:
        TiledImage(slide[r["image_id"]], level=level, side=side, fill=WHITE).close()  # tiled, readable, level there
    stats = channel_stats(read_slide(slide[r["image_id"]], level=len(slide_level_shapes(slide[r["image_id"]])) - 1)
                           for r in splits["train"])
    stats["computed_on"] = "the train slides' coarsest level"
    params = {"image_size": side, "tile": "as stored", "level": level, "fill": WHITE, "framed": True,
              "test_fraction": test_fraction, "seed": seed, "recipe_version": RECIPE_VERSION,
              "image_root": str(slides)}  # the manifests' paths are relative to it, and stay inside it
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        if (out / split).exists():  # made before: the same parameters are kept, others refused
            if json.loads((out / split / "card.json").read_text())["params"] != {**params, "split": split}:
                raise KitError(f"{out / split} holds another dataset; use another output folder or delete it")
            continue
        manifest = [{"image": slide[r["image_id"]].name, "label": r["isup_grade"], "digits": "[]", "boxes": "[]",
                     "image_id": r["image_id"]} for r in splits[split]]
        with locked(out / f".{split}.lock", f"writing {out / split}"), building(out / split) as tmp:
            write_text(tmp / "manifest.csv", csv_text(manifest, ["image", "label", "digits", "boxes", "image_id"]))
            write_json(tmp / "card.json", {
                "dataset": "PANDA (Bulten et al. 2022) at full resolution: beyond the paper",
                "params": {**params, "split": split}, "num_classes": PANDA_CLASSES, "normalization": stats,
                "num_images": len(manifest), "kit_version": kit_version(),
                "recipe": {"image": f"level {level} of the slide, centred on a white {side} px square, read tile by "
                                    "tile"}})
    return out
