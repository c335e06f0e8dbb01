"""A run's folder: claiming it for a config, the checkpoints that save and restore a run, and the
saved result of a finished one.

A run folder holds `.patchgd-run` (the marker, written first: the kit's version and the config's hash),
`config.json`, `metrics.jsonl` (one line per finished epoch), `checkpoint.pt` (model, optimizer,
scheduler, scaler, RNG states and the history; written atomically) with the one before it as
`checkpoint.prev.pt`, and, once finished, `summary.json`. The kit writes only into an empty folder or
one its marker says is the kit's: a folder of someone else's files is refused, whatever it holds.
Another config in a folder that holds trained epochs is refused (unless restarting); in one that holds
none it replaces them. A checkpoint that cannot be read, for any reason, falls back to the one before it.
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from ..data.ultramnist import kit_version
from ..errors import KitError
from ..files import atomic_write, content_hash, save_torch, write_json
from .config import TrainConfig


CHECKPOINT, PREVIOUS, MARKER, LOCK = "checkpoint.pt", "checkpoint.prev.pt", ".patchgd-run", ".lock"
RUN_FILES = ("config.json", "plan.json", "metrics.jsonl", CHECKPOINT, PREVIOUS, "summary.json")
TRAINED_FILES = (CHECKPOINT, PREVIOUS, "summary.json")  # a folder with one of these holds trained epochs


def note(message: str) -> None:
    """A line on stderr saying what the kit did on its own (replaced a folder, fell back)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def write_metrics(path: Path, history: list[dict]) -> None:
    lines = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(path, lambda tmp: Path(tmp).write_text(lines))


def rng_state(sampler: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "sampler": sampler.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, sampler: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    sampler.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_conflict(out: Path, config: TrainConfig) -> tuple[str, str] | None:
    """(what is wrong, what to do) when `out` holds a config.json that is not this config's."""
    path = out / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # not JSON, not text, or nested past Python's limit
        saved = exc
    if not isinstance(saved, dict):
        return (f"{path} is unreadable ({saved if isinstance(saved, Exception) else 'not a JSON object'})",
                "delete it to resume from the checkpoint (whose own config is checked), or rerun with "
                "--restart to begin the run again")
    key = config.key()
    if saved == key:
        return None
    differ = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
    return (f"run folder {out} holds a run with a different config (differs in: {', '.join(differ)})",
            "use another --out, rerun with --restart to begin the run again, or delete that folder")


def _has_marker(out: Path) -> bool:
    """Whether `out` holds the marker the kit writes first into a run folder; a file of that name that
    the kit did not write is refused."""
    path = out / MARKER
    try:
        marker = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError, RecursionError):
        marker = None
    if not (isinstance(marker, dict) and marker.get("kit") == "patchgd-kit"):
        raise KitError(f"{path} is not a marker the kit wrote; nothing in {out} was changed: use another --out")
    return True


def _older_kits_run(out: Path, names: list[str], config: TrainConfig) -> bool:
    """A run folder written before markers: run files only, its config.json this very config's."""
    if not set(names) <= set(RUN_FILES):
        return False
    try:
        return json.loads((out / "config.json").read_text()) == config.key()
    except (OSError, ValueError, RecursionError):
        return False


def _foreign_files(out: Path, config: TrainConfig) -> list[str]:
    """The files that make `out` someone else's folder: none when it is absent, empty, marked as the
    kit's, or an older kit's run of this config. A lock, or the temporary file of a marker being
    written when the process was killed, is the kit's own."""
    if not out.is_dir() or _has_marker(out):
        return []
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK and not p.name.startswith(f".{MARKER}."))
    return [] if _older_kits_run(out, names, config) else names


def check_run_folder(out: Path, config: TrainConfig) -> None:
    """Refuse `out` when it holds files the kit did not write (no marker): nothing there is read or changed."""
    foreign = _foreign_files(out, config)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise KitError(f"{out} holds files that are not a kit run's ({shown}; no {MARKER} marker) and is left as "
                       "it is; allowed: --out a new or empty folder, or one the kit made")


def claim_run_folder(out: Path, config: TrainConfig, restart: bool) -> None:
    """Make the locked folder `out` this config's run folder, its marker written first. Someone
    else's folder is refused (check_run_folder); another run's trained epochs too, unless `restart`;
    a folder left by a run that trained no epoch is replaced."""
    check_run_folder(out, config)
    if not _has_marker(out) and any((out / name).exists() for name in RUN_FILES):
        note(f"{out} is a run folder of an older kit (no {MARKER} marker) with this config: marked as the kit's")
    conflict = None if restart else _config_conflict(out, config)
    if conflict and any((out / name).exists() for name in TRAINED_FILES):
        raise KitError("; ".join(conflict))
    if restart and any((out / name).exists() for name in RUN_FILES):
        note(f"restart: removed the run in {out}, to begin it again")
    elif conflict:
        note(f"{conflict[0]}, but that run trained no epoch: replaced")
    if restart or conflict:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    write_json(out / MARKER, {"kit": "patchgd-kit", "kit_version": kit_version(),
                              "config_hash": content_hash(config.key())})
    write_json(out / "config.json", config.key())


def finished_result(out: Path, config: TrainConfig) -> dict | None:
    """The saved result of this config's finished run in `out`, or None. A damaged summary.json
    counts as absent: the finished run's checkpoint writes it again."""
    try:
        result = json.loads((out / "summary.json").read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError, RecursionError):
        return None
    return result if isinstance(result, dict) and result.get("config") == config.key() else None


def _read_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a damaged file fails in many ways: EOFError, RuntimeError, UnpicklingError,
        # OSError (a file truncated short: EINVAL), PermissionError; each falls back to the one before
        raise ValueError(f"{path} is unreadable ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or not {"model", "history", "config"} <= state.keys():
        raise ValueError(f"{path} is not a checkpoint of this kit")
    return state


def load_checkpoint(run_dir: Path, device: torch.device) -> dict | None:
    """The newest good checkpoint of a run folder (None when it has none): checkpoint.pt, else the
    one kept before it, with a note. When every one is damaged, a KitError says what to do."""
    damaged = []
    for path in (run_dir / CHECKPOINT, run_dir / PREVIOUS):
        if not path.exists():
            continue
        try:
            state = _read_checkpoint(path, device)
        except ValueError as exc:
            damaged.append(str(exc))
            continue
        if damaged:
            note(f"{damaged[0]}; resuming from the checkpoint before it, {path.name}")
        return state
    if damaged:
        raise KitError(f"{'; '.join(damaged)}, and no earlier checkpoint is kept: begin the run again "
                       f"(`train` with --restart) or delete {run_dir}")
    return None


def save_checkpoint(out: Path, state: dict) -> None:
    """Write checkpoint.pt, keeping the one before it as checkpoint.prev.pt to fall back on."""
    current = out / CHECKPOINT
    if current.exists():
        os.replace(current, out / PREVIOUS)
    save_torch(current, state)


def save_finished(out: Path, result: dict, model_state: dict) -> None:
    """summary.json, then a checkpoint that keeps the weights, history and predictions only: a
    finished run is read back, never resumed, so the optimizer's moments (two thirds of a ResNet50
    checkpoint) go. After the summary, so a kill in between loses nothing."""
    write_json(out / "summary.json", result)
    save_torch(out / CHECKPOINT, {"model": model_state, "history": result["history"],
                                  "predictions": result["test_predictions"], "config": result["config"]})
    (out / PREVIOUS).unlink(missing_ok=True)
