"""The paper's numbers, the results store, and the tables, figure and report that put the paper's
numbers beside the measured ones.

- ``PAPER``: every number of the paper that the kit reproduces (Figure 2, Tables 1-6), in one place.
  Each row also carries its run's settings at the paper's scale; ``reproduce.py`` turns them into a
  TrainConfig for any profile.
- The store: a run lives in ``runs/<profile>/store/<method>-<backbone>-<hash>/``, the hash being that
  of ``TrainConfig.key()``. Two notebooks asking for the same run (Figure 2 and Table 1 share four;
  Table 5/6's ε = 1 is Table 2's PatchGD 16 GB) get the same folder, so it is trained once; train()
  resumes a half-finished run from its checkpoint and reads a finished one back.
- Tables: one row per paper row, with the paper's number, the measured one (mean ± std over
  seeds), their difference, the batch and k the budget gave, images/s, peak memory and the scale;
  written as ``<name>.csv`` and ``<name>.md``. The orderings the paper reports are checked on the
  measured numbers by code, not by hand. ``REPORT.md`` gathers every table and the figure.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .files import atomic_write
from .memory import PaperRow
from .patches import grid_shape, inner_iterations
from .pretrain import load_weights_card
from .train import TrainConfig, train

GiB = 2**30


# --- the paper ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of a paper table: its numbers and the settings of its run at the paper's scale."""
    id: str                 # unique within its table
    label: str              # the method as the paper names it
    settings: dict          # TrainConfig fields at the paper's scale (method, backbone, memory_budget, ...)
    paper: dict             # the paper's numbers: {"accuracy": 65.2}, Table 3 also "qwk", ...


# An ordering the paper reports, checked on the measured numbers. A term is a row id (that row's
# number) or a pair of row ids (their difference); which side is larger comes from the paper's numbers.
Term = str | tuple[str, str]


@dataclass(frozen=True)
class Table:
    name: str               # file names: <name>.csv, <name>.md
    title: str
    dataset: str            # "ultramnist" or "panda": which data, and how a profile scales it
    metrics: tuple[str, ...]
    base: dict              # settings shared by every row, at the paper's scale
    rows: tuple[Row, ...]
    claims: tuple[tuple[Term, Term], ...] = ()
    note: str = ""

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)

    def settings(self, row: Row) -> dict:
        return {**self.base, **row.settings}


ULTRAMNIST_512 = {"image_size": 512, "patch_size": 256, "sampling": 0.25, "max_sampled": 1.0, "epochs": 100,
                  "num_classes": 10}
PANDA_BASE = {"num_classes": 6, "max_sampled": 1.0, "epochs": 100}
ZETA = "zeta"  # grad_accum = ζ: one optimizer step per batch (the paper's PANDA runs, Appendix C)
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


def _method_rows(backbone: str, accuracies: dict[str, float]) -> tuple[Row, ...]:
    """Tables 1 and 2: GD, GD-extended and PatchGD (p = 256) at 16 and 4 GB."""
    labels = {"gd": "GD", "gd-extended": "GD-extended", "patchgd": "PatchGD (p=256)"}
    rows = []
    for budget in ("16GB", "4GB"):
        for method, label in labels.items():
            row_id = f"{method}_{budget.lower()}"
            rows.append(Row(row_id, label, {"method": method, "backbone": backbone, "memory_budget": budget},
                            {"accuracy": accuracies[row_id]}))
    return tuple(rows)


# The orderings of Tables 1 and 2 (paper §4.2): PatchGD beats GD at both budgets, GD beats
# GD-extended, and the PatchGD - GD gap differs between the budgets (grows at 4 GB for ResNet50).
PATCHGD_BEATS_GD = (("patchgd_16gb", "gd_16gb"), ("patchgd_4gb", "gd_4gb"))
GD_BEATS_EXTENDED = (("gd_16gb", "gd-extended_16gb"), ("gd_4gb", "gd-extended_4gb"))
GAP_BY_BUDGET = ((("patchgd_4gb", "gd_4gb"), ("patchgd_16gb", "gd_16gb")),)


def _panda_row(row_id, label, image_size, budget, accuracy, qwk, params_m, latency, patch_size=None,
               sampling=None, amp=False, max_sampled=1.0) -> Row:
    settings = {"method": "patchgd" if patch_size else "gd", "backbone": "resnet50", "image_size": image_size,
                "memory_budget": budget, "amp": amp}
    if patch_size:
        settings.update(patch_size=patch_size, sampling=sampling, max_sampled=max_sampled, grad_accum=ZETA)
    paper = {"accuracy": accuracy, "qwk": qwk}
    if params_m is not None:
        paper.update(params_m=params_m, latency_img_s=latency)
    return Row(row_id, label, settings, paper)


PAPER: dict[str, Table] = {t.name: t for t in (
    Table("table1", "Table 1: ResNet50 on UltraMNIST 512×512", "ultramnist", ("accuracy",), ULTRAMNIST_512,
          _method_rows("resnet50", {"gd_16gb": 65.2, "gd-extended_16gb": 50.5, "patchgd_16gb": 69.2,
                                    "gd_4gb": 53.6, "gd-extended_4gb": 52.5, "patchgd_4gb": 63.1}),
          PATCHGD_BEATS_GD + GD_BEATS_EXTENDED + GAP_BY_BUDGET + (("gd_16gb", "gd_4gb"),)),
    Table("table2", "Table 2: MobileNetV2 on UltraMNIST 512×512", "ultramnist", ("accuracy",), ULTRAMNIST_512,
          _method_rows("mobilenet_v2", {"gd_16gb": 67.3, "gd-extended_16gb": 64.3, "patchgd_16gb": 83.7,
                                        "gd_4gb": 67.7, "gd-extended_4gb": 60.0, "patchgd_4gb": 74.8}),
          PATCHGD_BEATS_GD + GD_BEATS_EXTENDED + GAP_BY_BUDGET),
    Table("table3", "Table 3: ResNet50 on PANDA (6 ISUP grades)", "panda", ("accuracy", "qwk"), PANDA_BASE, (
        _panda_row("gd_512", "GD", 512, "16GB", 44.4, 0.558, 23.52, 618.05),
        _panda_row("patchgd_512", "PatchGD", 512, "16GB", 44.9, 0.576, 26.39, 521.42, 128, 0.3),
        _panda_row("gd_2048", "GD", 2048, "16GB", 34.8, 0.452, 23.52, 39.04),
        _panda_row("patchgd_2048", "PatchGD", 2048, "16GB", 53.9, 0.627, 26.40, 32.52, 128, 0.1),
        _panda_row("gd_fp16_2048", "GD-fp16", 2048, "24GB", 50.6, 0.658, 23.52, 39.04, amp=True),
        _panda_row("patchgd_fp16_2048", "PatchGD-fp16", 2048, "24GB", 56.1, 0.662, 26.40, 32.52, 128, 0.1,
                   amp=True),
        _panda_row("gd_fp16_4096", "GD-fp16", 4096, "24GB", 50.1, 0.611, 23.52, 9.23, amp=True),
        _panda_row("patchgd_fp16_4096_p128", "PatchGD-fp16", 4096, "24GB", 53.5, 0.667, 26.41, 8.09, 128, 0.1,
                   amp=True),
        _panda_row("patchgd_fp16_4096_p256", "PatchGD-fp16", 4096, "24GB", 55.6, 0.672, 26.40, 9.62, 256, 0.1,
                   amp=True)),
          # §4.3: PatchGD beats GD at 2048 and 4096 px (at 512 they are "approximately similar"), and
          # patch 256 beats patch 128 at 4096.
          (("patchgd_2048", "gd_2048"), ("patchgd_fp16_2048", "gd_fp16_2048"),
           ("patchgd_fp16_4096_p128", "gd_fp16_4096"), ("patchgd_fp16_4096_p256", "patchgd_fp16_4096_p128")),
          note="Sampling 30% at 512 px: 10% of the 16 patches would be one patch (the paper's footnote). "
               "Latency: inference images/s on an A100 40 GB."),
    Table("table4", "Table 4: PatchGD sampling ablation on PANDA, 2048 px, patch 128, 16 GB", "panda",
          ("accuracy", "qwk"), PANDA_BASE, tuple(
              _panda_row(f"s{round(s * 100)}_m{round(m * 100)}", f"PatchGD {s:.0%} / {m:.0%}", 2048, "16GB", acc,
                         qwk, None, None, 128, s, max_sampled=m)
              for s, m, acc, qwk in ((0.5, 1.0, 42.3, 0.538), (0.3, 1.0, 49.9, 0.613), (0.1, 1.0, 53.9, 0.627),
                                     (0.1, 0.7, 53.1, 0.624), (0.1, 0.5, 53.9, 0.622), (0.1, 0.3, 51.1, 0.610))),
          # §4.3: a small sampling fraction does better; a low max sampled fraction does worse.
          (("s10_m100", "s30_m100"), ("s30_m100", "s50_m100"), ("s10_m100", "s10_m30"))),
    Table("table5_6", "Tables 5 and 6: gradient accumulation ε, MobileNetV2 PatchGD on UltraMNIST 512×512, 16 GB",
          "ultramnist", ("accuracy",), ULTRAMNIST_512, tuple(
              Row(f"eps{eps}", f"PatchGD ε = {eps}",
                  {"method": "patchgd", "backbone": "mobilenet_v2", "memory_budget": "16GB", "grad_accum": eps},
                  {"accuracy": acc})
              for eps, acc in ((1, 83.7), (2, 81.5), (4, 81.1))),
          (("eps1", "eps2"), ("eps2", "eps4")),
          note="The paper prints this table twice, as Table 5 and Table 6, with the same numbers. On the 2×2 "
               "grid k = 1 and ζ = 4 (sampling 25%, max sampled 100%): ε = 1 steps the optimizer after every "
               "inner iteration, ε = 4 once per batch. ε = 1 is the same run as Table 2's PatchGD at 16 GB."),
)}

# Figure 2 draws four of Table 1's runs; the paper's text gives other gaps than its Table 1.
FIGURE2 = {"table": "table1", "rows": ("gd_16gb", "patchgd_16gb", "gd_4gb", "patchgd_4gb"),
           "text_gaps": {"16GB": 4.0, "4GB": 13.0},
           "claims": PATCHGD_BEATS_GD + GAP_BY_BUDGET}
OUTPUTS = ("figure2", *PAPER)  # what a full reproduction writes, in report order


def grad_accum_of(settings: dict) -> int:
    """ε of a row's settings (1 when unset), ZETA resolved to that row's ζ."""
    eps = settings.get("grad_accum", 1)
    if eps != ZETA:
        return eps
    cells = math.prod(grid_shape(settings["image_size"], settings["patch_size"]))
    return inner_iterations(settings["sampling"], settings["max_sampled"], cells)


def memory_rows() -> list[PaperRow]:
    """Each distinct run configuration of every paper table, once per table, with the budgets the
    paper gives it ("16, 4"): the rows of the planner's table (`patchgd_kit plan --table`)."""
    budgets: dict[PaperRow, list[str]] = {}
    for table in PAPER.values():
        source = "Table " + table.name.removeprefix("table").replace("_", "/")
        for row in table.rows:
            s = table.settings(row)
            patch = {"patch_size": s["patch_size"], "sampling": s["sampling"], "max_sampled": s["max_sampled"],
                     "grad_accum": grad_accum_of(s)} if s["method"] == "patchgd" else {}
            key = PaperRow(source, s["method"], s["backbone"], s["image_size"], amp=s.get("amp", False),
                           num_classes=s["num_classes"], **patch)
            budgets.setdefault(key, []).append(s["memory_budget"].removesuffix("GB"))
    return [dataclasses.replace(row, paper_budget=", ".join(b)) for row, b in budgets.items()]


# --- the store ------------------------------------------------------------------------------------

def run_key(config: TrainConfig) -> str:
    """A stable hash of everything that defines the run's result."""
    return hashlib.sha256(json.dumps(config.key(), sort_keys=True).encode()).hexdigest()[:16]


def store_dir(profile_folder: Path) -> Path:
    return Path(profile_folder) / "store"


def run_folder(config: TrainConfig, profile_folder: Path) -> Path:
    return store_dir(profile_folder) / f"{config.method}-{config.backbone}-{run_key(config)}"


def is_finished(config: TrainConfig, profile_folder: Path) -> bool:
    return (run_folder(config, profile_folder) / "summary.json").exists()


def train_in_store(config: TrainConfig, profile_folder: Path, progress: bool = True) -> dict:
    """train() into the config's store folder: trains, resumes, or reads a finished run back."""
    return train(config, run_folder(config, profile_folder), progress=progress)


# --- measured rows ----------------------------------------------------------------------------------

@dataclass
class RowResult:
    """A paper row as run at a profile's scale: one train() result per seed."""
    table: Table
    row: Row
    config: TrainConfig             # the first seed's (seeds differ in `seed` only)
    plan: dict                      # the planner at the paper's scale: batch_size, k, estimated_peak_bytes
    scale: str                      # "128 px, patch 64; 400 train / 200 test images; 5 epochs"
    runs: list[dict] = field(default_factory=list)
    test_images: int | None = None  # the test set's size: how noisy one accuracy is

    def values(self, metric: str) -> list[float]:
        return [run["final"][metric] for run in self.runs]

    def mean_over_epochs(self, key: str) -> float:
        """Mean over every epoch of every seed (e.g. images/s)."""
        return statistics.fmean(row[key] for run in self.runs for row in run["history"])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def format_mean_std(values: list[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


METRIC_NAMES = {"accuracy": "accuracy %", "qwk": "QWK"}
METRIC_DIGITS = {"accuracy": 1, "qwk": 3}


def _budget_text(budget: str | None) -> str:
    return budget.replace("GB", " GB") if budget else "–"


def _peak_measured(result: RowResult) -> float | None:
    """Peak CUDA memory allocated over every epoch and seed, GiB; None on a CPU."""
    peaks = [row["peak_allocated_bytes"] for run in result.runs for row in run["history"]
             if "peak_allocated_bytes" in row]
    return max(peaks) / GiB if peaks else None


def table_frame(results: list[RowResult]) -> pd.DataFrame:
    """One line per paper row: paper, measured (mean and std over seeds), difference, and how it ran."""
    lines = []
    for r in results:
        line = {"method": r.row.label, "memory": _budget_text(r.row.settings.get("memory_budget"))}
        for metric in r.table.metrics:
            name = METRIC_NAMES[metric]
            mean, std = mean_std(r.values(metric))
            line.update({f"paper {name}": r.row.paper[metric], f"measured {name}": mean,
                         f"measured {name} std": std, f"measured − paper {name}": mean - r.row.paper[metric]})
        k = r.config.schedule()[0] if r.config.method == "patchgd" else None
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


def _markdown(frame: pd.DataFrame) -> str:
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
    return _markdown(shown)


# --- the paper's orderings, checked -------------------------------------------------------------------

def _term_values(term: Term, results: dict[str, RowResult], metric: str) -> tuple[float, list[float]]:
    """(the paper's value, the measured value per seed) of a row or of a difference of two rows."""
    if isinstance(term, str):
        return results[term].row.paper[metric], results[term].values(metric)
    (pa, a), (pb, b) = (_term_values(t, results, metric) for t in term)
    return pa - pb, [x - y for x, y in zip(a, b)]


def _sampling_variance(term: Term, results: dict[str, RowResult]) -> float:
    """Variance (points²) of a term's measured accuracy from the finite test set alone: p(1-p)/n per
    row, rows taken as independent; NaN when a row's test-set size is unknown."""
    if isinstance(term, str):
        r = results[term]
        p = statistics.fmean(r.values("accuracy")) / 100
        return p * (1 - p) / (r.test_images * len(r.runs)) * 100**2 if r.test_images else math.nan
    return sum(_sampling_variance(t, results) for t in term)


BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0  # the same resamples every time: a rerun writes the same intervals


def _bootstrap_accuracies(results: dict[str, RowResult]) -> dict[str, np.ndarray] | None:
    """Per row, BOOTSTRAP_SAMPLES accuracies (%) over test images drawn with replacement. Rows
    evaluated on the same test images (the same labels in the same order) share the draws, so a
    difference between them is a paired comparison; an image counts as the fraction of seeds that
    got it right. None when a run did not keep its predictions (a store older than the bootstrap)."""
    if any("test_predictions" not in run for r in results.values() for run in r.runs):
        return None
    rng, draws, samples = np.random.default_rng(BOOTSTRAP_SEED), {}, {}
    for row_id, r in results.items():
        labels = tuple(r.runs[0]["test_labels"])
        if labels not in draws:
            draws[labels] = rng.integers(0, len(labels), size=(BOOTSTRAP_SAMPLES, len(labels)))
        correct = np.mean([np.equal(run["test_predictions"], run["test_labels"]) for run in r.runs], axis=0)
        samples[row_id] = correct[draws[labels]].mean(axis=1) * 100
    return samples


def _term_samples(term: Term, samples: dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(term, str):
        return samples[term]
    return _term_samples(term[0], samples) - _term_samples(term[1], samples)


def _term_name(term: Term, results: dict[str, RowResult]) -> str:
    if isinstance(term, str):
        row = results[term].row
        budget = row.settings.get("memory_budget")
        name = row.label
        # Table 3 has rows of one method and budget at several sizes and patches: name those too.
        if sum(r.row.label == row.label and r.row.settings.get("memory_budget") == budget
               for r in results.values()) > 1:
            name += "".join(f" {text.format(row.settings[key])}" for key, text in
                            (("image_size", "{} px"), ("patch_size", "patch {}")) if row.settings.get(key))
        return f"{name} {_budget_text(budget)}"
    return f"({_term_name(term[0], results)} − {_term_name(term[1], results)})"


def orderings(results: list[RowResult], claims=None) -> list[dict]:
    """Each ordering the paper reports (its table's claims, or `claims`), checked on the measured
    means: the margin (> 0: it holds) and the noise it is read against. `ci95` is the 95% interval
    of the margin from a paired bootstrap over the test images (None for runs stored without their
    predictions); `within_noise` is true when that interval holds 0 (without it: when the margin is
    below twice the test set's binomial standard error), or below the spread over seeds."""
    table = results[0].table
    by_id = {r.row.id: r for r in results}
    metric = table.metrics[0]
    samples = _bootstrap_accuracies(by_id) if metric == "accuracy" else None
    checked = []
    for left, right in claims or table.claims:
        (pl, ml), (pr, mr) = _term_values(left, by_id, metric), _term_values(right, by_id, metric)
        if pl < pr:  # write every claim as "larger > smaller" in the paper's own order
            (left, pl, ml), (right, pr, mr) = (right, pr, mr), (left, pl, ml)
        margin, seed_std = mean_std([a - b for a, b in zip(ml, mr)])
        test_noise = 2 * math.sqrt(_sampling_variance(left, by_id) + _sampling_variance(right, by_id))
        ci95 = None
        if samples is not None:
            spread = _term_samples(left, samples) - _term_samples(right, samples)
            ci95 = tuple(float(v) for v in np.percentile(spread, [2.5, 97.5]))
        undecided = ci95[0] <= 0 <= ci95[1] if ci95 else abs(margin) < test_noise  # NaN: False
        checked.append({"claim": f"{_term_name(left, by_id)} > {_term_name(right, by_id)}",
                        "paper": (pl, pr), "measured": (statistics.fmean(ml), statistics.fmean(mr)),
                        "margin": margin, "seed_std": seed_std, "test_noise": test_noise, "ci95": ci95,
                        "within_noise": undecided or margin == 0 or abs(margin) < seed_std})
    return checked


def _verdict(c: dict) -> str:
    """"holds", "does not hold" or "tie", and whether beyond the noise."""
    verdict = "holds" if c["margin"] > 0 else "tie" if c["margin"] == 0 else "does not hold"
    if not c["within_noise"]:
        return f"**{verdict}** beyond the noise"
    return f"**{verdict}**, within the noise"


def _noise_text(c: dict) -> str:
    parts = []
    if c["ci95"]:
        parts.append(f"paired bootstrap 95% interval of the margin [{c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}]")
    elif not math.isnan(c["test_noise"]):
        parts.append(f"test-set sampling ±{c['test_noise']:.1f}")
    if not math.isnan(c["seed_std"]):
        parts.append(f"seeds ±{c['seed_std']:.1f}")
    return "; ".join(parts)


def orderings_markdown(results: list[RowResult], claims=None) -> str:
    checked = orderings(results, claims)
    lines = [f"- {c['claim']}: paper {c['paper'][0]:.1f} > {c['paper'][1]:.1f}; measured "
             f"{c['measured'][0]:.1f} vs {c['measured'][1]:.1f}, margin {c['margin']:+.1f}: {_verdict(c)}"
             + (f" ({_noise_text(c)})" if _noise_text(c) else "") for c in checked]
    firm = [c for c in checked if not c["within_noise"]]
    held, against = sum(c["margin"] > 0 for c in firm), sum(c["margin"] < 0 for c in firm)
    summary = (f"Of the paper's {len(checked)} orderings here, {held} hold beyond the noise at this scale, "
               f"{against} are reversed beyond the noise, and {len(checked) - len(firm)} are not decided "
               f"(the margin's interval holds 0)")
    return f"{summary}:\n\n" + "\n".join(lines) + "\n"


# --- writing tables, the figure and the report --------------------------------------------------------

def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _accuracy_range(accuracies: list[float]) -> str:
    low, high = f"{min(accuracies):.1f}%", f"{max(accuracies):.1f}%"
    if low == high:
        return f"every measured accuracy here is {low}"
    return f"the measured accuracies here range from {low} to {high}"


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
    _write_text(folder / f"{table.name}.csv", frame.to_csv(index=False))
    text = (f"## {title or table.title}\n\n{markdown_table(frame, results)}\n{notes(results)}{note}\n"
            + (orderings_markdown(results) + "\n" if table.claims else "") + footer)
    _write_text(folder / f"{table.name}.md", text)
    return frame


def figure2_gaps(results: list[RowResult]) -> pd.DataFrame:
    """PatchGD − GD accuracy at 16 and 4 GB: the paper's text, its Table 1, and measured."""
    by_id = {r.row.id: r for r in results}
    lines = []
    for budget, text_gap in FIGURE2["text_gaps"].items():
        tag = budget.lower()
        table_gap, measured = _term_values((f"patchgd_{tag}", f"gd_{tag}"), by_id, "accuracy")
        lines.append({"memory": _budget_text(budget), "paper text gap": text_gap, "paper Table 1 gap": table_gap,
                      "measured gap": format_mean_std(measured)})
    return pd.DataFrame(lines)


def plot_figure2(results: list[RowResult]) -> Figure:
    """Test accuracy per epoch of GD and PatchGD at 16 and 4 GB (mean over seeds, band ± std), the
    paper's values after its 100 epochs marked in a column of their own at the right."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    colours = {"gd": "#1c7ed6", "patchgd": "#e8590c"}
    epochs = len(results[0].runs[0]["history"])
    paper_x = epochs + 1
    for r in results:
        curves = [[row["accuracy"] for row in run["history"]] for run in r.runs]
        x = range(1, epochs + 1)
        mean = [statistics.fmean(v) for v in zip(*curves)]
        at_16gb = r.row.settings["memory_budget"] == "16GB"
        colour = colours[r.config.method]
        name = f"{r.row.label} {_budget_text(r.row.settings['memory_budget'])}"
        ax.plot(x, mean, "-" if at_16gb else "--", color=colour, marker="o", markersize=3, label=f"{name}: measured")
        if len(curves) > 1:
            std = [statistics.stdev(v) for v in zip(*curves)]
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=colour, alpha=0.15)
        ax.plot([paper_x], [r.row.paper["accuracy"]], marker="*" if at_16gb else "P", markersize=11, color=colour,
                linestyle="none", label=f"{name}: paper, {r.row.paper['accuracy']}")
    ax.axvline(epochs + 0.5, color="#adb5bd", linewidth=0.8)
    ax.set_xticks([*range(1, epochs + 1, max(1, epochs // 10)), paper_x],
                  [*map(str, range(1, epochs + 1, max(1, epochs // 10))), "paper\n(epoch 100)"])
    ax.set(xlabel="epoch", ylabel="test accuracy %", ylim=(0, 100), xlim=(0.5, paper_x + 0.5),
           title=f"Figure 2, reproduced: ResNet50 on UltraMNIST\n{results[0].scale}")
    fig.legend(fontsize=7, loc="outside lower center", ncols=2, handlelength=3)
    return fig


def save_figure(fig: Figure, folder: Path, name: str = "figure2") -> None:
    """``<name>.png`` and ``<name>.svg``, each written atomically."""
    for suffix in ("png", "svg"):
        path = Path(folder) / f"{name}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=suffix, dpi=150))


def write_figure2(results: list[RowResult], folder: Path) -> Figure:
    """figure2.png, figure2.svg and figure2.md (the gaps, the orderings) in `folder`."""
    fig = plot_figure2(results)
    save_figure(fig, folder, "figure2")
    first = results[0]
    text = ("## Figure 2: GD and PatchGD at 16 GB and 4 GB, ResNet50 on UltraMNIST\n\n![Figure 2](figure2.png)\n\n"
            f"Four of Table 1's runs ({first.scale}; {init_name(first.config.weights)} "
            "weights; batches as in Table 1's notes). PatchGD − GD accuracy in points: the paper's text says 4 "
            "at 16 GB and 13 at 4 GB, its Table 1 gives 4.0 and 9.5. Both are shown:\n\n"
            + _markdown(figure2_gaps(results)) + "\n" + orderings_markdown(results, FIGURE2["claims"]))
    _write_text(Path(folder) / "figure2.md", text)
    return fig


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
    _write_text(path, "\n".join(parts))
    return path
