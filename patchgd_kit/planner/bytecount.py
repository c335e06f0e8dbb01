"""Counting the bytes of live tensor storages while code runs, on fake tensors (shapes and dtypes, no
data): the memory planner's measuring instrument. It uses private PyTorch APIs, imported here only;
when they move, ``PRIVATE_API_ERROR`` says so and the planner falls back to a rougher estimate.
"""
from __future__ import annotations

import functools
import weakref

import torch

BLOCK_BYTES = 512                 # the CUDA caching allocator rounds every allocation up to this

try:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    PRIVATE_API_ERROR = None
except ImportError as exc:  # a PyTorch that moved them: every estimate takes the fallback
    PRIVATE_API_ERROR = exc
    TorchDispatchMode = object


@functools.lru_cache(maxsize=None)
def fake_mode() -> FakeTensorMode:
    if PRIVATE_API_ERROR is not None:
        raise PRIVATE_API_ERROR
    return FakeTensorMode()  # one mode for all estimates: fake tensors stay bound to their mode


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages and their peak, counting the tensors given at the start and
    every tensor an operator returns while active. Views share a storage, which PyTorch keeps as
    one Python object for its lifetime: its id is its key, and it leaves the count when freed.
    (PyTorch's MemTracker counts the same way but costs about 7x more per operator, for its
    per-module breakdown, and refuses a module called twice at the top level, as fill_z does.)"""

    def __init__(self, *existing: torch.Tensor):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0
        for t in existing:
            self._count(t)

    def _count(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = id(storage), -(-storage.nbytes() // BLOCK_BYTES) * BLOCK_BYTES
        old = self.live.get(key)
        if old is None:
            weakref.finalize(storage, self._free, key)
        self.live[key] = size  # a storage resized in place counts at its new size
        self.now += size - (old or 0)
        self.peak = max(self.peak, self.now)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._count(t)
        return out
