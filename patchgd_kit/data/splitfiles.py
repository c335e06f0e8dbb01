"""A split's own files read and checked before anything is trusted: ``card.json`` against the type and
range of every field the kit reads, ``manifest.csv`` row by row.

A split is closed: every image the manifest names is a relative path that, symlinks resolved, stays
inside the split folder (or inside the image folder its card names in ``params.image_root``: PANDA's
slides read in place, ``pandafull.full_resolution_dataset``). Nothing outside is opened. Either file read
with a UTF-8 byte-order mark reads as without one; a card larger than MAX_CARD_BYTES, or nested past
what Python parses, and a manifest field over csv's limit are refused on one line.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path, PurePath

from .digits import MAX_TILED_IMAGE_SIZE, NUM_CLASSES
from ..errors import KitError

MAX_CARD_BYTES = 2**20  # the kit's cards are a few KB
MAX_CLASSES = 1000
COLUMNS = ("image", "label", "digits", "boxes")


def _damaged(folder: Path, why: str) -> KitError:
    return KitError(f"{folder / 'card.json'} {why}; the split {folder} is damaged: delete it and make it again")


def _load_card(folder: Path) -> dict:
    path = folder / "card.json"
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise _damaged(folder, f"is {path.stat().st_size:,} bytes (allowed: at most {MAX_CARD_BYTES:,})")
        card = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as e:
        if isinstance(e, KitError):
            raise
        raise KitError(f"{folder} is not a complete split (card.json unreadable: {e}); "
                       "delete the folder and generate it again") from e
    except RecursionError as e:
        raise _damaged(folder, "is nested deeper than a card can be") from e
    if not isinstance(card, dict):
        raise _damaged(folder, f"is a JSON {type(card).__name__}, not an object")
    return card


def _is_int(value, lowest: int, highest: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lowest <= value <= highest


def _check_field(folder: Path, name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise _damaged(folder, f"has {name} {json.dumps(value)[:80]}; allowed: {allowed}")


def _check_normalization(folder: Path, value) -> None:
    def numbers(v) -> bool:
        return (isinstance(v, list) and len(v) in (1, 3)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))
    ok = (isinstance(value, dict) and numbers(value.get("mean")) and numbers(value.get("std"))
          and len(value["mean"]) == len(value["std"]) and all(s > 0 for s in value["std"]))
    _check_field(folder, "normalization", value, ok, '{"mean": [1 or 3 finite numbers], "std": [as many, each > 0]}')


def _check_params(folder: Path, params) -> None:
    _check_field(folder, "params", params, isinstance(params, dict), "an object")
    checks = {  # field: (required, ok, allowed)
        "image_size": (True, lambda v: _is_int(v, 1, MAX_TILED_IMAGE_SIZE), f"an integer in 1..{MAX_TILED_IMAGE_SIZE}"),
        "min_digit_side": (False, lambda v: _is_int(v, 1, MAX_TILED_IMAGE_SIZE), "an integer >= 1"),
        "tile": (False, lambda v: v == "as stored" or _is_int(v, 16, MAX_TILED_IMAGE_SIZE),
                 f'an integer in 16..{MAX_TILED_IMAGE_SIZE} or "as stored"'),
        "framed": (False, lambda v: isinstance(v, bool), "true or false"),
        "level": (True, lambda v: _is_int(v, 0, 64), "an integer in 0..64"),
        "fill": (True, lambda v: _is_int(v, 0, 255), "an integer in 0..255"),
        "image_root": (False, lambda v: isinstance(v, str) and os.path.isabs(v), "an absolute path"),
    }
    framed_only = {"level", "fill"}  # read only to frame a slide; a preprocessed split records level "auto"
    for name, (required, ok, allowed) in checks.items():
        if (name in params or required) and (name not in framed_only or params.get("framed") is True):
            _check_field(folder, f"params.{name}", params.get(name), ok(params.get(name)), allowed)


def read_card(folder: Path) -> dict:
    """The split's card.json, checked: every field the kit reads has its type and range."""
    card = _load_card(Path(folder))
    _check_params(folder, card.get("params"))
    if "num_classes" in card:
        _check_field(folder, "num_classes", card["num_classes"], _is_int(card["num_classes"], 2, MAX_CLASSES),
                     f"an integer in 2..{MAX_CLASSES}")
    if "num_images" in card:
        _check_field(folder, "num_images", card["num_images"], _is_int(card["num_images"], 1, 2**31),
                     "an integer >= 1")
    if "normalization" in card:
        _check_normalization(folder, card["normalization"])
    return card


def _image_path(root: Path, real_root: str, name: str, where: str) -> Path:
    """The real path of the image `name`, checked to be a relative path inside `root` (symlinks
    resolved) and a file; `where` (the manifest's line) names it otherwise."""
    allowed = f"allowed: a path relative to {root}, inside it"
    if not name or PurePath(name).is_absolute() or ".." in PurePath(name).parts:
        raise KitError(f"{where}: image {name[:200]!r} is not a relative path inside the split; {allowed}")
    real = os.path.realpath(root / name)
    if os.path.commonpath([real, real_root]) != real_root:
        raise KitError(f"{where}: image {name[:200]!r} leads outside {root} (to {real}, through a symlink); {allowed}")
    if not os.path.isfile(real):
        raise KitError(f"{where}: missing image {root / name}")
    return Path(real)


def _parse_row(row: dict, num_classes: int) -> dict:
    """label, digits and boxes of a row, typed; ValueError (or TypeError) saying which is wrong."""
    parsed = {**row, "label": int(row["label"]), "digits": json.loads(row["digits"]), "boxes": json.loads(row["boxes"])}
    if not 0 <= parsed["label"] < num_classes:
        raise ValueError(f"label {parsed['label']} is outside the allowed 0..{num_classes - 1}")
    digits, boxes = parsed["digits"], parsed["boxes"]
    if not (isinstance(digits, list) and all(_is_int(d, 0, 9) for d in digits)):
        raise ValueError(f"digits {row['digits'][:40]!r} is not a list of digits 0..9")
    if not (isinstance(boxes, list) and all(isinstance(b, list) and len(b) == 4 and
                                            all(_is_int(v, 0, MAX_TILED_IMAGE_SIZE) for v in b) for b in boxes)):
        raise ValueError(f"boxes {row['boxes'][:40]!r} is not a list of [x0, y0, x1, y1] boxes")
    return parsed


def read_manifest(folder: Path, card: dict) -> list[dict]:
    """The rows of the split's manifest.csv, each with its label, digits and boxes typed and `path`, the
    image's checked real path inside the split. A bad row is refused, naming its line."""
    path = Path(folder) / "manifest.csv"
    root = Path(card["params"].get("image_root", folder))  # the split's folder, unless its card names another
    real_root = os.path.realpath(root)
    num_classes = card.get("num_classes", NUM_CLASSES)
    if not path.is_file():
        raise KitError(f"missing manifest {path}; the split is incomplete, generate it again")
    rows, reader = [], None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = set(COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise KitError(f"corrupt manifest {path}: missing columns {sorted(missing)}")
            for row in reader:
                parsed = _parse_row(row, num_classes)
                parsed["path"] = _image_path(root, real_root, row["image"], f"{path} line {reader.line_num}")
                rows.append(parsed)
    except (TypeError, ValueError, csv.Error, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        if isinstance(e, KitError):
            raise
        # csv fails on a line before counting it; the other errors are in a row it has read
        line = (reader.line_num if reader else 0) + isinstance(e, csv.Error)
        raise KitError(f"corrupt manifest {path} line {line}: {str(e)[:200]}") from e
    if not rows:
        raise KitError(f"corrupt manifest {path}: no images listed")
    return rows
