"""The kit's PatchGD batch against the official repository's loop structure at identical math.
Prints figures; asserts nothing (the equality check is tests/core/test_official_loop.py).

    python benchmarks/bench_official_loop.py [--backbones resnet50 mobilenet_v2] [--settings patch32 cpu]
                                             [--repeats 3] [--threads 2] [--device cpu] [--loop-only] [--smoke]

For each backbone and setting: images/s of one training batch written in the structure of the
official loop (`official_batch`, plain PyTorch on the kit's own model, so the math is the kit's),
images/s of the kit's `patchgd.train_batch` on an identical copy of the model, and the ratio
kit / official. Best of `--repeats` batches after one warm-up each. Settings: "patch32" is where the comparison
was first made (128 px, patch 32, k 4, ζ 4, ε ζ, batch 8), "cpu" the kit's cpu profile sizes (128 px, patch 64,
k 1, ζ 4, ε 1, batch 8); `--smoke` a few-second run (32 px, patch 16, batch 2). 10 classes.

What the official loop does per image batch (github.com/nyunAI/PatchGD, read for facts; the
pandas_patchgd/ copy of train_utils.py has the same loop):

1. Patches (patch_gd/data_utils.py, PatchDataset.__getitem__): one item is one grid position, cut
   by slicing `images[:, :, rows, cols]` from every image of the batch at once, (B, C, p, p); stride
   = patch size (config.py STRIDE). The read takes the row offset from `index % m` and the column
   from `index // m`, the write below takes row `index // m`, column `index % m`: Z holds the grid
   transposed, a relabeling of cells that costs nothing. The harness reads and writes cell a·n + b
   at row a, column b, as the kit does, so that the head sees the same Z.
2. Positions (train_utils.py, Trainer.train_step): a new PatchDataset and a torch DataLoader per
   image batch, batch_size = ceil(m² · percent_sampling) = k, shuffle=True, no workers: each loader
   batch is k positions shared by all B images; collate stacks (k, B, C, p, p), reshaped to (k·B, ...).
3. Z (`L1`): torch.zeros(B, s, m, m) made on the host, then .to(device).
4. Fill: one full pass over the loader under torch.no_grad(), the backbone in train mode (train_step
   calls .train() first, so BatchNorm normalises each call by its own k·B patches and updates its
   running statistics): m²/k backbone calls of k·B patches; the output is reshaped (k, B, s),
   permuted to (B, s, k) and written with an advanced-index assignment `Z[:, :, rows, cols] = out`.
5. Inner iterations: optimizer.zero_grad() once, then a second pass over the same loader (a new
   shuffle: positions without replacement, shared across the batch), stopped after ζ
   (config.py INNER_ITERATION = ceil(1 / PERCENT_SAMPLING)) iterations. Each: `L1 = L1.detach()` (no
   clone: the same storage, so cells written earlier persist as constants), the k·B patches through
   the backbone with gradient, the same in-place assignment into Z, the head on Z, CrossEntropyLoss
   (mean over the batch) divided by ε, backward, `loss.item()` (a host sync per inner iteration),
   and optimizer.step() + zero_grad() when (iteration + 1) % ε == 0. With ε not dividing ζ the last
   gradients would never be stepped; the harness requires ε | ζ.
6. ε (train_utils.py Trainer.__init__): ζ when grad_accumulation (config.py GRAD_ACCUM = True),
   else 1.
7. Optimizer: torch.optim.Adam, default implementation, two groups (backbone, head) at lr 1e-3, no
   weight decay; a transformers linear warm-up schedule stepped once per image batch.
8. Around the batch, not timed here (the kit's training loop has its own): the scheduler step,
   argmax and `.item()` of the accuracy, sklearn's kappa on host copies, numpy concatenation, tqdm.
9. Models (models.py): Backbone = torchvision resnet50 with fc → Linear(2048, 256); head "original"
   = Conv3×3 s1 + 3 × Conv3×3 s2, each ReLU, BatchNorm, Dropout2d(0.2), then Linear: the kit's
   PatchEncoder and ZHead, which both sides use here.

Identical math: same k, ζ, ε, loss, optimizer (Adam, lr 1e-3). Two differences, neither changing
the work done: the kit samples positions per image (its `sample_schedule`; no option shares them),
the official shares them across the batch: both gather and scatter B·k cells per inner iteration
(`kit_positions` makes the kit take shared ones, for the equality test); and in train mode
BatchNorm's fill statistics are taken over each backbone call's patches, k·B in the official, up to
`fill_chunk` (256) in the kit. The official side keeps what its code has: the default torch Adam
and the contiguous memory format; the kit side what a kit run has: `optim.adam` (fused on a CPU)
and the format `use_channels_last` picks. `--loop-only` gives the official side the kit's Adam and
format, so that the ratio is the loop structure's alone.
"""
import argparse
import contextlib
import copy
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit.core import patchgd  # noqa: E402
from patchgd_kit.core.methods import build_model  # noqa: E402
from patchgd_kit.runs.config import TrainConfig, use_channels_last  # noqa: E402
from patchgd_kit.runs.optim import adam  # noqa: E402

# name: (image px, patch px, k, ζ, ε, batch)
SETTINGS = {"patch32": (128, 32, 4, 4, 4, 8), "cpu": (128, 64, 1, 4, 1, 8)}
SMOKE = {"smoke": (32, 16, 2, 2, 2, 2)}
LR = 1e-3


class GridCells(Dataset):
    """Item `cell` (= a·n + b): patch x_ab of every image, cut by slicing, (B, C, p, p), and the cell."""

    def __init__(self, images: torch.Tensor, patch_size: int):
        self.images, self.p = images, patch_size
        self.m, self.n = images.shape[2] // patch_size, images.shape[3] // patch_size

    def __len__(self) -> int:
        return self.m * self.n

    def __getitem__(self, cell: int):
        a, b = divmod(cell, self.n)
        p = self.p
        return self.images[:, :, a * p:(a + 1) * p, b * p:(b + 1) * p], cell


def _write_cells(z: torch.Tensor, backbone: nn.Module, patches: torch.Tensor, cells: torch.Tensor) -> None:
    """The backbone on the loader batch's k·B patches (position-major), written into Z in place."""
    batch, s, _, n = z.shape
    out = backbone(patches.to(z.device).flatten(0, 1))      # (k·B, s)
    out = out.reshape(-1, batch, s).permute(1, 2, 0)         # (B, s, k)
    cells = cells.to(z.device)
    z[:, :, cells // n, cells % n] = out


def official_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   optimizer: torch.optim.Optimizer, *, k: int, inner_iterations: int, grad_accum: int,
                   order: torch.Tensor | None = None, fill_order: torch.Tensor | None = None) -> float:
    """One batch in the official loop's structure (module docstring, facts 1-6) on the kit's PatchGD
    model (`.backbone`, `.head`, `.grid`, `.patch_size`). `order`: the inner pass's permutation of
    the m·n cells (iteration j takes order[j·k:(j+1)·k] for every image); `fill_order`: the fill's.
    Both drawn with torch.randperm when None, as the loader's shuffle does. Returns the mean loss
    over the inner iterations (the official sums loss / ε; this is that sum · ε / ζ)."""
    (m, n), zeta, eps = model.grid, inner_iterations, grad_accum
    if zeta * k > m * n or zeta % eps:
        raise ValueError(f"the official loop needs ζ·k ≤ m·n and ε | ζ "
                         f"(ζ {zeta}, k {k}, m·n {m * n}, ε {eps})")
    cells = GridCells(images, model.patch_size)
    order = torch.randperm(m * n) if order is None else order
    fill_order = torch.randperm(m * n) if fill_order is None else fill_order
    z = torch.zeros(images.shape[0], model.backbone.latent_dim, m, n).to(images.device)
    with torch.no_grad():
        for patches, pos in DataLoader(cells, batch_size=k, sampler=fill_order.tolist()):
            _write_cells(z, model.backbone, patches, pos)
    optimizer.zero_grad()
    total = 0.0
    for j, (patches, pos) in enumerate(DataLoader(cells, batch_size=k, sampler=order.tolist())):
        z = z.detach()
        _write_cells(z, model.backbone, patches, pos)
        loss = nn.functional.cross_entropy(model.head(z), labels) / eps
        loss.backward()
        total += loss.item()
        if (j + 1) % eps == 0:
            optimizer.step()
            optimizer.zero_grad()
        if j + 1 >= zeta:
            break
    return total * eps / zeta


def shared_schedule(order: torch.Tensor, batch: int, k: int, zeta: int) -> torch.Tensor:
    """The kit's schedule (ζ, B, k) for the official's shared positions: row j = order[j·k:(j+1)·k]."""
    return order[:zeta * k].view(zeta, 1, k).expand(zeta, batch, k).contiguous()


@contextlib.contextmanager
def kit_positions(schedule: torch.Tensor):
    """Within: `patchgd.train_batch` visits `schedule` (ζ, B, k) instead of sampling its own."""
    own = patchgd.sample_schedule
    patchgd.sample_schedule = lambda *args, **kwargs: schedule
    try:
        yield
    finally:
        patchgd.sample_schedule = own


def kit_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
              *, k: int, inner_iterations: int, grad_accum: int, schedule: torch.Tensor | None = None) -> float:
    """The kit's Algorithm 1 batch; `schedule` (ζ, B, k): the positions to visit (default: its own sampling)."""
    with kit_positions(schedule) if schedule is not None else contextlib.nullcontext():
        loss, _ = patchgd.train_batch(model, images, labels, optimizer, k=k, inner_iterations=inner_iterations,
                                      grad_accum=grad_accum)
    return float(loss)


def best_ips(step, batch: int, repeats: int, device: torch.device) -> float:
    """Images/s of the fastest of `repeats` calls of `step`, after one warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        best = min(best, time.perf_counter() - start)
    return batch / best


def compare(backbone: str, setting: tuple, repeats: int, device: torch.device, loop_only: bool) -> dict:
    """Official structure and kit on copies of one model (same initial weights), both in train mode."""
    size, p, k, zeta, eps, batch = setting
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    kit_model = build_model("patchgd", backbone, 10, size, p).to(device).train()
    official = copy.deepcopy(kit_model)
    fmt = torch.channels_last if use_channels_last(TrainConfig(backbone=backbone), device) else torch.contiguous_format
    kit_model = kit_model.to(memory_format=fmt)
    kit_opt = adam(kit_model.parameters(), LR, device)
    groups = [{"params": official.backbone.parameters()}, {"params": official.head.parameters()}]
    if loop_only:
        official = official.to(memory_format=fmt)
        official_opt = adam(groups, LR, device)
    else:
        official_opt = torch.optim.Adam(groups, lr=LR)
    kw = {"k": k, "inner_iterations": zeta, "grad_accum": eps}
    official_ips = best_ips(lambda: official_batch(official, images, labels, official_opt, **kw), batch, repeats,
                            device)
    kit_ips = best_ips(lambda: kit_batch(kit_model, images, labels, kit_opt, **kw), batch, repeats, device)
    return {"official": official_ips, "kit": kit_ips, "format": "channels_last" if fmt is torch.channels_last
            else "contiguous"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["patch32", "cpu"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loop-only", action="store_true",
                        help="the official side gets the kit's Adam and memory format: the loop's cost alone")
    parser.add_argument("--smoke", action="store_true", help="32 px, patch 16, batch 2 only: a few seconds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, official side: "
          f"{'the kit Adam and format' if args.loop_only else 'torch default Adam, contiguous'}", flush=True)
    settings = SMOKE if args.smoke else {name: SETTINGS[name] for name in args.settings}
    for backbone in args.backbones:
        for name, setting in settings.items():
            size, p, k, zeta, eps, batch = setting
            row = compare(backbone, setting, args.repeats, device, args.loop_only)
            print(f"{backbone} {name} ({size} px, patch {p}, k {k}, ζ {zeta}, ε {eps}, batch {batch}, "
                  f"kit {row['format']}): official {row['official']:.2f} img/s, kit {row['kit']:.2f} img/s, "
                  f"kit/official {row['kit'] / row['official']:.2f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
