"""The memory planner over the paper's rows: a row's settings as the planner's arguments (ε = ζ
resolved), the plan of one row at the paper's scale (shipped with the kit in paper_plans.json for
every row of the paper's tables, cached per profile otherwise: every notebook asks), and the table of
plans of every paper row at 4, 16 and 24 GB (`python -m patchgd_kit plan --table`), with rows not in
the paper for GD's alternatives beside GD's rows.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from ..core import alternatives as alternative_steps
from ..core import gd, methods, models, patches, patchgd, streaming
from ..core.methods import method_of, uses_patches
from ..core.patches import schedule_for
from ..files import content_hash, write_text
from ..paper.beyond import BEYOND, reads_full_resolution, rows_of
from ..paper.numbers import PAPER, ZETA
from . import alternatives, budget, bytecount, estimate
from .alternatives import downscaled_side_for
from .budget import BudgetTooSmall, format_bytes, plan

# The code a plan depends on: the planner and every step it traces on fake tensors. A change in any
# of them (or another torch) changes the plans' keys, so nothing stale is ever read back.
PLANNED_BY = (estimate, budget, bytecount, alternatives, alternative_steps, methods, models, patchgd, gd, patches,
              streaming)
# Every row of the paper's tables (and GD's alternatives) planned once, shipped with the kit:
# planning them takes minutes on 2 cores, and every fresh reproduction would otherwise repeat it.
# `python -m patchgd_kit plan --ship` writes it again; a test says when it is out of date.
SHIPPED = Path(__file__).with_name("paper_plans.json")


def grad_accum_of(settings: dict) -> int:
    """ε of a row's settings (1 when unset), ZETA resolved to that row's ζ."""
    eps = settings.get("grad_accum", 1)
    if eps != ZETA:
        return eps
    return schedule_for(settings["image_size"], settings["patch_size"], settings["sampling"],
                        settings["max_sampled"])[1]


def _downscaled(settings: dict) -> bool:
    """gd-downscaled: planned at PatchGD's batch, whose patch settings the row carries."""
    return "downscaled_side" in method_of(settings["method"]).needs


def planner_args(settings: dict) -> dict:
    """plan()'s arguments for a row's settings at the paper's scale."""
    args = {"method": settings["method"], "backbone": settings["backbone"], "image_size": settings["image_size"],
            "budget": settings["memory_budget"], "amp": settings.get("amp", False),
            "num_classes": settings["num_classes"]}
    if uses_patches(settings["method"]) or _downscaled(settings):
        args.update(patch_size=settings["patch_size"], sampling=settings["sampling"],
                    grad_accum=grad_accum_of(settings))
    if reads_full_resolution(settings):  # the slide is read a patch at a time: not in memory
        args["lazy"] = True
    return args


def _plan_row(args: dict) -> dict:
    method, backbone, size, budget = (args.pop(k) for k in ("method", "backbone", "image_size", "budget"))
    if _downscaled({"method": method}):
        side = downscaled_side_for(backbone, size, budget, **args)
        return {"batch_size": side.batch_size, "k": None, "estimated_peak_bytes": side.estimated_peak_bytes,
                "estimator": "fake-tensor", "downscaled_side": side.side}
    if method == "streaming":  # lightstream's statistics cannot run on fake tensors: planner.alternatives estimates it
        found = alternatives.streaming_plan(backbone, size, budget, **args)
    else:
        found = plan(method, backbone, size, budget, **args)
    return {"batch_size": found.batch_size, "k": found.k, "estimated_peak_bytes": found.estimated_peak_bytes,
            "estimator": found.estimator}


def _code_of(module) -> str:
    """A module's code without its comments and docstrings: editing words does not make plans stale."""
    tree = ast.parse(Path(module.__file__).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@functools.cache
def planner_version() -> str:
    """A hash of the code of PLANNED_BY and the torch and torchvision versions."""
    return content_hash([*(_code_of(m) for m in PLANNED_BY), torch.__version__, torchvision.__version__], 12)


def _cache_key(settings: dict) -> tuple[str, dict]:
    """(the cache key of a row's plan, plan()'s arguments). ε enters the key as the planner sees it."""
    args = planner_args(settings)
    seen = {**args, "grad_accum": min(args["grad_accum"], 2)} if "grad_accum" in args else args
    return json.dumps({**seen, "planner": planner_version()}, sort_keys=True), args


def _read_plans(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def every_row_settings() -> list[dict]:
    """The settings of every row of the paper's tables and of GD's alternatives beside them."""
    return [table.settings(row) for table in PAPER.values() for row in rows_of(table, tuple(BEYOND))]


def unshipped_rows() -> list[dict]:
    """The settings of the rows of every_row_settings() whose plan for the current code is not shipped."""
    shipped = _read_plans(SHIPPED)
    return [s for s in every_row_settings() if _cache_key(s)[0] not in shipped]


def ship_plans(workers: int = 2) -> Path:
    """Plan every row of every_row_settings() (those already shipped under the current key are kept)
    and write SHIPPED with those plans only."""
    rows = every_row_settings()
    plans = paper_plans(rows, SHIPPED, workers)
    write_text(SHIPPED, json.dumps({_cache_key(s)[0]: p for s, p in zip(rows, plans)}, indent=1, sort_keys=True))
    return SHIPPED


def paper_plans(rows: list[dict], cache: Path, workers: int = 2) -> list[dict]:
    """The planner's batch size, k and estimated peak for each row's settings at the paper's scale
    (gd-downscaled: PatchGD's batch and the side it fits at, ``downscaled_side``).

    Read from the plans shipped with the kit (SHIPPED), else kept in the JSON file `cache`: planning
    takes seconds per row and every notebook asks. The source of the planner and of the steps it
    traces is part of the key, so changed code plans again. ε enters the key as the planner sees it,
    1 or at least 2: Table 4's rows with ζ = 11, 8, 6 and 4 share one plan instead of tracing ResNet50
    at 2048 px again in each notebook. Plans in neither are made `workers` processes at a time
    (tracing fake tensors is single-threaded Python)."""
    keyed = [_cache_key(settings) for settings in rows]
    cache = Path(cache)
    known = _read_plans(cache)
    shipped = _read_plans(SHIPPED)
    missing = {key: args for key, args in keyed if key not in known and key not in shipped}
    if missing:
        if workers > 1 and len(missing) > 1:
            # spawn, not fork: a fork of a process whose torch has started threads can hang
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(missing)), mp_context=context) as pool:
                made = list(pool.map(_plan_row, [dict(args) for args in missing.values()]))
        else:
            made = [_plan_row(dict(args)) for args in missing.values()]
        known.update(zip(missing, made))
        write_text(cache, json.dumps(known, indent=1, sort_keys=True))
    return [known[key] if key in known else shipped[key] for key, _ in keyed]


def paper_plan(settings: dict, cache: Path) -> dict:
    """``paper_plans`` of one row."""
    return paper_plans([settings], cache)[0]


@dataclass(frozen=True)
class PaperRow:
    """One run configuration of the paper's tables, with the budgets the paper gives it
    (``memory_rows()`` makes them from the paper's tables)."""
    source: str
    method: str
    backbone: str
    image_size: int
    patch_size: int | None = None
    sampling: float | None = None
    max_sampled: float = 1.0
    grad_accum: int = 1
    amp: bool = False
    num_classes: int = 10
    paper_budget: str = ""


TABLE_BUDGETS = ("4GB", "16GB", "24GB")


def _plan_key(row: PaperRow) -> PaperRow:
    """Rows that differ only in what leaves the peak alone (max sampled, ε beyond 2) share a plan."""
    return dataclasses.replace(row, source="", max_sampled=1.0, paper_budget="", grad_accum=min(row.grad_accum, 2))


def _row_plans(row: PaperRow, budgets: tuple[str, ...]) -> list[dict]:
    out = []
    for memory_budget in budgets:
        try:
            p = plan(row.method, row.backbone, row.image_size, memory_budget, patch_size=row.patch_size,
                     sampling=row.sampling, amp=row.amp, num_classes=row.num_classes, grad_accum=row.grad_accum)
            out.append({"batch_size": p.batch_size, "k": p.k, "estimated_peak_bytes": p.estimated_peak_bytes,
                        "needs_bytes": None, "estimator": p.estimator})
        except BudgetTooSmall as exc:
            out.append({"batch_size": None, "k": None, "estimated_peak_bytes": None,
                        "needs_bytes": exc.needs_bytes, "estimator": None})
    return out


def memory_table(rows: list[PaperRow], budgets: tuple[str, ...] = TABLE_BUDGETS, workers: int = 2) -> list[dict]:
    """The plan for every row at every budget: one dict per (row, budget)
    with the row's fields, `budget`, `batch_size`, `k`, `estimated_peak_bytes`, `estimator`; when
    even batch 1 does not fit, those are None and `needs_bytes` is batch 1's estimated peak.
    `workers` processes share the distinct plans (about 3 minutes for the whole table in one)."""
    keys = sorted(set(map(_plan_key, rows)), key=lambda r: -r.image_size)  # the slowest first
    if workers > 1:
        # spawn, not fork: a fork of a process whose torch has started threads can hang
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(_row_plans, keys, itertools.repeat(budgets)))
    else:
        results = [_row_plans(key, budgets) for key in keys]
    plans = dict(zip(keys, results))
    return [{**dataclasses.asdict(row), "budget": budget, **cell}
            for row in rows for budget, cell in zip(budgets, plans[_plan_key(row)])]


def format_table(cells: list[dict]) -> str:
    """Markdown: one line per paper row, one column per budget ("B" batch, "k" patches per image)."""
    budgets = list(dict.fromkeys(c["budget"] for c in cells))
    lines = ["| Source | Method | Backbone | Image | Patch | Sampling / max | ε | Precision | Paper GB | "
             + " | ".join(budgets) + " |",
             "|" + "---|" * (9 + len(budgets))]
    for i in range(0, len(cells), len(budgets)):
        row = cells[i]
        sampling = f"{row['sampling']:.0%} / {row['max_sampled']:.0%}" if row["patch_size"] else "–"
        out = []
        for c in cells[i:i + len(budgets)]:
            if c["batch_size"] is None:
                out.append(f"does not fit (B=1 needs {format_bytes(c['needs_bytes'])})")
            else:
                out.append(f"B={c['batch_size']}" + (f", k={c['k']}" if c["k"] is not None else "")
                           + f" · {format_bytes(c['estimated_peak_bytes'])}")
        lines.append(f"| {row['source']} | {row['method']} | {row['backbone']} | {row['image_size']} | "
                     f"{row['patch_size'] or '–'} | {sampling} | {row['grad_accum']} | "
                     f"{'fp16' if row['amp'] else 'fp32'} | {row['paper_budget']} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def memory_rows() -> list[PaperRow]:
    """Each distinct run configuration of every paper table, once per table, with the budgets the
    paper gives it ("16, 4"): the rows of the planner's table (`patchgd_kit plan --table`)."""
    budgets: dict[PaperRow, list[str]] = {}
    for table in PAPER.values():
        source = "Table " + table.name.removeprefix("table").replace("_", "/")
        for row in table.rows:
            s = table.settings(row)
            patch = {"patch_size": s["patch_size"], "sampling": s["sampling"], "max_sampled": s["max_sampled"],
                     "grad_accum": grad_accum_of(s)} if uses_patches(s["method"]) else {}
            key = PaperRow(source, s["method"], s["backbone"], s["image_size"], amp=s.get("amp", False),
                           num_classes=s["num_classes"], **patch)
            budgets.setdefault(key, []).append(s["memory_budget"].removesuffix("GB"))
    return [dataclasses.replace(row, paper_budget=", ".join(b)) for row, b in budgets.items()]


NOT_IN_PAPER = " (not in the paper)"


def alternative_rows(sources: tuple[str, ...] = ("Table 1", "Table 2", "Table 3")) -> list[PaperRow]:
    """Rows not in the paper: each GD row of Tables 1-3 again as gd-checkpoint (GD with its trunk
    activation-checkpointed: the same gradients, so the same accuracy, in less memory). gd-downscaled
    has no row here: its side depends on the budget (``alternatives.downscaled_side_for``)."""
    return [dataclasses.replace(row, source=row.source + NOT_IN_PAPER, method="gd-checkpoint", paper_budget="–")
            for row in memory_rows() if row.method == "gd" and row.source in sources]
