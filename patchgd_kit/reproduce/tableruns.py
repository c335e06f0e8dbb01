"""Every row of a paper table as runs at a profile's scale.

``run_table("table1", profile, seeds)``: every row of a paper table (``paper.numbers.PAPER``) as a run at
the profile's scale (``scaling.prepare`` once, then ``scaling.row_config`` per seed), through the
results store (``store``). The batch (and k) is the memory planner's answer at the paper's scale
(512 px, patch 256, that backbone, that budget) times the profile's batch factor, capped by its
training set: a scaled run keeps the paper's memory regime, not its pixels. Every notebook headless is ``reproduce.notebooks``.
"""
from __future__ import annotations

from ..core import streaming
from ..errors import KitError
from ..paper.beyond import BEYOND, reads_full_resolution, rows_of
from ..paper.numbers import PAPER, Row, Table
from ..report.orderings import RowResult
from ..runs.profiles import Profile, get_profile, profile_dir
from ..runs.scaling import panda_root_present, prepare, row_config, scaled_sizes, source_config
from ..runs.store import is_finished, run_trunk, train_in_store


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
    inputs = prepare(table, chosen, profile)  # plans, datasets and trunks: made here, once
    results, total = [], len(chosen) * seeds
    for i, row in enumerate(chosen):
        runs = [row_config(table, row, profile, inputs[row.id], seed) for seed in range(seeds)]
        result = RowResult(table, row, *runs[0], test_images=inputs[row.id].test_images)
        for seed, (run, _, _) in enumerate(runs):
            if row.init_from:  # Appendix C: that row's run first, its backbone this run's init
                run_trunk(source_config(table, row, profile, inputs[row.id], seed), folder, progress=progress)
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
