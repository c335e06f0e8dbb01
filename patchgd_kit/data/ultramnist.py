"""UltraMNIST dataset folders (Appendix B.2, SPEC §2): a split written from ``digits``' generator, and
the Dataset that reads it (and every other dataset in the kit's format).

The same seed gives the same bytes (each image has its own
random stream derived from (seed, split, index), so the worker count and order do not matter).

On disk a split is ``<out>/<split>/`` with ``images/NNNNNN.png`` (grey, 8 bit; with ``tile``:
``images/NNNNNN.tif``, tiled TIFFs painted tile by tile, for gigapixel sides), ``manifest.csv``
(image, label, digits, boxes) and ``card.json`` (the parameters). It is written into a temporary
sibling folder and renamed at the end: a split folder either is complete or does not exist.

The Dataset reads any split in this format; a tiled split's items are ``tiled.TiledImage`` handles,
read a patch at a time by PatchGD (``tiled.collate`` batches them). Other datasets (PANDA, patchgd_kit/data/panda.py) store RGB
images and say so in their card: ``num_classes`` and ``normalization`` ({"mean": [r, g, b],
"std": [r, g, b]}); a card without them is UltraMNIST's (10 classes, grey, MNIST mean/std).
"""
from __future__ import annotations

import csv
import io
import importlib.metadata
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .digits import (HALF_SIZE_PROB, LAYOUT_RESTARTS, MAX_IMAGE_SIZE, MAX_TILED_IMAGE_SIZE, MIN_DIGIT_SIDE,
                     MIN_IMAGE_SIZE, MNIST_MEAN, MNIST_STD, NUM_CLASSES, PLACEMENT_TRIES, RECIPE_VERSION,
                     REFERENCE_SIZE, SCALE_FACTORS, SCALE_WEIGHTS, SPLITS, draw_layout, generate_image,
                     load_digit_pools, paint)
from .splitfiles import read_card, read_manifest
from .tiled import TiledImage, check_tile, normalize_uint8, write_tiled
from ..errors import KitError, check_int
from ..files import building, locked, write_json
from ..progress import bar_disabled

MAX_PER_CLASS = 100_000  # a bound on one command's work: the paper's split has 1,000 per class

# Shrinking the canvas averages the source pixels under each target pixel (PIL's box filter): no
# ringing at the white borders or on the stand-in's black background.
SHRINK = Image.Resampling.BOX


# --- a split on disk ---------------------------------------------------------------------------

def kit_version() -> str:
    try:
        return importlib.metadata.version("patchgd-kit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


# Worker state, set once per process by _init_worker: the pool is sent once, not with every task.
_worker = {}


def _init_worker(pool, folder: str, image_size: int, seed: int, split_id: int, min_digit_side: int,
                 tile: int | None) -> None:
    _worker.update(pool=pool, folder=Path(folder), image_size=image_size, seed=seed,
                   split_id=split_id, min_digit_side=min_digit_side, tile=tile)


def _write_one(index: int) -> dict:
    # Image `index` has label index % 10 (balanced classes) and its own random stream, so its bytes
    # depend only on (seed, split, index), never on which worker makes it or when.
    w = _worker
    rng = np.random.default_rng([w["seed"], w["split_id"], index])
    label = index % NUM_CLASSES
    if w["tile"]:  # gigapixel: painted a tile at a time, the image never whole in memory
        layout = draw_layout(rng, w["pool"], label, w["image_size"], min_digit_side=w["min_digit_side"])
        digits, boxes, name = layout.digits, layout.boxes, f"images/{index:06d}.tif"
        write_tiled(w["folder"] / name, w["image_size"], w["tile"], lambda *region: paint(layout, *region))
    else:
        image, digits, boxes = generate_image(rng, w["pool"], label, w["image_size"],
                                              min_digit_side=w["min_digit_side"])
        name = f"images/{index:06d}.png"
        # uint8 2-D arrays become grey ("L") PNGs; level 1 encodes ~1.6x faster than the default
        # and still shrinks the mostly black images well.
        Image.fromarray(image).save(w["folder"] / name, compress_level=1)
    return {"image": name, "label": label, "digits": json.dumps(digits, separators=(",", ":")),
            "boxes": json.dumps(boxes, separators=(",", ":"))}


def _existing_split(final: Path, params: dict) -> bool:
    """True when `final` holds a complete split made with `params`; one made with others is refused."""
    if not final.exists():
        return False
    existing = read_card(final)["params"]
    differ = [f"{k}={existing.get(k)!r} (asked {v!r})" for k, v in params.items() if existing.get(k) != v]
    if differ:
        raise KitError(f"{final} already holds a split made with {', '.join(differ)}; "
                       "use another output folder or delete it")
    return True


def _split_card(params: dict, pools: dict) -> dict:
    return {
        "dataset": "UltraMNIST, PatchGD variant (Gupta et al. 2023, Appendix B.2)",
        "params": params,
        "num_images": params["per_class"] * NUM_CLASSES,
        "counts_per_class": {str(c): params["per_class"] for c in range(NUM_CLASSES)},
        "digit_pools": {"used": params["split"], "sizes": {k: len(v[1]) for k, v in pools.items()},
                        "disjoint": True},
        "kit_version": kit_version(),
        "recipe": {
            "label": "sum of the digits, 0..9",
            "digits": "a sorted multiset of 3, 4 or 5 digits with that sum, drawn uniformly; "
                      "one random pool image per digit",
            "scale_factors": SCALE_FACTORS.tolist(),
            "scale_weights": SCALE_WEIGHTS.round(6).tolist(),
            "digit_side": f"max({params.get('min_digit_side', MIN_DIGIT_SIDE)}, round(28 * f * image_size / "
                          f"{REFERENCE_SIZE})), nearest neighbour; f = 1 becomes f = 0.5 "
                          f"with probability {HALF_SIZE_PROB}",
            "placement": f"uniform, inside the image, no two boxes intersect; "
                         f"{PLACEMENT_TRIES} tries per digit, then new scales for the whole "
                         f"image, at most {LAYOUT_RESTARTS} layouts (so large digits are "
                         "rarer in the images than their weights say)",
            "compositing": "black background, pixels added then clipped to 255",
            "random_stream": "numpy default_rng([seed, split (train 0, test 1), image index])",
        },
    }


def _write_split(folder: Path, pool, params: dict, workers: int, progress: bool) -> None:
    """The images and manifest.csv of a split, into the empty `folder`."""
    (folder / "images").mkdir()
    total = params["per_class"] * NUM_CLASSES
    init_args = (pool, str(folder), params["image_size"], params["seed"], SPLITS.index(params["split"]),
                 params.get("min_digit_side", MIN_DIGIT_SIDE), params.get("tile"))
    bar = dict(total=total, desc=f"UltraMNIST {params['split']} {params['image_size']}px",
               disable=bar_disabled(progress))
    if workers == 1:
        _init_worker(*init_args)
        rows = [_write_one(i) for i in tqdm(range(total), **bar)]
    else:
        with multiprocessing.Pool(workers, _init_worker, init_args) as procs:
            rows = list(tqdm(procs.imap(_write_one, range(total), chunksize=8), **bar))
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "digits", "boxes"])
        writer.writeheader()
        writer.writerows(rows)


def generate_split(out_dir, split: str, per_class: int, image_size: int, seed: int,
                   source: str = "bundled", root=None, workers: int | None = None,
                   progress: bool = True, download: bool = False, min_digit_side: int = MIN_DIGIT_SIDE,
                   tile: int | None = None) -> Path:
    """Write ``out_dir/<split>/`` (per_class images of each class) and return its path.

    ``source``, ``root`` and ``download`` pick the digit pool (see load_digit_pools);
    ``min_digit_side`` floors the digit side in px (the recipe: 4); ``tile`` (px) writes tiled TIFFs
    painted tile by tile instead of PNGs, for sides up to MAX_TILED_IMAGE_SIZE.

    A complete split with the same parameters is kept as it is (a rerun skips what is done); one
    with other parameters is refused, never mixed. One process at a time makes a split (a second
    one is refused); a killed one's partial folder is removed by the next.
    """
    if split not in SPLITS:
        raise KitError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    per_class = check_int("per_class", per_class, 1, MAX_PER_CLASS)
    image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_TILED_IMAGE_SIZE if tile else MAX_IMAGE_SIZE)
    seed = check_int("seed", seed, 0)
    min_digit_side = check_int("min_digit_side", min_digit_side, MIN_DIGIT_SIDE)
    if min_digit_side > image_size // 3:
        raise KitError(f"min_digit_side {min_digit_side} is too large for {image_size} px images; allowed: "
                       f"{MIN_DIGIT_SIDE}..{image_size // 3}")
    # More processes than cores only add memory.
    workers = check_int("workers", min(2, os.cpu_count() or 1) if workers is None else workers, 1,
                        os.cpu_count() or 1)
    if source not in ("bundled", "torchvision"):
        raise KitError(f"unknown digit source {source!r}; allowed: 'bundled', 'torchvision'")

    params = {"split": split, "per_class": per_class, "image_size": image_size, "seed": seed,
              "source": source, "recipe_version": RECIPE_VERSION}
    if min_digit_side != MIN_DIGIT_SIDE:  # recorded only when set, so existing splits stay valid
        params["min_digit_side"] = min_digit_side
    if tile is not None:
        params["tile"] = check_tile(image_size, tile)
    out_dir = Path(out_dir)
    final = out_dir / split
    if _existing_split(final, params):
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    with locked(out_dir / f".{split}.lock", f"generating {final}"):
        if _existing_split(final, params):  # made by another process since the look above
            return final
        pools = load_digit_pools(source, root, download)
        # Made in a hidden sibling on the same file system and renamed at the end: atomic.
        with building(final) as tmp:
            _write_split(tmp, pools[split], params, workers, progress)
            (tmp / "card.json").write_text(json.dumps(_split_card(params, pools), indent=2) + "\n")
    return final


def ensure_dataset(root, image_size: int, per_class_train: int, per_class_test: int, seed: int,
                   source: str = "bundled", mnist_root=None, workers: int | None = None,
                   progress: bool = True, download: bool = False, min_digit_side: int = MIN_DIGIT_SIDE) -> Path:
    """Generate the train and test splits if missing and return the dataset folder.

    The folder is a subfolder of ``root`` named by the parameters, so datasets of different
    profiles live side by side and a rerun finds (and skips) what it made before.
    """
    floor = f"_min{min_digit_side}px" if min_digit_side != MIN_DIGIT_SIDE else ""
    name = f"ultramnist_{image_size}px_{per_class_train}-{per_class_test}pc_seed{seed}_{source}{floor}"
    folder = Path(root) / name
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        generate_split(folder, split, per_class, image_size, seed, source, mnist_root, workers,
                       progress, download, min_digit_side)
    return folder


# --- reading it back -----------------------------------------------------------------------------

CACHE_LIMIT_BYTES = 4 * 2**30  # cache=None keeps a split's decoded images in memory up to this size


class UltraMNIST(torch.utils.data.Dataset):
    """A split in the kit's format: ``(float32 (3,S,S) normalised, label)`` per item.

    With cache=True decoded images stay in memory (N·S²·channels bytes; 2.6 GB for the paper's
    10,000 grey images of 512 px); None (the default) caches when that is at most
    CACHE_LIMIT_BYTES, so splits such as PANDA at 4096 px are read from disk each time.
    DataLoader worker processes each keep their own cache.
    """

    def __init__(self, root, split: str = "train", cache: bool | None = None):
        self.folder = Path(root) / split
        if not self.folder.is_dir():
            raise KitError(f"no UltraMNIST split at {self.folder}; generate it first "
                           "(ensure_dataset, or `python data_gen/ultramnist.py`)")
        card = read_card(self.folder)  # every field checked: type and range
        self._params = card["params"]
        self.image_size = self._params["image_size"]
        self.num_classes = card.get("num_classes", NUM_CLASSES)
        self.min_digit_side = self._params.get("min_digit_side", MIN_DIGIT_SIDE)  # the floor it was made with
        normalization = card.get("normalization", {"mean": [MNIST_MEAN], "std": [MNIST_STD]})
        self.mean, self.std = tuple(normalization["mean"]), tuple(normalization["std"])
        # The shape of one stored image: grey (S, S) or RGB (S, S, 3).
        self.image_shape = (self.image_size, self.image_size) + ((3,) if len(self.mean) == 3 else ())
        self.manifest = read_manifest(self.folder, card)  # each row's image checked inside the split
        if card.get("num_images", len(self.manifest)) != len(self.manifest):
            raise KitError(f"{self.folder / 'manifest.csv'} lists {len(self.manifest)} images but card.json says "
                           f"{card['num_images']}; the split is damaged: delete it and make it again")
        self.labels = [row["label"] for row in self.manifest]
        self.tiled = "tile" in self._params  # items are TiledImage handles, read a patch at a time
        self.cache = (not self.tiled and len(self.manifest) * np.prod(self.image_shape) <= CACHE_LIMIT_BYTES
                      if cache is None else cache)
        self._images = [None] * len(self.manifest)

    def __len__(self) -> int:
        return len(self.manifest)

    def tiled_image(self, i: int) -> TiledImage:
        """Image i of a tiled split as a handle: nothing is read until a patch is asked for."""
        params = self._params
        framed = dict(level=params["level"], fill=params["fill"], side=self.image_size) if params.get("framed") else {}
        image = TiledImage(self.manifest[i]["path"], mean=self.mean, std=self.std, **framed)
        if image.side != self.image_size:
            raise KitError(f"{image.path} is {image.side} px but {self.folder / 'card.json'} says "
                           f"{self.image_size}; the split is damaged: delete it and make it again")
        return image

    def raw(self, i: int) -> np.ndarray:
        """The image as stored, uint8 (S, S) grey or (S, S, 3) RGB, for plots (do not modify: it
        may be the cache). A tiled image is read whole: only for sides that fit in memory."""
        if self._images[i] is not None:
            return self._images[i]
        path = self.manifest[i]["path"]
        if self.tiled:
            return self.tiled_image(i).region(0, 0, self.image_size, self.image_size)
        try:
            with Image.open(path) as im:
                image = np.array(im)
        except PermissionError:
            raise
        except (OSError, SyntaxError, ValueError) as e:  # PIL's ways of saying "not a whole image"
            raise KitError(f"image {path} is unreadable ({e}); the split {self.folder} is damaged: delete it "
                           "and make it again (`generate` with the same seed gives the same images)") from e
        if image.shape != self.image_shape or image.dtype != np.uint8:
            raise KitError(f"{path} is {image.dtype} {image.shape}, expected uint8 "
                           f"{self.image_shape}")
        if self.cache:
            self._images[i] = image
        return image

    def __getitem__(self, i: int):
        if self.tiled:
            return self.tiled_image(i), self.labels[i]
        return normalize_uint8(torch.from_numpy(self.raw(i)), self.mean, self.std), self.labels[i]

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images uint8 (N, *image_shape) and labels int64 (N,), for loops that skip the
        DataLoader (normalise with normalize_uint8(images, ds.mean, ds.std))."""
        images = torch.from_numpy(np.stack([self.raw(i) for i in range(len(self))]))
        return images, torch.tensor(self.labels, dtype=torch.int64)


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically: a rerun sees a finished file or none (level 1 encodes fast)."""
    tmp = path.with_name(f".{path.name}.partial")
    image.save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def csv_text(rows: list[dict], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- shrinking a dataset folder ---------------------------------------------------------------

def _shrunk(final: Path, derived: dict) -> bool:
    """True when `final` holds the split shrunk as `derived` says; one shrunk from another is refused."""
    if not final.exists():
        return False
    if read_card(final).get("shrunk_from") != derived:
        raise KitError(f"{final} was shrunk from another dataset; delete it")
    return True


def _shrink_split(split_dir: Path, folder: Path, card: dict, size: int, derived: dict, progress: bool) -> None:
    """The split in `split_dir` with every image and box shrunk to `size`, into the empty `folder`."""
    (folder / "images").mkdir()
    original, rows = card["params"]["image_size"], []
    for row in tqdm(read_manifest(split_dir, card), desc=f"shrink {split_dir.name} {original}→{size} px",
                    disable=bar_disabled(progress)):
        with Image.open(row.pop("path")) as im:  # checked inside the split
            save_png(im.resize((size, size), SHRINK), folder / row["image"])
        boxes = [[round(v * size / original) for v in box] for box in row["boxes"]]
        rows.append({**row, "digits": json.dumps(row["digits"], separators=(",", ":")),
                     "boxes": json.dumps(boxes, separators=(",", ":"))})
    (folder / "manifest.csv").write_text(csv_text(rows, list(rows[0])))
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
        card = read_card(source / split)
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
