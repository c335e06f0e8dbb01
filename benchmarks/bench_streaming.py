"""Streaming SGD (``streaming``) against plain backprop on the whole trunk: gradient error, time and peak
memory of one training step (forward, backward, Adam) on one image, fp32, BatchNorm frozen in both.

    nice -n 10 python benchmarks/bench_streaming.py [--backbones resnet50,mobilenet_v2] [--image-size 1024]

Each step runs in its own process, the model in eval (BatchNorm is frozen anyway; MobileNetV2's
dropout off): the peak is the rise of the resident set (sampled every 2 ms) over the process after
building the model, so building (and the streamed trunk's statistics) is left out.
Both start from the same seed; their gradients are compared parameter by parameter (max |difference|
over max |gradient|). Bar (issue #34): ResNet50 within 1e-5 relative and a lower peak. The planner's
estimate (``alternatives.streaming_peak``, less the weights, which are resident before the step) is printed
beside the measured rise. Prints figures; asserts nothing.
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

from patchgd_kit.core import streaming
from patchgd_kit.planner import alternatives, estimate as planner_estimate  # noqa: E402
from patchgd_kit.core.models import backbone_of, classifier_model  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


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
    """Running statistics away from 0 and 1 (as pretrained ones), the same in both processes."""
    generator = torch.Generator().manual_seed(1)
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


def one_step(kind: str, backbone: str, size: int, out: str) -> None:
    """In a child process: build, then time and measure one step; gradients saved to `out`."""
    torch.manual_seed(0)
    if kind == "plain":
        model = classifier_model(backbone, 10)
        trunk = backbone_of(backbone).trunk(model)
        streaming.freeze_batchnorm(trunk)
    else:
        model = streaming.build(backbone, 10, size)
        trunk = model.trunk
    _randomised_batchnorm(trunk)
    model.eval()  # MobileNetV2's head has dropout: its masks would differ between the two processes
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    label = torch.tensor([3])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before, start = _rss(), time.perf_counter()
    with PeakRss() as peak:
        if kind == "plain":
            loss = torch.nn.functional.cross_entropy(model(image), label)
            loss.backward()
            grads = {name: p.grad.clone() for name, p in trunk.named_parameters() if p.grad is not None}
            optimizer.step()
        else:
            maps = model.features(image).requires_grad_()
            loss = torch.nn.functional.cross_entropy(model.head(maps), label)
            loss.backward()
            model.backward_trunk(image, maps.grad)
            grads = {name: p.grad.clone() for name, p in trunk.named_parameters() if p.grad is not None}
            optimizer.step()
    seconds = time.perf_counter() - start
    torch.save(grads, out)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    extra = {"tile": model.tile_size, "gradient_border": [model.streamed.tile_gradient_lost.top,
                                                         model.streamed.tile_gradient_lost.bottom]} \
        if kind == "streaming" else {}
    print(json.dumps({"seconds": seconds, "rise_bytes": peak.peak - before, "weights_bytes": weights,
                      "loss": loss.item(), **extra}))


def _child(kind: str, backbone: str, size: int, out: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--one", kind, "--backbones", backbone,
                           "--image-size", str(size), "--grads", out], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(backbone: str, size: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        runs = {kind: _child(kind, backbone, size, f"{folder}/{kind}.pt") for kind in ("plain", "streaming")}
        plain, streamed = (torch.load(f"{folder}/{kind}.pt") for kind in ("plain", "streaming"))
    assert plain.keys() == streamed.keys(), (set(plain) ^ set(streamed))
    error = max(((plain[k] - streamed[k]).abs().max() / plain[k].abs().max()).item() for k in plain)
    tile = runs["streaming"]["tile"]
    estimates = {"plain": planner_estimate.estimate_peak("gd", backbone, size, 1).peak_bytes,
                 "streaming": alternatives.streaming_peak(backbone, size, 1, tile_size=tile)}
    return {"backbone": backbone, "size": size, "tile": tile, "error": error, "runs": runs, "estimates": estimates}


def report(row: dict) -> None:
    mib = 2**20
    print(f"{row['backbone']} {row['size']} px, tile {row['tile']} px (input-gradient border "
          f"{row['runs']['streaming']['gradient_border']}): max relative gradient error {row['error']:.2e} "
          f"(bar 1e-5: {'holds' if row['error'] <= 1e-5 else 'fails'})")
    for kind, run in row["runs"].items():
        estimate = row["estimates"][kind] - run["weights_bytes"]
        print(f"  {kind:9s}: {run['seconds']:7.1f} s, peak RSS rise {run['rise_bytes'] / mib:7.0f} MiB; planner "
              f"{estimate / mib:7.0f} MiB (its estimate less the resident weights); loss {run['loss']:.6f}")
    lower = row["runs"]["streaming"]["rise_bytes"] < row["runs"]["plain"]["rise_bytes"]
    print(f"  streamed peak lower than plain: {'yes' if lower else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="resnet50,mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--one", choices=["plain", "streaming"], help=argparse.SUPPRESS)
    parser.add_argument("--grads", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one_step(args.one, args.backbones, args.image_size, args.grads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, one image, BatchNorm frozen")
    for backbone in args.backbones.split(","):
        report(compare(backbone, args.image_size))


if __name__ == "__main__":
    main()
