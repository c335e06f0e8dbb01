"""A schematic of one PatchGD inner iteration in the spirit of the paper's Figure 3: the image X cut
into its m×n grid, the patches through f_θ1, the latent block Z with the sampled cells highlighted,
and the head g_θ2 reading all of Z. Drawn without pyplot, like every figure of ``viz``.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import ConnectionPatch, FancyBboxPatch, Rectangle

GRADIENT = "#e8590c"  # sampled at this inner iteration (the same colour as viz.GRADIENT)
CONSTANT = "#dee2e6"  # every other cell: a constant for this backward pass
GRID = "#ffd43b"


def _cell_origin(cell: int, n: int, patch_size: int) -> tuple[int, int]:
    a, b = divmod(int(cell), n)
    return b * patch_size, a * patch_size


def _draw_image(ax, image: np.ndarray, patch_size: int, cells) -> None:
    size = image.shape[0]
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    for edge in range(patch_size, size, patch_size):
        ax.axhline(edge - 0.5, color=GRID, linewidth=0.6)
        ax.axvline(edge - 0.5, color=GRID, linewidth=0.6)
    n = size // patch_size
    for cell in cells:
        x, y = _cell_origin(cell, n, patch_size)
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), patch_size, patch_size, fill=False, edgecolor=GRADIENT,
                               linewidth=2))
    ax.set_title(f"image X, {size}×{size}\ncut into {n}×{n} patches of p = {patch_size}", fontsize=9)


def _draw_patches(ax, image: np.ndarray, patch_size: int, cells) -> None:
    """The patches laid out apart from each other, the sampled ones framed."""
    n, gap = image.shape[0] // patch_size, max(2, patch_size // 8)
    step = patch_size + gap
    canvas = np.full((n * step - gap, n * step - gap), 255, dtype=image.dtype)
    for a in range(n):
        for b in range(n):
            canvas[a * step:a * step + patch_size, b * step:b * step + patch_size] = \
                image[a * patch_size:(a + 1) * patch_size, b * patch_size:(b + 1) * patch_size]
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255)
    for cell in cells:
        a, b = divmod(int(cell), n)
        ax.add_patch(Rectangle((b * step - 1.5, a * step - 1.5), patch_size + 2, patch_size + 2, fill=False,
                               edgecolor=GRADIENT, linewidth=2))
    ax.set_title("patches $x_{ab}$, each through $f_{\\theta_1}$\n(sampled: with gradient)", fontsize=9)


def _draw_z(ax, n: int, cells) -> None:
    """Z as an m×n grid of cells seen from the front, with a hint of its depth s."""
    sampled = {int(c) for c in cells}
    depth = 0.35
    ax.add_patch(Rectangle((depth, depth), n, n, facecolor="#f8f9fa", edgecolor="#868e96", linewidth=0.6))
    for a in range(n):
        for b in range(n):
            colour = GRADIENT if a * n + b in sampled else CONSTANT
            ax.add_patch(Rectangle((b, n - a - 1), 1, 1, facecolor=colour, edgecolor="#495057", linewidth=0.6))
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"Z: {n}×{n} cells, s numbers each\n(orange: Z[v] = z, with gradient;\ngrey: constants)", fontsize=9)


def _draw_head(ax, num_classes: int) -> None:
    ax.add_patch(FancyBboxPatch((0.1, 0.55), 0.8, 0.3, boxstyle="round,pad=0.03", facecolor="#d0ebff",
                                edgecolor="#1c7ed6"))
    ax.text(0.5, 0.7, "$g_{\\theta_2}$\nreads all of Z", ha="center", va="center", fontsize=9)
    ax.annotate("", xy=(0.5, 0.3), xytext=(0.5, 0.52), arrowprops={"arrowstyle": "->"})
    ax.text(0.5, 0.22, f"{num_classes} logits → L(y)", ha="center", va="center", fontsize=9)
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.set_title("head", fontsize=9)


def figure3_schematic(image: np.ndarray, patch_size: int, cells, num_classes: int = 10) -> Figure:
    """Image → grid → Z → head for one inner iteration, the k sampled `cells` (a·n + b) highlighted.
    `image`: (M, M) uint8, square, its side a multiple of `patch_size`."""
    if image.ndim != 2 or image.shape[0] != image.shape[1] or image.shape[0] % patch_size:
        raise ValueError(f"a square grey image whose side is a multiple of p = {patch_size} is needed, "
                         f"not shape {image.shape}")
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 4, width_ratios=[3, 3, 2.4, 1.6])
    _draw_image(axes[0], image, patch_size, cells)
    _draw_patches(axes[1], image, patch_size, cells)
    _draw_z(axes[2], image.shape[0] // patch_size, cells)
    _draw_head(axes[3], num_classes)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[2:]:
        ax.axis("off")
    n = image.shape[0] // patch_size
    arrows = [((1.02, 0.5), axes[0].transAxes, (-0.02, 0.5), axes[1]),
              ((1.02, 0.5), axes[1].transAxes, (-0.02, 0.5), axes[2]),
              ((n + 0.6, n / 2), axes[2].transData, (0.05, 0.7), axes[3])]  # Z's grid keeps its aspect
    for start, coords, end, right in arrows:
        fig.add_artist(ConnectionPatch(xyA=start, coordsA=coords, xyB=end, coordsB=right.transAxes,
                                       arrowstyle="-|>", color="#495057", linewidth=1.2, mutation_scale=14))
    return fig
