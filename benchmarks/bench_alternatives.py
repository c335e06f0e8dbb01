"""PatchGD and its alternatives side by side: training images/s and peak memory of one step of every
method of ``methods.METHODS``, each as a ratio to GD's. Prints figures; asserts nothing.

    python benchmarks/bench_alternatives.py [--backbone mobilenet_v2] [--image-size 128] [--batch 4]

Each method runs its own training step (``METHODS[name].train_batch``) on random images: PatchGD with
patch = image/2, 25% sampling (k = 1, ζ = 4); gd-downscaled at half the side. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA; on a CPU it is the planner's fake-tensor estimate of the
same step (marked "estimated"). Timings on a shared machine are noisy: run it on an idle one.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit import memory  # noqa: E402
from patchgd_kit.methods import METHODS, StepSettings, build_model  # noqa: E402
from patchgd_kit.patches import schedule_for  # noqa: E402


def settings_for(method: str, size: int) -> tuple[StepSettings, dict]:
    """The step's settings and the planner's extra arguments for a method at an image side."""
    if METHODS[method].patches:
        k, zeta = schedule_for(size, size // 2, 0.25, 1.0)
        return StepSettings(k=k, inner_iterations=zeta), {"patch_size": size // 2, "k": k}
    return StepSettings(input_side=size // 2), {"input_side": size // 2}


def bench(method: str, backbone: str, size: int, batch: int, device: torch.device, seconds: float) -> dict:
    settings, extra = settings_for(method, size)
    model = build_model(method, backbone, 10, size, extra.get("patch_size")).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    images, labels = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 10, (batch,), device=device)

    def step():
        METHODS[method].train_batch(model, images, labels, optimizer, settings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up; Adam's moments exist from here on, as in the planner's step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        step()
        count += 1
    images_s = count * batch / (time.perf_counter() - start)
    if device.type == "cuda":
        peak, how = torch.cuda.max_memory_allocated(device), "measured"
    else:
        peak = memory.estimate_peak(method, backbone, size, batch, **extra).peak_bytes
        how = "estimated"
    return {"method": method, "images_s": images_s, "peak_bytes": peak, "peak": how}


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
    rows = [bench(m, args.backbone, args.image_size, args.batch, device, args.seconds) for m in METHODS]
    gd = next(r for r in rows if r["method"] == "gd")
    print("| method | images/s | × GD | peak memory | × GD |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['images_s']:.2f} | {r['images_s'] / gd['images_s']:.2f} | "
              f"{memory.format_bytes(r['peak_bytes'])} ({r['peak']}) | {r['peak_bytes'] / gd['peak_bytes']:.2f} |")


if __name__ == "__main__":
    main()
