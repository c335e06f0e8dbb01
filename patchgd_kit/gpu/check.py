"""The GPU check: the memory planner against measured CUDA peaks, budget enforcement,
the fp16 path (autocast + GradScaler), training speed and Table 3's inference latency, in one short
run that leaves its figures in docs/gpu-checks/<date>-<device>.md and .json. This module runs the
rows of ``gpuplan``, each through the kit's own step, planner, train() or latency measurement, and
hands what they measured to ``gpureport``.

A GPU is at hand only now and then, for minutes: so the check is one command, starts no new row
once its time budget is spent (the rows it skipped are listed), records a failed row with its error
line and goes on, and rewrites its files (atomically) after every row. Rows run round-robin across
the sections, so a check cut short still has some figures of each.

Without CUDA (or with dry=True) the same plan runs at a tiny scale on the CPU so that CI proves the
script. What needs CUDA (the cap of set_per_process_memory_fraction, a real out-of-memory) is then
recorded as skipped, not faked; the "measured" peak is the live tensor bytes of the real step (the
planner's own counter on real tensors), not an allocator's figure; budgets are the smallest that
hold batch 2, because at 64 px the peak hardly grows with the batch and 4 GB would hold hundreds.
"""
from __future__ import annotations

import dataclasses
import gc
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from ..core.methods import StepSettings, method_of
from ..data.ultramnist import ensure_dataset
from ..errors import KitError
from ..files import check_writable_folder
from .estimate import estimate
from .report import CHECKS_DIR, write_report
from .rows import Row, dry_plan, paper_plan
from ..planner import budget
from ..planner.budget import ALLOCATOR_HEADROOM, CUDA_CONTEXT_BYTES
from ..planner.bytecount import LiveBytes
from ..planner.estimate import estimate_peak
from ..report.latency import device_name, measure_latency
from ..report.tables import init_name
from ..runs.config import TrainConfig
from ..runs.optim import make_optimizer
from ..runs.profiles import get_profile
from ..runs.training import model_on, step_settings, train

DRY_OUT = Path("runs/gpu-check-dry")  # dry runs never write into docs/: CI leaves the repository clean


# ---- the kit's real training step, as train() sets it up ---------------------------------------

def check_config(row: Row, **changes) -> TrainConfig:
    """The row as a TrainConfig (what train() would run), with `changes`."""
    fields = dict(method=row.method, backbone=row.backbone, image_size=row.image_size, patch_size=row.patch_size,
                  sampling=row.sampling, grad_accum=row.grad_accum, batch_size=row.batch_size, amp=row.amp,
                  num_classes=row.num_classes)
    return TrainConfig(**{**fields, **changes})


@dataclass
class TrainingStep:
    """One batch of a row's method (``methods.METHODS``), set up from the kit's pieces as train()
    sets it up, on random images resident on the device: call it to train the batch once."""
    config: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    settings: StepSettings
    images: torch.Tensor
    labels: torch.Tensor

    def __call__(self) -> None:
        method_of(self.config.method).train_batch(self.model, self.images, self.labels, self.optimizer,
                                                  self.settings)

    def prime(self) -> None:
        """Steps until Adam's moments exist, as from the second batch of training on (a GradScaler
        skips the optimizer on a step whose fp16 gradients overflowed)."""
        for _ in range(4):
            self()
            if self.optimizer.state:
                return

    def tensors(self) -> list[torch.Tensor]:
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return [*self.model.parameters(), *self.model.buffers(), *state, self.images, self.labels]


def training_step(row: Row, device: torch.device) -> TrainingStep:
    """The row's model on the device (channels_last as train() chooses), make_optimizer's Adam, and
    the step settings: k and ζ of its schedule, ε, autocast, a GradScaler for fp16, the sampler."""
    c = check_config(row, device=device.type)
    c.validate()
    model = model_on(c, device)
    images = torch.randn(c.batch_size, 3, c.image_size, c.image_size, device=device)
    labels = torch.randint(0, c.num_classes, (c.batch_size,), device=device)
    return TrainingStep(c, model, make_optimizer(model, c, device), step_settings(c, device), images, labels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure_peak(step: TrainingStep, device: torch.device) -> dict:
    """Peak memory of one primed training step: the CUDA allocator's peaks, or on a CPU the live
    tensor bytes the planner counts, here on real tensors (a stand-in: no allocator to ask)."""
    step.prime()
    if device.type != "cuda":
        with LiveBytes(*step.tensors()) as live:
            step()
        return {"measured_allocated_bytes": live.peak, "measured_reserved_bytes": None,
                "measured_by": "live tensor bytes on CPU (dry)"}
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    return {"measured_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "measured_reserved_bytes": torch.cuda.max_memory_reserved(device),
            "measured_by": "torch.cuda.max_memory_allocated / max_memory_reserved"}


def _estimate(row: Row, k: int | None) -> int:
    return estimate_peak(row.method, row.backbone, row.image_size, row.batch_size, patch_size=row.patch_size,
                                k=k, amp=row.amp, num_classes=row.num_classes, grad_accum=row.grad_accum).peak_bytes


def _compare(estimated: int, measured: dict) -> dict:
    """Estimated against measured; the margin covers a peak when a plan that filled the usable part
    of a budget with this estimate would still fit the allocator's cap: reserved ≤ est / (1 - 10%)."""
    allocated, reserved = measured["measured_allocated_bytes"], measured["measured_reserved_bytes"]
    return {"estimated_bytes": estimated, **measured, "ratio_allocated": estimated / allocated,
            "ratio_reserved": estimated / reserved if reserved else None,
            "margin_covers": reserved <= estimated / (1 - ALLOCATOR_HEADROOM) if reserved else None}


# ---- the sections ------------------------------------------------------------------------------

@dataclass
class _Context:
    device: torch.device
    scratch: Path  # datasets and run folders of the fp16 epochs; removed at the end

    @property
    def dry(self) -> bool:
        return self.device.type != "cuda"

    @property
    def passes(self) -> tuple[int, int]:
        """(warm-up, timed) passes of the speed and latency rows: fewer when dry, whose times mean nothing."""
        return (1, 2) if self.dry else (2, 5)


def _budget_of(row: Row) -> int | str:
    """A dry row's budget: the smallest whose usable part holds batch 2 (planned batch 2, refused 4)."""
    if row.budget != "dry":
        return row.budget
    k = check_config(row).schedule()[0]
    return budget.budget_for(_estimate(dataclasses.replace(row, batch_size=2), k))


def _plan(row: Row, memory_budget: int | str, batch_size: int | None = None) -> budget.Plan:
    """The planner's plan for the row under `memory_budget`, as train --memory-budget plans it."""
    return budget.plan_for_config(check_config(row, memory_budget=memory_budget, batch_size=batch_size))


def check_peak(row: Row, ctx: _Context) -> dict:
    step = training_step(row, ctx.device)
    return _compare(_estimate(row, step.settings.k), _measure_peak(step, ctx.device))


NEEDS_CUDA = "needs CUDA: set_per_process_memory_fraction caps the CUDA allocator only"


def _run_capped(row: Row, plan: budget.Plan, batch: int, device: torch.device) -> dict:
    """One primed step at `batch` under the plan's budget, enforced as train() enforces it."""
    _release(device)  # a cached block would be handed out without asking the cap
    budget.limit_cuda_memory(device, plan.budget_bytes)
    try:
        return {"fits": True, **_measure_peak(training_step(dataclasses.replace(row, batch_size=batch), device), device)}
    except torch.OutOfMemoryError:
        return {"fits": False, "oom_message": str(budget.out_of_memory_error(plan, batch))}
    finally:
        budget.limit_cuda_memory(device, None)


def check_budget(row: Row, ctx: _Context) -> dict:
    """The planned batch under an enforced budget: does it fit, and how close was the estimate?"""
    plan = _plan(row, _budget_of(row))
    out = {"budget_bytes": plan.budget_bytes, "planned_batch": plan.batch_size, "k": plan.k,
           "paper_batch": row.paper, "estimated_bytes": plan.estimated_peak_bytes}
    if ctx.dry:
        return {**out, "status": "skipped", "reason": NEEDS_CUDA}
    result = _run_capped(row, plan, plan.batch_size, ctx.device)
    if result["fits"]:
        result.update(_compare(plan.estimated_peak_bytes, result))
    return {**out, **result}


def check_over_budget(row: Row, ctx: _Context) -> dict:
    """Twice the planned batch: the planner must refuse it, and under the cap CUDA must run out of
    memory with the kit's message naming the budget and the planner's batch."""
    plan = _plan(row, _budget_of(row))
    over = 2 * plan.batch_size
    try:
        _plan(row, plan.budget_bytes, batch_size=over)
        refusal = None
    except KitError as exc:
        refusal = str(exc)
    out = {"budget_bytes": plan.budget_bytes, "planned_batch": plan.batch_size, "over_batch": over,
           "planner_refusal": refusal}
    if refusal is None:
        raise KitError(f"the planner accepted batch {over}, twice its own plan of {plan.batch_size}")
    if ctx.dry:
        text = str(budget.out_of_memory_error(plan, over))  # its text, though no CUDA ran out of memory
        return {**out, "oom_message": text, "status": "skipped", "reason": NEEDS_CUDA}
    result = _run_capped(row, plan, over, ctx.device)
    if result["fits"]:  # the planner is pessimistic here: record it, it is a finding
        result["note"] = "fitted under the cap although the planner refused it"
    return {**out, **result}


def check_fp16_epoch(row: Row, ctx: _Context) -> dict:
    """One short epoch of train() in mixed precision: fp16 autocast + GradScaler on CUDA (there under
    the row's budget, planned and enforced by train()), on a CPU what config.autocast_dtype picks."""
    per_class = 1 if ctx.dry else 2  # 10 or 20 training images: a few batches
    data = ensure_dataset(ctx.scratch / "data", row.image_size, per_class, 1, seed=0, progress=False)  # 10 classes
    config = check_config(row, data=str(data), num_classes=10, epochs=1, amp=True, warmup_epochs=0,
                        memory_budget=None if ctx.dry else row.budget, device=ctx.device.type)
    final = train(config, ctx.scratch / f"run-{row.method}", progress=False, restart=True)["final"]
    keep = ("precision", "train_loss", "optimizer_steps", "train_images_per_s", "accuracy", "peak_allocated_bytes",
            "peak_reserved_bytes")
    return {k: final[k] for k in keep if k in final}


def check_speed(row: Row, ctx: _Context) -> dict:
    """Training images/s of the real step on device-resident images (no data loading)."""
    step, (warmup, repeats) = training_step(row, ctx.device), ctx.passes
    for _ in range(warmup):
        step()
    _sync(ctx.device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(ctx.device)
    return {"train_images_per_s": row.batch_size * repeats / (time.perf_counter() - start), "repeats": repeats}


def check_latency(row: Row, ctx: _Context) -> dict:
    """Table 3's latency column, measured by latency.measure_latency (the paper's way)."""
    warmup, repeats = ctx.passes
    result = measure_latency(check_config(row, device=ctx.device.type), warmup=warmup, repeats=repeats)
    return {"images_per_s": result["images_per_s"], "paper_images_per_s": row.paper,
            "precision": result["precision"]}


# The gpu profile's slice: images per class (train, test) and the stand-in's pretraining steps (used
# only where ImageNet weights cannot be downloaded): on CUDA a few hundred images, about 2 minutes.
SLICE_PER_CLASS = {"cuda": (30, 20, 50), "dry": (2, 1, 2)}


def check_slice(row: Row, ctx: _Context) -> dict:
    """The gpu profile's row (Table 2's PatchGD 16 GB) as reproduce trains it: its planned batch under
    its budget (enforced on CUDA), its data made at the row's size, its init (ImageNet, or the digits
    stand-in where they cannot be downloaded), one epoch on a few hundred images, data loading included."""
    from ..reproduce.notebooks import environment
    from ..reproduce.tableruns import run_table
    train_pc, test_pc, steps = SLICE_PER_CLASS["dry" if ctx.dry else "cuda"]
    profile = get_profile("gpu", image_size=row.image_size, patch_size=row.patch_size, per_class_train=train_pc,
                          per_class_test=test_pc, epochs=1, warmup_epochs=0, pretrain_steps=steps)
    with environment(KIT_RUNS=str(ctx.scratch / "slice")):
        result = run_table("table2", profile, rows=("patchgd_16gb",), progress=False)[0]
    final = result.runs[0]["final"]
    return {"batch_size_used": result.config.batch_size, "init": init_name(result.config.weights),
            "train_images": train_pc * 10, "test_images": result.test_images,
            "train_images_per_s": final["train_images_per_s"],
            "eval_images_per_s": result.test_images / final["eval_seconds"], "accuracy": final["accuracy"],
            **{k: final[k] for k in ("peak_allocated_bytes", "peak_reserved_bytes") if k in final}}


def hour_estimate(report: dict) -> dict:
    """The gpu profile's minutes for Figure 2 and Tables 1, 2, 5/6 (notebooks 03, 05-08) at the images/s
    this check measured where it has them (gpuestimate: at 512 px, so never from a dry run)."""
    result = estimate("gpu", report)
    sources = sorted({r["source"] for n in result["notebooks"].values() for r in n["runs"]})
    return {"minutes": round(result["total_minutes"], 1),
            "by_notebook": {n: round(e["minutes"], 1) for n, e in result["notebooks"].items()},
            "sources": sources}


CHECKS: dict[str, Callable[[Row, _Context], dict]] = {
    "peak": check_peak, "budget": check_budget, "over-budget": check_over_budget,
    "fp16-epoch": check_fp16_epoch, "speed": check_speed, "latency": check_latency, "slice": check_slice}


# ---- running the plan --------------------------------------------------------------------------

def _release(device: torch.device) -> None:
    """Free what a row left (its model, a failed step's tensors) so the next row starts empty."""
    gc.collect()
    if device.type == "cuda":
        budget.limit_cuda_memory(device, None)  # train() leaves its cap in place
        torch.cuda.empty_cache()


def _error_line(exc: BaseException) -> str:
    """The exception's first line and where it was raised (file:line)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400] if text else ''}{where}"


def run_row(row: Row, ctx: _Context, deadline: float) -> dict:
    """One row in its own try: a failure is recorded (with its error line) and the check goes on."""
    record = {"name": row.name, **dataclasses.asdict(row)}
    if time.monotonic() >= deadline:
        return {**record, "status": "skipped", "reason": "time budget spent before it started"}
    started = time.monotonic()
    try:
        record.update({"status": "ok", **CHECKS[row.section](row, ctx)})
    except Exception as exc:  # an OOM or a bug in one row is a finding, not the end of the check
        record.update(status="failed", error=_error_line(exc))
    finally:
        _release(ctx.device)
    record["seconds"] = round(time.monotonic() - started, 2)
    return record


def _device_info(device: torch.device) -> dict:
    info = {"device": device_name(device),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        # Held outside this process's allocator: the CUDA context and libraries (and any other process).
        info.update(total_bytes=total, outside_allocator_bytes=total - free - torch.cuda.memory_reserved(device))
    return info


def run_check(out: str | Path | None = None, *, dry: bool | None = None, minutes: float = 7.0,
              rows: list[Row] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the check: on CUDA unless `dry` or no CUDA; `rows` default to paper_plan() (dry_plan() of it
    when dry). No row starts after `minutes`. Writes <out>/<date>-<device>.json and .md after every
    row and returns the report."""
    dry = bool(dry) or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    rows = rows if rows is not None else dry_plan(paper_plan()) if dry else paper_plan()
    folder = Path(out) if out is not None else DRY_OUT if dry else CHECKS_DIR
    check_writable_folder(folder)
    now = datetime.now(timezone.utc)
    report = {"kind": "gpu-check", "dry": dry, "date": now.strftime("%Y-%m-%d"), "started": now.isoformat(timespec="seconds"),
              "minutes": minutes, "planner": {"cuda_context_bytes": CUDA_CONTEXT_BYTES, "allocator_headroom": ALLOCATOR_HEADROOM},
              **_device_info(device), "rows": []}
    start, files = time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        ctx = _Context(device, Path(scratch))
        for row in rows:
            record = run_row(row, ctx, start + 60 * minutes)
            report["rows"].append(record)
            report.update(elapsed_s=round(time.monotonic() - start, 1), hour_estimate=hour_estimate(report),
                          **_device_info(device))
            files = write_report(report, folder)
            log(f"[{report['elapsed_s']:6.1f} s] {row.section:<11} {row.name}: {record['status']}"
                + (f" ({record.get('error') or record.get('reason')})" if record["status"] != "ok" else ""))
    report["files"] = files
    return report
