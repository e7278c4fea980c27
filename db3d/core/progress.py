"""Progress bars on long work; off in sweep workers (DB3D_QUIET=1 or TQDM_DISABLE=1, read per bar)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def bar(**kwargs) -> tqdm:
    quiet = os.environ.get("DB3D_QUIET") == "1" or os.environ.get("TQDM_DISABLE") == "1"
    return tqdm(leave=False, disable=quiet, **kwargs)
