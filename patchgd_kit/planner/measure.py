"""One PatchGD training step measured for real, in a fresh process so that its peak is its own: peak
resident memory on a CPU (CUDA peak allocated on a GPU), the seconds of the fill of Z and of the whole
batch, on a tiled TIFF read lazily or read whole first. The planner (``memory``) estimates; this
measures what it estimates, for the gigapixel benchmark and notebook 12.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..core import patchgd
from ..core.methods import StepSettings, build_model, method_of
from ..core.patchgd import fill_z
from ..data.tiled import LazyBatch, TiledImage, normalize_uint8
from ..errors import KitError


def measure_step(image, backbone: str, *, patch_size: int, k: int, inner_iterations: int = 1, batch_size: int = 1,
                 lazy: bool = True, device: str = "cpu", fill_chunk: int = 256) -> dict:
    """One PatchGD training step on the tiled TIFF `image` (the same image `batch_size` times), run in a
    fresh process so that its peak is its own. Returns {"peak_bytes", "baseline_bytes", "memory",
    "fill_seconds" (the batch's fill of Z), "batch_seconds" (the whole batch, fill included)}: on a CPU
    the peak resident set (RSS, the whole process: Python, torch, the model) and the baseline before
    the step; on CUDA the peak allocated and the allocated before. `lazy` False reads the image whole
    into a float tensor first, as an in-memory dataset does."""
    spec = dict(image=str(image), backbone=backbone, patch_size=patch_size, k=k, inner_iterations=inner_iterations,
                batch_size=batch_size, lazy=lazy, device=device, fill_chunk=fill_chunk)
    kit_parent = str(Path(__file__).resolve().parents[2])  # the child imports this kit, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (kit_parent, os.environ.get("PYTHONPATH"))))}
    out = subprocess.run([sys.executable, "-c", f"from patchgd_kit.planner.measure import _measure_here; _measure_here({spec!r})"],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise KitError(f"the measured step on {image} failed (exit {out.returncode}): {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_now(device: torch.device, peak: bool) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB; the high-water mark


def _measure_here(spec: dict) -> None:
    """measure_step's child: prints one JSON line."""
    device = torch.device(spec["device"])
    image = TiledImage(spec["image"])
    p, b = spec["patch_size"], spec["batch_size"]
    model = build_model("patchgd", spec["backbone"], 10, image.side, p).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    images = LazyBatch([image] * b).to(device)
    if not spec["lazy"]:
        whole = normalize_uint8(torch.from_numpy(image.region(0, 0, image.side, image.side)), image.mean, image.std)
        images = whole.to(device).expand(b, *whole.shape).contiguous()
    labels = torch.zeros(b, dtype=torch.long, device=device)
    baseline = _memory_now(device, peak=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The batch's own fill, timed where train_batch calls it: a second fill only to time it would
    # double the cost (on a CPU one fill of an 8,192 px image takes minutes).
    fill_seconds = []

    def timed_fill(*args, **kwargs):
        start = time.perf_counter()
        z = fill_z(*args, **kwargs)
        _memory_now(device, peak=True)  # waits for the GPU
        fill_seconds.append(time.perf_counter() - start)
        return z
    patchgd.fill_z = timed_fill
    start = time.perf_counter()
    settings = StepSettings(k=spec["k"], inner_iterations=spec["inner_iterations"], fill_chunk=spec["fill_chunk"])
    method_of("patchgd").train_batch(model, images, labels, optimizer, settings)
    peak = _memory_now(device, peak=True)
    print(json.dumps({"peak_bytes": peak, "baseline_bytes": baseline,
                      "memory": "CUDA peak allocated" if device.type == "cuda" else "peak RSS",
                      "fill_seconds": fill_seconds[0], "batch_seconds": time.perf_counter() - start}))
