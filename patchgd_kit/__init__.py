"""PatchGD Kit: Patch Gradient Descent (Gupta et al. 2023) to learn, reproduce and explore.

The main API, importable from the package (each name is loaded on first use, so that the command
line starts without importing torch): ``build_model``, ``fill_z``, ``train_batch`` (Algorithm 1),
``TrainConfig``, ``train``, ``ensure_dataset`` and ``plan`` (the memory planner).

The package is built in floors, each a folder that imports only from the floors below it (tests/test_layers.py):
the root (``errors``, ``files``, ``progress``; ``cli`` and ``__main__`` are the doors), ``data``, ``paper``,
``core``, ``planner``, ``runs``, ``report``, ``reproduce``, ``gpu`` and ``face``.
"""
import importlib

_API = {"build_model": "core.methods", "fill_z": "core.patchgd", "train_batch": "core.patchgd",
        "TrainConfig": "runs.config", "train": "runs.training", "ensure_dataset": "data.ultramnist",
        "plan": "planner.budget"}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
