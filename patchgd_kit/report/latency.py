"""Speed: inference latency measured the way the official code measures it (Table 3's column), a
row's latency kept in its store folder, parameter counts at the paper's sizes, and the A100 hours the
paper profile would take, estimated from speeds measured here.
"""
from __future__ import annotations

import functools
import json
import math
import statistics
import time

import torch

from ..core.methods import StepSettings, build_model, method_of, uses_patches
from ..core.models import count_parameters
from ..data.panda import PANDA_CLASSES
from ..files import write_json
from ..paper.numbers import PAPER
from .orderings import RowResult
from ..runs.config import TrainConfig, autocast_dtype, precision, resolve_device
from ..runs.profiles import Profile, get_profile, profile_dir
from ..runs.store import run_folder
from ..runs.training import model_on


LATENCY_WARMUP = 2    # untimed passes first (cuDNN autotuning, allocator, caches)
LATENCY_REPEATS = 3   # timed passes, each synchronised; images/s = batch / mean seconds


@functools.cache
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where there is none): CPUs sold as the same number
    of cores differ 1.5x in ResNet50's speed (docs/cpu-scale.md §11), so timings name it."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        return ""
    return names[0] if names else ""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = f"{cpu_model()}, " if cpu_model() else ""
    return f"CPU ({model}{torch.get_num_threads()} threads)"


@functools.cache
def paper_parameters_m(method: str, image_size: int, patch_size: int | None) -> float:
    """Millions of parameters of the ResNet50 model of a row built at the paper's scale with 6 classes,
    truncated to 2 decimals as the paper prints them (26.396 → 26.39)."""
    model = build_model(method, "resnet50", PANDA_CLASSES, image_size, patch_size)
    return math.floor(count_parameters(model) / 1e4) / 100


def measure_latency(config: TrainConfig, warmup: int = LATENCY_WARMUP,
                    repeats: int = LATENCY_REPEATS) -> dict:
    """Inference images/s of the run's model as the official code measures it: random images of the
    run's batch size on the device, no gradient, ``warmup`` untimed passes, then ``repeats`` timed
    ones, each ended by a device synchronisation. PatchGD infers g(fill(X)), every patch once."""
    device = resolve_device(config.device)
    model = model_on(config, device).eval()  # as train() runs it
    amp_dtype = autocast_dtype(config, device)
    images = torch.rand(config.batch_size, 3, config.image_size, config.image_size, device=device)

    predict = method_of(config.method).predict
    settings = StepSettings(fill_chunk=config.fill_chunk, amp_dtype=amp_dtype, input_side=config.downscaled_side)

    def infer() -> None:
        predict(model, images, settings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        infer()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        infer()
        seconds.append(time.perf_counter() - start)
    return {"images_per_s": config.batch_size / statistics.fmean(seconds), "device": device_name(device),
            "batch_size": config.batch_size, "precision": precision(config), "warmup": warmup,
            "repeats": repeats}


def training_speed(method: str, backbone: str, image_size: int, batch_size: int, *, seconds: float = 3.0,
                   device: str = "auto", patch_size: int | None = None, sampling: float = 0.25,
                   downscaled_side: int | None = None) -> float:
    """Training images/s of one method's own step (``METHODS[method].train_batch``) on random images,
    after one untimed step (Adam's moments then exist), timed for at least `seconds`. Unset, PatchGD's
    patch and gd-downscaled's side are half the image side (a 2×2 grid; a quarter of the pixels)."""
    if uses_patches(method) and patch_size is None:
        patch_size = image_size // 2
    if "downscaled_side" in method_of(method).needs and downscaled_side is None:
        downscaled_side = image_size // 2
    config = TrainConfig(method=method, backbone=backbone, image_size=image_size, patch_size=patch_size,
                         sampling=sampling, batch_size=batch_size, device=device, downscaled_side=downscaled_side)
    config.validate()
    k, zeta = config.schedule()
    torch_device = resolve_device(device)
    model = model_on(config, torch_device).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    images = torch.randn(batch_size, 3, image_size, image_size, device=torch_device)
    labels = torch.randint(0, config.num_classes, (batch_size,), device=torch_device)
    settings = StepSettings(k=k, inner_iterations=zeta, input_side=downscaled_side)

    def step() -> None:
        method_of(method).train_batch(model, images, labels, optimizer, settings)
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)

    step()
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        step()
        count += 1
    return count * batch_size / (time.perf_counter() - start)


def run_latency(result: RowResult, profile: Profile) -> dict:
    """measure_latency for a row's run, kept in its store folder (``latency.json``) and measured
    again only on another device or with other passes."""
    path = run_folder(result.config, profile_dir(profile)) / "latency.json"
    setup = {"device": device_name(resolve_device(result.config.device)), "warmup": LATENCY_WARMUP,
             "repeats": LATENCY_REPEATS}
    if path.exists():
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in setup} == setup:
            return saved
    latency = measure_latency(result.config)
    write_json(path, latency)
    return latency


# The one GPU speed the paper gives: ResNet50 (GD) inference on 512 px images on an A100 40 GB.
A100_RESNET50_512_IMG_S = PAPER["table3"].row("gd_512").paper["latency_img_s"]
# The paper profile's images per class and epochs for each dataset (Profile fields).
PAPER_SIZE_FIELDS = {"ultramnist": ("per_class_train", "per_class_test", "epochs"),
                     "panda": ("panda_per_class_train", "panda_per_class_test", "panda_epochs")}


@functools.lru_cache(maxsize=None)
def inference_speed(method: str, backbone: str, image_size: int, patch_size: int | None, device: str = "auto",
                    downscaled_side: int | None = None) -> float:
    """Inference images/s of a freshly built model (batch 16) on this machine, measured now."""
    config = TrainConfig(method=method, backbone=backbone, image_size=image_size, patch_size=patch_size,
                         batch_size=16, device=device, downscaled_side=downscaled_side)
    return measure_latency(config, warmup=1)["images_per_s"]


def paper_gpu_hours(results: list[RowResult]) -> tuple[float, str]:
    """Estimated A100 hours of these rows under the `paper` profile (one seed), and how.

    An estimate, not a measurement, built so that the load on a shared machine cancels out: a row's
    A100 inference speed is the paper's ResNet50 figure times the speed of the row's model relative
    to ResNet50, both measured here now at the run's size (pixel count scaled to the paper's); its
    training speed follows from the ratio of training to evaluation images/s within the same run."""
    paper = get_profile("paper")
    seconds = 0.0
    for r in results:
        c = r.config
        paper_size = r.table.settings(r.row)["image_size"]
        relative = (inference_speed(c.method, c.backbone, c.image_size, c.patch_size, c.device, c.downscaled_side)
                    / inference_speed("gd", "resnet50", c.image_size, None, c.device))
        gpu_eval = A100_RESNET50_512_IMG_S * relative * (512 / paper_size) ** 2
        run_eval = statistics.fmean(r.test_images / row["eval_seconds"] for run in r.runs for row in run["history"])
        gpu_train = gpu_eval * r.mean_over_epochs("train_images_per_s") / run_eval
        train, test, epochs = (getattr(paper, f) for f in PAPER_SIZE_FIELDS[r.table.dataset])
        seconds += epochs * c.num_classes * (train / gpu_train + test / gpu_eval)
    basis = ("estimated, not measured: the paper's A100 inference speed for ResNet50 at 512 px "
             f"({A100_RESNET50_512_IMG_S} images/s, Table 3), scaled to each row's model by their speed ratio "
             "measured here, and to training by each run's own ratio of training to evaluation speed; the "
             "paper profile's images and epochs, one seed. It assumes those ratios carry over to the GPU: a "
             "rough guide only")
    return seconds / 3600, basis


def paper_hours_footer(results: list[RowResult]) -> str:
    """The tables' closing line: the estimated A100 hours of these rows under the `paper` profile."""
    hours, basis = paper_gpu_hours(results)
    coarser = any(uses_patches(r.config.method) and r.config.image_size // r.config.patch_size
                  < r.table.settings(r.row)["image_size"] // r.table.settings(r.row)["patch_size"] for r in results)
    bound = (" The scaled PatchGD runs have coarser patch grids than the paper's, so read it as a lower bound."
             if coarser else "")
    return f"**The paper profile** (these rows, one seed): about {hours:.0f} A100 hours ({basis}).{bound}\n"
