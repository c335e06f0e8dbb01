"""Training runs: one folder per run, checkpointed every epoch, resumed by rerunning.

A run folder holds `config.json`, `metrics.jsonl` (one line per finished epoch), `checkpoint.pt`
(model, optimizer, scheduler, scaler, RNG states and the history; written atomically) with the one
before it as `checkpoint.prev.pt`, and, once finished, `summary.json` (the checkpoint then keeps the
model and the history only). Rerunning with the same config resumes from the checkpoint or, when
the run is finished, returns its saved metrics; another config in a folder that holds trained
epochs is refused (`restart=True` begins the run again), in one that holds none it replaces them.

Every value and the data, the weights and the batch are checked before the folder is written,
and the folder is locked while a process trains in it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import cohen_kappa_score
from tqdm.auto import tqdm

from . import gd, patchgd
from .data import UltraMNIST, check_int
from .errors import KitError
from .files import atomic_write, locked, save_torch, write_json
from .memory import Plan, limit_cuda_memory, out_of_memory_error, plan_for_config
from .models import BACKBONES, METHODS, build_model, trunk_of
from .patches import grid_shape, inner_iterations, patches_per_iteration

MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which train() calls, takes no more


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
    # The pretrained trunk's lr is lr × this (the new layers keep lr). The paper: 1 (one lr for all).
    trunk_lr_scale: float = 1.0
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
        for name in ("image_size", "epochs", "fill_chunk"):
            check_int(name.replace("_", " "), getattr(self, name), 1)
        check_int("num classes", self.num_classes, 2)
        check_int("seed", self.seed, 0, MAX_SEED)
        # More worker processes than cores only add memory: each one keeps its own image cache.
        check_int("workers", self.workers, 0, os.cpu_count() or 1)
        if self.batch_size is None and self.memory_budget is None:
            raise KitError("give a batch size or a memory budget")
        if self.batch_size is not None:
            check_int("batch size", self.batch_size, 1)
        validate_device(self.device)
        if self.channels_last not in ("auto", "on", "off"):
            raise KitError(f"channels_last {self.channels_last!r} is not one of auto, on, off")
        check_number("lr", self.lr, "a number in (0, 1] (paper: 1e-3)", lambda v: 0 < v <= 1)
        check_number("warm-up epochs", self.warmup_epochs, "a number >= 0 (paper: 2)", lambda v: v >= 0)
        check_number("final lr fraction", self.final_lr_fraction, "a number in (0, 1]", lambda v: 0 < v <= 1)
        check_number("trunk lr scale", self.trunk_lr_scale, "a number in (0, 1] (paper: 1)", lambda v: 0 < v <= 1)
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
        """What defines the run's result: everything except where to find things. Fields added after
        the first version are left out at their default, so that adding one keeps every stored run's key."""
        d = dataclasses.asdict(self)
        d.pop("workers")
        for name in LATER_FIELDS:
            if d[name] == TrainConfig.__dataclass_fields__[name].default:
                d.pop(name)
        if self.method != "patchgd":
            for name in ("patch_size", "sampling", "max_sampled", "grad_accum", "fill_chunk"):
                d.pop(name)
        return d


LATER_FIELDS = ("trunk_lr_scale",)


def check_number(name: str, value, allowed: str, ok: Callable[[float], bool]) -> None:
    """A finite number for which `ok` holds (inf and nan never are); `allowed` says which in words."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise KitError(f"{name} {value!r} is not allowed; allowed: {allowed}")


def validate_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda"):
        raise KitError(f"device {device!r} is not one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise KitError("device 'cuda' was asked for but no CUDA device is available; use auto or cpu")


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


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam without weight decay (the official code): the new layers at lr (group 0, the lr the
    metrics report), the pretrained trunk at lr × trunk_lr_scale (group 1)."""
    trunk = {id(p) for p in trunk_of(model, config.backbone).parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in trunk], "lr": config.lr},
              {"params": [p for p in model.parameters() if id(p) in trunk], "lr": config.lr * config.trunk_lr_scale}]
    return torch.optim.Adam(groups, lr=config.lr)


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


CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"
RUN_FILES = ("config.json", "plan.json", "metrics.jsonl", CHECKPOINT, PREVIOUS, "summary.json")
TRAINED_FILES = (CHECKPOINT, PREVIOUS, "summary.json")  # a folder with one of these holds trained epochs


def note(message: str) -> None:
    """A line on stderr saying what the kit did on its own (replaced a folder, fell back)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


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


def _config_conflict(out: Path, config: TrainConfig) -> tuple[str, str] | None:
    """(what is wrong, what to do) when `out` holds a config.json that is not this config's."""
    path = out / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:  # not JSON, or not text
        saved = exc
    if not isinstance(saved, dict):
        return (f"{path} is unreadable ({saved if isinstance(saved, ValueError) else 'not a JSON object'})",
                "delete it to resume from the checkpoint (whose own config is checked), or rerun with "
                "--restart to begin the run again")
    key = config.key()
    if saved == key:
        return None
    differ = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
    return (f"run folder {out} holds a run with a different config (differs in: {', '.join(differ)})",
            "use another --out, rerun with --restart to begin the run again, or delete that folder")


def _claim_run_folder(out: Path, config: TrainConfig, restart: bool) -> None:
    """Make the locked folder `out` this config's run folder. Another run's trained epochs are
    refused unless `restart`; a folder left by a run that trained no epoch is replaced."""
    conflict = None if restart else _config_conflict(out, config)
    if conflict and any((out / name).exists() for name in TRAINED_FILES):
        raise KitError("; ".join(conflict))
    if restart and any((out / name).exists() for name in RUN_FILES):
        note(f"restart: removed the run in {out}, to begin it again")
    elif conflict:
        note(f"{conflict[0]}, but that run trained no epoch: replaced")
    if restart or conflict:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    write_json(out / "config.json", config.key())


def _finished_result(out: Path, config: TrainConfig) -> dict | None:
    """The saved result of this config's finished run in `out`, or None. A damaged summary.json
    counts as absent: the finished run's checkpoint writes it again."""
    try:
        result = json.loads((out / "summary.json").read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("config") == config.key() else None


def _read_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except OSError:
        raise
    except Exception as exc:  # a damaged file fails in many ways: EOFError, RuntimeError, UnpicklingError
        raise ValueError(f"{path} is unreadable ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or not {"model", "history", "config"} <= state.keys():
        raise ValueError(f"{path} is not a checkpoint of this kit")
    return state


def load_checkpoint(run_dir: Path, device: torch.device) -> dict | None:
    """The newest good checkpoint of a run folder (None when it has none): checkpoint.pt, else the
    one kept before it, with a note. When every one is damaged, a KitError says what to do."""
    damaged = []
    for path in (run_dir / CHECKPOINT, run_dir / PREVIOUS):
        if not path.exists():
            continue
        try:
            state = _read_checkpoint(path, device)
        except ValueError as exc:
            damaged.append(str(exc))
            continue
        if damaged:
            note(f"{damaged[0]}; resuming from the checkpoint before it, {path.name}")
        return state
    if damaged:
        raise KitError(f"{'; '.join(damaged)}, and no earlier checkpoint is kept: begin the run again "
                       f"(`train` with --restart) or delete {run_dir}")
    return None


def _check_data(dataset: UltraMNIST, config: TrainConfig) -> None:
    root = dataset.folder.parent
    if dataset.image_size != config.image_size:
        raise KitError(f"data in {root} has images of {dataset.image_size} px but the image size is "
                       f"{config.image_size}; regenerate the data or pass --image-size {dataset.image_size}")
    if dataset.num_classes != config.num_classes:  # the Dataset has checked every label against its own
        raise KitError(f"data in {root} has {dataset.num_classes} classes but num_classes is "
                       f"{config.num_classes}; pass --num-classes {dataset.num_classes}")


def load_datasets(config: TrainConfig) -> tuple[UltraMNIST, UltraMNIST]:
    train_set, test_set = UltraMNIST(config.data, "train"), UltraMNIST(config.data, "test")
    for dataset in (train_set, test_set):
        _check_data(dataset, config)
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


class _Run:
    """A run being trained in its (locked) folder: the model, everything that moves as it trains,
    and the checkpoints that save and restore them."""

    def __init__(self, config: TrainConfig, out: Path, model: torch.nn.Module, device: torch.device,
                 datasets: tuple[UltraMNIST, UltraMNIST], plan: Plan | None, progress: bool):
        self.config, self.out, self.model, self.device, self.plan, self.progress = (
            config, out, model, device, plan, progress)
        self.train_set, self.test_set = datasets
        self.amp_dtype = autocast_dtype(config, device)
        self.optimizer = make_optimizer(model, config)
        self.batches_per_epoch = len(self.train_set) // config.batch_size  # the last, incomplete batch is dropped
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, self.batches_per_epoch))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.sampler = torch.Generator().manual_seed(config.seed)
        self.k, self.zeta = config.schedule() if config.method == "patchgd" else (None, None)

    def save(self, history: list[dict], predictions: list[int] | None, pending: dict | None = None) -> None:
        """Write checkpoint.pt (`pending`: an epoch trained but not yet evaluated), keeping the one
        before it as checkpoint.prev.pt to fall back on."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                 "rng": _rng_state(self.sampler), "history": history, "predictions": predictions,
                 "pending": pending, "config": self.config.key()}
        current = self.out / CHECKPOINT
        if current.exists():
            os.replace(current, self.out / PREVIOUS)
        save_torch(current, state)

    def resume(self) -> tuple[list[dict], list[int] | None, dict | None]:
        """(history, the last evaluated epoch's predictions, an epoch trained but not evaluated)
        from the newest good checkpoint; nothing when there is none."""
        state = load_checkpoint(self.out, self.device)
        if state is None:
            return [], None, None
        if state["config"] != self.config.key():
            raise KitError(f"the checkpoint in {self.out} was written by a run with another config; use "
                           "another --out, or rerun with --restart to begin the run again")
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:  # a finished run's checkpoint keeps the model and the history only
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"], self.sampler)
        _write_metrics(self.out / "metrics.jsonl", state["history"])  # drop any line written after it
        return state["history"], state.get("predictions"), state.get("pending")

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """One batch: (its loss, the optimizer steps taken)."""
        config = self.config
        try:
            if config.method == "patchgd":
                loss, steps = patchgd.train_batch(
                    self.model, images, labels, self.optimizer, k=self.k, inner_iterations=self.zeta,
                    grad_accum=config.grad_accum, generator=self.sampler, fill_chunk=config.fill_chunk,
                    amp_dtype=self.amp_dtype, scaler=self.scaler)
            else:
                loss, steps = gd.train_batch(self.model, images, labels, self.optimizer, amp_dtype=self.amp_dtype,
                                             scaler=self.scaler)
        except torch.OutOfMemoryError as exc:
            if self.plan is None:
                raise
            raise out_of_memory_error(self.plan, config.batch_size) from exc
        return loss.item(), steps

    def train_epoch(self, epoch: int) -> dict:
        """One epoch of optimizer steps; returns its row of training metrics."""
        config, device = self.config, self.device
        self.model.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
        indices = order[: self.batches_per_epoch * config.batch_size].tolist()
        bar = tqdm(_batches(self.train_set, indices, config.batch_size, config.workers), total=self.batches_per_epoch,
                   desc=f"{config.method} {config.backbone} epoch {epoch}/{config.epochs}",
                   disable=not self.progress, leave=False)
        start, losses, steps = time.perf_counter(), [], 0
        for images, labels in bar:
            loss, n = self._step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            if not math.isfinite(loss):  # a run that diverged must not be stored as finished
                raise KitError(f"training diverged in epoch {epoch} (loss {loss}); nothing of this epoch is "
                               f"saved: rerun with a lower --lr than {config.lr:g}")
            self.scheduler.step()
            losses.append(loss)
            steps += n
            bar.set_postfix(loss=f"{loss:.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return {"epoch": epoch, "train_loss": sum(losses) / len(losses), "lr": self.scheduler.get_last_lr()[0],
                "optimizer_steps": steps, "train_seconds": seconds, "train_images_per_s": len(indices) / seconds,
                **_peak_memory(device)}

    def evaluate_into(self, row: dict) -> list[int]:
        """Score the test set into `row`; returns the predicted classes."""
        start = time.perf_counter()
        row.update(evaluate(self.model, self.config.method, self.test_set, self.config.batch_size, self.device,
                            amp_dtype=self.amp_dtype, fill_chunk=self.config.fill_chunk, workers=self.config.workers))
        predictions = row.pop("predictions")  # kept for the last epoch only: the paired bootstrap's input
        row["eval_seconds"] = time.perf_counter() - start
        return predictions

    def finish(self, history: list[dict], predictions: list[int] | None) -> dict:
        key = self.config.key()
        result = {"run_dir": str(self.out), "config": key, "history": history, "final": history[-1],
                  "test_predictions": predictions, "test_labels": self.test_set.labels}
        write_json(self.out / "summary.json", result)
        # A finished run is read back, never resumed: keep its weights, history and predictions, not the
        # optimizer's moments (two thirds of a ResNet50 checkpoint). After the summary, so a kill in
        # between loses nothing.
        save_torch(self.out / CHECKPOINT, {"model": self.model.state_dict(), "history": history,
                                            "predictions": predictions, "config": key})
        (self.out / PREVIOUS).unlink(missing_ok=True)
        return result


def _train_epochs(run: _Run, on_epoch: Callable[[dict], None] | None) -> dict:
    """Train the run's remaining epochs, each checkpointed, and finish it."""
    history, predictions, pending = run.resume()
    for epoch in range(len(history) + 1, run.config.epochs + 1):
        if pending is None:
            row = run.train_epoch(epoch)
            # Saved before the evaluation: a failure there (a damaged test image) loses no training.
            run.save(history, predictions, pending=row)
        else:
            row, pending = pending, None
        predictions = run.evaluate_into(row)
        history.append(row)
        run.save(history, predictions)
        _write_metrics(run.out / "metrics.jsonl", history)
        if run.progress:
            tqdm.write(f"epoch {epoch}: loss {row['train_loss']:.3f}  accuracy {row['accuracy']:.1f}%  "
                       f"QWK {row['qwk']:.3f}  {row['train_images_per_s']:.1f} img/s")
        if on_epoch is not None:
            on_epoch(row)
    return run.finish(history, predictions)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def train(config: TrainConfig | None = None, out: str | Path = "runs/run", *, progress: bool = True,
          on_epoch: Callable[[dict], None] | None = None, restart: bool = False, **overrides) -> dict:
    """Train (or resume, or read back) the run in `out`. Returns {"run_dir", "config", "history",
    "final", ...}; `history` has one dict per epoch, `final` is the last one. `restart`: begin the
    run again, whatever the folder holds."""
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    config.validate()
    out = Path(out)
    datasets = load_datasets(config)
    plan = None
    if config.memory_budget is not None:  # plan the batch, or refuse a given one that does not fit
        plan = plan_for_config(config)
        config = dataclasses.replace(config, batch_size=plan.batch_size)
    if len(datasets[0]) < config.batch_size:
        raise KitError(f"batch size {config.batch_size} is larger than the {len(datasets[0])} training images")
    finished = None if restart else _finished_result(out, config)
    if finished is not None:
        return finished
    device = resolve_device(config.device)
    _seed_everything(config.seed)
    if device.type == "cuda":  # before the first CUDA allocation; lifts an earlier run's cap without a budget
        limit_cuda_memory(device, plan.budget_bytes if plan else None)
    model = build_model(config.method, config.backbone, config.num_classes, config.image_size,
                        config.patch_size, weights=config.weights).to(device)
    if use_channels_last(config, device):
        model = model.to(memory_format=torch.channels_last)
    # Only now, with every value, the data and the weights checked, is the folder written: a config
    # that cannot run leaves nothing behind to block the corrected command.
    out.mkdir(parents=True, exist_ok=True)
    with locked(out / ".lock", f"training in {out}"):
        _claim_run_folder(out, config, restart)
        finished = _finished_result(out, config)  # by another process since the look above
        if finished is not None:
            return finished
        if plan is not None:
            write_json(out / "plan.json", dataclasses.asdict(plan))
        return _train_epochs(_Run(config, out, model, device, datasets, plan, progress), on_epoch)


def evaluate_run(run_dir: str | Path, *, data: str | None = None, split: str = "test", device: str = "auto") -> dict:
    """Evaluate the latest checkpoint of a run folder."""
    run_dir = Path(run_dir)
    validate_device(device)
    dev = resolve_device(device)
    state = load_checkpoint(run_dir, dev)
    if state is None:
        raise KitError(f"{run_dir} is not a run folder with a checkpoint (needs {CHECKPOINT})")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in state["config"].items() if k in fields})
    config = dataclasses.replace(config, device=device, data=data or config.data)
    dataset = UltraMNIST(Path(config.data), split)
    _check_data(dataset, config)
    model = build_model(config.method, config.backbone, config.num_classes, config.image_size,
                        config.patch_size).to(dev)
    model.load_state_dict(state["model"])
    result = evaluate(model, config.method, dataset, config.batch_size or 16, dev,
                      amp_dtype=autocast_dtype(config, dev), fill_chunk=config.fill_chunk)
    epoch = state["pending"]["epoch"] if state.get("pending") else len(state["history"])
    return {"run_dir": str(run_dir), "split": split, "epoch": epoch, **result}
