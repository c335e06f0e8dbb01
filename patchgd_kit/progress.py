"""Progress bars that honour ``TQDM_DISABLE``.

tqdm reads its ``TQDM_*`` environment variables as defaults only: a call that passes ``disable=``
overrides ``TQDM_DISABLE=1``, and a notebook run headless then keeps a widget bar ("0%| | 0/5") in its
saved outputs. Every bar of the kit asks ``bar_disabled`` instead of passing ``not progress``.
"""
from __future__ import annotations

import os


def bar_disabled(progress: bool) -> bool:
    """True when the caller asked for no bar, or the environment sets TQDM_DISABLE to a true value."""
    return not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
