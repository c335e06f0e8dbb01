"""Gigapixel images kept as tiled TIFFs and read a patch at a time, so memory depends on the patch, not
the image (PatchGD's promise).

- ``TiledImage``: a handle on one level of a tiled TIFF. ``region`` reads any rectangle by decoding
  only the tiles it touches. On disk and as read the image stays uint8. A square canvas of side ``side`` may frame a page of
  another shape (a PANDA slide): the page is centred, cropped or padded with ``fill``.
- ``LazyBatch``: B such handles behaving, for PatchGD, as a (B, 3, S, S) batch: ``.shape``,
  ``.device``, ``.to(device)`` and ``patches(image, a, b, p)``, the one method ``patches.read_patches``
  calls: patches x_ab normalised (float32, 3 channels) as they are read. ``collate`` makes one from Dataset items (and leaves tensor items to PyTorch's collate).
- ``write_tiled``: a tiled TIFF written tile by tile from a function that paints one tile, so the
  writer never holds the image; written to a temporary file and renamed (complete or absent).

Why page tiles rather than tifffile's zarr store (``imread(aszarr=True)``): zarr is not among the
kit's pinned packages, and a patch needs only what the page's index already gives: each tile's byte
offset and count (TIFF TileOffsets / TileByteCounts), one seek and read, and ``page.decode`` (any
compression tifffile and imagecodecs know, as PANDA's JPEG tiles). No new dependency, no chunk cache
to size, and a damaged tile is caught at the tile that is read, naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .digits import MNIST_MEAN, MNIST_STD
from ..errors import KitError
from ..files import atomic_write

TILE_MULTIPLE = 16  # the TIFF standard: tile sides are multiples of 16
CONVERT_HINT = ("convert it to a tiled TIFF, e.g. `vips tiffsave IN OUT --tile --tile-width 256 --tile-height 256 "
                "--compression deflate` or, if it fits in memory, `tifffile.imwrite(OUT, tifffile.imread(IN), "
                "tile=(256, 256), compression='zlib')`")


def normalize_uint8(images: torch.Tensor, mean=(MNIST_MEAN,), std=(MNIST_STD,)) -> torch.Tensor:
    """uint8 → float32 (..., 3, H, W): /255, then per channel (x - mean) / std. One mean (the
    default: MNIST's) means grey images (..., H, W), copied to 3 channels (the ImageNet backbones
    take RGB); three means RGB images (..., H, W, 3). Works on any device, so a training loop can
    keep the uint8 images on the GPU and normalise there."""
    x = images.float() / 255
    if len(mean) == 1:
        x = ((x - mean[0]) / std[0]).unsqueeze(-3)
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    stats = torch.tensor([mean, std], device=images.device)
    return ((x - stats[0]) / stats[1]).movedim(-1, -3).contiguous()


def _one_line(exc: Exception) -> str:
    """A library's message on one line (a KitError is one line: the CLI prints it as such)."""
    return " ".join(str(exc).split())


def pyramid(tif) -> list:
    """A TIFF's levels (series), finest first. A pyramid series has them as levels; PANDA's files
    store one page per level, which tifffile reads as one series each."""
    levels = tif.series[0].levels if len(tif.series[0].levels) > 1 else tif.series
    return sorted(levels, key=lambda s: s.shape[0] * s.shape[1], reverse=True)


class TiledImage:
    """Level `level` (0: the finest) of the tiled TIFF at `path`, framed on a square of side `side`
    (default: the page's side, which must then be square). Picklable: DataLoader workers reopen it."""

    def __init__(self, path, level: int = 0, mean=(MNIST_MEAN,), std=(MNIST_STD,), side: int | None = None,
                 fill: int = 0):
        self.path, self.level, self.mean, self.std, self.fill = Path(path), level, tuple(mean), tuple(std), fill
        self._tif = None
        page = self._page()
        self.height, self.width = page.imagelength, page.imagewidth
        self.samples = page.samplesperpixel
        if side is None and self.height != self.width:
            raise KitError(f"{self.path} is {self.height}x{self.width} px; allowed: a square image, or a side "
                           "to frame it on")
        self.side = self.height if side is None else side
        self.tile = (page.tilelength, page.tilewidth)
        self.tiles_across = -(-self.width // self.tile[1])
        # Where the page sits on the square canvas (negative: the page is cropped there).
        self.offset = ((self.side - self.height) // 2, (self.side - self.width) // 2)

    def _page(self):
        import tifffile  # only the tiled paths need it
        if self._tif is None:
            if not self.path.is_file():
                raise KitError(f"no image file {self.path}")
            try:
                self._tif = tifffile.TiffFile(self.path)
                levels = pyramid(self._tif)
            except Exception as e:  # tifffile raises many types for a file that is not a TIFF
                self.close()
                raise KitError(f"{self.path} is not a readable TIFF ({type(e).__name__}: {_one_line(e)})") from e
            if self.level >= len(levels):
                self.close()
                raise KitError(f"{self.path} has levels 0..{len(levels) - 1}; level {self.level} is not one of them")
            self._level_page = levels[self.level].keyframe
            self._check(self._level_page)
        return self._level_page

    def _check(self, page) -> None:
        if not page.is_tiled:
            self.close()
            raise KitError(f"{self.path} is not a tiled TIFF (it stores strips, so a patch would decode whole "
                           f"rows of the image); {CONVERT_HINT}")
        if page.dtype != np.uint8 or page.samplesperpixel not in (1, 3, 4) or page.imagedepth != 1:
            self.close()
            raise KitError(f"{self.path} holds {page.dtype} with {page.samplesperpixel} samples per pixel; "
                           "allowed: uint8 grey, RGB or RGBA")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(3, S, S): what the backbone sees."""
        return 3, self.side, self.side

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        self._tif = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tif": None, "_level_page": None}

    def _tile(self, row: int, col: int) -> np.ndarray:
        """Tile (row, col) of the page, uint8 (tile height, tile width, samples)."""
        page = self._page()
        index = row * self.tiles_across + col
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        fh = self._tif.filehandle
        fh.seek(offset)
        data = fh.read(count) if count else None
        try:
            if data is not None and len(data) != count:
                raise ValueError(f"{len(data)} of {count} bytes: the file is truncated")
            tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as e:  # the codecs raise many types for damaged bytes
            raise KitError(f"{self.path}: tile {index} (row {row}, column {col}) is corrupt "
                           f"({type(e).__name__}: {_one_line(e)}); replace the file (for a generated one: generate it "
                           "again, the same seed gives the same bytes)") from e
        if tile is None:  # a tile the writer left empty
            return np.full((*self.tile, self.samples), self.fill, np.uint8)
        return tile.reshape(*self.tile, self.samples)

    def region(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Canvas pixels [y0:y0+height, x0:x0+width], uint8 (h, w) grey or (h, w, 3) RGB; only the
        tiles the region touches are read."""
        channels = 1 if self.samples == 1 else 3
        out = np.full((height, width, channels), self.fill, np.uint8)
        (th, tw), (oy, ox) = self.tile, self.offset
        top, left = max(y0 - oy, 0), max(x0 - ox, 0)  # the region in page pixels
        bottom, right = min(y0 - oy + height, self.height), min(x0 - ox + width, self.width)
        for row in range(top // th, -(-bottom // th)) if top < bottom else ():
            for col in range(left // tw, -(-right // tw)) if left < right else ():
                tile = self._tile(row, col)
                ty0, ty1 = max(top, row * th), min(bottom, (row + 1) * th)
                tx0, tx1 = max(left, col * tw), min(right, (col + 1) * tw)
                out[ty0 + oy - y0:ty1 + oy - y0, tx0 + ox - x0:tx1 + ox - x0] = \
                    tile[ty0 - row * th:ty1 - row * th, tx0 - col * tw:tx1 - col * tw, :channels]
        return out[:, :, 0] if channels == 1 else out

class LazyBatch:
    """B TiledImages of one side and one normalisation, standing in for a (B, 3, S, S) tensor where
    PatchGD reads patches."""

    def __init__(self, images: list[TiledImage], device: torch.device | str = "cpu"):
        kinds = {(image.side, image.mean, image.std) for image in images}
        if len(kinds) != 1:
            raise KitError(f"a batch needs images of one side and normalisation; these have (side, mean, std) "
                           f"{sorted(kinds)}")
        self.images, self.device = images, torch.device(device)
        self.shape = torch.Size((len(images), *images[0].shape))

    def to(self, device, non_blocking: bool = False) -> LazyBatch:
        """The same handles, their patches delivered on `device` (nothing is read now)."""
        return LazyBatch(self.images, device)

    def patches(self, image: torch.Tensor, a: torch.Tensor, b: torch.Tensor, patch_size: int) -> torch.Tensor:
        """Patch x_ab of images[image] for each (image, a, b), normalised: float32 (len, 3, p, p) on the device."""
        first = self.images[0]
        if first.side % patch_size:
            raise KitError(f"{first.path}: image side {first.side} is not a multiple of the patch size "
                           f"{patch_size}; allowed: a patch size that divides {first.side}")
        raw = np.stack([self.images[i].region(y * patch_size, x * patch_size, patch_size, patch_size)
                        for i, y, x in zip(image.tolist(), a.tolist(), b.tolist(), strict=True)])
        # Normalised once per read, as uint8 on the device: the float copy is made where it is used.
        return normalize_uint8(torch.from_numpy(raw).to(self.device, non_blocking=True), first.mean, first.std)


def collate(items: list):
    """A DataLoader's collate: (LazyBatch, labels) for TiledImage items, PyTorch's default otherwise."""
    if isinstance(items[0][0], TiledImage):
        return LazyBatch([image for image, _ in items]), torch.tensor([label for _, label in items])
    return torch.utils.data.default_collate(items)


def check_tile(side: int, tile) -> int:
    """A tile side for a side × side image: a multiple of 16 (TIFF's rule) that divides the side."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < TILE_MULTIPLE or tile % TILE_MULTIPLE or side % tile:
        raise KitError(f"tile side {tile!r} is not allowed for a {side} px image; allowed: a multiple of "
                       f"{TILE_MULTIPLE} that divides {side}")
    return tile


def write_tiled(path, side: int, tile: int, paint: Callable[[int, int, int, int], np.ndarray]) -> None:
    """A grey uint8 side × side tiled TIFF (deflate) at `path`; `paint(y0, x0, h, w)` gives each tile,
    so the image is never whole in memory. Same tiles, same bytes: no date or software tag."""
    import tifffile
    check_tile(side, tile)
    tiles = (paint(y, x, tile, tile) for y in range(0, side, tile) for x in range(0, side, tile))
    atomic_write(Path(path), lambda tmp: tifffile.imwrite(
        tmp, tiles, shape=(side, side), dtype=np.uint8, tile=(tile, tile), compression="zlib",
        bigtiff=side * side >= 2**31, metadata=None, software=False))
