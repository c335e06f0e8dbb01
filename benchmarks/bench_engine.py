"""Throughput of the engine at the smoke and cpu profile sizes. Prints figures; asserts nothing.

    python benchmarks/bench_engine.py [--profiles smoke cpu] [--backbones resnet50 mobilenet_v2]

For each profile size and backbone: training images/s of GD and PatchGD (one Algorithm 1 batch per
step: fill + ζ inner iterations, ε = 1), fill_z images/s against the backbone's plain no-grad throughput on
the same patches already cut into one contiguous batch (the limit for filling), and the generator's
images/s. Both methods step the Adam every run trains with (`optim.adam`: fused on a CPU; torch's
default for-loop Adam would cost PatchGD at ε = 1 four slow steps a batch where GD pays one). Timings on a shared machine are noisy: run it on an idle one; the first line says
the threads and the load average.
"""
import os
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import bench as bench_generate  # noqa: E402
from patchgd_kit.core import gd, patchgd  # noqa: E402
from patchgd_kit.core.methods import build_model  # noqa: E402
from patchgd_kit.core.patches import grid_shape, inner_iterations, patch_view, patches_per_iteration  # noqa: E402
from patchgd_kit.runs.profiles import get_profile  # noqa: E402
from patchgd_kit.runs.config import TrainConfig, use_channels_last  # noqa: E402
from patchgd_kit.runs.optim import adam  # noqa: E402

CPU = torch.device("cpu")


def timed(step, images: int, min_seconds: float = 3.0, warmup: int = 1) -> float:
    """Images per second of `step`, repeated until `min_seconds` have passed."""
    for _ in range(warmup):
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        step()
        count += 1
    return count * images / (time.perf_counter() - start)


def bench_backbone(profile_name: str, backbone: str, batch: int) -> dict:
    profile = get_profile(profile_name)
    size, p = profile.image_size, profile.patch_size
    channels_last = use_channels_last(TrainConfig(backbone=backbone), torch.device("cpu"))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 10, (batch,))

    gd_model = build_model("gd", backbone, 10, size).to(memory_format=fmt).train()
    gd_opt = adam(gd_model.parameters(), 1e-3, CPU)
    gd_ips = timed(lambda: gd.train_batch(gd_model, images, labels, gd_opt), batch)

    model = build_model("patchgd", backbone, 10, size, p).to(memory_format=fmt).train()
    opt = adam(model.parameters(), 1e-3, CPU)
    m, n = grid_shape(size, p)
    k, zeta = patches_per_iteration(profile.sampling, m * n), inner_iterations(profile.sampling, profile.max_sampled, m * n)
    pgd_ips = timed(lambda: patchgd.train_batch(model, images, labels, opt, k=k, inner_iterations=zeta, grad_accum=1), batch)

    model.eval()
    cut = patch_view(images, p).flatten(0, 1).contiguous()  # every patch, cut once, outside the timing
    with torch.no_grad():
        plain_ips = timed(lambda: model.backbone(cut), batch)
    fill_ips = timed(lambda: patchgd.fill_z(model.backbone, images, p), batch)
    return {"profile": profile_name, "image": size, "patch": p, "backbone": backbone, "batch": batch,
            "channels_last": channels_last, "k": k, "zeta": zeta,
            "gd_train_img_s": round(gd_ips, 2), "patchgd_train_img_s": round(pgd_ips, 2),
            "fill_img_s": round(fill_ips, 2), "plain_nograd_img_s": round(plain_ips, 2),
            "fill_over_plain": round(fill_ips / plain_ips, 3), "patchgd_over_gd": round(pgd_ips / gd_ips, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["smoke", "cpu"])
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-generator", action="store_true", help="leave out the generator's figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = [bench_backbone(p, b, args.batch) for p in args.profiles for b in args.backbones]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.no_generator:
        return
    for p in args.profiles:
        profile = get_profile(p)
        print(json.dumps({"generator": bench_generate(profile.image_size, 20, 2)}))
    print(json.dumps({"generator": bench_generate(512, 100, 2)}))


if __name__ == "__main__":
    main()
