"""Figures and small tables for the teaching notebooks.

Every figure is a matplotlib ``Figure`` made without pyplot: a notebook cell shows it exactly once
(as the cell's value, or with ``display``), also from a widget callback, and nothing piles up in
pyplot's list of open figures.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image

from ..core.patches import grid_shape, sample_schedule, schedule_for
from ..data import digits as recipe  # `digits` names the digits of an image below
from ..data.ultramnist import UltraMNIST
from .schematic import figure3_schematic  # noqa: F401 (the notebooks' one place for figures)

# Cell states in Algorithm 1, one colour each in every schedule picture.
GRADIENT = "#e8590c"   # sampled at this inner iteration: f_θ1 runs with gradient
REFRESHED = "#4dabf7"  # sampled at an earlier inner iteration: new value, now a constant
STALE = "#dee2e6"      # still the value from the fill of Z at the start of the batch
BOX = "#ffd43b"        # digit boxes


def make_axes(ncols: int, nrows: int = 1, size: float = 2.6, height: float | None = None):
    fig = Figure(figsize=(size * ncols, (height or size) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _show_image(ax, image: np.ndarray, title: str = "") -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_boxes(ax, boxes, digits=None, scale: float = 1.0) -> None:
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        ax.add_patch(Rectangle((x0 * scale - 0.5, y0 * scale - 0.5), (x1 - x0) * scale, (y1 - y0) * scale,
                               fill=False, edgecolor=BOX, linewidth=1))
        if digits is not None:
            ax.text(x0 * scale, y0 * scale - 1, str(digits[i]), color=BOX, fontsize=8, va="bottom")


# --- UltraMNIST (notebook 01) -------------------------------------------------------------------

def show_sample(image: np.ndarray, digits, boxes) -> Figure:
    """One image with its digit boxes and values; the title states the label, their sum."""
    fig, axes = make_axes(1, size=5)
    _show_image(axes[0, 0], image, f"{image.shape[0]} px · label {sum(digits)} = {' + '.join(map(str, digits))}")
    _draw_boxes(axes[0, 0], boxes, digits)
    return fig


def show_samples(dataset, count: int = 8, columns: int = 4) -> Figure:
    """The first `count` images of a split (one per class: image i has label i mod 10), with boxes,
    digit values and labels from the manifest."""
    rows = -(-count // columns)
    fig, axes = make_axes(columns, rows)
    for ax in axes.flat[count:]:
        ax.set_axis_off()
    for i, ax in zip(range(count), axes.flat):
        entry = dataset.manifest[i]
        _show_image(ax, dataset.raw(i), f"label {entry['label']} = {' + '.join(map(str, entry['digits']))}")
        _draw_boxes(ax, entry["boxes"], entry["digits"])
    return fig


def _digit_sides(dataset) -> list[int]:
    return [x1 - x0 for entry in dataset.manifest for x0, _, x1, _ in entry["boxes"]]


def dataset_summary(splits: dict) -> pd.DataFrame:
    """Counts per split (integers only, so the table is the same on every machine): images, images
    per class, images with 3/4/5 digits, and digit sides in px."""
    table = {}
    for name, dataset in splits.items():
        per_class = Counter(dataset.labels)
        digits_per_image = Counter(len(entry["digits"]) for entry in dataset.manifest)
        sides = sorted(_digit_sides(dataset))
        table[name] = {"images": len(dataset), "image px": dataset.image_size,
                       "per class": f"{min(per_class.values())}-{max(per_class.values())}",
                       **{f"{n} digits": digits_per_image[n] for n in recipe.DIGIT_COUNTS},
                       "digit px min": sides[0], "digit px median": sides[len(sides) // 2],
                       "digit px max": sides[-1]}
    return pd.DataFrame(table).T


def recipe_side_fractions(image_size: int, min_digit_side: int = recipe.MIN_DIGIT_SIDE) -> dict[int, float]:
    """The fraction of digits of each side (px) that the recipe's scale weights ask for, with the
    data's floor, before placement (large digits that do not fit are redrawn, so the data has fewer)."""
    fractions: Counter = Counter()
    for factor, weight in zip(recipe.SCALE_FACTORS, recipe.SCALE_WEIGHTS):
        if factor == 1:
            fractions[recipe.digit_side(0.5, image_size, min_digit_side)] += weight * recipe.HALF_SIZE_PROB
            weight *= 1 - recipe.HALF_SIZE_PROB
        fractions[recipe.digit_side(factor, image_size, min_digit_side)] += weight
    return dict(fractions)


def plot_dataset_stats(splits: dict) -> Figure:
    """Class balance, digits per image and digit sizes of each split; the digit sizes next to what
    the recipe's scale weights ask for."""
    fig, axes = make_axes(3, size=4, height=3)
    balance, counts, sizes = axes[0]
    width = 0.8 / len(splits)
    for i, (name, dataset) in enumerate(splits.items()):
        per_class = Counter(dataset.labels)
        classes = np.arange(recipe.NUM_CLASSES)
        balance.bar(classes + i * width, [per_class[c] for c in classes], width, label=name)
        per_image = Counter(len(entry["digits"]) for entry in dataset.manifest)
        n = np.array(recipe.DIGIT_COUNTS)
        counts.bar(n + i * width, [per_image[k] for k in n], width, label=name)
    balance.set(title="images per class (label = digit sum)", xlabel="label", xticks=classes)
    counts.set(title="digits per image", xlabel="digits", xticks=recipe.DIGIT_COUNTS)
    balance.set_ylim(top=1.3 * max(balance.get_ylim()[1], 1))  # room above the bars for the legend
    balance.legend(fontsize=8, loc="upper center", ncols=len(splits))

    first = next(iter(splits.values()))
    image_size = first.image_size
    observed = Counter(s for dataset in splits.values() for s in _digit_sides(dataset))
    total = sum(observed.values())
    expected = recipe_side_fractions(image_size, first.min_digit_side)
    sides = sorted(set(observed) | set(expected))
    positions = np.arange(len(sides))
    sizes.bar(positions - 0.2, [observed[s] / total for s in sides], 0.4, label="in the data")
    sizes.bar(positions + 0.2, [expected.get(s, 0) for s in sides], 0.4, label="recipe weights")
    sizes.set(title=f"digit side (px) on {image_size} px images", ylabel="fraction of digits",
              xticks=positions, xticklabels=sides)
    sizes.set_ylim(top=1.3 * sizes.get_ylim()[1])
    sizes.legend(fontsize=8, loc="upper center", ncols=2)
    return fig


def downscale(image: np.ndarray, size: int) -> np.ndarray:
    """The image resized to size × size with antialiased bilinear filtering, as a GD pipeline that
    shrinks its inputs (torchvision's Resize) would do."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def describe_downscaling(digits, boxes, image_size: int, sizes) -> str:
    """Each digit's side in px at each image size (two decimals at most)."""
    lines = []
    for digit, (x0, _, x1, _) in zip(digits, boxes):
        at = ", ".join(f"{round((x1 - x0) * size / image_size, 2):g} px at {size}" for size in sizes)
        lines.append(f"digit {digit}: {at}")
    return "\n".join(lines)


def show_downscaling(image: np.ndarray, digits, boxes, sizes=(512, 128, 64)) -> Figure:
    """Top: the image at each size, drawn at the same display size. Bottom: a close-up of its
    smallest digit at each size, to see how many pixels are left of it."""
    fig, axes = make_axes(len(sizes), 2, size=3.2)
    side = image.shape[0]
    small = min(range(len(boxes)), key=lambda i: boxes[i][2] - boxes[i][0])
    x0, y0, x1, y1 = boxes[small]
    margin = (x1 - x0) // 2
    crop = [max(0, x0 - margin), max(0, y0 - margin), min(side, x1 + margin), min(side, y1 + margin)]
    for column, size in enumerate(sizes):
        shrunk = downscale(image, size)
        scale = size / side
        _show_image(axes[0, column], shrunk, f"{size} × {size} px")
        _draw_boxes(axes[0, column], [boxes[small]], scale=scale)
        left, top = (int(np.floor(c * scale)) for c in crop[:2])
        right, bottom = (max(int(np.ceil(c * scale)), start + 1) for c, start in zip(crop[2:], (left, top)))
        _show_image(axes[1, column], shrunk[top:bottom, left:right],
                    f"digit {digits[small]}: {round((x1 - x0) * scale, 2):g} px wide")
    return fig


# --- the Z block and the inner iterations (notebook 02) -----------------------------------------

def latent_rgb(z: torch.Tensor) -> np.ndarray:
    """Z (s, m, n) → an (m, n, 3) picture in [0, 1]: the first three principal components of the
    m·n latent vectors, each stretched to [0, 1]. Cells with similar codes get similar colours."""
    s, m, n = z.shape
    cells = z.reshape(s, m * n).T.double().numpy()
    centred = cells - cells.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:3].T
    projected = np.pad(projected, ((0, 0), (0, 3 - projected.shape[1])))  # fewer than 3 cells
    low, high = projected.min(axis=0), projected.max(axis=0)
    rgb = (projected - low) / np.where(high > low, high - low, 1)
    return rgb.reshape(m, n, 3)


def _grid_lines(ax, image_size: int, patch_size: int) -> None:
    for edge in range(patch_size, image_size, patch_size):
        ax.axhline(edge - 0.5, color=BOX, linewidth=0.6)
        ax.axvline(edge - 0.5, color=BOX, linewidth=0.6)


def plot_z_filling(image: np.ndarray, z_rgb: np.ndarray, patch_size: int, steps) -> Figure:
    """Algorithm 2 step by step: the image with its m×n patch grid, then Z after each of `steps`
    patches have gone through f_θ1 (cells in order a·n + b; unfilled cells are still zero, black)."""
    m, n, _ = z_rgb.shape
    fig, axes = make_axes(1 + len(steps), size=3)
    picture = axes[0, 0]
    last = max(steps)
    _show_image(picture, image, f"X: {image.shape[0]} px, p = {patch_size}, grid m×n = {m}×{n}")
    _grid_lines(picture, image.shape[0], patch_size)
    a, b = divmod(last - 1, n)
    picture.add_patch(Rectangle((b * patch_size - 0.5, a * patch_size - 0.5), patch_size, patch_size,
                                fill=False, edgecolor=GRADIENT, linewidth=2))
    for ax, step in zip(axes[0, 1:], steps):
        filled = np.zeros_like(z_rgb)
        filled.reshape(m * n, 3)[:step] = z_rgb.reshape(m * n, 3)[:step]
        ax.imshow(filled, interpolation="nearest")
        ax.set_title(f"Z after {step} of {m * n} patches", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def schedule_facts(image_size: int, patch_size: int, k: int, zeta: int, grad_accum: int,
                   schedule: torch.Tensor) -> dict:
    """What one batch of Algorithm 1 does for one image, as integers: the grid, k, ζ, ε, optimizer
    steps, and how many distinct cells the sampled `schedule` (ζ, k) visits."""
    m = image_size // patch_size
    visited = len(torch.unique(schedule))
    return {"image px": image_size, "p": patch_size, "m×n": f"{m}×{m}", "cells": m * m, "k": k, "ζ": zeta,
            "ε": grad_accum, "optimizer steps": -(-zeta // grad_accum), "cells visited": visited,
            "coverage %": round(100 * visited / (m * m))}


def schedule_table(settings: dict[str, tuple], seed: int = 0) -> pd.DataFrame:
    """schedule_facts for named settings (image px, p, sampling, max sampled, ε), one row each;
    ε None means ε = ζ (one optimizer step per batch)."""
    rows = {}
    for name, (image_size, patch_size, sampling, max_sampled, grad_accum) in settings.items():
        m, n = grid_shape(image_size, patch_size)
        k, zeta = schedule_for(image_size, patch_size, sampling, max_sampled)
        facts = schedule_facts(image_size, patch_size, k, zeta, grad_accum or zeta,
                               one_image_schedule(m * n, k, zeta, seed))
        grid = {key: facts.pop(key) for key in ("image px", "p", "m×n", "cells")}
        rows[name] = {**grid, "sampling %": round(100 * sampling), "max sampled %": round(100 * max_sampled),
                      **facts}
    return pd.DataFrame(rows).T


def one_image_schedule(cells: int, k: int, zeta: int, seed: int) -> torch.Tensor:
    """The cells one image visits at each inner iteration, (ζ, k), as the trainer draws them."""
    return sample_schedule(1, cells, k, zeta, torch.Generator().manual_seed(seed))[:, 0]


def _step_iterations(zeta: int, grad_accum: int) -> list[int]:
    """Inner iterations j after which the optimizer steps: every ε, and at ζ for a shorter last group."""
    return sorted(set(range(grad_accum, zeta + 1, grad_accum)) | {zeta})


def _shown_iterations(zeta: int, most: int) -> list[int]:
    """The inner iterations a figure draws: all of them, or the first most - 1 and the last."""
    return list(range(1, zeta + 1)) if zeta <= most else [*range(1, most), zeta]


def _cell_states(schedule: torch.Tensor, j: int, m: int) -> np.ndarray:
    """(m, m, 3) colours of the cells at inner iteration j: sampled now, refreshed earlier, or stale."""
    state = np.tile(to_rgb(STALE), (m * m, 1))
    state[schedule[:j - 1].flatten().numpy()] = to_rgb(REFRESHED)
    state[schedule[j - 1].numpy()] = to_rgb(GRADIENT)
    return state.reshape(m, m, 3)


def plot_inner_iterations(image: np.ndarray, patch_size: int, schedule: torch.Tensor, grad_accum: int,
                          most: int = 6) -> Figure:
    """Algorithm 1 on one image: for inner iterations j = 1, 2, ... which cells carry gradient (k
    sampled now), which were refreshed before (constants now) and which still hold the fill's
    value; whether the optimizer steps after j; last, the coverage after all ζ iterations (each
    cell coloured by the j that sampled it; white: never sampled in this batch)."""
    zeta = schedule.shape[0]
    m = image.shape[0] // patch_size
    shown = _shown_iterations(zeta, most)
    steps = set(_step_iterations(zeta, grad_accum))
    fig, axes = make_axes(len(shown) + 1, size=2.3, height=2.6)
    extent = (-0.5, image.shape[0] - 0.5, image.shape[0] - 0.5, -0.5)  # cells over the image's pixels
    for ax, j in zip(axes[0], shown):
        _show_image(ax, image)
        ax.imshow(_cell_states(schedule, j, m), alpha=0.6, interpolation="nearest", extent=extent)
        ax.set_title(f"j = {j}" + (" · optimizer step" if j in steps else ""), fontsize=9)
    if zeta > most:
        axes[0, most - 2].set_xlabel("…", fontsize=14)

    coverage = np.full(m * m, np.nan)
    for j in range(zeta, 0, -1):  # backwards, so a cell revisited by the top-up keeps its first j
        coverage[schedule[j - 1].numpy()] = j
    ax = axes[0, -1]
    sampled_at = ax.imshow(coverage.reshape(m, m), cmap=colormaps["viridis"].resampled(zeta),
                           vmin=0.5, vmax=zeta + 0.5, interpolation="nearest")
    fig.colorbar(sampled_at, ax=ax, shrink=0.8, label="sampled at j", ticks=MaxNLocator(integer=True))
    visited = int(np.isfinite(coverage).sum())
    ax.set_title(f"after ζ = {zeta}: {visited}/{m * m} cells", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.suptitle(f"orange: k = {schedule.shape[1]} cells with gradient · blue: refreshed earlier (constant) · "
                 f"grey: value from the fill · optimizer steps after j = {sorted(steps)}", fontsize=9)
    return fig


def _outline_cells(ax, cells, n: int) -> None:
    for cell in cells:
        a, b = divmod(int(cell), n)
        ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, edgecolor=GRADIENT, linewidth=1.5))


def plot_live_batch(image: np.ndarray, patch_size: int, batch, most: int = 6) -> Figure:
    """One batch of Algorithm 1 as `live.run_live_batch` recorded it, one column per inner iteration
    j: the cells (orange: sampled now, with gradient), then Σ|∂L/∂X| and ‖∂L/∂Z‖ per cell, with the
    sampled cells outlined. Each heat map has its own colour scale; grey cells are exactly zero."""
    zeta, k = batch.schedule.shape
    m = image.shape[0] // patch_size
    shown = _shown_iterations(zeta, most)
    fig, axes = make_axes(len(shown), 3, size=2.3, height=2.4)
    extent = (-0.5, image.shape[0] - 0.5, image.shape[0] - 0.5, -0.5)
    heat = colormaps["viridis"].with_extremes(bad=STALE)
    for column, j in enumerate(shown):
        _show_image(axes[0, column], image, f"j = {j}" + (" · optimizer step" if j in batch.steps_after else ""))
        axes[0, column].imshow(_cell_states(batch.schedule, j, m), alpha=0.6, interpolation="nearest", extent=extent)
        for row, grads, name in ((1, batch.grad_x, "∂L/∂X"), (2, batch.grad_z, "∂L/∂Z")):
            values, ax = grads[j - 1].numpy(), axes[row, column]
            ax.imshow(np.ma.masked_equal(values, 0), cmap=heat, interpolation="nearest")
            _outline_cells(ax, batch.schedule[j - 1], m)
            ax.set_title(f"{name} ≠ 0: {np.count_nonzero(values)}/{values.size} cells", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    for row, label in enumerate(("cells at j", "Σ|∂L/∂X| per cell", "‖∂L/∂Z‖ per cell")):
        axes[row, 0].set_ylabel(label, fontsize=9)
    if zeta > most:
        axes[2, most - 2].set_xlabel("…", fontsize=14)
    fig.suptitle(f"Algorithm 1 on one image: k = {k}, ζ = {zeta}, optimizer steps after j = {batch.steps_after}\n"
                 "orange: the k cells sampled at j (blue: earlier) · heat maps: own scale each, grey = exactly 0",
                 fontsize=9)
    return fig


def plot_resolutions(data, index: int = 0) -> Figure:
    """One test image of Tables 3-4's data (a scaling.PandaData) at its three sizes, drawn at the same display size."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    for ax, paper_size in zip(fig.subplots(1, len(data.folders)), data.folders):
        split = UltraMNIST(data.folders[paper_size], "test", cache=False)
        image = split.raw(index)
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(f"paper {paper_size} px, here {split.image_size} px", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{data.name}: test image {index}, label {split.labels[index]}")
    return fig


METHOD_COLOURS = {"gd": "#1c7ed6", "gd-checkpoint": "#7048e8", "gd-downscaled": "#868e96", "patchgd": "#e8590c",
                  "streaming": "#2f9e44"}


def plot_memory_by_side(rows: list[dict], budgets: tuple[str, ...] = ("4GB", "16GB", "24GB")) -> Figure:
    """Estimated peak memory of one training step against the image side (altplan.memory_by_side's
    rows), a line per method and precision (fp16 dashed), the budgets as horizontal lines."""
    frame = pd.DataFrame(rows)
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for (method, precision), part in frame.groupby(["method", "precision"], sort=False):
        ax.plot(part["side"], part["peak_bytes"] / 2**30, marker="o", color=METHOD_COLOURS.get(method),
                linestyle="--" if precision == "fp16" else "-", label=f"{method} ({precision})")
    for budget in budgets:
        gib = float(budget.removesuffix("GB"))
        ax.axhline(gib, color="black", linewidth=0.8, alpha=0.5)
        ax.annotate(f"{budget.replace('GB', ' GB')}", (frame["side"].min(), gib), fontsize=8,
                    textcoords="offset points", xytext=(2, 2))
    ax.set(xscale="log", yscale="log", xlabel="image side (px)", ylabel="estimated peak (GiB)",
           title="One training step, estimated by the planner (not measured on a GPU)")
    ax.set_xticks(sorted(frame["side"].unique()), [str(s) for s in sorted(frame["side"].unique())])
    ax.legend(fontsize=7, ncol=2)
    return fig
