"""Small things several test files build: a PatchGD model that runs in milliseconds, an optimizer that
records gradients, and a PANDA folder of synthetic slides in the challenge's layout (tifffile writes
JPEG-tiled pyramids). tests/ is on the path (its conftest.py), so `from tiny import ...` finds it."""
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

from patchgd_kit.core.patches import grid_shape

HEADER = "image_id,data_provider,isup_grade,gleason_score\n"


class TinyEncoder(nn.Module):
    """A small f_θ1 so the algorithm's tests run in milliseconds; the real backbones are tested below."""

    def __init__(self, s=8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten(), nn.Linear(16, s))

    def forward(self, x):
        return self.net(x)


class TinyPatchGD(nn.Module):
    def __init__(self, image_size=32, patch_size=8, s=8, classes=5):
        super().__init__()
        self.patch_size, self.grid = patch_size, grid_shape(image_size, patch_size)
        self.backbone = TinyEncoder(s)
        m, n = self.grid
        self.head = nn.Sequential(nn.Conv2d(s, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * m * n, classes))


class RecordingOptimizer(torch.optim.Optimizer):
    """Records the gradient at every step and leaves the parameters unchanged."""

    def __init__(self, params):
        super().__init__(params, {})
        self.steps = []

    def step(self, closure=None):
        self.steps.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                           for g in self.param_groups for p in g["params"]])



def slide_image(seed: int, height: int, width: int) -> np.ndarray:
    """White, with one coloured rectangle: JPEG keeps it close to the original."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 255, np.uint8)
    y, x = height // 4, width // 4
    image[y:3 * y, x:3 * x] = rng.integers(0, 200, 3)
    return image


def write_slide(path: Path, image: np.ndarray, levels: int = 3, subifds: bool = False) -> None:
    """PANDA's layout: one JPEG-tiled page per level, each 4x smaller; or, with subifds, a
    pyramid in sub-IFDs (the layout of other whole-slide converters)."""
    pyramid = [np.ascontiguousarray(image[::4 ** i, ::4 ** i]) for i in range(levels)]
    tiles = dict(tile=(16, 16), compression="jpeg", photometric="rgb")
    with tifffile.TiffWriter(path) as tif:
        if subifds:
            tif.write(pyramid[0], subifds=levels - 1, **tiles)
            for level in pyramid[1:]:
                tif.write(level, subfiletype=1, **tiles)
        else:
            for level in pyramid:
                tif.write(level, **tiles)


def make_root(root: Path, grades=(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5), broken=()) -> Path:
    """A PANDA folder with one slide per grade listed; ids in ``broken`` are corrupt or missing."""
    (root / "train_images").mkdir(parents=True)
    lines = [HEADER]
    for i, grade in enumerate(grades):
        image_id = f"slide{i:02d}"
        lines.append(f"{image_id},{'radboud' if i % 2 else 'karolinska'},{grade},3+3\n")
        path = root / "train_images" / f"{image_id}.tiff"
        if image_id == "slide03" and "corrupt" in broken:
            path.write_bytes(b"II*\x00" + bytes(range(256)) * 4)  # a TIFF header, then garbage
        elif image_id == "slide06" and "missing" in broken:
            continue
        else:
            write_slide(path, slide_image(i, 256 + 16 * (i % 8), 320 - 16 * (i % 8)))
    (root / "train.csv").write_text("".join(lines))
    return root
