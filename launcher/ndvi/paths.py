"""Every local path the launcher builds from data (item ids, job names, manifest keys) goes through `inside`."""

from __future__ import annotations

import os
from pathlib import Path

from launcher.errors import PlanError


def inside(root: str | os.PathLike[str], *parts: str) -> Path:
    """`root/parts...`, resolved (symlinks and `..` followed), refused with PlanError unless it stays under the
    resolved root. Absolute parts, `..` and symlinks leading out are all caught by the final comparison."""
    base = Path(root).resolve()
    for part in parts:
        if "\x00" in part:
            raise PlanError(f"refusing a path with a NUL byte under {base}")
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        shown = "/".join(parts)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise PlanError(f"refusing to write or read {shown!r}: it leads outside {base}")
    return target
