"""Widgets of the teaching notebooks: controls wired to figures that redraw on every change.

Every builder takes ``interactive``. With a frontend that draws widgets (JupyterLab, Notebook 7, VS
Code: `has_frontend`) True returns the controls above an output area. Without one (papermill,
nbclient, `jupyter nbconvert --execute`, nbval, `jupyter console`, plain Python), or with False, it
draws once with the starting values into the cell's ordinary output: static PNGs that papermill and
nbval keep and that GitHub, nbviewer and exported HTML show. A value that makes no valid choice (a
patch size that does not divide the image, ε larger than ζ, ...) shows the kit's one-line KitError
message, not a traceback, either way.
"""
from __future__ import annotations

import comm
import ipywidgets as W
import numpy as np
import torch
from IPython import get_ipython
from IPython.display import display

from ..data.digits import generate_image
from ..errors import KitError
from . import curves, viz
from .teaching import watch
from .teaching.notebook_runs import peak_memory_estimates
from ..runs.config import TrainConfig


# What a frontend with a widget manager sends with each execute request: JupyterLab and Notebook 7
# put the notebook's deleted cells and its timing setting into the request's metadata; VS Code names the
# cell by its document's URI. nbclient (papermill, `nbconvert --execute`), nbval and `jupyter console`
# send none of these.
WIDGET_FRONTEND_METADATA = {"deletedCells", "recordTiming"}
VSCODE_CELL = "vscode-notebook-cell"
_shown: list[W.Widget] = []  # the controls handed to a frontend, to notice one that refused them


def has_frontend() -> bool:
    """Whether the running cell came from a frontend that draws widgets: JupyterLab, Notebook 7 or VS
    Code (known by their execute request's metadata, above), and not one that closed the comm of
    controls shown earlier, which is what a frontend without a widget manager (a Lab without the
    widgets extension) does with every widget. allow_stdin cannot decide: `jupyter console` sends it
    true, as Lab does, and draws no widget. Outside a kernel (plain Python, an IPython terminal) there
    is no frontend at all."""
    kernel = getattr(get_ipython(), "kernel", None)
    parent = kernel.get_parent("shell") if kernel is not None else None
    metadata = (parent or {}).get("metadata") or {}
    from_widget_frontend = bool(WIDGET_FRONTEND_METADATA & set(metadata)) or \
        str(metadata.get("cellId", "")).startswith(VSCODE_CELL)
    return from_widget_frontend and not any(_refused_by_frontend(box) for box in _shown)


def _refused_by_frontend(box: W.Widget) -> bool:
    """The frontend closed the comm of controls the kit did not close itself (close() drops `comm`)."""
    return box.comm is not None and box.model_id not in comm.get_comm_manager().comms


def _render_or_explain(render, values: dict) -> None:
    try:
        render(**values)
    except KitError as e:
        print(f"Not a valid choice: {e}")


def _explorer(render, controls: dict, interactive: bool, extra=()):
    """`render(**values)` on the controls' values: once now, and on every change when interactive
    and a frontend can show the controls."""
    def values():
        return {name: control.value for name, control in controls.items()}

    if not (interactive and has_frontend()):
        _render_or_explain(render, values())
        return None
    out = W.Output()

    def redraw(_change=None):
        with out:
            out.clear_output(wait=True)  # keep the old figure until the new one is ready: no flicker
            _render_or_explain(render, values())

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    wrap = W.Layout(flex_flow="row wrap")
    box = W.VBox([W.HBox([*controls.values(), *extra], layout=wrap), out])
    _shown.append(box)
    return box


def sample_explorer(pool, *, image_size: int = 512, seed: int = 0, scale_range=(1, 9), interactive: bool = True):
    """One freshly generated UltraMNIST image with a random label, for an image size, a seed and a
    range of scale factors f (digit side 28·f px at 512); "new sample" moves to the next seed."""
    def render(image_size, seed, scale_range):
        rng = np.random.default_rng(seed)
        image, digits, boxes = generate_image(rng, pool, int(rng.integers(10)), image_size, scale_range=scale_range)
        display(viz.show_sample(image, digits, boxes))

    controls = {
        "image_size": W.Dropdown(options=[64, 128, 256, 512, 1024], value=image_size, description="image px"),
        "seed": W.BoundedIntText(value=seed, min=0, max=10**9, description="seed"),
        "scale_range": W.IntRangeSlider(value=scale_range, min=1, max=9, description="scale f",
                                        continuous_update=False),
    }
    regenerate = W.Button(description="new sample", icon="refresh")
    regenerate.on_click(lambda _: setattr(controls["seed"], "value", controls["seed"].value + 1))
    return _explorer(render, controls, interactive, extra=[regenerate])


def z_filling_player(image: np.ndarray, z_rgb: np.ndarray, patch_size: int, *, interactive: bool = True):
    """Z as Algorithm 2 fills it, one patch at a time: a slider (and a play button) over the steps.
    Not interactive: a strip of four steps, from the first patch to the full Z."""
    cells = z_rgb.shape[0] * z_rgb.shape[1]
    if not (interactive and has_frontend()):
        display(viz.plot_z_filling(image, z_rgb, patch_size, sorted({max(1, cells * q // 4) for q in (1, 2, 3, 4)})))
        return None
    step = W.IntSlider(value=1, min=1, max=cells, description="patches")
    play = W.Play(value=1, min=1, max=cells, interval=300)
    W.jslink((play, "value"), (step, "value"))
    def render(step):
        display(viz.plot_z_filling(image, z_rgb, patch_size, [step]))

    return _explorer(render, {"step": step}, interactive, extra=[play])


def schedule_explorer(image: np.ndarray, *, backbone: str, patch_size: int, sampling: float, max_sampled: float,
                      grad_accum: int, batch_size: int = 16, seed: int = 0, interactive: bool = True):
    """Algorithm 1 for a patch size, "Sampling %", "Max Sampled %" and ε: the grid, the cells each
    inner iteration samples, the coverage after ζ, when the optimizer steps, and the estimated peak
    training memory next to GD's at this image size."""
    image_size = image.shape[0]

    def render(patch_size, sampling_percent, max_sampled_percent, grad_accum):
        config = TrainConfig(method="patchgd", backbone=backbone, image_size=image_size, patch_size=patch_size,
                             sampling=sampling_percent / 100, max_sampled=max_sampled_percent / 100,
                             grad_accum=grad_accum, batch_size=batch_size)
        config.validate()  # the trainer's own checks: grid, sampling fractions, 1 <= ε <= ζ
        k, zeta = config.schedule()
        cells = (image_size // patch_size) ** 2
        schedule = viz.one_image_schedule(cells, k, zeta, seed)
        facts = viz.schedule_facts(image_size, patch_size, k, zeta, grad_accum, schedule)
        print(" · ".join(f"{name} {value}" for name, value in facts.items()))
        display(viz.plot_inner_iterations(image, patch_size, schedule, grad_accum))
        peaks = peak_memory_estimates(backbone, image_size, batch_size, patch_size, k, grad_accum)
        display(curves.plot_memory(peaks, title=f"{backbone}, {image_size} px, one training step"))

    percent = dict(min=1, max=100, continuous_update=False, style={"description_width": "initial"})
    controls = {
        # From 16 px: smaller patches make thousands of cells, and the memory estimate takes minutes.
        "patch_size": W.BoundedIntText(value=patch_size, min=16, max=8192, description="patch p"),
        "sampling_percent": W.IntSlider(value=round(sampling * 100), description="Sampling %", **percent),
        "max_sampled_percent": W.IntSlider(value=round(max_sampled * 100), description="Max Sampled %", **percent),
        "grad_accum": W.BoundedIntText(value=grad_accum, min=1, max=4096, description="ε"),
    }
    return _explorer(render, controls, interactive)


def algorithm1_player(model, image: np.ndarray, x: torch.Tensor, label: int, *, k: int, zeta: int, grad_accum: int,
                      seed: int = 0, interactive: bool = True):
    """One batch of Algorithm 1 run live (`watch.run_live_batch`: the kit's `train_batch` on a copy of
    `model`) on one image (`x`, normalised, is what the model sees; `image` is what is drawn), for k,
    ζ and ε: the table of what each inner iteration did, and the figure of sampled cells, ∂L/∂X and ∂L/∂Z."""
    cells = model.grid[0] * model.grid[1]

    def render(k, zeta, grad_accum):
        batch = watch.run_live_batch(model, x, label, k=k, inner_iterations=zeta, grad_accum=grad_accum, seed=seed)
        print(watch.live_table(batch).to_string())
        display(viz.plot_live_batch(image, model.patch_size, batch))

    controls = {
        # Sliders stop at valid values; ε above ζ is still possible, and says why it is refused.
        "k": W.IntSlider(value=k, min=1, max=cells, description="k", continuous_update=False),
        "zeta": W.IntSlider(value=zeta, min=1, max=max(zeta, cells), description="ζ", continuous_update=False),
        "grad_accum": W.IntSlider(value=grad_accum, min=1, max=max(zeta, cells), description="ε",
                                  continuous_update=False),
    }
    return _explorer(render, controls, interactive)
