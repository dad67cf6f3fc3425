"""The launcher's MODEL commands (train, tune, deploy, predict).

The serving work fills this module: `register` adds its commands to the launcher's click group. Until then it
adds nothing, so `launcher --help` lists only the NDVI commands.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the model commands to `group` (none yet)."""
    return None
