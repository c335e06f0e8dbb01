"""Reproduce the paper's figure and tables at a profile's scale.

- ``run_table("table1", profile, seeds)``: every row of a paper table (``paper.PAPER``) as a run at
  the profile's scale (``scaling.row_config``), through the results store (``store``). The batch (and
  k) is the memory planner's answer at the paper's scale (512 px, patch 256, that backbone, that
  budget) times the profile's batch factor, capped by its training set: a scaled run keeps the
  paper's memory regime, not its pixels.
- ``reproduce(profile, seeds, out)``: every numbered notebook (``notebooks/NN_*.ipynb``) headless with
  papermill, in order, then ``REPORT.md``. `python -m patchgd_kit reproduce` and `make reproduce` call it.
  Interrupted and rerun, it redoes only what is missing: finished runs come from the store, a
  half-finished one resumes from its last epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import sys
import time
from pathlib import Path

import torch

from . import streaming
from .data import UltraMNIST
from .errors import KitError
from .beyond import BEYOND, reads_full_resolution, rows_of
from .config import resolve_device
from .files import check_writable_folder
from .latency import device_name
from .orderings import RowResult
from .paper import PAPER, Row, Table
from .paperplans import paper_plans
from .profiles import Profile, get_profile, profile_dir, runs_root
from .report import write_report
from .scaling import panda_root_present, row_config, scaled_sizes
from .store import is_finished, run_trunk, train_in_store

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_table(name: str, profile: Profile | str | None = None, seeds: int | None = None, *,
              rows: tuple[str, ...] | None = None, alternatives: bool | None = None,
              progress: bool = True) -> list[RowResult]:
    """Every row of paper table `name` (or the rows with the ids `rows`), each with seeds 0..seeds-1,
    trained or read back from the profile's store; then the table's rows not in the paper (GD's
    alternatives, beyond.py) when `alternatives` is True, or, when it is None, when the profile
    trains them (``Profile.beyond``). Prints which run is which as it goes."""
    table = PAPER[name]
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    seeds = seeds or profile.seeds
    chosen = rows_to_run(name, profile, rows, alternatives)
    folder = profile_dir(profile)
    paper_plans([table.settings(row) for row in chosen], folder / "plans.json")  # the missing ones, in parallel
    results, total = [], len(chosen) * seeds
    for i, row in enumerate(chosen):
        config, plan, scale = row_config(table, row, profile)
        result = RowResult(table, row, config, plan, scale,
                           test_images=len(UltraMNIST(config.data, "test", cache=False)))
        for seed in range(seeds):
            run = row_config(table, row, profile, seed)[0] if row.init_from else dataclasses.replace(config, seed=seed)
            if row.init_from:  # Appendix C: that row's run first, its backbone this run's init
                run_trunk(row_config(table, table.row(row.init_from), profile, seed)[0], folder, progress=progress)
            state = "from the store" if is_finished(run, folder) else "training"
            k = f", k {run.schedule()[0]}" if run.schedule()[0] else ""
            if progress:
                print(f"[{i * seeds + seed + 1}/{total}] {table.name}: {row.label} "
                      f"{row.settings.get('memory_budget', '')}, seed {seed} (batch {run.batch_size}{k}): {state}",
                      flush=True)
            result.runs.append(train_in_store(run, folder, progress=progress))
        results.append(result)
    return results


def rows_to_run(name: str, profile: Profile, rows: tuple[str, ...] | None = None,
                alternatives: bool | None = None) -> list[Row]:
    """The rows run_table trains: those with the ids `rows`, else the paper's rows and, when
    `alternatives` says so (None: when the profile does), the rows not in the paper after them
    (the full-resolution row only where PANDA is)."""
    table = PAPER[name]
    every = {row.id: row for row in rows_of(table, tuple(BEYOND))}
    if rows:
        return [every[r] for r in rows]
    chosen = rows_of(table, profile.beyond if alternatives is None else tuple(BEYOND) if alternatives else ())
    return [row for row in chosen if (panda_root_present() or not reads_full_resolution(row.settings))
            and streaming_applies(table, row, profile)]


def streaming_applies(table: Table, row: Row, profile: Profile) -> bool:
    """False, said in one line, for a Streaming SGD row whose image at `profile` is smaller than the
    smallest usable tile: such a row is not trained rather than trained as something else."""
    settings = table.settings(row)
    if settings["method"] != "streaming":
        return True
    side = (scaled_sizes(profile)[settings["image_size"]] if table.dataset == "panda"
            else profile.for_backbone(settings["backbone"]).image_size)
    try:
        streaming.tile_for(settings["backbone"], side)
    except KitError as e:
        print(f"{table.name} {row.label}, {settings['image_size']} px in the paper, {side} px at the "
              f"{profile.name} profile: not trained, {e}")
        return False
    return True


# --- every notebook, headless -----------------------------------------------------------------------

def numbered_notebooks(folder: Path = NOTEBOOKS, only: list[str] | None = None) -> list[Path]:
    """``NN_*.ipynb`` in `folder`, in order; `only`: the numbers to keep ("05", "06")."""
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = sorted(set(only) - {p.name[:2] for p in paths})
        if unknown:
            raise KitError(f"no notebook numbered {', '.join(unknown)} in {folder}; allowed: "
                           f"{', '.join(p.name[:2] for p in paths)}")
        paths = [p for p in paths if p.name[:2] in only]
    if not paths:
        raise KitError(f"no numbered notebooks (NN_*.ipynb) in {folder}")
    return paths


def skip_notebooks(paths: list[Path], profile: Profile, progress: bool = True) -> list[Path]:
    """`paths` less the notebooks the profile leaves out (Profile.skip_notebooks), each said in one line."""
    kept = []
    for path in paths:
        why = profile.skip_notebooks.get(path.name[:2])
        if why is None:
            kept.append(path)
        elif progress:
            print(f"== {path.name}: not run at profile {profile.name!r}: {why}", flush=True)
    if not kept:
        raise KitError(f"every notebook asked for is left out at profile {profile.name!r}; allowed: notebooks "
                       f"other than {', '.join(sorted(profile.skip_notebooks))}")
    return kept


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the duration (the notebooks' kernels inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def reproduce(profile: str | None = None, seeds: int | None = None, out: str | Path | None = None, *,
              folder: Path = NOTEBOOKS, only: list[str] | None = None, alternatives: bool | None = None,
              progress: bool = True) -> Path:
    """Run the numbered notebooks headless into ``<out>/<profile>/`` (out: $KIT_RUNS or runs/) and
    write REPORT.md there. Each notebook gets the parameters it declares among profile, seeds,
    alternatives (unless None: the profile's choice) and interactive (False); every one must declare
    `profile`. Returns the report's path."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from .notebook import run_notebook
    profile = get_profile(profile)
    if profile.name in ("paper", "gpu") and not torch.cuda.is_available():
        raise KitError(f"profile {profile.name!r} (512 px) needs a CUDA GPU; allowed here: smoke, binder, cpu "
                       "(`reproduce --profile gpu --estimate` says how long the gpu profile takes)")
    seeds = profile.seeds if seeds is None else seeds
    if seeds < 1:
        raise KitError(f"seeds {seeds} must be at least 1")
    root = Path(out).resolve() if out else runs_root().resolve()
    target = root / profile.name
    paths = skip_notebooks(numbered_notebooks(folder, only), profile, progress)
    check_writable_folder(target)  # before the first notebook: --out or $KIT_RUNS may be a file, or read-only
    given = {"profile": profile.name, "seeds": seeds, "interactive": False}
    if alternatives is not None:
        given["alternatives"] = alternatives
    if profile.name == "gpu" and progress:  # what the hour should hold, before anything trains
        from .gpuestimate import estimate, format_estimate
        from .gpureport import latest_check
        print(format_estimate(estimate(profile, latest_check())), flush=True)
    timings = []
    start = time.perf_counter()
    with _environment(KIT_RUNS=str(root), KIT_PROFILE=profile.name):
        for i, path in enumerate(paths, 1):
            declared = papermill.inspect_notebook(str(path))
            if "profile" not in declared:
                raise KitError(f"{path.name} declares no `profile` parameter; every numbered notebook must")
            parameters = {k: v for k, v in given.items() if k in declared}
            executed = target / "notebooks" / path.name
            if progress:
                print(f"== notebook {i}/{len(paths)}: {path.name} "
                      f"({', '.join(f'{k}={v!r}' for k, v in parameters.items())})", flush=True)
            began = time.perf_counter()
            try:
                run_notebook(path, executed, parameters, cwd=folder, progress=progress,
                             echo=sys.stdout if progress else None)
            except PapermillExecutionError as e:
                raise KitError(f"{path.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}; the partial "
                               f"notebook is {executed}; rerun to resume (finished runs are kept)") from e
            timings.append((path.name, time.perf_counter() - began))
    device = device_name(resolve_device("auto"))
    title = (f"Profile **{profile.name}**: {profile.description}. Seeds: {seeds}. Device: {device}. "
             f"Made by `python -m patchgd_kit reproduce` on {datetime.date.today()} in "
             f"{(time.perf_counter() - start) / 60:.1f} min (runs already in the store are read back, not timed): "
             + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in timings) + "."
             + "".join(f" Notebook {n} not run: {why}." for n, why in sorted(profile.skip_notebooks.items())) + "\n")
    report = write_report(target, title)
    if progress:
        print(f"report: {report}", flush=True)
    return report
