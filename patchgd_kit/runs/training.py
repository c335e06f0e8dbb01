"""Training runs, in the style of torchvision's references: ``train_one_epoch`` and ``evaluate`` around
the method's own step (``methods.METHODS``), and ``train``, which sets a run up, resumes it from its
folder (``runfolder``), checkpoints every epoch and finishes it.

Every value and the data, the weights and the batch are checked before the folder is written, and the
folder is locked while a process trains in it. Rerunning resumes from the checkpoint or, when the run
is finished, returns its saved result.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
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

from ..core.methods import StepSettings, build_model, method_of, uses_patches
from ..data.tiled import collate
from ..data.ultramnist import UltraMNIST
from ..errors import KitError, check_path
from ..files import locked, write_json
from ..planner.budget import Plan, limit_cuda_memory, out_of_memory_error, plan_for_config
from ..progress import bar_disabled
from . import distributed
from .config import TrainConfig, autocast_dtype, precision, resolve_device, use_channels_last, validate_device
from .distributed import Processes
from .optim import lr_lambda, make_optimizer
from .runfolder import (CHECKPOINT, check_run_folder, claim_run_folder, finished_result, load_checkpoint, note,
                        rng_state, save_checkpoint, save_finished, set_rng_state, write_metrics)


def _check_data(dataset: UltraMNIST, config: TrainConfig) -> None:
    root = dataset.folder.parent
    if dataset.image_size != config.image_size:
        raise KitError(f"data in {root} has images of {dataset.image_size} px but the image size is "
                       f"{config.image_size}; regenerate the data or pass --image-size {dataset.image_size}")
    if dataset.tiled and not uses_patches(config.method):
        raise KitError(f"data in {root} is tiled (images read a patch at a time) and {config.method} needs whole "
                       "images; allowed: --method patchgd, or data generated without --tiled")
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
        num_workers=workers, drop_last=False, collate_fn=collate)
    return loader


def evaluate(model: torch.nn.Module, method: str, dataset, batch_size: int, device: torch.device, *,
             amp_dtype: torch.dtype | None = None, fill_chunk: int = 256, workers: int = 0,
             input_side: int | None = None, processes: Processes = Processes()) -> dict:
    """Loss, accuracy (%), quadratic-weighted kappa and the predicted class of every image (in the
    dataset's order, for paired comparisons of runs) on a dataset; PatchGD infers g_θ2(fill(X)).
    Under torchrun each process predicts every world-th image, and the predictions are gathered."""
    model.eval()
    predict = method_of(method).predict
    settings = StepSettings(fill_chunk=fill_chunk, amp_dtype=amp_dtype, input_side=input_side)
    losses, preds, labels = [], [], []
    for images, y in _batches(dataset, list(range(len(dataset)))[processes.rank::processes.world], batch_size,
                              workers):
        images, y = images.to(device), y.to(device)
        logits = predict(model, images, settings)
        losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="sum").item())
        preds.append(logits.argmax(1).cpu())
        labels.append(y.cpu())
    empty = np.zeros(0, np.int64)  # a process with no image: more processes than test images
    loss, preds, labels = (sum(losses), torch.cat(preds).numpy() if preds else empty,
                           torch.cat(labels).numpy() if labels else empty)
    loss, preds, labels = distributed.gather_predictions(loss, preds, labels, processes)
    agree = len(set(preds) | set(labels)) > 1  # kappa is undefined when one class is all there is
    qwk = float(cohen_kappa_score(labels, preds, weights="quadratic")) if agree else float("nan")
    return {"test_loss": loss / len(labels), "accuracy": float((preds == labels).mean() * 100),
            "qwk": qwk, "predictions": preds.tolist()}


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


@dataclass
class Run:
    """A run being trained in its (locked) folder: its model and everything that moves as it trains."""
    config: TrainConfig
    out: Path
    model: torch.nn.Module
    device: torch.device
    train_set: UltraMNIST
    test_set: UltraMNIST
    plan: Plan | None
    progress: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: StepSettings           # the method's step settings: k, ζ, ε, precision, scaler, sampler
    batches_per_epoch: int       # the last, incomplete (global) batch is dropped
    processes: Processes = Processes()  # torchrun's processes; this one's rank


def setup_run(config: TrainConfig, out: Path, model: torch.nn.Module, device: torch.device,
              datasets: tuple[UltraMNIST, UltraMNIST], plan: Plan | None, progress: bool,
              processes: Processes = Processes()) -> Run:
    """The optimizer, lr schedule, loss scaler and patch sampler of a fresh run; with more than one
    process, the model's DDP wrapper in its step settings."""
    optimizer = make_optimizer(model, config, device)
    batches = len(datasets[0]) // (config.batch_size * processes.world)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, batches))
    step = step_settings(config, device)
    if processes.distributed:
        wrapper = distributed.wrap(model, device)
        step = dataclasses.replace(step, through=wrapper, defer_sync=wrapper.no_sync,
                                   share=(processes.rank, processes.world))
    return Run(config, out, model, device, *datasets, plan, progress and processes.main, optimizer, scheduler,
               step, batches, processes)


def step_settings(config: TrainConfig, device: torch.device) -> StepSettings:
    """What the method's step needs besides model and batch: k and ζ of the schedule, ε, the
    precision, a GradScaler for fp16 on CUDA, and the patch sampler seeded by the run's seed."""
    amp_dtype = autocast_dtype(config, device)
    k, zeta = config.schedule()
    return StepSettings(k=k, inner_iterations=zeta, grad_accum=config.grad_accum, fill_chunk=config.fill_chunk,
                        amp_dtype=amp_dtype, generator=torch.Generator().manual_seed(config.seed),
                        input_side=config.downscaled_side,
                        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None)


def model_on(config: TrainConfig, device: torch.device, weights: str | None = None) -> torch.nn.Module:
    """The run's model on the device, in the memory format train() runs it in."""
    model = build_model(config.method, config.backbone, config.num_classes, config.image_size,
                        config.patch_size, weights=weights).to(device)
    if use_channels_last(config, device):
        model = model.to(memory_format=torch.channels_last)
    return model


def checkpoint(run: Run, history: list[dict], predictions: list[int] | None, pending: dict | None = None) -> None:
    """Save the run (`pending`: an epoch trained but not yet evaluated); rank 0 alone writes."""
    if not run.processes.main:
        return
    scaler = run.step.scaler
    save_checkpoint(run.out, {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
        "rng": rng_state(run.step.generator), "history": history, "predictions": predictions, "pending": pending,
        "config": run.config.key(), "processes": run.processes.world})


def resume(run: Run) -> tuple[list[dict], list[int] | None, dict | None]:
    """(history, the last evaluated epoch's predictions, an epoch trained but not evaluated) from the
    newest good checkpoint; nothing when there is none."""
    state = load_checkpoint(run.out, run.device)
    if state is None:
        return [], None, None
    if state["config"] != run.config.key():
        raise KitError(f"the checkpoint in {run.out} was written by a run with another config; use "
                       "another --out, or rerun with --restart to begin the run again")
    processes = state.get("processes", 1)
    if "optimizer" in state and processes != run.processes.world:
        raise KitError(f"the checkpoint in {run.out} was written by {processes} process(es), this run has "
                       f"{run.processes.world}: resume with torchrun --nproc_per_node {processes} (the global "
                       "batch and data order depend on it), or rerun with --restart")
    run.model.load_state_dict(state["model"])
    if "optimizer" in state:  # a finished run's checkpoint keeps the model and the history only
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if run.step.scaler is not None:
            run.step.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], run.step.generator)
    if run.processes.main:
        write_metrics(run.out / "metrics.jsonl", state["history"])  # drop any line written after it
    return state["history"], state.get("predictions"), state.get("pending")


def _train_batch(run: Run, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """One batch through the method's step: (its loss, the optimizer steps taken)."""
    try:
        loss, steps = method_of(run.config.method).train_batch(run.model, images, labels, run.optimizer, run.step)
    except torch.OutOfMemoryError as exc:
        if run.plan is None:
            raise
        raise out_of_memory_error(run.plan, run.config.batch_size) from exc
    return loss.item(), steps


def train_one_epoch(run: Run, epoch: int) -> dict:
    """One epoch of optimizer steps; returns its row of training metrics."""
    config, device = run.config, run.device
    run.model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    order = torch.randperm(len(run.train_set), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
    indices = order[: run.batches_per_epoch * config.batch_size * run.processes.world].tolist()
    mine = distributed.share_of(indices, config.batch_size, run.processes)
    bar = tqdm(_batches(run.train_set, mine, config.batch_size, config.workers), total=run.batches_per_epoch,
               desc=f"{config.method} {config.backbone} epoch {epoch}/{config.epochs}",
               disable=bar_disabled(run.progress), leave=False)
    start, losses, steps = time.perf_counter(), [], 0
    for images, labels in bar:
        loss, n = _train_batch(run, images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        if not math.isfinite(loss):  # a run that diverged must not be stored as finished
            raise KitError(f"training diverged in epoch {epoch} (loss {loss}); nothing of this epoch is "
                           f"saved: rerun with a lower --lr than {config.lr:g}")
        run.scheduler.step()
        losses.append(loss)
        steps += n
        bar.set_postfix(loss=f"{loss:.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "lr": run.scheduler.get_last_lr()[0],
           "optimizer_steps": steps, "train_seconds": seconds, "train_images_per_s": len(indices) / seconds,
           "precision": precision(config), **_peak_memory(device)}
    return distributed.gather_row(row, run.processes, len(indices))


def evaluate_epoch(run: Run, row: dict) -> list[int]:
    """Score the test set into `row`; returns the predicted classes."""
    start, config = time.perf_counter(), run.config
    distributed.sync_buffers(run.model, run.processes)  # every process evaluates rank 0's model
    row.update(evaluate(run.model, config.method, run.test_set, config.batch_size, run.device,
                        amp_dtype=run.step.amp_dtype, fill_chunk=config.fill_chunk, workers=config.workers,
                        input_side=config.downscaled_side, processes=run.processes))
    predictions = row.pop("predictions")  # kept for the last epoch only: the paired bootstrap's input
    row["eval_seconds"] = time.perf_counter() - start
    return predictions


def finish_run(run: Run, history: list[dict], predictions: list[int] | None) -> dict:
    result = {"run_dir": str(run.out), "config": run.config.key(), "history": history, "final": history[-1],
              "test_predictions": predictions, "test_labels": run.test_set.labels}
    if run.processes.main:
        save_finished(run.out, result, run.model.state_dict())
    return result


def _train_epochs(run: Run, on_epoch: Callable[[dict], None] | None) -> dict:
    """Train the run's remaining epochs, each checkpointed, and finish it."""
    history, predictions, pending = resume(run)
    for epoch in range(len(history) + 1, run.config.epochs + 1):
        if pending is None:
            row = train_one_epoch(run, epoch)
            # Saved before the evaluation: a failure there (a damaged test image) loses no training.
            checkpoint(run, history, predictions, pending=row)
        else:
            row, pending = pending, None
        predictions = evaluate_epoch(run, row)
        history.append(row)
        if epoch < run.config.epochs:  # the last is saved by finish_run; a kill before it re-evaluates
            checkpoint(run, history, predictions)
        if run.processes.main:
            write_metrics(run.out / "metrics.jsonl", history)
        if run.progress:
            tqdm.write(f"epoch {epoch}: loss {row['train_loss']:.3f}  accuracy {row['accuracy']:.1f}%  "
                       f"QWK {row['qwk']:.3f}  {row['train_images_per_s']:.1f} img/s")
        if on_epoch is not None:
            on_epoch(row)
    return finish_run(run, history, predictions)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _check_batch(config: TrainConfig, images: int, processes: Processes) -> None:
    if processes.distributed and images < config.batch_size * processes.world:
        raise KitError(f"the global batch, {config.batch_size} per process × {processes.world} processes, is larger "
                       f"than the {images} training images; the batch size is per process: pass a smaller one")
    if images < config.batch_size:
        raise KitError(f"batch size {config.batch_size} is larger than the {images} training images")


def _model(config: TrainConfig, device: torch.device, processes: Processes) -> torch.nn.Module:
    """The run's model; with --sync-bn under torchrun, its BatchNorm layers as SyncBatchNorm."""
    model = model_on(config, device, config.weights)
    if not (config.sync_bn and processes.distributed):
        return model
    if device.type != "cuda":
        raise KitError("--sync-bn needs CUDA (SyncBatchNorm runs on GPUs only); leave it out on the CPU")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def train(config: TrainConfig | None = None, out: str | Path = "runs/run", *, progress: bool = True,
          on_epoch: Callable[[dict], None] | None = None, restart: bool = False, **overrides) -> dict:
    """Train (or resume, or read back) the run in `out`. Returns {"run_dir", "config", "history",
    "final", ...}; `history` has one dict per epoch, `final` is the last one. `restart`: begin the
    run again, whatever the folder holds. Under torchrun every process calls it (`distributed`),
    the batch size being each process's."""
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    config.validate()
    out, processes = Path(check_path("--out", out)), distributed.from_env()
    check_run_folder(out, config)  # someone else's folder is refused before anything is read or written
    datasets = load_datasets(config)
    plan = None
    if config.batch_size is None:  # the batch is the plan's (validate: a budget is there)
        plan = plan_for_config(config)
        config = dataclasses.replace(config, batch_size=plan.batch_size)
    if processes.distributed:  # refused before a process group is started for it
        _check_batch(config, len(datasets[0]), processes)
    device = distributed.device_for(resolve_device(config.device), processes)
    made = not out.exists()
    try:
        with distributed.session(processes, device), contextlib.ExitStack() as lock:
            # Finished? Decided here alone, under the folder's lock (rank 0 holds it until the run ends),
            # once the run's key (its batch) is known. A finished run is read back as it is: no model is
            # built, and a given batch is not checked against the budget again (a fake-tensor trace).
            finished = distributed.on_main(processes, lambda: _lock_and_read_back(out, config, restart, lock))
            if finished is not None:
                return finished
            run = _start_run(config, plan, out, datasets, device, processes, restart, progress)
            return _train_epochs(run, on_epoch)
    finally:  # a config that could not run leaves no folder behind to block the corrected command
        if made and processes.main and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _lock_and_read_back(out: Path, config: TrainConfig, restart: bool, lock: contextlib.ExitStack) -> dict | None:
    """Lock the run's folder (held until `lock` closes); the saved result if the run is finished."""
    out.mkdir(parents=True, exist_ok=True)
    lock.enter_context(locked(out / ".lock", f"training in {out}"))
    return None if restart else finished_result(out, config)


def _start_run(config: TrainConfig, plan: Plan | None, out: Path, datasets: tuple[UltraMNIST, UltraMNIST],
               device: torch.device, processes: Processes, restart: bool, progress: bool) -> Run:
    """Check the batch, build the model and claim the locked folder for the run: only with every value,
    the data and the weights checked is anything written into it."""
    if plan is None and config.memory_budget is not None:  # a given batch: refused if it does not fit
        plan = plan_for_config(config)
    _check_batch(config, len(datasets[0]), processes)
    _seed_everything(config.seed)
    if device.type == "cuda":  # before the run's first allocation; lifts an earlier run's cap without a budget
        limit_cuda_memory(device, plan.budget_bytes if plan else None)  # per process: each has its GPU
    model = _model(config, device, processes)
    if processes.distributed and processes.main:
        note(f"{processes.world} processes × batch {config.batch_size} = global batch "
             f"{processes.world * config.batch_size}")

    def claim() -> None:
        claim_run_folder(out, config, restart)
        if plan is not None:
            write_json(out / "plan.json", dataclasses.asdict(plan))
    distributed.on_main(processes, claim)
    return setup_run(config, out, model, device, datasets, plan, progress, processes)


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
                      amp_dtype=autocast_dtype(config, dev), fill_chunk=config.fill_chunk,
                      input_side=config.downscaled_side)
    epoch = state["pending"]["epoch"] if state.get("pending") else len(state["history"])
    return {"run_dir": str(run_dir), "split": split, "epoch": epoch, **result}
