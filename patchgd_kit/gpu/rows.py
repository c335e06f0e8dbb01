"""The GPU check's plan: the rows it runs, each a configuration of the paper's at the paper's scale in
one section of the check (``SECTIONS``), in the order they run; and the same rows at a tiny scale for
the CPU (``dry_plan``). ``gpucheck`` runs them, ``gpureport`` writes what they measured.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from ..core.methods import uses_patches
from ..planner.budget import format_bytes

# What the check measures, one section each, in the order of the report.
SECTIONS = ("peak", "budget", "over-budget", "fp16-epoch", "speed", "latency", "slice")


@dataclass(frozen=True)
class Row:
    """One configuration to run in one section of the check."""
    section: str
    method: str
    backbone: str = "resnet50"
    image_size: int = 512
    batch_size: int | None = None   # None: the planner's batch under `budget`
    patch_size: int | None = None
    sampling: float = 0.25
    grad_accum: int = 1
    amp: bool = False
    budget: str | int | None = None
    num_classes: int = 10
    paper: float | None = None      # the paper's figure: its batch under the budget, or Table 3's img/s

    @property
    def name(self) -> str:
        patch = f"/{self.patch_size}/{self.sampling:.0%}" if uses_patches(self.method) else ""
        budget = f" @{self.budget if isinstance(self.budget, str) else format_bytes(self.budget)}" if self.budget else ""
        batch = f" B={self.batch_size}" if self.batch_size else ""
        return f"{self.method} {self.backbone} {self.image_size}{patch} {'fp16' if self.amp else 'fp32'}{batch}{budget}"


def _gd(section: str, backbone: str, size: int, batch=None, amp=False, **kw) -> Row:
    return Row(section, "gd", backbone, size, batch, amp=amp, num_classes=6 if size > 512 else 10, **kw)


def _pgd(section: str, backbone: str, size: int, batch=None, amp=False, **kw) -> Row:
    # Tables 1-2 (UltraMNIST 512, p 256, 25%) and Table 3 (PANDA 2048, p 128, 10%, ε = ζ = 11).
    preset = dict(patch_size=256, sampling=0.25) if size == 512 else dict(patch_size=128, sampling=0.1, grad_accum=11,
                                                                          num_classes=6)
    return Row(section, "patchgd", backbone, size, batch, amp=amp, **{**preset, **kw})


R50, MNV2 = "resnet50", "mobilenet_v2"


def paper_plan() -> list[Row]:
    """Every row of the check at the paper's scale, in the order they run (round-robin by section)."""
    peak = [_gd("peak", R50, 512, 8), _gd("peak", R50, 512, 32), _gd("peak", R50, 512, 32, True),
            _pgd("peak", R50, 512, 16), _pgd("peak", R50, 512, 64), _pgd("peak", R50, 512, 64, True),
            _gd("peak", MNV2, 512, 16), _gd("peak", MNV2, 512, 16, True),
            _pgd("peak", MNV2, 512, 64), _pgd("peak", MNV2, 512, 64, True),
            _gd("peak", R50, 2048, 1), _gd("peak", R50, 2048, 2), _gd("peak", R50, 2048, 2, True),
            _pgd("peak", R50, 2048, 4), _pgd("peak", R50, 2048, 14), _pgd("peak", R50, 2048, 14, True),
            _gd("peak", MNV2, 2048, 2), _pgd("peak", MNV2, 2048, 8)]
    # The paper fitted 1 image of GD and 14 of PatchGD at 2048 px under 16 GB; the planner says 2 and 19.
    budget = [_gd("budget", R50, 512, budget="4GB"), _pgd("budget", R50, 512, budget="4GB"),
              _gd("budget", R50, 2048, budget="16GB", paper=1), _pgd("budget", R50, 2048, budget="16GB", paper=14),
              _pgd("budget", MNV2, 512, budget="4GB")]
    over = [_gd("over-budget", R50, 512, budget="4GB"), _pgd("over-budget", R50, 2048, budget="16GB")]
    fp16 = [_gd("fp16-epoch", R50, 512, 8, True, budget="16GB"), _pgd("fp16-epoch", R50, 512, 8, True, budget="16GB")]
    speed = [f("speed", R50, 512, 16, amp) for amp in (False, True) for f in (_gd, _pgd)]
    latency = [_gd("latency", R50, 512, 32, paper=618.05), _pgd("latency", R50, 512, 32, patch_size=128, paper=521.42),
               _gd("latency", R50, 2048, 8, paper=39.04), _pgd("latency", R50, 2048, 8, paper=32.52),
               _gd("latency", R50, 2048, 8, True, paper=39.04), _pgd("latency", R50, 2048, 8, True, paper=32.52)]
    # A slice of the gpu profile: Table 2's PatchGD 16 GB row as reproduce trains it, a few
    # hundred images, one epoch: its images/s calibrate the profile's hour (gpuestimate).
    profile_slice = [_pgd("slice", MNV2, 512, budget="16GB")]
    groups = (peak, budget, over, fp16, profile_slice, speed, latency)
    return [row for ranks in itertools.zip_longest(*groups) for row in ranks if row is not None]


_DRY_PX = {512: 64, 2048: 128, 256: 32, 128: 16}  # image and patch sides at the dry scale


def dry_plan(rows: list[Row]) -> list[Row]:
    """The same rows at a tiny scale for the CPU, duplicates dropped: batch 2; 64 px, and 128 px for
    PatchGD's 2048-px rows (an 8×8 grid, gradients accumulated over ε = 2, another path than the
    2×2 grid's); sampling 50%, so ζ = 2. Budgets become "dry": the smallest that holds batch 2,
    found when the row runs."""
    scaled = [dataclasses.replace(r, image_size=_DRY_PX[r.image_size] if r.patch_size else 64,
                                  batch_size=r.batch_size and 2, patch_size=r.patch_size and _DRY_PX[r.patch_size],
                                  sampling=0.5, grad_accum=min(r.grad_accum, 2), budget=r.budget and "dry",
                                  num_classes=10, paper=None)
              for r in rows]
    return list(dict.fromkeys(scaled))
