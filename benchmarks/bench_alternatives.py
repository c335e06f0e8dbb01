"""PatchGD and its alternatives side by side: training images/s and peak memory of one step of every
method of ``methods.METHODS``, each as a ratio to GD's. Prints figures; asserts nothing.

    python benchmarks/bench_alternatives.py [--backbone mobilenet_v2] [--image-size 128] [--batch 4]

Each method runs its own training step (``latency.training_speed``) on random images: PatchGD with
patch = image/2, 25% sampling (k = 1, ζ = 4); gd-downscaled at half the side. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA; on a CPU it is the planner's fake-tensor estimate of the
same step (marked "estimated"). Timings on a shared machine are noisy: run it on an idle one.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit.planner import budget, estimate as planner_estimate  # noqa: E402
from patchgd_kit.report.latency import training_speed  # noqa: E402
from patchgd_kit.core.methods import METHODS  # noqa: E402
from patchgd_kit.core.patches import schedule_for  # noqa: E402


def bench(method: str, backbone: str, size: int, batch: int, seconds: float) -> dict:
    """Images/s of the method's own training step, and its peak memory (measured on CUDA, else estimated)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    images_s = training_speed(method, backbone, size, batch, seconds=seconds)  # patch and side: size / 2
    patch = size // 2 if METHODS[method].patches else None
    side = size // 2 if "downscaled_side" in METHODS[method].needs else None
    if torch.cuda.is_available():
        return {"method": method, "images_s": images_s, "peak_bytes": torch.cuda.max_memory_allocated(),
                "peak": "measured"}
    extra = {"patch_size": patch, "k": schedule_for(size, patch, 0.25, 1.0)[0]} if patch else {"input_side": side}
    peak = planner_estimate.estimate_peak(method, backbone, size, batch, **extra).peak_bytes
    return {"method": method, "images_s": images_s, "peak_bytes": peak, "peak": "estimated"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per method")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; {args.backbone} at "
          f"{args.image_size} px, batch {args.batch}")
    # streaming needs images larger than its smallest tile (864 px): benchmarks/bench_streaming.py
    rows = [bench(m, args.backbone, args.image_size, args.batch, args.seconds) for m in METHODS if m != "streaming"]
    gd = next(r for r in rows if r["method"] == "gd")
    print("| method | images/s | × GD | peak memory | × GD |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['images_s']:.2f} | {r['images_s'] / gd['images_s']:.2f} | "
              f"{budget.format_bytes(r['peak_bytes'])} ({r['peak']}) | {r['peak_bytes'] / gd['peak_bytes']:.2f} |")


if __name__ == "__main__":
    main()
