"""More than one process: PyTorch's DistributedDataParallel, started by torchrun
(`torchrun --nproc_per_node=N -m patchgd_kit train ...`).

Each process trains on its share of every batch: the epoch's seeded order is the single process's,
cut into global batches of batch size × processes, and rank r takes the r-th slice of each, so one
process with batch B·N and N processes with batch B see the same images per step. DDP averages the
gradients across processes in backward; the metrics are gathered before rank 0 writes them; only
rank 0 writes the run folder (which must be shared by every node).

The wrapper (`CallThrough`) makes a function of the model the wrapper's forward: GD's forward, and
PatchGD's inner iteration (f_θ1 on the sampled patches, the scatter into Z, g_θ2), so that DDP's
reducer sees every backward. All parameters take part in every backward, so
find_unused_parameters stays off (it would cost a graph walk per backward). The buffers are synced
at each forward: BatchNorm's running statistics, updated by each process on its own images (fill_z included),
are rank 0's again at every forward, and `sync_buffers` makes them so before an evaluation.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import KitError


@dataclass(frozen=True)
class Processes:
    """This process among those torchrun started: rank, how many in all, and on this node."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def from_env() -> Processes:
    """The processes as torchrun's environment describes them; one process without it."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Processes(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                     int(env.get("LOCAL_WORLD_SIZE", str(world))))


def device_for(device: torch.device, processes: Processes) -> torch.device:
    """The process's device: its own GPU (cuda:LOCAL_RANK) on CUDA."""
    if device.type != "cuda" or not processes.distributed:
        return device
    gpus = torch.cuda.device_count()
    if gpus < processes.local_world:
        raise KitError(f"CUDA was asked for with {processes.local_world} processes on this node but it has "
                       f"{gpus} GPU(s); start at most {gpus} processes per node (--nproc_per_node)")
    torch.cuda.set_device(processes.local_rank)
    return torch.device("cuda", processes.local_rank)


@contextlib.contextmanager
def session(processes: Processes, device: torch.device):
    """The process group while training (NCCL on CUDA, gloo on the CPU), if more than one process
    and none is up yet; it is taken down after."""
    own = processes.distributed and not dist.is_initialized()
    if own:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        if own:
            dist.destroy_process_group()


class CallThrough(nn.Module):
    """The module DDP wraps: its forward runs a function of the model, f(model)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, function: Callable[[nn.Module], object]):
        return function(self.model)


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """`model` in DDP, through `CallThrough` (see the module's note on the settings: buffers synced
    at every forward, DDP's default under either name, broadcast_buffers or forward_sync_buffers)."""
    return DistributedDataParallel(CallThrough(model), device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=False)


def share_of(indices: list[int], batch_size: int, processes: Processes) -> list[int]:
    """This process's images: its slice of each global batch of `indices`, in order."""
    if not processes.distributed:
        return indices
    size = batch_size * processes.world
    start = processes.rank * batch_size
    return [i for g in range(0, len(indices), size) for i in indices[g + start:g + start + batch_size]]


def sync_buffers(model: nn.Module, processes: Processes) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every process."""
    if processes.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather_row(row: dict, processes: Processes, images: int) -> dict:
    """An epoch's training row over all processes: the mean loss, the slowest process's seconds,
    the largest peak memory, images/s of the `images` of the global batches."""
    if not processes.distributed:
        return row
    rows = [None] * processes.world
    dist.all_gather_object(rows, row)
    out = dict(row, train_loss=sum(r["train_loss"] for r in rows) / len(rows))
    for key in row:
        if key.endswith("_seconds") or key.startswith("peak_"):
            out[key] = max(r[key] for r in rows)
    out["train_images_per_s"] = images / out["train_seconds"]
    out["processes"] = processes.world
    return out


def gather_predictions(loss_sum: float, predictions: np.ndarray, labels: np.ndarray,
                       processes: Processes) -> tuple[float, np.ndarray, np.ndarray]:
    """Every process's share of an evaluation (each predicted every world-th image): the summed
    loss, and the predictions and labels back in the dataset's order."""
    if not processes.distributed:
        return loss_sum, predictions, labels
    shares = [None] * processes.world
    dist.all_gather_object(shares, (loss_sum, predictions, labels))
    total = sum(len(share[1]) for share in shares)
    merged_predictions, merged_labels = np.empty(total, predictions.dtype), np.empty(total, labels.dtype)
    for rank, (_, share_predictions, share_labels) in enumerate(shares):
        merged_predictions[rank::processes.world] = share_predictions
        merged_labels[rank::processes.world] = share_labels
    return sum(share[0] for share in shares), merged_predictions, merged_labels


def on_main(processes: Processes, function: Callable[[], object]):
    """function() on rank 0 alone, its result (or its error, as a KitError) on every process."""
    if not processes.distributed:
        return function()
    outcome = [None]
    failure = None
    if processes.main:
        try:
            outcome = [("ok", function())]
        except Exception as exc:  # every process must stop, not wait for rank 0 forever
            failure, outcome = exc, [("error", str(exc))]
    dist.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    kind, value = outcome[0]
    if kind == "error":
        raise KitError(value)
    return value
