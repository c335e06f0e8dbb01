"""Every numbered notebook headless: ``reproduce(profile, seeds, out)`` runs ``notebooks/NN_*.ipynb`` with
papermill (``run_notebook``: parameters checked), in order, then writes ``REPORT.md``.
`python -m patchgd_kit reproduce` and `make reproduce` call it. Interrupted and rerun, it redoes only
what is missing: finished runs come from the store, a half-finished one resumes from its last epoch.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import torch

from ..errors import KitError
from ..files import check_writable_folder
from ..report.latency import device_name
from ..report.tables import write_report
from ..runs.config import resolve_device
from ..runs.profiles import Profile, get_profile, runs_root

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def run_notebook(path, out, parameters: dict | None = None, *, cwd=None, kernel: str = "python3",
                 progress: bool = False, echo: TextIO | None = None) -> Path:
    """Execute the notebook at `path` with papermill into `out` and return `out`.

    papermill only warns about a parameter the notebook does not declare and runs on without it; here
    that is a KitError naming the allowed parameters, raised before anything runs. The kernel is
    named explicitly and the working directory is the notebook's folder unless `cwd` says otherwise.
    A failing cell raises papermill's PapermillExecutionError; `out` then holds the partial run.
    `progress` shows papermill's bar of cells; `echo` (such as sys.stdout) receives what the cells
    print, as they print it: which run is training, one line per epoch.
    """
    import papermill

    path, out = Path(path), Path(out)
    parameters = parameters or {}
    declared = papermill.inspect_notebook(str(path))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise KitError(f"{path.name} has no parameter(s) {', '.join(unknown)}; allowed: {', '.join(declared)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name=kernel,
                               cwd=str(cwd or path.parent), progress_bar=progress,
                               stdout_file=echo, stderr_file=echo)
    return out


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
def environment(**values: str):
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
              progress: bool = True, preface: str | None = None) -> Path:
    """Run the numbered notebooks headless into ``<out>/<profile>/`` (out: $KIT_RUNS or runs/) and
    write REPORT.md there. Each notebook gets the parameters it declares among profile, seeds,
    alternatives (unless None: the profile's choice) and interactive (False); every one must declare
    `profile`. `preface` is printed once the arguments are checked, before the first notebook. Returns
    the report's path."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

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
    if preface and progress:  # the CLI's: for the gpu profile, what the hour should hold, before anything trains
        print(preface, flush=True)
    timings = []
    start = time.perf_counter()
    with environment(KIT_RUNS=str(root), KIT_PROFILE=profile.name):
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
