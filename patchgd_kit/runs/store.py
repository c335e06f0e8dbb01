"""The results store: a run lives in ``runs/<profile>/store/<method>-<backbone>-<hash>/``, the hash being
that of ``TrainConfig.key()``. Two notebooks asking for the same run (Figure 2 and Table 1 share four;
Table 5/6's ε = 1 is Table 2's PatchGD 16 GB) get the same folder, so it is trained once; train()
resumes a half-finished run from its checkpoint and reads a finished one back. The teaching runs of
notebooks 03 and 04 are Table 1's and 2's 16 GB rows unless the reader changes a value, so they
live here too.

Appendix C's init (paper.Row.init_from): a finished run's backbone, its classifier dropped, written
as a weights file beside the digits-pretrained ones, for the run it initialises.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.models import backbone_of
from ..errors import KitError
from ..files import content_hash, save_torch
from .config import TrainConfig
from .runfolder import load_checkpoint
from .training import train


def run_key(config: TrainConfig) -> str:
    """A stable hash of everything that defines the run's result."""
    return content_hash(config.key())


def store_dir(profile_folder: Path) -> Path:
    return Path(profile_folder) / "store"


def run_folder(config: TrainConfig, profile_folder: Path) -> Path:
    return store_dir(profile_folder) / f"{config.method}-{config.backbone}-{run_key(config)}"


def is_finished(config: TrainConfig, profile_folder: Path) -> bool:
    return (run_folder(config, profile_folder) / "summary.json").exists()


def train_in_store(config: TrainConfig, profile_folder: Path, progress: bool = True) -> dict:
    """train() into the config's store folder: trains, resumes, or reads a finished run back."""
    return train(config, run_folder(config, profile_folder), progress=progress)


def run_trunk_path(config: TrainConfig, profile_folder: Path) -> Path:
    """Where the trunk of `config`'s run is written as a weights file (run_trunk)."""
    return Path(profile_folder) / "weights" / f"{run_folder(config, profile_folder).name}-trunk.pt"


def run_trunk(config: TrainConfig, profile_folder: Path, progress: bool = True) -> Path:
    """The backbone of `config`'s run as a weights file for `--weights` (Appendix C's init): the run
    is trained first or read back from the store, its classifier dropped; written once."""
    out = run_trunk_path(config, profile_folder)
    if out.is_file():
        return out
    result = train_in_store(config, profile_folder, progress=progress)
    state = load_checkpoint(run_folder(config, profile_folder), torch.device("cpu"))
    if state is None:
        raise KitError(f"{run_folder(config, profile_folder)} holds no checkpoint to take a trunk from; rerun it")
    prefix = backbone_of(config.backbone).classifier_prefix
    trunk = {k: v for k, v in state["model"].items() if not k.startswith(prefix)}
    card = {"what": f"the trunk of a finished {config.method} run (Appendix C's init)",
            "source_run": run_folder(config, profile_folder).name, "source_accuracy_pct": result["final"]["accuracy"]}
    save_torch(out, {"backbone": config.backbone, "state_dict": trunk, "card": card})
    return out
