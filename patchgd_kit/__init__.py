"""PatchGD Kit: Patch Gradient Descent (Gupta et al. 2023) to learn, reproduce and explore.

The main API, importable from the package (each name is loaded on first use, so that the command
line starts without importing torch): ``build_model``, ``fill_z``, ``train_batch`` (Algorithm 1),
``TrainConfig``, ``train``, ``ensure_dataset`` and ``plan`` (the memory planner).
"""
import importlib

_API = {"build_model": "methods", "fill_z": "patchgd", "train_batch": "patchgd", "TrainConfig": "config",
        "train": "training", "ensure_dataset": "data", "plan": "memory"}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
