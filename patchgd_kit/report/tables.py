"""The tables and the report: one row per paper row with the paper's number beside the measured one
(mean ± std over seeds), their difference, the batch and k the budget gave, images/s, peak memory and
the scale; written as ``<name>.csv`` and ``<name>.md`` with notes and the paper's orderings checked.
Tables 3 and 4 add the data's name, the paper's settings of each row and, for Table 3, parameters
and inference latency. ``REPORT.md`` gathers every table and the figure in the paper's order.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from ..core.methods import uses_patches
from ..files import write_text
from ..paper.beyond import NOT_IN_PAPER, is_beyond
from ..paper.numbers import OUTPUTS, budget_text
from .latency import LATENCY_REPEATS, LATENCY_WARMUP, paper_parameters_m, run_latency
from .orderings import RowResult, format_mean_std, mean_std, orderings_markdown
from ..runs.config import precision
from ..runs.pretrain import load_weights_card
from ..runs.profiles import Profile
from ..runs.scaling import PandaData

GiB = 2**30
INIT = {None: "random", "none": "random", "imagenet": "ImageNet"}


def init_name(weights: str | None) -> str:
    """How a run's backbone started, in words: random, ImageNet, or the kit's digits-pretrained trunk."""
    if weights in INIT:
        return INIT[weights]
    card = load_weights_card(weights) if Path(weights).is_file() else {}
    if "digit_accuracy_pct" in card:
        return (f"digits-pretrained ({card['digit_accuracy_pct']:.0f}% on held-out digits; the kit's stand-in "
                "for ImageNet)")
    return f"from {Path(weights).name}"


METRIC_NAMES = {"accuracy": "accuracy %", "qwk": "QWK"}
METRIC_DIGITS = {"accuracy": 1, "qwk": 3}


def _peak_measured(result: RowResult) -> float | None:
    """Peak CUDA memory allocated over every epoch and seed, GiB; None on a CPU."""
    peaks = [row["peak_allocated_bytes"] for run in result.runs for row in run["history"]
             if "peak_allocated_bytes" in row]
    return max(peaks) / GiB if peaks else None


def run_label(result: RowResult) -> str:
    """The method as the tables and Figure 2 print a run: a PatchGD row says the patch it ran with and,
    where that differs, the paper's ("PatchGD (p = 32; paper 256)")."""
    label = result.row.label
    if not uses_patches(result.config.method):
        return label
    used, paper = result.config.patch_size, result.table.settings(result.row).get("patch_size")
    return f"{label} (p = {used}" + (f"; paper {paper})" if paper not in (None, used) else ")")


def table_frame(results: list[RowResult]) -> pd.DataFrame:
    """One line per paper row: paper, measured (mean and std over seeds), difference, and how it ran."""
    lines = []
    for r in results:
        line = {"method": run_label(r), "memory": budget_text(r.row.settings.get("memory_budget"))}
        for metric in r.table.metrics:
            name = METRIC_NAMES[metric]
            mean, std = mean_std(r.values(metric))
            paper = r.row.paper.get(metric)  # None for a row not in the paper
            line.update({f"paper {name}": paper, f"measured {name}": mean, f"measured {name} std": std,
                         f"measured − paper {name}": None if paper is None else mean - paper})
        k = r.config.schedule()[0]
        line.update({"seeds": len(r.runs), "batch planned at paper scale": r.plan["batch_size"],
                     "batch": r.config.batch_size, "k": k, "images/s": r.mean_over_epochs("train_images_per_s"),
                     "peak GiB estimated at paper scale": r.plan["estimated_peak_bytes"] / GiB,
                     "peak GiB measured (CUDA)": _peak_measured(r), "scale": r.scale,
                     "init": init_name(r.config.weights)})
        lines.append(line)
    return pd.DataFrame(lines).astype({"k": "Int64"})  # k is blank for GD rows, an integer for PatchGD


def _cell(value, digits: int = 1) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(_cell(v) for v in line) + " |\n"
                            for line in frame.itertuples(index=False))


def markdown_table(frame: pd.DataFrame, results: list[RowResult]) -> str:
    """The frame as Markdown, the measured mean and std merged into "mean ± std"."""
    shown = frame.drop(columns=["seeds", "init"])
    for metric in results[0].table.metrics:
        name, digits = METRIC_NAMES[metric], METRIC_DIGITS[metric]
        shown[f"measured {name}"] = [format_mean_std(r.values(metric), digits) for r in results]
        shown = shown.drop(columns=[f"measured {name} std"])
        for column in (f"paper {name}", f"measured − paper {name}"):
            shown[column] = [_cell(v, digits) for v in shown[column]]
    return markdown(shown)


def _accuracy_range(accuracies: list[float]) -> str:
    low, high = f"{min(accuracies):.1f}%", f"{max(accuracies):.1f}%"
    if low == high:
        return f"every measured accuracy here is {low}"
    return f"the measured accuracies here range from {low} to {high}"


def init_from_notes(results: list[RowResult]) -> list[str]:
    """A sentence for each row whose backbone starts from another row's run (Appendix C)."""
    return [f"{r.row.name}: as in Appendix C, its backbone starts from the trained backbone of this "
            f"table's {r.table.row(r.row.init_from).name} run (at this scale: its epochs here, from the "
            "init above), so it has had that run's training first." for r in results if r.row.init_from]


def notes(results: list[RowResult]) -> str:
    """What the columns mean, how this scale differs from the paper's, and the table's own note."""
    table, first = results[0].table, results[0]
    seeds = len(first.runs)
    paper = table.settings(table.rows[0])
    sizes = sorted({table.settings(r.row)["image_size"] for r in results})
    if len(sizes) == 1:
        planned = (f"{paper['image_size']} px" + (f", patch {paper['patch_size']}" if 'patch_size' in paper else "")
                   + ", this backbone and budget")
        scale = f"{first.scale}; paper: {paper['image_size']} px, {paper['epochs']} epochs"
    else:  # Table 3: rows at several sizes
        planned = "each row's image and patch size, this backbone and budget"
        scale = f"per row in the scale column; paper: {', '.join(map(str, sizes))} px, {paper['epochs']} epochs"
    capped = any(r.config.batch_size < r.plan["batch_size"] for r in results)
    lines = [
        f"- measured: {', '.join(METRIC_NAMES[m] for m in table.metrics)} after the last epoch"
        + (f", mean ± std over {seeds} seeds" if seeds > 1 else ", one seed"),
        f"- guessing one of the {first.config.num_classes} classes scores {100 / first.config.num_classes:.0f}%; "
        + _accuracy_range([statistics.fmean(r.values("accuracy")) for r in results]),
        f"- scale: {scale}",
        f"- batch and k: the memory planner's answer at the paper's scale ({planned})"
        + ("; at this scale times the profile's one batch factor (the scale line says which), so the ratios "
           "between the budgets' batches, the regime the paper compares, stay; capped by the training set "
           "where shown smaller" if capped else "; used unchanged at this scale"),
        "- peak memory: estimated by the planner for the planned batch at the paper's scale (not yet checked "
        "on a GPU); measured (CUDA only, peak allocated) for the run at this scale",
        "- images/s: training images per second, mean over epochs and seeds (the first epoch includes warm-up)",
        f"- init: {init_name(first.config.weights)} weights. The official code starts from ImageNet weights (the "
        "paper says \"pretrained\"), and the paper's low-memory UltraMNIST PatchGD runs from a backbone first "
        "trained with GD for 100 epochs (Appendix C); "
        "offline, the kit pretrains each backbone on single bundled MNIST digits instead (pretrain.py), the "
        "same init for every method of a table.",
    ]
    lines += [f"- {text}" for text in init_from_notes(results)]
    if any(is_beyond(r.row) for r in results):
        lines.append(f"- rows marked \"{NOT_IN_PAPER}\": GD's alternatives under the same budget and data "
                     "(notebook 11): GD-checkpoint computes GD's gradients with the trunk's activations recomputed "
                     "in backward, so it differs from GD only in the larger batch the budget allows; GD-downscaled "
                     "trains PatchGD's batch on images resized (area) to the largest side at which GD fits it "
                     "(the scale column gives the side)")
    if table.note:
        lines.append(f"- {table.note}")
    return "\n".join(lines) + "\n"


def write_table(results: list[RowResult], folder: Path, footer: str = "", *, title: str | None = None,
                columns: dict[str, list] | None = None, note: str = "") -> pd.DataFrame:
    """``<name>.csv`` (numbers) and ``<name>.md`` (title, table, notes, orderings, `footer`) in `folder`.
    `title` replaces the table's, `columns` (name → one value per row) follow the method and memory,
    `note` (Markdown lines) ends the notes: Tables 3 and 4 use them (panda.write_panda_table)."""
    table = results[0].table
    frame = table_frame(results)
    for i, (name, values) in enumerate((columns or {}).items()):
        frame.insert(2 + i, name, values)
    folder = Path(folder)
    write_text(folder / f"{table.name}.csv", frame.to_csv(index=False))
    text = (f"## {title or table.title}\n\n{markdown_table(frame, results)}\n{notes(results)}{note}\n"
            + (orderings_markdown(results) + "\n" if table.claims else "") + footer)
    write_text(folder / f"{table.name}.md", text)
    return frame


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def ran_in(result: RowResult) -> str:
    """The precision the row's epochs recorded (one value, or each of them where a run was resumed on
    another machine); runs stored before epochs recorded it are labelled as this machine would run them."""
    recorded = {row["precision"]: None for run in result.runs for row in run["history"] if "precision" in row}
    return " / ".join(recorded) if recorded else precision(result.config)


def write_panda_table(results: list[RowResult], folder, data: PandaData, profile: Profile,
                      footer: str = "") -> pd.DataFrame:
    """``table3`` or ``table4`` (.csv, .md) in ``folder`` through write_table, with the
    data's name in the title and in every row, the paper's settings of each row, and for Table 3
    the parameters and inference latency beside the paper's; ``footer`` ends the Markdown."""
    settings = [r.table.settings(r.row) for r in results]
    columns = {
        "data": [data.name] * len(results),
        "resolution (paper)": [s["image_size"] for s in settings],
        "patch (paper)": [s.get("patch_size") or "–" for s in settings],
        "sampling %": [_percent(s.get("sampling")) for s in settings],
        "max sampled %": [_percent(s["max_sampled"]) if "sampling" in s else "–" for s in settings],
        "precision": [ran_in(r) for r in results],
    }
    notes = [f"- data: {data.description}"]
    if profile.panda_grid_scale > 1:
        notes.append(f"- patch grids: each side is the paper's divided by {profile.panda_grid_scale} "
                     "(at least 2), so that ResNet50 PatchGD fits this profile's time; the 'scale' "
                     "column gives the patch used, the 'patch (paper)' column the paper's")
    notes.append("- fp16 rows: mixed precision (TrainConfig.amp): fp16 autocast with loss scaling on "
                 "CUDA, bf16 autocast on a CPU with native bf16, fp32 on one without (emulated bf16 is "
                 "10-40x slower); the 'precision' column says which ran")
    if "params_m" in results[0].row.paper:
        latencies = [run_latency(r, profile) for r in results]
        columns.update({
            "paper params (M)": [_cell(r.row.paper.get("params_m"), 2) for r in results],
            "params (M)": [f"{paper_parameters_m(s['method'], s['image_size'], s.get('patch_size')):.2f}"
                           for s in settings],
            "paper latency img/s": [_cell(r.row.paper.get("latency_img_s"), 2) for r in results],
            "latency img/s": [f"{lat['images_per_s']:.2f}" for lat in latencies],
            "latency device": [lat["device"] for lat in latencies],
        })
        notes += [
            "- params (M): the ResNet50 models built here at the paper's sizes with 6 classes, "
            "truncated to 2 decimals as the paper prints them; the runs' own models differ in the "
            "head's last layer (their grid and classes)",
            f"- latency: inference images/s at this scale, measured as the official code does (random "
            f"images, no gradient, {LATENCY_WARMUP} warm-up passes, mean of {LATENCY_REPEATS} "
            "synchronised passes), batch = the run's batch, on the device named; the paper's: an "
            "A100 40 GB filled with images. The paper gives its fp16 rows the fp32 rows' latencies "
            "(39.04, 32.52); here each row runs in its own precision",
        ]
    title = results[0].table.title
    if data.name != "PANDA":
        title += f" — run on the {data.name} (UltraMNIST, 10 ordinal classes), not on PANDA"
    return write_table(results, folder, footer, title=title, columns=columns,
                       note="\n".join(notes) + "\n")


def write_report(folder: Path, title: str = "") -> Path:
    """``REPORT.md`` in `folder`: every figure and table found there, in the paper's order, and a line
    naming the ones that are missing."""
    folder = Path(folder)
    found = [name for name in OUTPUTS if (folder / f"{name}.md").exists()]
    missing = [name for name in OUTPUTS if name not in found]
    parts = [f"# PatchGD Kit: the paper beside this reproduction\n\n{title}\n"]
    if missing:
        parts.append(f"Missing (their notebooks have not run or do not exist yet): {', '.join(missing)}.\n")
    parts += [(folder / f"{name}.md").read_text() for name in found]
    path = folder / "REPORT.md"
    write_text(path, "\n".join(parts))
    return path
