"""Gigapixel PatchGD: memory and time of one training batch on a tiled UltraMNIST image read
a patch at a time, against the image's side. Prints a table; asserts nothing.

    python benchmarks/bench_gigapixel.py                                  # 2,048 and 8,192 px, MobileNetV2
    python benchmarks/bench_gigapixel.py --sides 2048,8192,16384,65536 --backbones mobilenet_v2,resnet50
    python benchmarks/bench_gigapixel.py --sides 65536 --estimate-only    # the planner alone: seconds

Per side and backbone (patch 256, batch 1, k patches per inner iteration, ζ inner iterations):
- the planner's estimate of one step (``planner_estimate.estimate_peak``, GPU bytes allocated): lazily read
  (``lazy=True``: Z, the patches in flight and their work) and in memory (the fp32 image as an input);
- measured (``stepmeasure.measure_step``, a fresh process per row): peak RSS on a CPU, of the whole process
  (Python, torch and the model are the baseline column), or CUDA peak allocated on a GPU; seconds of
  the batch's fill of Z and of the whole batch (fill included). ``--in-memory`` measures the in-memory
  path too (sides up to 16,384: the fp32 image alone is 3 GiB there, 48 GiB at 65,536).

The images are UltraMNIST's recipe at that side (seed 0, label 9), written tile by tile into --data
(made once). A fill runs every patch through the backbone: 65,536 patches at 65,536 px, hours on a
CPU, so the large sides are opt-in. At 2,048 px the head's map is 1×1 and BatchNorm cannot train on
one image: that row uses batch 2 and says so.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit.planner import budget, estimate as planner_estimate, measure as stepmeasure  # noqa: E402
from patchgd_kit.data.digits import draw_layout, load_digit_pools, paint  # noqa: E402
from patchgd_kit.data.tiled import write_tiled  # noqa: E402

TILE = 256


def tiled_image(folder: Path, side: int) -> Path:
    """UltraMNIST's recipe at `side` px as a tiled TIFF (made once)."""
    path = folder / f"ultramnist_{side}px_seed0.tif"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        layout = draw_layout(np.random.default_rng([0, side]), load_digit_pools()["train"], 9, side)
        write_tiled(path, side, TILE, lambda *region: paint(layout, *region))
    return path


def estimates(backbone: str, side: int, args, batch: int) -> dict:
    common = dict(patch_size=args.patch, k=args.k, fill_chunk=args.fill_chunk)
    return {lazy: planner_estimate.estimate_peak("patchgd", backbone, side, batch, lazy=lazy, **common).peak_bytes
            for lazy in (True, False)}


def row(backbone: str, side: int, args) -> list[str]:
    batch, note = args.batch, ""
    try:
        est = estimates(backbone, side, args, batch)
    except planner_estimate.BatchCannotTrain:
        batch, note = 2, "batch 2: batch 1 cannot train (BatchNorm on the head's 1x1 map)"
        est = estimates(backbone, side, args, batch)
    cells = [f"{side:,}", f"{side * side / 1e9:.3f}", backbone, str(batch),
             budget.format_bytes(est[True]), budget.format_bytes(est[False])]
    if args.estimate_only:
        return cells + ["-"] * 4 + [note]
    path = tiled_image(Path(args.data), side)
    runs = {"lazy": stepmeasure.measure_step(path, backbone, patch_size=args.patch, k=args.k, batch_size=batch,
                                        inner_iterations=args.inner, fill_chunk=args.fill_chunk, device=args.device)}
    if args.in_memory and side <= 16384:
        runs["in memory"] = stepmeasure.measure_step(path, backbone, patch_size=args.patch, k=args.k, batch_size=batch,
                                                inner_iterations=args.inner, fill_chunk=args.fill_chunk,
                                                device=args.device, lazy=False)
    measured = "; ".join(f"{name} {budget.format_bytes(r['peak_bytes'])}" for name, r in runs.items())
    lazy = runs["lazy"]
    return cells + [measured, budget.format_bytes(lazy["baseline_bytes"]), f"{lazy['fill_seconds']:.1f}",
                    f"{lazy['batch_seconds']:.1f}", note]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default="2048,8192", help="image sides, comma-separated (default 2048,8192)")
    parser.add_argument("--backbones", default="mobilenet_v2", help="comma-separated: mobilenet_v2, resnet50")
    parser.add_argument("--patch", type=int, default=256, help="patch side (default 256)")
    parser.add_argument("--k", type=int, default=16, help="patches per image per inner iteration (default 16)")
    parser.add_argument("--inner", type=int, default=1, help="inner iterations ζ per batch (default 1)")
    parser.add_argument("--batch", type=int, default=1, help="images per batch (default 1)")
    parser.add_argument("--fill-chunk", type=int, default=256, help="patches per backbone call in the fill")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data", default="runs/gigapixel", help="folder for the tiled images (made once)")
    parser.add_argument("--in-memory", action="store_true", help="also measure the in-memory path (sides <= 16,384)")
    parser.add_argument("--estimate-only", action="store_true", help="the planner's estimates only: no image, no run")
    args = parser.parse_args()
    header = ["side", "Gpx", "backbone", "batch", "est. lazy", "est. in memory", "measured peak", "baseline",
              "s/fill", "s/batch", "note"]
    print(f"PatchGD, patch {args.patch}, k = {args.k}, ζ = {args.inner}, fill chunk {args.fill_chunk}, {args.device}; "
          "estimates: GPU bytes allocated; measured: " + ("CUDA peak allocated" if args.device.startswith("cuda")
                                                          else "peak RSS of the whole process"))
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for side in (int(s) for s in args.sides.split(",")):
        for backbone in args.backbones.split(","):
            print("| " + " | ".join(row(backbone, side, args)) + " |", flush=True)


if __name__ == "__main__":
    main()
