"""The channels of a prepared data prefix in S3 (what `train` and `tune` read before building their request)."""

from __future__ import annotations

from typing import Any

from launcher.aws import list_prefixes, parse_s3_uri


def existing_channels(s3: Any, prefix: str) -> set[str]:
    """Sub-folders of the channels prefix (optional channels are used only when present)."""
    return list_prefixes(s3, parse_s3_uri(prefix).as_prefix())
