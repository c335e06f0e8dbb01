"""Where one PatchGD batch's time goes (Algorithm 1 at the bench's sizes). Prints figures; asserts nothing.

    python benchmarks/profile_step.py [--profile cpu] [--backbones resnet50 mobilenet_v2] [--batch 8]
                                      [--threads N] [--optimizer fused|foreach] [--ops]

Each part of one batch is timed on its own, median of `--repeats` (after one warm-up), same model, same
batch: the fill (Algorithm 2), and per inner iteration the gather of the k patches, the backbone forward
and backward on B·k patches, the scatter into Z, the head forward and backward on Z, the optimizer step;
then the whole `patchgd.train_batch` and GD's `gd.train_batch` on the same images. "rest" is the whole
batch less the parts: Python, autograd bookkeeping, allocation. `--ops` adds torch.profiler's top ops of
the whole PatchGD batch (self CPU time). Timings on a shared machine are noisy: compare within one run.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit.core import gd, patchgd  # noqa: E402
from patchgd_kit.runs.config import TrainConfig, use_channels_last  # noqa: E402
from patchgd_kit.core.methods import build_model  # noqa: E402
from patchgd_kit.core.patches import gather_patches, grid_shape, inner_iterations, patches_per_iteration, sample_schedule  # noqa: E402
from patchgd_kit.runs.profiles import get_profile  # noqa: E402


CLOCK = time.perf_counter  # --clock cpu: the process's CPU time (with --threads 1: less moved by other jobs)


def med_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return 1000 * statistics.median(times)


def make_opt(params, kind: str) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, 1e-3, fused=kind == "fused", foreach=None if kind == "fused" else True)


def profile(profile_name: str, backbone: str, batch: int, repeats: int, opt_kind: str, ops: bool,
            image_size: int | None = None, patch_size: int | None = None) -> dict:
    prof = get_profile(profile_name)
    size, p = image_size or prof.image_size, patch_size or prof.patch_size
    fmt = torch.channels_last if use_channels_last(TrainConfig(backbone=backbone), torch.device("cpu")) \
        else torch.contiguous_format
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 10, (batch,))
    m, n = grid_shape(size, p)
    k = patches_per_iteration(prof.sampling, m * n)
    zeta = inner_iterations(prof.sampling, prof.max_sampled, m * n)

    model = build_model("patchgd", backbone, 10, size, p).to(memory_format=fmt).train()
    opt = make_opt(model.parameters(), opt_kind)
    z = patchgd.fill_z(model.backbone, images, p).flatten(2)
    s = z.shape[1]
    cells = sample_schedule(batch, m * n, k, zeta)[0]
    index = cells.unsqueeze(1).expand(batch, s, k)
    patches = gather_patches(images, p, cells)
    z_new = model.backbone(patches).detach().view(batch, k, s).transpose(1, 2)

    def backbone_fb():
        out = model.backbone(patches)
        out.sum().backward()

    def head_fb():
        zp = z.clone().requires_grad_()
        nn.functional.cross_entropy(model.head(zp.view(batch, s, m, n)), labels).backward()

    def step():
        opt.step()

    model.zero_grad(set_to_none=False)
    backbone_fb()
    head_fb()  # every parameter has a gradient, so the optimizer step is the full one
    parts = {
        "fill_ms": med_ms(lambda: patchgd.fill_z(model.backbone, images, p), repeats),
        "gather_ms": med_ms(lambda: gather_patches(images, p, cells), repeats),
        "backbone_fwd_ms": med_ms(lambda: model.backbone(patches), repeats),
        "backbone_fwd_bwd_ms": med_ms(backbone_fb, repeats),
        "scatter_ms": med_ms(lambda: z.scatter(2, index, z_new), repeats),
        "head_fwd_bwd_ms": med_ms(head_fb, repeats),
        "optimizer_ms": med_ms(step, repeats),
    }
    model.zero_grad(set_to_none=True)
    model = build_model("patchgd", backbone, 10, size, p).to(memory_format=fmt).train()
    opt = make_opt(model.parameters(), opt_kind)
    whole = med_ms(lambda: patchgd.train_batch(model, images, labels, opt, k=k, inner_iterations=zeta,
                                               grad_accum=1), repeats)
    gd_model = build_model("gd", backbone, 10, size).to(memory_format=fmt).train()
    gd_opt = make_opt(gd_model.parameters(), opt_kind)
    gd_ms = med_ms(lambda: gd.train_batch(gd_model, images, labels, gd_opt), repeats)
    inner = (parts["gather_ms"] + parts["backbone_fwd_bwd_ms"] + parts["scatter_ms"] + parts["head_fwd_bwd_ms"]
             + parts["optimizer_ms"])
    row = {"backbone": backbone, "image": size, "patch": p, "batch": batch, "k": k, "zeta": zeta,
           "threads": torch.get_num_threads(), "optimizer": opt_kind, "clock": CLOCK.__name__,
           **{key: round(v, 1) for key, v in parts.items()},
           "parts_sum_ms": round(parts["fill_ms"] + zeta * inner, 1), "patchgd_batch_ms": round(whole, 1),
           "rest_ms": round(whole - parts["fill_ms"] - zeta * inner, 1), "gd_batch_ms": round(gd_ms, 1),
           "patchgd_over_gd_img_s": round(gd_ms / whole, 3),
           "bound_from_parts": round(gd_ms / (parts["fill_ms"] + zeta * parts["backbone_fwd_bwd_ms"]), 3)}
    if ops:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof_:
            for _ in range(2):
                patchgd.train_batch(model, images, labels, opt, k=k, inner_iterations=zeta, grad_accum=1)
        print(prof_.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--patch-size", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--optimizer", choices=("fused", "foreach"), default="fused")
    parser.add_argument("--ops", action="store_true")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    for b in args.backbones:
        row = profile(args.profile, b, args.batch, args.repeats, args.optimizer, args.ops, args.image_size,
                      args.patch_size)
        print(" ".join(f"{key}={v}" for key, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
