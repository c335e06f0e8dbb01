"""One Adam step over each backbone's parameters: the default (foreach) kernel against the fused one
that runs.optim.adam picks on a CPU, beside one forward and backward of a small batch for scale. Prints
figures; asserts nothing.

    python benchmarks/bench_adam.py [--backbones resnet50 mobilenet_v2] [--batch 3] [--image-size 64]

A small batch makes Adam's step a large part of the work: on 2 CPU cores a ResNet50 step of the
default Adam cost more than half a forward and backward of 3 images at 64 px (docs/cpu-scale.md §10).
Timings on a shared machine are noisy: run it on an idle one.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit.core.methods import build_model  # noqa: E402


def milliseconds(action, repeats: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        action()
    start = time.perf_counter()
    for _ in range(repeats):
        action()
    return (time.perf_counter() - start) / repeats * 1000


def bench(backbone: str, batch: int, size: int) -> dict:
    model = build_model("gd", backbone, 10, size, None)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

    def forward_backward():
        torch.nn.functional.cross_entropy(model(images), labels).backward()
    row = {"backbone": backbone, "parameters": sum(p.numel() for p in model.parameters()),
           "forward_backward_ms": milliseconds(forward_backward, repeats=5)}
    for name, kwargs in (("default", {}), ("fused", {"fused": True})):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **kwargs)
        row[f"adam_{name}_ms"] = milliseconds(optimizer.step)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward and backward of "
          f"{args.batch} images at {args.image_size} px")
    print(f"{'backbone':14} {'parameters':>11} {'fwd+bwd ms':>11} {'Adam default ms':>16} {'Adam fused ms':>14}")
    for backbone in args.backbones:
        r = bench(backbone, args.batch, args.image_size)
        print(f"{backbone:14} {r['parameters']:>11,} {r['forward_backward_ms']:>11.1f} "
              f"{r['adam_default_ms']:>16.1f} {r['adam_fused_ms']:>14.1f}")


if __name__ == "__main__":
    main()
