"""A digits-pretrained backbone: the kit's offline stand-in for ImageNet initialisation.

The paper starts every backbone from ImageNet weights, and its low-memory UltraMNIST PatchGD runs
from a backbone first trained with GD for 100 epochs (Appendix C). Neither exists offline, and a
randomly initialised backbone does not learn the sum-of-digits task in the CPU profile's few
optimizer steps (docs/cpu-scale.md). So the kit makes its own init, once per profile, from the
bundled MNIST digits:

- the pretext task is recognition, not the sum: as ImageNet classification shows one object per
  image, a crop of the patch size shows one MNIST digit at the profile's digit sizes (the recipe's
  scale factors, the same floor) at a random place, and the torchvision model names it (10 classes).
  Adding digits up is left to the downstream run;
- crops use the *train* digit pool only, so no test digit is ever seen;
- every batch comes from a random stream derived from (seed, step), so the same seed gives the same
  weights (on the same machine and torch build).

The file holds the trunk (everything but the classifier) and a card with the pretext's scores;
``models.torchvision_model(backbone, weights=FILE)`` loads it for gd, gd-extended and patchgd alike.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.models import backbone_of, classifier_model
from ..data.digits import (MAX_IMAGE_SIZE, MIN_DIGIT_SIDE, NUM_CLASSES, digit_side, draw_scale_factors,
                           load_digit_pools, upscale)
from ..data.ultramnist import normalize_uint8
from ..errors import KitError, check_int, check_number
from ..files import check_writable_file, save_torch
from ..progress import bar_disabled
from .optim import adam

DEFAULT_STEPS = 1000
MAX_STEPS = 1_000_000  # a bound on one command's work: the cpu profile pretrains 1,200
DEFAULT_LR = 1e-3  # Adam's peak lr, the paper's (Appendix C)


def digit_crops(rng: np.random.Generator, pool, image_size: int, crop_size: int, n: int,
                min_digit_side: int = MIN_DIGIT_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` black crop_size crops, each with one pool digit drawn at an UltraMNIST digit size for
    `image_size` (at most the crop) at a random place: uint8 (n, c, c) and the digits (n,)."""
    images, labels = pool
    crops = np.zeros((n, crop_size, crop_size), np.uint8)
    picks = rng.integers(0, len(labels), n)
    sides = [min(crop_size, digit_side(f, image_size, min_digit_side)) for f in draw_scale_factors(rng, n)]
    for crop, pick, side in zip(crops, picks, sides):
        x, y = rng.integers(0, crop_size - side + 1, size=2)
        crop[y:y + side, x:x + side] = upscale(images[pick], side)
    return torch.from_numpy(crops), torch.from_numpy(labels[picks])


def _train_on_crops(model: torch.nn.Module, pool, settings: dict, progress: bool) -> list[float]:
    """`settings["steps"]` Adam steps of `model` naming the digit in crops drawn from `pool`; the losses."""
    backbone, image_size, crop_size, steps, batch_size, lr, seed, min_digit_side = (
        settings[k] for k in ("backbone", "image_size", "crop_size", "steps", "batch_size", "lr", "seed",
                              "min_digit_side"))
    channels_last = backbone == "mobilenet_v2"  # measured 1.4-3.2x faster on CPU (SPEC §7)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = adam(model.parameters(), lr, torch.device("cpu"))
    # Linear warm-up over 5% of the steps, then linear decay to a tenth.
    warm = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warm if s < warm else 1 - 0.9 * (s - warm) / max(1, steps - warm))
    losses = []
    model.train()
    for step in tqdm(range(steps), desc=f"pretrain {backbone} on digit crops", disable=bar_disabled(progress)):
        crops, digits = digit_crops(np.random.default_rng([seed, step]), pool, image_size, crop_size,
                                    batch_size, min_digit_side)
        x = normalize_uint8(crops)
        loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)
                                                       if channels_last else x), digits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def pretrain_backbone(backbone: str, image_size: int, crop_size: int, out: str | Path, *, steps: int = DEFAULT_STEPS,
                      batch_size: int = 64, lr: float = DEFAULT_LR, seed: int = 0,
                      min_digit_side: int = MIN_DIGIT_SIDE, test_crops: int | None = None,
                      progress: bool = True) -> dict:
    """Train `backbone` to name the digit in a crop and write its trunk to `out` (atomically).
    An existing file made with the same settings is kept and its card returned. `test_crops`: the
    held-out crops scored, by default 1,024 or, for a pretraining that saw fewer, as many as it saw
    (a 2-step smoke pretraining's score means nothing and should not cost more than its training)."""
    out = Path(out)
    for name, value, lowest, highest in (
            ("image size", image_size, 32, MAX_IMAGE_SIZE), ("steps", steps, 1, MAX_STEPS),
            ("batch size", batch_size, 1, None), ("min digit side", min_digit_side, MIN_DIGIT_SIDE, None),
            ("seed", seed, 0, None), ("test crops", 1 if test_crops is None else test_crops, 1, None)):
        check_int(name, value, lowest, highest)
    check_number("lr", lr, "a number > 0", lambda x: x > 0)
    test_crops = min(1024, steps * batch_size) if test_crops is None else test_crops
    settings = {"backbone": backbone, "image_size": image_size, "crop_size": crop_size, "steps": steps,
                "batch_size": batch_size, "lr": lr, "seed": seed, "min_digit_side": min_digit_side}
    if out.is_file():
        card = load_weights_card(out)
        if card.get("settings") == settings:
            return card
        raise KitError(f"{out} holds weights pretrained with other settings ({card.get('settings')}); "
                       "use another --out or delete it")
    if not 1 <= crop_size <= image_size:
        raise KitError(f"crop size {crop_size} must be between 1 and the image size {image_size}")
    check_writable_file(out)  # before the training, not after it
    torch.manual_seed(seed)
    pools = load_digit_pools("bundled")
    model = classifier_model(backbone, NUM_CLASSES)
    start = time.perf_counter()
    losses = _train_on_crops(model, pools["train"], settings, progress)
    crops, digits = digit_crops(np.random.default_rng([seed, 2**31]), pools["test"], image_size, crop_size,
                                test_crops, min_digit_side)
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(normalize_uint8(c)) for c in crops.split(256)])
    card = {"settings": settings, "seconds": round(time.perf_counter() - start, 1),
            "train_loss_first_50": float(np.mean(losses[:50])), "train_loss_last_50": float(np.mean(losses[-50:])),
            "test_crops": test_crops, "digit_accuracy_pct": float((predicted.argmax(1) == digits).float().mean() * 100),
            "what": "digits-pretrained trunk (one test-pool digit per crop, named among 10), the kit's stand-in "
                    "for ImageNet init"}
    prefix = backbone_of(backbone).classifier_prefix
    trunk = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    save_torch(out, {"backbone": backbone, "state_dict": trunk, "card": card})
    return card


def load_weights_card(path: str | Path) -> dict:
    """The card of a weights file written by pretrain_backbone ({} for a plain state dict)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise KitError(f"weights file {path} is not a readable torch file ({type(e).__name__}); "
                       "make it again with `python -m patchgd_kit pretrain`") from e
    return saved.get("card", {}) if isinstance(saved, dict) else {}
