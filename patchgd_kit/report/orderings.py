"""Measured rows and the paper's orderings checked on them: a paper row as run at a profile's scale
(``RowResult``: one train() result per seed), mean ± std over seeds, and each ordering the paper
reports (PatchGD beats GD, ...) with its margin and the noise it is read against: a paired bootstrap
over the test images, the test set's binomial error, the spread over seeds.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from ..paper.numbers import Row, Table, Term, budget_text
from ..runs.config import TrainConfig


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


def term_values(term: Term, results: dict[str, RowResult], metric: str) -> tuple[float, list[float]]:
    """(the paper's value, the measured value per seed) of a row or of a difference of two rows."""
    if isinstance(term, str):
        return results[term].row.paper[metric], results[term].values(metric)
    (pa, a), (pb, b) = (term_values(t, results, metric) for t in term)
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


def paired_difference(run: dict, other: dict) -> tuple[float, float, float]:
    """Accuracy of `run` minus `other` (points) on the same test images, and the 95% interval of the
    difference from a paired bootstrap (both runs scored on each resampled set of images)."""
    if list(run["test_labels"]) != list(other["test_labels"]):
        raise ValueError("a paired comparison needs both runs scored on the same test images")
    correct = [np.equal(r["test_predictions"], r["test_labels"]).astype(float) for r in (run, other)]
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(correct[0]), size=(BOOTSTRAP_SAMPLES, len(correct[0])))
    spread = (correct[0][draws] - correct[1][draws]).mean(axis=1) * 100
    low, high = np.percentile(spread, [2.5, 97.5])
    return float((correct[0] - correct[1]).mean() * 100), float(low), float(high)


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
        return f"{name} {budget_text(budget)}"
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
        (pl, ml), (pr, mr) = term_values(left, by_id, metric), term_values(right, by_id, metric)
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


def _verb(count: int, singular: str, plural: str) -> str:
    return singular if count == 1 else plural


def orderings_markdown(results: list[RowResult], claims=None) -> str:
    checked = orderings(results, claims)
    lines = [f"- {c['claim']}: paper {c['paper'][0]:.1f} > {c['paper'][1]:.1f}; measured "
             f"{c['measured'][0]:.1f} vs {c['measured'][1]:.1f}, margin {c['margin']:+.1f}: {_verdict(c)}"
             + (f" ({_noise_text(c)})" if _noise_text(c) else "") for c in checked]
    firm = [c for c in checked if not c["within_noise"]]
    held, against = sum(c["margin"] > 0 for c in firm), sum(c["margin"] < 0 for c in firm)
    undecided = len(checked) - len(firm)
    summary = (f"Of the paper's {len(checked)} orderings here, {held} {_verb(held, 'holds', 'hold')} beyond the "
               f"noise at this scale, {against} {_verb(against, 'is', 'are')} reversed beyond the noise, and "
               f"{undecided} {_verb(undecided, 'is', 'are')} not decided (the margin's interval holds 0)")
    return f"{summary}:\n\n" + "\n".join(lines) + "\n"
