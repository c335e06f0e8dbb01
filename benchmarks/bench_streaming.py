"""Streaming SGD (``streaming``) against plain backprop on the whole trunk: gradient error, time and peak
memory of one training step (forward, backward, Adam) on one image, fp32, BatchNorm frozen in both.

    nice -n 10 python benchmarks/bench_streaming.py [--backbones resnet50,mobilenet_v2] [--image-size 1024]
        [--tile 960] [--batchnorm initial|random] [--reference] [--exact]

Each step runs in its own process, the model in eval (BatchNorm is frozen anyway; MobileNetV2's
dropout off), with glibc's mmap threshold fixed at 1 MiB (as tests/data/test_gigapixel.py): its default
dynamic threshold keeps freed tensors under 32 MiB in the heap, so four tile passes would leave
fragmentation in the resident set that is not the method's. The peak is the rise of the resident set
(sampled every 2 ms) over the process after building the model, so building (and the streamed trunk's
statistics) is left out.

Tile: by default the smallest that streams the image in as few tiles as the kit's own (``streaming.tile_for``):
1024 px ResNet50 in 960 px tiles, 2 x 2 in backward like 992 but 6% less area each.
BatchNorm: ``initial`` keeps torchvision's running statistics (mean 0, variance 1), ``random`` draws
them (mean ±0.5, variance 0.5-1.5). Either way a random-init ResNet50 with frozen BatchNorm blows its
activations up (loss 99; with randomised statistics loss 420, output map up to ~1,150, logits ±300) and fp32 does not
resolve every gradient to 1e-5: plain fp32 is itself ~6e-4 from the float64 truth by the bar's statistic
(MobileNetV2, loss 2.3: 8e-4, its stem),
and two fp32 computations of the same sums in another order differ by as much (docs/streaming.md).
``--reference`` adds plain backprop in float64 (a third process) and prints each fp32 run's distance
from it; ``--exact`` also streams in float64 (a fourth process), where a streaming fault
would show above float64's rounding.

Error: per parameter max |streamed − plain| / max |plain|, the largest over parameters (the bar's
statistic), and ‖streamed − plain‖ / ‖plain‖ over all parameters. The bar: ResNet50 within 1e-5
relative and a lower peak. The planner's estimate (``alternatives.streaming_peak``, less the weights, which are
resident before the step) is printed beside the measured rise. Prints figures; asserts nothing.
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit.core import streaming  # noqa: E402
from patchgd_kit.planner import alternatives, estimate as planner_estimate  # noqa: E402
from patchgd_kit.core.models import backbone_of, classifier_model  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRss:
    """The highest resident set seen while the block runs, sampled by a thread."""

    def __enter__(self):
        self.peak, self._running = _rss(), True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _randomised_batchnorm(trunk: torch.nn.Module) -> None:
    """Running statistics away from 0 and 1, the same in every process."""
    generator = torch.Generator().manual_seed(1)
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


def one_step(kind: str, backbone: str, size: int, tile: int, batchnorm: str, out: str) -> None:
    """In a child process: build, then time and measure one step; gradients saved to `out`.
    kind: plain, streaming, or either in float64 (plain64, streaming64)."""
    torch.manual_seed(0)
    dtype = torch.float64 if kind.endswith("64") else torch.float32
    if kind.startswith("streaming"):
        model = streaming.build(backbone, 10, size, tile_size=tile)
        trunk = model.trunk
    else:
        model = classifier_model(backbone, 10)
        trunk = backbone_of(backbone).trunk(model)
        streaming.freeze_batchnorm(trunk)
    if batchnorm == "random":
        _randomised_batchnorm(trunk)
    model.eval().to(dtype)  # MobileNetV2's head has dropout: its masks would differ between processes
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2)).to(dtype)
    label = torch.tensor([3])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before, start = _rss(), time.perf_counter()
    with PeakRss() as peak:
        if kind.startswith("streaming"):
            maps = model.features(image).requires_grad_()
            loss = torch.nn.functional.cross_entropy(model.head(maps), label)
            loss.backward()
            model.backward_trunk(image, maps.grad)
        else:
            loss = torch.nn.functional.cross_entropy(model(image), label)
            loss.backward()
        grads = {name: p.grad.clone() for name, p in trunk.named_parameters() if p.grad is not None}
        optimizer.step()
    seconds = time.perf_counter() - start
    torch.save(grads, out)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    extra = {"tile": model.tile_size, "gradient_border": [model.streamed.tile_gradient_lost.top,
                                                         model.streamed.tile_gradient_lost.bottom]} \
        if kind.startswith("streaming") else {}
    print(json.dumps({"seconds": seconds, "rise_bytes": peak.peak - before, "weights_bytes": weights,
                      "loss": loss.item(), **extra}))


def _child(kind: str, backbone: str, size: int, tile: int, batchnorm: str, out: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--one", kind, "--backbones", backbone, "--image-size",
                           str(size), "--tile", str(tile), "--batchnorm", batchnorm, "--grads", out],
                          capture_output=True, text=True, env={**os.environ, **MALLOC})
    if done.returncode:
        raise SystemExit(f"{kind} step failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def errors(got: dict, want: dict) -> dict:
    """The largest per-parameter max-relative error (and its parameter), and the norm-relative error."""
    assert got.keys() == want.keys(), set(got) ^ set(want)
    per = {k: ((got[k].double() - want[k].double()).abs().max() / want[k].double().abs().max()).item()
           for k in want}
    worst = max(per, key=per.get)
    over = sorted((k for k in per if per[k] > 1e-5), key=per.get, reverse=True)
    diff = sum(((got[k].double() - want[k].double()) ** 2).sum() for k in want).sqrt()
    norm = sum((want[k].double() ** 2).sum() for k in want).sqrt()
    return {"max_relative": per[worst], "worst": worst, "norm_relative": (diff / norm).item(),
            "over_1e-5": [f"{k} {per[k]:.1e}" for k in over], "count": len(per)}


def compare(backbone: str, size: int, tile: int, batchnorm: str, reference: bool, exact: bool) -> dict:
    kinds = ("plain", "streaming", *(("plain64",) if reference or exact else ()), *(("streaming64",) if exact else ()))
    with tempfile.TemporaryDirectory() as folder:
        runs = {kind: _child(kind, backbone, size, tile, batchnorm, f"{folder}/{kind}.pt") for kind in kinds}
        grads = {kind: torch.load(f"{folder}/{kind}.pt") for kind in kinds}
    errs = {"streaming vs plain": errors(grads["streaming"], grads["plain"])}
    if exact:
        errs["float64: streaming vs plain"] = errors(grads["streaming64"], grads["plain64"])
    if reference or exact:
        errs["plain vs float64"] = errors(grads["plain"], grads["plain64"])
        errs["streaming vs float64"] = errors(grads["streaming"], grads["plain64"])
    estimates = {"plain": planner_estimate.estimate_peak("gd", backbone, size, 1).peak_bytes,
                 "streaming": alternatives.streaming_peak(backbone, size, 1, tile_size=tile)}
    return {"backbone": backbone, "size": size, "tile": tile, "batchnorm": batchnorm, "errors": errs,
            "runs": runs, "estimates": estimates}


def report(row: dict) -> None:
    mib = 2**20
    print(f"{row['backbone']} {row['size']} px, tile {row['tile']} px (input-gradient border "
          f"{row['runs']['streaming']['gradient_border']}), BatchNorm running statistics {row['batchnorm']}")
    for label, e in row["errors"].items():
        bar = f" (bar 1e-5: {'holds' if e['max_relative'] <= 1e-5 else 'fails'})" if label == "streaming vs plain" else ""
        print(f"  {label:27s}: max relative gradient error {e['max_relative']:.2e} ({e['worst']}), "
              f"norm-relative {e['norm_relative']:.2e}{bar}")
        if e["over_1e-5"]:
            print(f"    {len(e['over_1e-5'])} of {e['count']} parameters over 1e-5: {', '.join(e['over_1e-5'][:6])}")
    for kind, run in row["runs"].items():
        estimate = f"; planner {(row['estimates'][kind] - run['weights_bytes']) / mib:7.0f} MiB (its estimate less " \
                   "the resident weights)" if kind in row["estimates"] else ""
        print(f"  {kind:9s}: {run['seconds']:7.1f} s, peak RSS rise {run['rise_bytes'] / mib:7.0f} MiB{estimate}; "
              f"loss {run['loss']:.6f}")
    lower = row["runs"]["streaming"]["rise_bytes"] < row["runs"]["plain"]["rise_bytes"]
    print(f"  streamed peak lower than plain (fp32): {'yes' if lower else 'no'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="resnet50,mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--tile", type=int, help="tile side (default: streaming.tile_for)")
    parser.add_argument("--batchnorm", choices=["initial", "random"], default="initial")
    parser.add_argument("--reference", action="store_true", help="also plain backprop in float64")
    parser.add_argument("--exact", action="store_true",
                        help="also streaming and plain backprop both in float64: a streaming fault shows there")
    parser.add_argument("--one", choices=["plain", "streaming", "plain64", "streaming64"], help=argparse.SUPPRESS)
    parser.add_argument("--grads", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one_step(args.one, args.backbones, args.image_size, args.tile, args.batchnorm, args.grads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, one image, BatchNorm frozen, "
          f"{MALLOC}; load average {os.getloadavg()[0]:.1f}")
    for backbone in args.backbones.split(","):
        tile = args.tile or streaming.tile_for(backbone, args.image_size)
        report(compare(backbone, args.image_size, tile, args.batchnorm, args.reference, args.exact))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
