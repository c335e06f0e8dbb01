"""Rows not in the paper: GD's alternatives trained beside the paper's GD rows of Tables 1-3,
so that a table answers "why not checkpointing, or a smaller image?" with the same data, budget and
schedule.

- ``gd-checkpoint``: the GD row with the trunk activation-checkpointed. The same gradients as GD, so what
  changes is the batch the budget allows (the planner's, larger than GD's) and the speed.
- ``gd-downscaled``: the GD row on images resized to the largest side at which GD fits PatchGD's batch
  under the same budget (``altplan.downscaled_side_for``): it carries the PatchGD row's patch settings
  only so that the planner can find that batch; it trains no patches.

Streaming SGD (``streaming``: the seed's peer method, exact gradients tile by tile) on Table 3's
2048 and 4096 px rows, each beside the same GD row with BatchNorm frozen as streaming freezes it
(``gd-frozen-bn``): GD equals streaming only so. Streaming needs an image larger than its smallest usable
tile (ResNet50: 864 px), so a profile whose images are smaller does not train these rows and says so.

And a row that only PANDA can give: ``patchgd_fp16_full``, Table 3's best row (PatchGD-fp16,
patch 256, 24 GB) trained on the slides' full-resolution level, read a patch at a time from the tiled
TIFF, with no 4096 px downscale. It runs where PANDA is (``$PANDA_ROOT``); the stand-in has no such level.

The paper has no numbers for them: their ``paper`` dict is empty and their label says so. A profile
names the tables whose rows not in the paper it trains (``Profile.beyond``).
"""
from __future__ import annotations

from .numbers import PAPER, Row, Table

NOT_IN_PAPER = "not in the paper"
PATCH_SETTINGS = ("patch_size", "sampling", "max_sampled", "grad_accum")


def _alternatives(table: Table, gd_id: str, patchgd_id: str) -> tuple[Row, ...]:
    gd, patchgd = table.row(gd_id), table.row(patchgd_id)
    versus = {k: v for k, v in table.settings(patchgd).items() if k in PATCH_SETTINGS}
    suffix = gd_id.removeprefix("gd")
    return (Row(f"gd-checkpoint{suffix}", f"GD-checkpoint ({NOT_IN_PAPER})",
                {**gd.settings, "method": "gd-checkpoint"}, {}),
            Row(f"gd-downscaled{suffix}", f"GD-downscaled ({NOT_IN_PAPER})",
                {**gd.settings, **versus, "method": "gd-downscaled"}, {}))


def _streaming(table: Table, gd_id: str) -> tuple[Row, ...]:
    gd = table.row(gd_id)
    suffix = gd_id.removeprefix("gd")
    return (Row(f"streaming{suffix}", f"Streaming SGD ({NOT_IN_PAPER})", {**gd.settings, "method": "streaming"}, {}),
            Row(f"gd-frozen-bn{suffix}", f"GD, BatchNorm frozen ({NOT_IN_PAPER})",
                {**gd.settings, "method": "gd-frozen-bn"}, {}))


# A side that holds most of PANDA's level-0 slides whole (the largest are about 40,000 px a side; those
# are cropped, centred): the kit's choice, 8x the paper's largest canvas.
FULL_RESOLUTION_SIDE = 32768


def _full_resolution(table: Table, row_id: str, new_id: str) -> Row:
    """`row_id` as `new_id` on the slides' level 0 framed at FULL_RESOLUTION_SIDE (``full_resolution``: read lazily).
    Sampling 2%: k = 327 of the 16,384 cells of patch 256, about the patches in flight of the 4096 px
    row's planned batch (13 images × k 25); the paper's 10% (k = 1,638) fits 24 GB at no batch."""
    row = table.row(row_id)
    return Row(new_id, f"{row.label}, full resolution ({NOT_IN_PAPER})",
               {**row.settings, "image_size": FULL_RESOLUTION_SIDE, "sampling": 0.02, "full_resolution": True}, {})


def reads_full_resolution(settings: dict) -> bool:
    """Whether a row trains on PANDA's full-resolution level (only PANDA has one)."""
    return bool(settings.get("full_resolution"))


def _ultramnist(name: str) -> tuple[Row, ...]:
    return tuple(row for budget in ("16gb", "4gb")
                 for row in _alternatives(PAPER[name], f"gd_{budget}", f"patchgd_{budget}"))


BEYOND: dict[str, tuple[Row, ...]] = {
    "table1": _ultramnist("table1"),
    "table2": _ultramnist("table2"),
    "table3": _alternatives(PAPER["table3"], "gd_2048", "patchgd_2048")
    + _streaming(PAPER["table3"], "gd_2048") + _streaming(PAPER["table3"], "gd_fp16_4096")
    + (_full_resolution(PAPER["table3"], "patchgd_fp16_4096_p256", "patchgd_fp16_full"),),
}


def rows_of(table: Table, beyond: tuple[str, ...] = ()) -> tuple[Row, ...]:
    """The paper's rows of `table`, then its rows not in the paper when its name is in `beyond`."""
    return table.rows + (BEYOND.get(table.name, ()) if table.name in beyond else ())


def is_beyond(row: Row) -> bool:
    return not row.paper
