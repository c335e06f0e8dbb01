"""The results store: a run lives in ``runs/<profile>/store/<method>-<backbone>-<hash>/``, the hash being
that of ``TrainConfig.key()``. Two notebooks asking for the same run (Figure 2 and Table 1 share four;
Table 5/6's ε = 1 is Table 2's PatchGD 16 GB) get the same folder, so it is trained once; train()
resumes a half-finished run from its checkpoint and reads a finished one back. The teaching runs of
notebooks 03 and 04 are Table 1's and 2's 16 GB rows unless the reader changes a value, so they
live here too.
"""
from __future__ import annotations

from pathlib import Path

from .config import TrainConfig
from .files import content_hash
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
