"""A user's training script for ``launcher train --entry-point`` (the training image's script mode,
docs/training-image.md): the entry point checked against its source folder, and the folder packed as
``sourcedir.tar.gz`` the way the SageMaker SDK packs it (the image unpacks it and runs the script).

Pure but for reading the source folder: the CLI uploads the bytes and sets the hyperparameters.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import ArgumentError
from segmentation_trainer.contract import ContractError
from segmentation_trainer.script_mode import check_program
from segmentation_trainer.toolkit import PROGRAM_HP, SUBMIT_DIR_HP

MAX_SOURCE_BYTES = 100 * 2**20  # the files of the source folder, before compression
MAX_SOURCE_FILES = 10_000
SOURCE_ARCHIVE = "sourcedir.tar.gz"
SCRIPT_HYPERPARAMETERS = (PROGRAM_HP, SUBMIT_DIR_HP)
_METRIC_NAME = re.compile(r".{1,255}", re.S)


@dataclass(frozen=True)
class Script:
    source_dir: Path  # resolved
    program: str  # the entry point's path inside source_dir, '/'-separated (sagemaker_program)


def resolve_script(entry_point: str, source_dir: str | None = None) -> Script:
    """The script and its folder. Without ``source_dir`` the folder is the script's own. With it, a relative
    ``entry_point`` is a path inside ``source_dir`` (as for the SDK's ``Estimator(entry_point, source_dir)``) and an
    absolute one must lie inside it. ArgumentError (exit 2) for a missing file or a path leaving the folder."""
    if not entry_point:
        raise ArgumentError(
            "--entry-point is empty: name the training script, e.g. --entry-point src/train.py"
        )
    if source_dir is None:
        path = Path(entry_point)
        if not path.is_file():
            raise ArgumentError(f"--entry-point {entry_point}: no such file")
        path = path.resolve()
        folder = path.parent
    else:
        folder = Path(source_dir)
        if not folder.is_dir():
            raise ArgumentError(f"--source-dir {source_dir}: no such folder")
        folder = folder.resolve()
        given = Path(entry_point)
        if not given.is_absolute():
            _check_program(entry_point)  # '..' and odd names refused before they are joined to a path
        path = (given if given.is_absolute() else folder / given).resolve()
        if not path.is_relative_to(folder):
            raise ArgumentError(
                f"--entry-point {entry_point} is outside --source-dir {source_dir}: the script must be inside the "
                "code that is uploaded"
            )
        if not path.is_file():
            raise ArgumentError(f"--entry-point {entry_point}: no such file in --source-dir {source_dir}")
    return Script(folder, _check_program(path.relative_to(folder).as_posix()))


def _check_program(name: str) -> str:
    try:
        return check_program(name)
    except ContractError as exc:
        raise ArgumentError(f"--entry-point: {exc}") from None


def pack(script: Script, max_bytes: int = MAX_SOURCE_BYTES, max_files: int = MAX_SOURCE_FILES) -> bytes:
    """``sourcedir.tar.gz`` of the source folder: every file under it (sorted, owner and times zeroed: the same
    folder gives the same bytes). A symbolic link is packed as the file it points to when that stays inside the
    folder, and refused otherwise (ArgumentError), as are folders over ``max_bytes`` or ``max_files``."""
    root = script.source_dir
    members: list[tuple[str, Path]] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                raise ArgumentError(
                    f"--source-dir holds a link to a folder ({(here / name).relative_to(root)}): links to folders "
                    "are not packed; copy the folder in"
                )
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            target = path.resolve()
            if path.is_symlink() and not target.is_relative_to(root):
                raise ArgumentError(
                    f"--source-dir: {path.relative_to(root)} links outside the folder ({target}): it is not "
                    "uploaded; copy the file in or remove the link"
                )
            if not target.is_file():
                continue  # sockets, fifos, dangling links: nothing to pack
            total += target.stat().st_size
            members.append((path.relative_to(root).as_posix(), target))
            if total > max_bytes or len(members) > max_files:
                raise ArgumentError(
                    f"--source-dir {root} holds more than {max_bytes // 2**20} MiB or {max_files} files: give the "
                    "folder of the code only (data goes in channels)"
                )
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, target in members:
            info = tarfile.TarInfo(name)
            info.size = target.stat().st_size
            info.mode = 0o755 if os.access(target, os.X_OK) else 0o644
            with target.open("rb") as f:
                tar.addfile(info, f)
    return out.getvalue()


def script_hyperparameters(script: Script, submit_directory: str) -> dict[str, str]:
    """``sagemaker_program`` and ``sagemaker_submit_directory``, JSON-encoded as the SDK writes them (the image's
    toolkit decodes ``sagemaker_*`` values)."""
    return {PROGRAM_HP: json.dumps(script.program), SUBMIT_DIR_HP: json.dumps(submit_directory)}


def parse_metric(text: str) -> dict[str, str]:
    """``NAME=REGEX`` -> a MetricDefinition; the regex must compile and have one group (the value)."""
    name, sep, regex = text.partition("=")
    name = name.strip()
    if not sep or not name or not regex:
        raise ArgumentError(
            f"--metric {text!r} is not NAME=REGEX (e.g. --metric 'val:loss=val_loss=([0-9.]+)')"
        )
    if not _METRIC_NAME.fullmatch(name) or len(regex) > 500:
        raise ArgumentError(
            f"--metric {name[:40]!r}: the name takes 1-255 characters and the regex at most 500"
        )
    try:
        groups = re.compile(regex).groups
    except re.error as exc:
        raise ArgumentError(f"--metric {name}: the regex does not compile ({exc})") from None
    if groups < 1:
        raise ArgumentError(
            f"--metric {name}: the regex needs a group capturing the value, e.g. loss=([0-9.]+)"
        )
    return {"Name": name, "Regex": regex}
