"""Figures and tables of training runs for the notebooks: the curves of a run as it trains, runs
compared side by side, and estimated peak memory against the budgets. As in ``viz``, every figure is
a matplotlib ``Figure`` made without pyplot.
"""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .viz import GRADIENT, REFRESHED, STALE, make_axes

GiB = 2**30


def plot_memory(peaks: dict[str, int], budgets_gib=(4, 16), title: str = "") -> Figure:
    """Estimated peak training memory per configuration (horizontal bars) against the budgets that
    are within reach of the largest bar (a 16 GB line would squash bars of a few MiB)."""
    largest = max(peaks.values())
    unit, unit_name = (GiB, "GiB") if largest >= GiB else (2**20, "MiB")
    budgets = [b for b in budgets_gib if b * GiB < 1.5 * largest]
    fig, axes = make_axes(1, size=7, height=0.6 + 0.45 * len(peaks))
    ax = axes[0, 0]
    labels = list(peaks)
    values = [peaks[label] / unit for label in labels]
    bars = ax.barh(labels, values, color=[REFRESHED if "PatchGD" in label else STALE for label in labels],
                   edgecolor="black")
    ax.bar_label(bars, [f"{v:.2f} {unit_name}" for v in values], padding=3, fontsize=8)
    for budget in budgets:
        ax.axvline(budget * GiB / unit, color=GRADIENT, linestyle="--", linewidth=1)
        ax.text(budget * GiB / unit, len(labels) - 0.5, f" {budget} GB budget", color=GRADIENT, fontsize=8,
                va="bottom")
    ax.set_xlim(0, max([largest / unit * 1.3] + [b * GiB / unit * 1.15 for b in budgets]))
    ax.set(xlabel=f"peak GPU memory of one training step ({unit_name}), estimated by the planner", title=title)
    ax.invert_yaxis()
    return fig


# --- training (notebooks 03 and 04) -------------------------------------------------------------

def plot_history(history: list[dict], epochs: int, title: str = "") -> Figure:
    """Loss (train and test) and test accuracy per epoch, on axes that already span all epochs."""
    fig, axes = make_axes(2, size=4.2, height=2.8)
    loss, accuracy = axes[0]
    epoch = [row["epoch"] for row in history]
    loss.plot(epoch, [row["train_loss"] for row in history], "o-", label="train")
    loss.plot(epoch, [row["test_loss"] for row in history], "s--", label="test")
    accuracy.plot(epoch, [row["accuracy"] for row in history], "o-", color=GRADIENT)
    for ax in (loss, accuracy):
        ax.set_xlim(0.5, epochs + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
    loss.set(title="cross-entropy loss")
    accuracy.set(title="test accuracy (%)", ylim=(0, 100))
    loss.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


class TrainingPlot:
    """A loss/accuracy figure that redraws in place as epochs finish: pass it as train's
    ``on_epoch``. A run read back from disk calls nothing, so ``show(history)`` draws it whole."""

    def __init__(self, epochs: int, title: str = ""):
        from IPython.display import display
        self.epochs, self.title, self.history = epochs, title, []
        self._handle = display(self._draw(), display_id=True)  # None outside IPython

    def _draw(self) -> Figure:
        return plot_history(self.history, self.epochs, self.title)

    def __call__(self, row: dict) -> None:
        self.history.append(row)
        if self._handle is not None:
            self._handle.update(self._draw())

    def show(self, history: list[dict]) -> None:
        self.history = list(history)
        if self._handle is not None:
            self._handle.update(self._draw())


def plot_histories(results: dict[str, dict]) -> Figure:
    """Test accuracy and train loss per epoch of several runs on shared axes (as the paper's
    Figure 2 draws GD against PatchGD)."""
    fig, axes = make_axes(2, size=4.2, height=2.8)
    accuracy, loss = axes[0]
    for label, result in results.items():
        epoch = [row["epoch"] for row in result["history"]]
        accuracy.plot(epoch, [row["accuracy"] for row in result["history"]], "o-", label=label)
        loss.plot(epoch, [row["train_loss"] for row in result["history"]], "o-", label=label)
    for ax in (accuracy, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    accuracy.set(title="test accuracy (%)", xlabel="epoch", ylim=(0, 100))
    loss.set(title="train loss", xlabel="epoch")
    accuracy.legend(fontsize=8)
    return fig


def _peak_memory(row: dict) -> str:
    if "peak_allocated_bytes" in row:
        return f"{row['peak_allocated_bytes'] / 2**20:.0f} MiB allocated (CUDA)"
    return f"{row['peak_rss_bytes'] / 2**20:.0f} MiB process RSS (CPU)"


def comparison_table(results: dict[str, dict]) -> pd.DataFrame:
    """The final epoch of each run: accuracy, QWK, training speed, peak memory as measured."""
    table = {}
    for label, result in results.items():
        final, config = result["final"], result["config"]
        table[label] = {"epochs": final["epoch"], "batch size": config["batch_size"],
                        "accuracy %": round(final["accuracy"], 1), "QWK": round(final["qwk"], 3),
                        "test loss": round(final["test_loss"], 3),
                        "train images/s": round(final["train_images_per_s"], 1),
                        "peak memory (measured)": _peak_memory(final)}
    return pd.DataFrame(table).T


# --- the memory wall (notebook 04) --------------------------------------------------------------

def wall_table(rows, results: dict[str, dict], budget: str, against: str = "PatchGD") -> pd.DataFrame:
    """One line per way of training under the budget (``wall.WallRow``): batch, side, the planner's
    estimate and the measured peak, whether it fits, the final accuracy and, for every trained row
    but `against`, `against`'s accuracy minus it with its 95% paired bootstrap interval."""
    from ..planner.budget import parse_budget
    from ..report.orderings import paired_difference
    limit, table = parse_budget(budget), {}
    for row in rows:
        measured = row.measured_bytes
        line = {"batch": row.config.batch_size, "side (px)": row.config.downscaled_side or row.config.image_size,
                "estimated peak (MiB)": round(row.estimated_bytes / 2**20),
                "measured peak (MiB)": round(measured / 2**20) if measured is not None else None,
                "fits": "yes" if (measured or row.estimated_bytes) <= limit else "no"}
        result = results.get(row.name)
        if result is not None:
            line["accuracy %"] = round(result["final"]["accuracy"], 1)
            line["train images/s"] = round(result["final"]["train_images_per_s"], 1)
            if row.name != against and against in results:
                diff, low, high = paired_difference(results[against], result)
                line[f"{against} − this (95% interval)"] = f"{diff:+.1f} [{low:+.1f}, {high:+.1f}]"
        table[row.name] = line
    return pd.DataFrame(table).T.fillna("")


def plot_wall(rows, results: dict[str, dict], budget: str, title: str = "") -> Figure:
    """The paper's claim in one picture: final accuracy against the measured peak memory of a
    training step, one marker per way of training (named in the legend), the budget as a line; a
    configuration that does not fit is crossed at the bottom, at its peak."""
    from ..planner.budget import parse_budget
    limit = parse_budget(budget) / 2**20
    fig, axes = make_axes(1, size=7.5, height=4)
    ax = axes[0, 0]
    peaks = [(row.measured_bytes or row.estimated_bytes) / 2**20 for row in rows]
    markers = iter("osD^vP*")
    for row, peak in zip(rows, peaks):
        result = results.get(row.name)
        if result is None:
            ax.plot(peak, 0, "x", color=GRADIENT, markersize=10, markeredgewidth=2.5,
                    label=f"{row.name}: does not fit")
            continue
        color = REFRESHED if row.name == "PatchGD" else STALE
        ax.plot(peak, result["final"]["accuracy"], next(markers), color=color, markeredgecolor="black",
                markersize=9, label=f"{row.name}, batch {row.config.batch_size}")
    ax.axvline(limit, color=GRADIENT, linestyle="--", linewidth=1)
    ax.text(limit, 1, f" budget {budget}", color=GRADIENT, fontsize=8, va="bottom")
    ax.axhline(10, color="grey", linestyle=":", linewidth=1)
    ax.text(0, 11, " chance", color="grey", fontsize=8)
    ax.set_xlim(0, max(peaks + [limit]) * 1.15)
    best = max([result["final"]["accuracy"] for result in results.values()] + [10])
    ax.set_ylim(-5, min(100, best + 20))
    ax.set(xlabel="peak memory of one training step, measured (MiB)", ylabel="test accuracy (%)", title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return fig
