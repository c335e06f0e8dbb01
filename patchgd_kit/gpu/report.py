"""The GPU check's report: the summary and verdict of its rows, the .md and .json it writes after
every row, the one-paragraph summary the CLI prints, and what the README and notebooks quote:
``latest_check`` (the newest real check committed in docs/gpu-checks/) and ``memory_wording``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..files import atomic_write, write_json
from .rows import SECTIONS
from ..planner.budget import ALLOCATOR_HEADROOM, CUDA_CONTEXT_BYTES, format_bytes

CHECKS_DIR = Path(__file__).resolve().parents[2] / "docs" / "gpu-checks"  # where real checks are committed


def summarize(report: dict) -> dict:
    """Counts of the report's rows, the range of estimated / measured, and whether the planner's
    margin is enough."""
    rows = report["rows"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "skipped")}
    compared = [r for r in rows if r["status"] == "ok" and r.get("ratio_allocated")]
    out = {**counts, "compared_rows": len(compared)}
    for key in ("ratio_allocated", "ratio_reserved"):
        values = [r[key] for r in compared if r.get(key)]
        out[key] = [min(values), max(values)] if values else None
    reserved = [r for r in compared if r.get("measured_reserved_bytes")]
    if not reserved:
        out["verdict"] = "no GPU figures: the planner's figures remain estimates"
        return out
    needed = max(1 - r["estimated_bytes"] / r["measured_reserved_bytes"] for r in reserved)
    out["headroom_needed"] = needed
    out["verdict"] = (f"optimistic: peak reserved exceeds the estimate by up to {needed:.0%} of itself, more than "
                      f"the {ALLOCATOR_HEADROOM:.0%} headroom" if needed > ALLOCATOR_HEADROOM else
                      f"the {ALLOCATOR_HEADROOM:.0%} headroom covers every measured peak (needed: {needed:.0%})")
    outside = report.get("outside_allocator_bytes")
    if outside is not None and outside > CUDA_CONTEXT_BYTES:
        out["verdict"] += f"; outside the allocator {format_bytes(outside)} > the {format_bytes(CUDA_CONTEXT_BYTES)} assumed"
    return out


def _gib(v) -> str:
    return "–" if v is None else format_bytes(v)


def _num(v) -> str:
    return "–" if v is None else ("yes" if v else "no") if isinstance(v, bool) else str(v) if isinstance(v, (int, str)) \
        else f"{v:.2f}"


_COLUMNS = {  # per section: (title, the figure's key, its format)
    "peak": [("estimated", "estimated_bytes", _gib), ("peak allocated", "measured_allocated_bytes", _gib),
             ("peak reserved", "measured_reserved_bytes", _gib), ("est / alloc", "ratio_allocated", _num),
             ("est / reserved", "ratio_reserved", _num), ("margin covers", "margin_covers", _num)],
    "budget": [("budget", "budget_bytes", _gib), ("planned B", "planned_batch", _num), ("k", "k", _num),
               ("paper B", "paper_batch", _num), ("estimated", "estimated_bytes", _gib),
               ("peak allocated", "measured_allocated_bytes", _gib), ("peak reserved", "measured_reserved_bytes", _gib),
               ("est / reserved", "ratio_reserved", _num), ("fits", "fits", _num)],
    "over-budget": [("budget", "budget_bytes", _gib), ("planned B", "planned_batch", _num), ("tried B", "over_batch", _num),
                    ("planner", "planner_refusal", _num), ("CUDA", "oom_message", _num)],
    "fp16-epoch": [("precision", "precision", _num), ("loss", "train_loss", _num),
                   ("img/s", "train_images_per_s", _num), ("peak reserved", "peak_reserved_bytes", _gib)],
    "speed": [("train img/s", "train_images_per_s", _num)],
    "slice": [("init", "init", _num), ("batch", "batch_size_used", _num), ("train images", "train_images", _num),
              ("train img/s", "train_images_per_s", _num), ("inference img/s", "eval_images_per_s", _num),
              ("peak reserved", "peak_reserved_bytes", _gib)],
    "latency": [("img/s", "images_per_s", _num), ("paper img/s (A100 40 GB)", "paper_images_per_s", _num),
                ("precision", "precision", _num)],
}
TITLES = {"peak": "Estimated against measured peak, one real training step (Adam primed)",
          "budget": "The planned batch under an enforced budget", "over-budget": "Twice the planned batch",
          "fp16-epoch": "One epoch of train() in mixed precision",
          "speed": "Training speed (the real step on device-resident images)",
          "latency": "Inference latency, Table 3's column (latency.measure_latency)",
          "slice": "A slice of the gpu profile: Table 2's PatchGD 16 GB row, one epoch (train(), data loading included)"}


def format_markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# GPU check: {report['device']}, {report['date']}", ""]
    if report["dry"]:
        lines += ["**Dry run** on the CPU at a tiny scale: proves the script, measures nothing about a GPU. Its "
                  "\"measured\" peaks are live tensor bytes; CPU Adam updates one parameter at a time where the "
                  "estimate models CUDA's foreach Adam, so ratios above 1 are expected.", ""]
    lines += [f"torch {report['torch']}, CUDA {report['cuda']}, cuDNN {report['cudnn']}; "
              f"{report['elapsed_s']} s of a {report['minutes']}-minute budget; rows: {s['ok']} ok, "
              f"{s['failed']} failed, {s['skipped']} skipped.",
              f"Planner margin: {format_bytes(CUDA_CONTEXT_BYTES)} CUDA context + {ALLOCATOR_HEADROOM:.0%} headroom"
              + (f"; measured outside the allocator: {_gib(report.get('outside_allocator_bytes'))}" if not report["dry"] else "")
              + f". Estimate / measured: allocated {_range(s['ratio_allocated'])}, reserved {_range(s['ratio_reserved'])}.",
              f"**Verdict**: {s['verdict']}.", *_hour_lines(report), ""]
    for section in SECTIONS:
        rows = [r for r in report["rows"] if r["section"] == section]
        if rows:
            cols = _COLUMNS[section]
            lines += [f"## {TITLES[section]}", "", "| row | status | " + " | ".join(c[0] for c in cols) + " |",
                      "|---" * (len(cols) + 2) + "|"]
            lines += [f"| {r['name']} | {_status(r)} | " + " | ".join(f(r.get(k)) for _, k, f in cols) + " |" for r in rows]
            lines.append("")
    return "\n".join(lines)


def _hour_lines(report: dict) -> list[str]:
    """The gpu profile's hour (Figure 2, Tables 1, 2, 5/6) as this check's images/s predict it."""
    hour = report.get("hour_estimate")
    if not hour:
        return []
    notebooks = ", ".join(f"{n} {m}" for n, m in hour["by_notebook"].items())
    return [f"**The gpu profile's hour** (`reproduce --profile gpu --estimate` at this check's images/s): "
            f"{hour['minutes']} min estimated ({notebooks}); images/s from: {'; '.join(hour['sources'])}."]


def _range(pair) -> str:
    return "–" if not pair else f"{pair[0]:.2f}–{pair[1]:.2f}"


def _status(r: dict) -> str:
    return r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error') or r.get('reason')}"


def _stem(folder: str | Path, report: dict) -> Path:
    """<folder>/<date>-<device>: the report's .json and .md without their suffix."""
    return Path(folder) / f"{report['date']}-{re.sub(r'[^a-z0-9]+', '-', report['device'].lower()).strip('-')}"


def write_report(report: dict, folder: str | Path) -> list[str]:
    """Summarize the report's rows into report["summary"], then write <date>-<device>.json and .md
    into `folder`, each atomically (a check cut short leaves whole files); returns their paths."""
    report["summary"] = summarize(report)
    stem = _stem(folder, report)
    write_json(stem.parent / f"{stem.name}.json", report)
    text = format_markdown(report) + "\n"
    atomic_write(stem.parent / f"{stem.name}.md", lambda tmp: Path(tmp).write_text(text))
    return [f"{stem}.json", f"{stem}.md"]


def format_summary(report: dict) -> str:
    s = report["summary"]
    return (f"GPU check{' (dry)' if report['dry'] else ''} on {report['device']}: {s['ok']} ok, {s['failed']} failed, "
            f"{s['skipped']} skipped in {report['elapsed_s']} s; estimate / measured allocated "
            f"{_range(s['ratio_allocated'])}, reserved {_range(s['ratio_reserved'])}; {s['verdict']}\n"
            + "\n".join(f"wrote {f}" for f in report.get("files", [])))


def latest_check(folder: str | Path = CHECKS_DIR) -> dict | None:
    """The newest real (not dry) check in docs/gpu-checks/, or None: what the README and notebooks
    quote as measured; without one, every memory figure stays "estimated"."""
    checks = []
    for path in Path(folder).glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") == "gpu-check" and not data.get("dry"):
            checks.append((data.get("started", ""), path.name, {**data, "path": str(path)}))
    return max(checks)[2] if checks else None


def memory_wording(folder: str | Path = CHECKS_DIR) -> str:
    """How to call the planner's figures: "estimated", plus the latest real check when there is one."""
    check = latest_check(folder)
    if check is None:
        return "estimated (the kit's planner; not yet checked on a GPU)"
    s = check["summary"]
    return (f"estimated (the kit's planner); checked on {check['device']} on {check['date']}: estimate / measured "
            f"peak reserved {_range(s['ratio_reserved'])}; {s['verdict']}")
