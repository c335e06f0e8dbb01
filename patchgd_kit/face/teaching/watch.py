"""Algorithm 1 run live on one image: the kit's own `patchgd.train_batch`, watched from outside; and
a hand-written Algorithm 1 compared with it, gradient by gradient (`gradients_beside_train_batch`).

Nothing here re-implements the algorithm. Hooks record what `train_batch` does while it runs:
- on the image tensor X: ∂L/∂X of each inner iteration's backward pass (one pass per j);
- on the input of the head g_θ2, which is Z with the k new cells written in: ∂L/∂Z of each j;
- on the optimizer: after which inner iteration j it stepped.
The sampled cells come from the same seeded sampler that `train_batch` draws from.
"""
from __future__ import annotations

import copy
import html
import inspect
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ...core import patchgd
from ...core.models import ZHead
from ...core.patches import grid_shape, patch_grid, sample_schedule
from ...errors import KitError


@dataclass
class LiveBatch:
    """What one batch of Algorithm 1 did to one image, per inner iteration j = 1..ζ."""
    schedule: torch.Tensor  # (ζ, k): the cells a·n + b sampled at each j
    grad_x: torch.Tensor    # (ζ, m, n): Σ |∂L/∂X| over each cell's pixels and channels
    grad_z: torch.Tensor    # (ζ, m, n): ‖∂L/∂Z[:, a, b]‖ over the s latent channels
    steps_after: list[int]  # the j after which the optimizer stepped
    loss: float             # train_batch's mean loss over the ζ inner iterations


def _check_schedule(cells: int, k: int, zeta: int, grad_accum: int) -> None:
    if not 1 <= k <= cells:
        raise KitError(f"k = {k} must be between 1 and the m·n = {cells} cells of the grid")
    if zeta < 1:
        raise KitError(f"ζ = {zeta} must be at least 1")
    if not 1 <= grad_accum <= zeta:
        raise KitError(f"ε = {grad_accum} must be between 1 and the number of inner iterations ζ = {zeta}")


def run_live_batch(model: nn.Module, image: torch.Tensor, label: int, *, k: int, inner_iterations: int,
                   grad_accum: int, seed: int = 0, lr: float = 1e-3) -> LiveBatch:
    """One call of `patchgd.train_batch` on one normalised image (C, M, N) with Adam at `lr`, as the
    trainer builds it, recording per inner iteration the gradients that reach X and Z and the
    optimizer steps. `model` is left untouched: a copy trains, so every call starts from the same
    weights. The copy runs in eval mode: with one image the head's last BatchNorm sees a single
    value per channel (its map is 1×1), where batch statistics are undefined; training uses train
    mode, the algorithm is the same."""
    m, n = model.grid
    _check_schedule(m * n, k, inner_iterations, grad_accum)
    model = copy.deepcopy(model).eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x = image.unsqueeze(0).clone().requires_grad_(True)  # a leaf, so that ∂L/∂X is computed
    grad_x, grad_z, steps_after = [], [], []

    def record_z_gradient(_head, inputs):
        inputs[0].register_hook(lambda grad: grad_z.append(grad[0].norm(dim=0)))

    x.register_hook(lambda grad: grad_x.append(patch_grid(grad, model.patch_size)[0].abs().sum(dim=(2, 3, 4))))
    hook = model.head.register_forward_pre_hook(record_z_gradient)
    optimizer.register_step_post_hook(lambda *_: steps_after.append(len(grad_x)))
    loss, _ = patchgd.train_batch(model, x, torch.tensor([label]), optimizer, k=k,
                                  inner_iterations=inner_iterations, grad_accum=grad_accum,
                                  generator=torch.Generator().manual_seed(seed))
    hook.remove()
    # train_batch drew its cells from this generator state: the same draw, for one image.
    schedule = sample_schedule(1, m * n, k, inner_iterations, torch.Generator().manual_seed(seed))[:, 0]
    return LiveBatch(schedule, torch.stack(grad_x).detach(), torch.stack(grad_z).detach(), steps_after,
                     float(loss))


def live_table(batch: LiveBatch) -> pd.DataFrame:
    """Per inner iteration j, in integers: cells sampled, cells where ∂L/∂X and ∂L/∂Z are non-zero,
    whether the non-zero ∂L/∂X cells are exactly the sampled ones, and whether the optimizer stepped."""
    rows = {}
    for j, (cells, gx, gz) in enumerate(zip(batch.schedule, batch.grad_x, batch.grad_z), start=1):
        nonzero = set(torch.nonzero(gx.flatten()).flatten().tolist())
        rows[j] = {"cells sampled": len(set(cells.tolist())), "∂L/∂X ≠ 0 on": len(nonzero),
                   "exactly the sampled": nonzero == set(cells.tolist()),
                   "∂L/∂Z ≠ 0 on": int((gz != 0).sum()), "of cells": gz.numel(),
                   "optimizer step after j": "yes" if j in batch.steps_after else "no"}
    return pd.DataFrame(rows).T.rename_axis("j")


class TinyPatchGD(nn.Module):
    """A PatchGD model small enough to run Algorithm 1 written by hand in a second: a two-layer CNN as
    f_θ1 (patch → s numbers) and the kit's head g_θ2 (``ZHead``) at width s."""

    def __init__(self, image_size: int = 512, patch_size: int = 64, latent_dim: int = 8, num_classes: int = 10):
        super().__init__()
        self.patch_size, self.grid = patch_size, grid_shape(image_size, patch_size)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 5, 4, 2), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, latent_dim))
        self.head = ZHead(latent_dim, self.grid, num_classes, width=latent_dim)


def _recorded_run(model: nn.Module, run, lr: float) -> list[list[torch.Tensor]]:
    """`run(copy, optimizer)` on a copy of `model` in eval mode with SGD at `lr`; every parameter's
    gradient as it stood at each optimizer step."""
    net = copy.deepcopy(model).eval()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    grads = []
    optimizer.register_step_pre_hook(lambda *_: grads.append(
        [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in net.parameters()]))
    run(net, optimizer)
    return grads


def gradients_beside_train_batch(algorithm, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                                 k: int, zeta: int, epsilon: int, seed: int = 0, lr: float = 0.1) -> pd.DataFrame:
    """A hand-written Algorithm 1 beside `patchgd.train_batch`: the same batch, the same sampled cells
    (one seeded draw of `sample_schedule`), copies of `model` in eval mode, SGD at `lr`. `algorithm` is
    called as ``algorithm(f_θ1, g_θ2, X, y, p, schedule, ε, optimizer)`` with the schedule (ζ, B, k).
    One row per optimizer step: parameters compared, the largest |difference| of a gradient entry, and
    whether every gradient is equal to float tolerance; an extra or missing step shows as a row of its own."""
    m, n = model.grid
    _check_schedule(m * n, k, zeta, epsilon)

    def by_hand(net, optimizer):
        schedule = sample_schedule(len(images), m * n, k, zeta, torch.Generator().manual_seed(seed))
        algorithm(net.backbone, net.head, images, labels, net.patch_size, schedule, epsilon, optimizer)

    def kit(net, optimizer):
        patchgd.train_batch(net, images, labels, optimizer, k=k, inner_iterations=zeta, grad_accum=epsilon,
                            generator=torch.Generator().manual_seed(seed))

    yours, theirs = _recorded_run(model, by_hand, lr), _recorded_run(model, kit, lr)
    rows = []
    for step in range(max(len(yours), len(theirs))):
        if step >= len(yours) or step >= len(theirs):
            rows.append({"optimizer step": step + 1, "parameters": 0, "largest |difference|": float("nan"),
                         "equal": False, "note": "only " + ("train_batch" if step >= len(yours) else "yours")})
            continue
        pairs = list(zip(yours[step], theirs[step]))
        rows.append({"optimizer step": step + 1, "parameters": len(pairs),
                     "largest |difference|": max(float((a - b).abs().max()) for a, b in pairs),
                     "equal": all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in pairs), "note": ""})
    return pd.DataFrame(rows).set_index("optimizer step")


# Algorithm 1 as the paper prints it, each line with a piece of `train_batch`'s source that carries it
# out and, where the kit reads something the paper leaves open, the kit's reading.
ALGORITHM1 = [
    ("Initialize: Z = 0, U₁ = 0, U₂ = 0", "optimizer.zero_grad(", "U₁, U₂ are the parameters' .grad; Z needs no zeros, the fill writes every cell"),
    ("Z ← Z-filling(X, f_θ1, p) forall X ∈ 𝒳", "z = fill_z(", "Algorithm 2, under torch.no_grad"),
    ("f_θ1 ← start_gradient(f_θ1)", "z_new = net.backbone(",
     "gradient is on again outside fill_z"),
    ("for j : 1 to ζ do", "for j in range(1, zeta + 1):", ""),
    ("for X in 𝒳 do", "cells = schedule[j - 1]", "all images at once: a batch dimension, not a loop"),
    ("{P_X,j, v} = patch_sampler(X, k)", "schedule = sample_schedule(",
     "per image (§3.2); kit's reading, the paper leaves it open: without replacement across the ζ "
     "inner iterations, so Max Sampled 100% visits every cell once"),
    ("z = f_θ1(P_X,j)", "z_new = net.backbone(", ""),
    ("Z[v] = z", "z_prime = z.scatter(", "out of place: gradient reaches θ1 only through the k new cells"),
    ("y_pred = g_θ2(Z); L = calculate(y, y_pred)", "loss = nn.functional.cross_entropy(", ""),
    ("U₁ = U₁ + dL/dθ1, U₂ = U₂ + dL/dθ2", "backward(loss / group_size", "backward() adds into .grad"),
    ("if j % ε = 0 then", "last = j - group_start == group_size",
     "kit's reading: when ε does not divide ζ, the last, shorter group steps too"),
    ("U₁ = U₁/ε, U₂ = U₂/ε", "backward(loss / group_size",
     "each loss is divided before backward: the same average (a shorter last group: by its length)"),
    ("θ₁ = θ₁ − αU₁, θ₂ = θ₂ − αU₂; U₁ = 0, U₂ = 0", "optimizer_step(",
     "an Adam step (Appendix C), then .grad set to None"),
    ("(Z keeps z for the next j)", "z.scatter_(", "kit's reading: written back detached, a constant from now on"),
]


class SourceBesideAlgorithm:
    """`train_batch`'s source, line by line, with the line of Algorithm 1 that each line carries out.
    Jupyter shows it as a table; its text form is the source with the lines as comments."""

    def __init__(self, function=patchgd.train_batch):
        self.lines = inspect.getsource(function).splitlines()
        self.notes: dict[int, list[tuple[str, str]]] = {}
        for step, marker, note in ALGORITHM1:
            found = [i for i, line in enumerate(self.lines) if marker in line]
            if not found:
                raise RuntimeError(f"{function.__name__} has no line with {marker!r}: update live.ALGORITHM1")
            self.notes.setdefault(found[0], []).append((step, note))

    def __str__(self) -> str:
        width = max(len(line) for line in self.lines)
        return "\n".join(line.ljust(width) + "".join(f"  ◀ {step}" for step, _ in self.notes.get(i, []))
                         for i, line in enumerate(self.lines))

    __repr__ = __str__

    def _repr_html_(self) -> str:
        cell = '<td style="text-align:left;vertical-align:top">{}</td>'
        rows = []
        for i, line in enumerate(self.lines):
            notes = self.notes.get(i, [])
            rows.append("<tr>" + cell.format(f"<pre style='margin:0'>{html.escape(line) or ' '}</pre>")
                        + cell.format("<br>".join(f"<b>{html.escape(s)}</b>" for s, _ in notes))
                        + cell.format("<br>".join(html.escape(n) for _, n in notes if n)) + "</tr>")
        head = ("<tr><th>patchgd.train_batch (the kit's source, read now)</th><th>Algorithm 1 (the paper)</th>"
                "<th>how</th></tr>")
        return f"<table>{head}{''.join(rows)}</table>"
