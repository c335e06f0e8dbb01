"""Training runs: one folder per run, checkpointed every epoch, resumed by rerunning.

A run folder holds `config.json`, `metrics.jsonl` (one line per finished epoch), `checkpoint.pt`
(model, optimizer, scheduler, scaler, RNG states and the history; written atomically; once the run
is finished, the model and the history only) and, once finished, `summary.json`. Rerunning with the same config resumes from the checkpoint or, when the
run is finished, returns its saved metrics; a different config in the same folder is refused.
"""
from __future__ import annotations

import dataclasses
import json
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import cohen_kappa_score
from tqdm.auto import tqdm

from . import gd, patchgd
from .data import UltraMNIST
from .errors import KitError
from .files import atomic_write, save_torch, write_json
from .memory import limit_cuda_memory, out_of_memory_error, plan_for_config
from .models import BACKBONES, METHODS, build_model
from .patches import grid_shape, inner_iterations, patches_per_iteration


@dataclass
class TrainConfig:
    method: str = "patchgd"
    backbone: str = "resnet50"
    data: str = "data/ultramnist"
    image_size: int = 512
    patch_size: int | None = 256           # PatchGD only
    sampling: float = 0.25                  # k / (m·n), PatchGD only
    max_sampled: float = 1.0                # ζ·k / (m·n), PatchGD only
    grad_accum: int = 1                     # ε, PatchGD only
    epochs: int = 100
    batch_size: int | None = 16             # None: planned from memory_budget
    memory_budget: str | None = None        # e.g. "4GB": plan the batch (and enforce it on CUDA)
    seed: int = 0
    device: str = "auto"                    # auto | cpu | cuda
    amp: bool = False                       # fp16 autocast + GradScaler on CUDA, bf16 on CPU
    lr: float = 1e-3
    warmup_epochs: float = 2.0
    final_lr_fraction: float = 0.5          # linear decay to half the peak (Appendix C)
    weights: str | None = None              # None, "imagenet" or a local state-dict file
    num_classes: int = 10
    fill_chunk: int = 256                   # patches per backbone call while filling Z
    channels_last: str = "auto"             # auto | on | off
    workers: int = 0                        # DataLoader worker processes

    def validate(self) -> None:
        if self.method not in METHODS:
            raise KitError(f"unknown method {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.backbone not in BACKBONES:
            raise KitError(f"unknown backbone {self.backbone!r}; allowed: {', '.join(BACKBONES)}")
        _positive("image size", self.image_size)
        _positive("epochs", self.epochs)
        _positive("fill chunk", self.fill_chunk)
        if self.batch_size is None and self.memory_budget is None:
            raise KitError("give a batch size or a memory budget")
        if self.batch_size is not None:
            _positive("batch size", self.batch_size)
        if self.device not in ("auto", "cpu", "cuda"):
            raise KitError(f"device {self.device!r} is not one of auto, cpu, cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise KitError("device 'cuda' was asked for but no CUDA device is available; use auto or cpu")
        if self.channels_last not in ("auto", "on", "off"):
            raise KitError(f"channels_last {self.channels_last!r} is not one of auto, on, off")
        if self.lr <= 0 or self.warmup_epochs < 0 or not 0 < self.final_lr_fraction <= 1:
            raise KitError(f"lr {self.lr} must be > 0, warm-up {self.warmup_epochs} >= 0 and final lr "
                           f"fraction {self.final_lr_fraction} in (0, 1]")
        if self.method == "patchgd":
            if self.patch_size is None:
                raise KitError("PatchGD needs --patch-size")
            m, n = grid_shape(self.image_size, self.patch_size)
            zeta = inner_iterations(self.sampling, self.max_sampled, m * n)
            if not 1 <= self.grad_accum <= zeta:
                raise KitError(f"grad accumulation ε = {self.grad_accum} must be between 1 and the "
                               f"number of inner iterations ζ = {zeta}")

    def schedule(self) -> tuple[int, int]:
        """(k, ζ) for PatchGD."""
        m, n = grid_shape(self.image_size, self.patch_size)
        return (patches_per_iteration(self.sampling, m * n),
                inner_iterations(self.sampling, self.max_sampled, m * n))

    def key(self) -> dict:
        """What defines the run's result: everything except where to find things."""
        d = dataclasses.asdict(self)
        d.pop("workers")
        if self.method != "patchgd":
            for name in ("patch_size", "sampling", "max_sampled", "grad_accum", "fill_chunk"):
                d.pop(name)
        return d


def _positive(name: str, value) -> None:
    if not isinstance(value, int) or value < 1:
        raise KitError(f"{name} {value!r} must be a positive integer")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not config.amp:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def use_channels_last(config: TrainConfig, device: torch.device) -> bool:
    if config.channels_last != "auto":
        return config.channels_last == "on"
    # Measured on 2 CPU cores (SPEC §7): 1.4-3.2x for MobileNetV2, mixed for ResNet50.
    # On CUDA it pays under AMP (tensor cores want NHWC).
    return config.backbone == "mobilenet_v2" or (device.type == "cuda" and config.amp)


def lr_lambda(config: TrainConfig, batches_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up from 0 over `warmup_epochs`, then linear decay to `final_lr_fraction` of the
    peak at the end of training; one step per batch."""
    warm = config.warmup_epochs * batches_per_epoch
    total = config.epochs * batches_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return step / warm
        return 1 - (1 - config.final_lr_fraction) * (step - warm) / max(1, total - warm)
    return factor


def _write_metrics(path: Path, history: list[dict]) -> None:
    lines = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(path, lambda tmp: Path(tmp).write_text(lines))


def _rng_state(sampler: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "sampler": sampler.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, sampler: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    sampler.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _open_run(out: Path, config: TrainConfig, create: bool = True) -> None:
    """Check that an existing run folder was made with the same config, or (`create`) make it."""
    config_path = out / "config.json"
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        if saved != config.key():
            diff = sorted(k for k in set(saved) | set(config.key()) if saved.get(k) != config.key().get(k))
            raise KitError(f"run folder {out} holds a run with a different config (differs in: "
                           f"{', '.join(diff)}); use another --out or delete that folder")
        return
    if create:
        out.mkdir(parents=True, exist_ok=True)
        write_json(config_path, config.key())


def load_datasets(config: TrainConfig) -> tuple[UltraMNIST, UltraMNIST]:
    root = Path(config.data)
    train_set, test_set = UltraMNIST(root, "train"), UltraMNIST(root, "test")
    for ds in (train_set, test_set):
        if ds.image_size != config.image_size:
            raise KitError(f"data in {root} has images of {ds.image_size} px but the image size is "
                           f"{config.image_size}; regenerate the data or pass --image-size {ds.image_size}")
        if ds.num_classes != config.num_classes:  # the Dataset has checked every label against its own
            raise KitError(f"data in {root} has {ds.num_classes} classes but num_classes is "
                           f"{config.num_classes}; pass --num-classes {ds.num_classes}")
    return train_set, test_set


def _batches(dataset, indices: list[int], batch_size: int, workers: int):
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
        num_workers=workers, drop_last=False)
    return loader


def evaluate(model: torch.nn.Module, method: str, dataset, batch_size: int, device: torch.device, *,
             amp_dtype: torch.dtype | None = None, fill_chunk: int = 256, workers: int = 0) -> dict:
    """Loss, accuracy (%), quadratic-weighted kappa and the predicted class of every image (in the
    dataset's order, for paired comparisons of runs) on a dataset; PatchGD infers g_θ2(fill(X))."""
    model.eval()
    losses, preds, labels = [], [], []
    for images, y in _batches(dataset, list(range(len(dataset))), batch_size, workers):
        images, y = images.to(device), y.to(device)
        if method == "patchgd":
            logits = patchgd.predict(model, images, fill_chunk=fill_chunk, amp_dtype=amp_dtype)
        else:
            logits = gd.predict(model, images, amp_dtype=amp_dtype)
        losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="sum").item())
        preds.append(logits.argmax(1).cpu())
        labels.append(y.cpu())
    preds, labels = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    agree = len(set(preds) | set(labels)) > 1  # kappa is undefined when one class is all there is
    qwk = float(cohen_kappa_score(labels, preds, weights="quadratic")) if agree else float("nan")
    return {"test_loss": sum(losses) / len(labels), "accuracy": float((preds == labels).mean() * 100),
            "qwk": qwk, "predictions": preds.tolist()}


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def train(config: TrainConfig | None = None, out: str | Path = "runs/run", *, progress: bool = True,
          on_epoch: Callable[[dict], None] | None = None, **overrides) -> dict:
    """Train (or resume, or read back) the run in `out`. Returns {"run_dir", "config", "history",
    "final"}; `history` has one dict per epoch, `final` is the last one."""
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    config.validate()
    out = Path(out)
    train_set, test_set = load_datasets(config)
    plan = None
    if config.memory_budget is not None:  # plan the batch, or refuse a given one that does not fit
        plan = plan_for_config(config)
        config = dataclasses.replace(config, batch_size=plan.batch_size)
    _open_run(out, config, create=False)
    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())

    device = resolve_device(config.device)
    amp_dtype = autocast_dtype(config, device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    if device.type == "cuda":  # before the first CUDA allocation; lifts an earlier run's cap without a budget
        limit_cuda_memory(device, plan.budget_bytes if plan else None)
    model = build_model(config.method, config.backbone, config.num_classes, config.image_size,
                        config.patch_size, weights=config.weights).to(device)
    if use_channels_last(config, device):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if len(train_set) < config.batch_size:
        raise KitError(f"batch size {config.batch_size} is larger than the {len(train_set)} training images")
    # Only now, with the model built (its weights file read) and the batch checked: a config that
    # cannot run leaves no folder behind to block the corrected command.
    _open_run(out, config)
    if plan is not None:
        write_json(out / "plan.json", dataclasses.asdict(plan))
    batches_per_epoch = len(train_set) // config.batch_size  # the last, incomplete batch is dropped
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, batches_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    sampler = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    predictions = None  # the last evaluated epoch's predicted classes

    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], sampler)
        history, predictions = state["history"], state.get("predictions")
        _write_metrics(out / "metrics.jsonl", history)  # drop any line written after the checkpoint
    if config.method == "patchgd":
        k, zeta = config.schedule()

    for epoch in range(len(history) + 1, config.epochs + 1):
        model.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
        indices = order[: batches_per_epoch * config.batch_size].tolist()
        bar = tqdm(_batches(train_set, indices, config.batch_size, config.workers), total=batches_per_epoch,
                   desc=f"{config.method} {config.backbone} epoch {epoch}/{config.epochs}",
                   disable=not progress, leave=False)
        start, losses, steps = time.perf_counter(), [], 0
        for images, labels in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            try:
                if config.method == "patchgd":
                    loss, n = patchgd.train_batch(model, images, labels, optimizer, k=k, inner_iterations=zeta,
                                                  grad_accum=config.grad_accum, generator=sampler,
                                                  fill_chunk=config.fill_chunk, amp_dtype=amp_dtype, scaler=scaler)
                else:
                    loss, n = gd.train_batch(model, images, labels, optimizer, amp_dtype=amp_dtype, scaler=scaler)
            except torch.OutOfMemoryError as exc:
                if plan is None:
                    raise
                raise out_of_memory_error(plan, config.batch_size) from exc
            scheduler.step()
            loss = loss.item()
            losses.append(loss)
            steps += n
            bar.set_postfix(loss=f"{loss:.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - start
        row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0],
               "optimizer_steps": steps, "train_seconds": train_seconds,
               "train_images_per_s": len(indices) / train_seconds, **_peak_memory(device)}
        eval_start = time.perf_counter()
        row.update(evaluate(model, config.method, test_set, config.batch_size, device, amp_dtype=amp_dtype,
                            fill_chunk=config.fill_chunk, workers=config.workers))
        predictions = row.pop("predictions")  # kept for the last epoch only: the paired bootstrap's input
        row["eval_seconds"] = time.perf_counter() - eval_start
        history.append(row)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                 "rng": _rng_state(sampler), "history": history, "predictions": predictions,
                 "config": config.key()}
        save_torch(checkpoint, state)
        _write_metrics(out / "metrics.jsonl", history)
        if progress:
            tqdm.write(f"epoch {epoch}: loss {row['train_loss']:.3f}  accuracy {row['accuracy']:.1f}%  "
                       f"QWK {row['qwk']:.3f}  {row['train_images_per_s']:.1f} img/s")
        if on_epoch is not None:
            on_epoch(row)

    result = {"run_dir": str(out), "config": config.key(), "history": history, "final": history[-1],
              "test_predictions": predictions, "test_labels": test_set.labels}
    write_json(summary, result)
    # A finished run is read back, never resumed: keep its weights and history, not the optimizer's
    # moments (two thirds of a ResNet50 checkpoint). After the summary, so a kill in between loses nothing.
    final = {"model": model.state_dict(), "history": history, "config": config.key()}
    save_torch(checkpoint, final)
    return result


def evaluate_run(run_dir: str | Path, *, data: str | None = None, split: str = "test", device: str = "auto") -> dict:
    """Evaluate the latest checkpoint of a run folder."""
    run_dir = Path(run_dir)
    config_path, checkpoint = run_dir / "config.json", run_dir / "checkpoint.pt"
    if not config_path.exists() or not checkpoint.exists():
        raise KitError(f"{run_dir} is not a run folder with a checkpoint (needs config.json and checkpoint.pt)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in json.loads(config_path.read_text()).items() if k in fields})
    config = dataclasses.replace(config, device=device, data=data or config.data)
    dev = resolve_device(config.device)
    model = build_model(config.method, config.backbone, config.num_classes, config.image_size,
                        config.patch_size).to(dev)
    state = torch.load(checkpoint, map_location=dev, weights_only=False)
    model.load_state_dict(state["model"])
    dataset = UltraMNIST(Path(config.data), split)
    result = evaluate(model, config.method, dataset, config.batch_size or 16, dev,
                      amp_dtype=autocast_dtype(config, dev), fill_chunk=config.fill_chunk)
    return {"run_dir": str(run_dir), "split": split, "epoch": len(state["history"]), **result}
