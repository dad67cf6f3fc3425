"""Environment variables for the containers that hold secrets: never stored, printed, logged or put on a command line.

`--env NAME=VALUE` whose NAME looks like a secret (`is_secret`), and every `--env NAME` without a value, are kept by
name only (`Submission.env_from_caller` in plan.json); their values are read from the caller's environment when the
launcher submits or runs the jobs (a value given on the command line serves that one invocation). Dry-run output
shows them redacted; `docker run` gets `-e NAME` with the value in the docker client's environment, not its argv.
Pure: the caller passes its environment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from launcher.errors import ArgumentError

# What SageMaker accepts as an Environment key (and a shell as a variable name), up to 256 characters.
ENV_NAME_PATTERN = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,255}")

# Names that usually carry credentials (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, GITHUB_TOKEN, DB_PASSWORD,
# API_KEY, ...). A false positive only means the value is read from your environment instead of stored.
SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|KEY|CREDENTIAL|PRIVATE|AUTH|COOKIE|SIGNATURE|SESSION",
    re.IGNORECASE,
)
REDACTED = "<redacted>"


def is_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


@dataclass(frozen=True)
class EnvOptions:
    """`--env` options split: `plain` values (stored in plan.json), names whose value comes from the caller's
    environment (`from_caller`, stored as names), and secret values given on this command line (`given`, used
    for this invocation only)."""

    plain: dict[str, str] = field(default_factory=dict)
    from_caller: tuple[str, ...] = ()
    given: dict[str, str] = field(default_factory=dict)


def parse_env_options(pairs: Sequence[str]) -> EnvOptions:
    """`NAME=VALUE` and `NAME` strings -> EnvOptions. ArgumentError (exit 2) for a name the API would reject."""
    plain: dict[str, str] = {}
    names: list[str] = []
    given: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not ENV_NAME_PATTERN.fullmatch(name):
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise ArgumentError(
                f"--env takes NAME=VALUE or NAME (value from your environment); {shown!r} is not a variable name "
                "(letters, digits, '_', not starting with a digit)"
            )
        if sep and not is_secret(name):
            plain[name] = value
            continue
        if name not in names:
            names.append(name)
        plain.pop(name, None)
        if sep:
            given[name] = value
    return EnvOptions(plain=plain, from_caller=tuple(names), given=given)


def resolve(
    names: Iterable[str], given: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The values of `names`: from this command line (`given`), else the caller's environment. Returns the
    values and the names that have none."""
    values: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        if name in given:
            values[name] = given[name]
        elif name in environ:
            values[name] = environ[name]
        else:
            missing.append(name)
    return values, missing


def missing_message(missing: Sequence[str], when: str) -> str:
    return (
        f"{', '.join(missing)} must come from your environment ({when} reads secrets there, plan.json holds only "
        f"their names): export {missing[0]}=... and run it again"
    )


def redact_env(env: Mapping[str, str], secret_names: Iterable[str]) -> dict[str, str]:
    secret = set(secret_names)
    return {k: (REDACTED if k in secret or is_secret(k) else v) for k, v in env.items()}


def redact_request(request: Mapping[str, Any], secret_names: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of an API request whose Environment values of secrets are replaced by a marker (dry-run prints)."""
    names = list(secret_names)
    out = dict(request)
    if isinstance(out.get("Environment"), Mapping):
        out["Environment"] = redact_env(out["Environment"], names)
    for key, value in out.items():  # nested requests (deploy's CreateModel ...), containers
        if isinstance(value, Mapping) and key != "Environment":
            out[key] = redact_request(value, names)
        elif isinstance(value, list):
            out[key] = [redact_request(v, names) if isinstance(v, Mapping) else v for v in value]
    return out
