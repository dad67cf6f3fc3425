"""Pure rules for untrusted input: which asset hrefs may be read (and the GDAL path built from them), and the
redaction of secrets from everything the worker logs, reports or stores. No I/O.

Items can come from any STAC API, a user's bucket or a colleague's manifest, so an href is data, never a GDAL
dataset name: only local ``.tif``/``.tiff`` files (outside ``/proc``, ``/sys``, ``/dev``), ``http(s)://`` URLs and
``s3://`` URLs are accepted, and the ``/vsicurl/`` / ``/vsis3/`` path is built here from a validated URL. Anything
else (inline XML, ``/vsi...`` given by the item, ``GTIFF_DIR:`` / ``NETCDF:`` / ``VRT:`` driver prefixes,
``ftp://``, ``file://host/``...) raises :class:`HrefError` with the reason.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from urllib.parse import SplitResult, unquote, urlsplit

#: Longest href accepted (a presigned URL is ~1.5 KB).
MAX_HREF_LENGTH = 4096
#: Local rasters must be GeoTIFFs: the same extensions GDAL is allowed to fetch over HTTP.
LOCAL_EXTENSIONS = (".tif", ".tiff")
#: Pseudo file systems that are never rasters (and leak process state: /proc/self/environ).
FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class HrefError(ValueError):
    """An asset href the worker refuses to read; the message says why."""


def shown(text: str, limit: int = 120) -> str:
    """An untrusted string made safe to print in one line: secrets redacted, control characters escaped,
    shortened."""
    text = redact(str(text))
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_href(href: object) -> str:
    """The kind of a (resolved) asset href: ``'local'``, ``'http'`` or ``'s3'``; :class:`HrefError` otherwise."""
    if not isinstance(href, str) or not href:
        raise HrefError("the href is empty or not a string")
    if len(href) > MAX_HREF_LENGTH:
        raise HrefError(f"the href is longer than {MAX_HREF_LENGTH} characters")
    if _CONTROL.search(href):
        raise HrefError("the href contains control characters")
    if "<" in href or ">" in href:
        raise HrefError("inline XML is not an href (GDAL would read it as a VRT that can open any file)")
    if href.lstrip().lower().startswith("/vsi"):
        raise HrefError(
            "GDAL virtual file system paths (/vsicurl/, /vsis3/...) are not accepted from items; "
            "give the https:// or s3:// URL and the worker builds the GDAL path"
        )
    if href != href.strip():
        raise HrefError("the href has leading or trailing white space")
    scheme = _scheme(href)
    if scheme is None:
        if not href.startswith("/"):
            raise HrefError("a local href must be an absolute path once resolved against the item's folder")
        _check_local(href)
        return "local"
    if scheme == "file":
        check_local_path(file_url_path(href))
        return "local"
    if scheme in ("http", "https"):
        _check_http(href)
        return "http"
    if scheme == "s3":
        _check_s3(href)
        return "s3"
    raise HrefError(
        f"scheme or GDAL prefix {scheme + ':'!r} is not accepted (only local .tif paths, http(s):// and s3://)"
    )


def _scheme(href: str) -> str | None:
    """The href's scheme (or GDAL driver prefix such as ``GTIFF_DIR``), lower case; None for a path."""
    m = re.match(r"([A-Za-z][A-Za-z0-9+._-]*):", href)
    return m.group(1).lower() if m else None


def check_local_path(path: str) -> str:
    """Validate a local path (also used by the I/O edge on the real path, after symlinks); returns it."""
    if not path.startswith("/"):
        raise HrefError("a local href must be an absolute path once resolved against the item's folder")
    _check_local(path)
    return path


def _check_local(path: str) -> None:
    if ":" in path.split("/", 2)[1]:
        raise HrefError("a GDAL driver prefix in a local path is not accepted")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    for root in FORBIDDEN_ROOTS:
        if norm == root or norm.startswith(root + "/"):
            raise HrefError(f"local paths under {root} are not rasters and are never read")
    if norm.lower().startswith("/vsi"):
        raise HrefError("GDAL virtual file system paths (/vsi...) are not accepted from items")
    if not norm.lower().endswith(LOCAL_EXTENSIONS):
        raise HrefError(
            "a local asset must be a GeoTIFF named *.tif or *.tiff (VRT, XML and other files are never read)"
        )


def file_url_path(href: str) -> str:
    """The local path of a ``file://`` URL (``file:///abs/path`` or ``file://localhost/abs/path``)."""
    parts = urlsplit(href)
    if parts.netloc not in ("", "localhost"):
        raise HrefError("file:// URLs naming another host are not accepted")
    if parts.query or parts.fragment:
        raise HrefError("file:// URLs with a query or fragment are not accepted")
    path = unquote(parts.path)
    if _CONTROL.search(path):
        raise HrefError("the href contains control characters")
    return path


def _check_http(href: str) -> SplitResult:
    try:
        parts = urlsplit(href)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise HrefError(f"malformed URL ({exc})") from None
    if not host:
        raise HrefError("the URL has no host")
    if " " in href or "\\" in href:
        raise HrefError("the URL contains spaces or backslashes")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and (
        ip.is_link_local or ip.is_multicast or ip.is_unspecified or host == "fd00:ec2::254"
    ):
        raise HrefError(
            "link-local, multicast and unspecified addresses (instance metadata) are not accepted"
        )
    if host.rstrip(".").lower() in ("metadata", "metadata.google.internal", "instance-data"):
        raise HrefError("instance metadata hosts are not accepted")
    return parts


def _check_s3(href: str) -> tuple[str, str]:
    parts = urlsplit(href)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not _BUCKET.fullmatch(bucket or ""):
        raise HrefError("the s3:// URL has no valid bucket name")
    if not key or parts.query or parts.fragment or "\\" in key:
        raise HrefError("the s3:// URL needs an object key (no query string or fragment)")
    return bucket, key


def gdal_path(href: str) -> str:
    """The dataset name GDAL opens for a validated href: the local path, ``/vsicurl/<url>`` or
    ``/vsis3/<bucket>/<key>``. Validates again, so nothing unchecked ever reaches GDAL."""
    kind = check_href(href)
    if kind == "http":
        return "/vsicurl/" + href
    if kind == "s3":
        bucket, key = _check_s3(href)
        return f"/vsis3/{bucket}/{key}"
    if href.lower().startswith("file:"):
        return file_url_path(href)
    return href


# ----------------------------------------------------------------------------------------------- redaction

_SECRET_NAME = (
    r"[\w.-]*(?:signature|token|secret|password|passwd|credential|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|userpwd|session[_-]?key|auth)[\w.-]*|sig|key|pass|pwd"
)
#: ``name=value`` in query strings, environment dumps and option lists (value up to a separator).
_KEY_VALUE = re.compile(rf"(?i)(?<![\w.-])({_SECRET_NAME})(=|%3D)([^&\s\"'<>#;,]+)")
#: ``"name": "value"`` (JSON text) with a secret-looking name.
_JSON_PAIR = re.compile(rf"(?i)([\"'](?:{_SECRET_NAME})[\"']\s*:\s*[\"'])([^\"']+)")
#: ``scheme://user:password@host`` and ``scheme://token@host``.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s@?#\"'<>]+)@")
#: ``Authorization: Bearer xyz``, ``Authorization: AWS4-HMAC-SHA256 Credential=...``.
_AUTH_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*)([^\r\n\"']+)")
#: AWS access key ids (the secret key has no recognisable shape; it is caught by name above).
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}\b")
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``***``: URL user info, secret query parameters (X-Amz-Signature,
    X-Amz-Credential, X-Amz-Security-Token, Signature, sig, token, access_token, api_key...), ``NAME=value``
    pairs whose name says secret (AWS_SECRET_ACCESS_KEY=..., GDAL_HTTP_USERPWD=...), Authorization headers and
    AWS access key ids. The one redaction every log line, report, output item and ExitMessage goes through."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEY_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _JSON_PAIR.sub(lambda m: m.group(1) + REDACTED, text)
    return _AWS_KEY_ID.sub(REDACTED, text)


_SECRET_KEY = re.compile(rf"(?i)(?:{_SECRET_NAME})")


def redact_obj(value: object) -> object:
    """A JSON-like value with every string redacted, and the values of secret-named keys replaced."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and _SECRET_KEY.fullmatch(k) and isinstance(v, str)
                else redact_obj(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_obj(v) for v in value]
    return value
