"""Pure rules for untrusted input: which asset hrefs may be read (and the GDAL path built from them), and the
redaction of secrets from everything the worker logs, reports or stores, and the containment check of every path
built from data (:func:`path_under`, the only function here that touches the file system).

Items can come from any STAC API, a user's bucket or a colleague's manifest, so an href is data, never a GDAL
dataset name: only local ``.tif``/``.tiff`` files (outside ``/proc``, ``/sys``, ``/dev``), ``http(s)://`` URLs and
``s3://`` URLs are accepted, and the ``/vsicurl/`` / ``/vsis3/`` path is built here from a validated URL. Anything
else (inline XML, ``/vsi...`` given by the item, ``GTIFF_DIR:`` / ``NETCDF:`` / ``VRT:`` driver prefixes,
``ftp://``, ``file://host/``...) raises :class:`HrefError` with the reason.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import socket
from collections.abc import Mapping
from pathlib import Path
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
    check_host(host)
    return parts


# ----------------------------------------------------------------------------------------------- hosts

#: Set to 0 (``false``, ``no``, ``off``) to refuse loopback and private addresses too (a worker inside a VPC whose
#: private services items must never reach). Default: allowed (local test servers, ``launcher local``, a MinIO or
#: nginx on the local network, SageMaker local mode's bridge gateway).
PRIVATE_HOSTS_ENV = "EARTHMON_ALLOW_PRIVATE_HOSTS"
#: Instance metadata host names (and their sub-names), refused whatever they resolve to.
METADATA_HOSTS = (
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
)
#: Always refused, in every spelling (besides link-local 169.254/16 and fe80::/10, multicast, unspecified):
#: AWS's IPv6 service addresses (IMDS fd00:ec2::254, DNS, NTP), GCP's IPv6 metadata address, Alibaba's metadata
#: address, "this network" 0/8 (0.x reaches this machine on Linux) and the limited broadcast address.
_NEVER_NETWORKS = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("fd00:ec2::/32", "an AWS instance service address (IMDS fd00:ec2::254, DNS, NTP)"),
        ("fd20:ce::254/128", "the GCP instance metadata address"),
        ("100.100.100.200/32", "the Alibaba Cloud instance metadata address"),
        ("0.0.0.0/8", "in 0.0.0.0/8 (reaches this machine)"),
        ("255.255.255.255/32", "the broadcast address"),
    )
)
_SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: private in practice
_NAT64_NETWORKS = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def private_hosts_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether loopback and private addresses may be read (``EARTHMON_ALLOW_PRIVATE_HOSTS``, default yes)."""
    value = (os.environ if environ is None else environ).get(PRIVATE_HOSTS_ENV, "1")
    return value.strip().lower() not in ("0", "false", "no", "off")


def host_address(host: str) -> IPAddress | None:
    """The IP address a URL host names, parsed the way curl and ``getaddrinfo`` do, or None for a host name.

    IPv6 literals (a zone id is dropped), dotted quads, and the legacy IPv4 spellings ``inet_aton`` accepts:
    ``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376``, ``169.254.43518`` are all 169.254.169.254. A host whose
    labels are all numbers but that is no IPv4 address (``1.2.3.4.5``, ``08.1.1.1``) raises :class:`HrefError`."""
    h = host.lower()
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h.split("%", 1)[0])
        except ValueError:
            raise HrefError(f"malformed IPv6 address {shown(host, 60)!r}") from None
    h = h.rstrip(".")
    labels = h.split(".")
    if not all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        if _NUMERIC_LABEL.fullmatch(labels[-1]):
            raise HrefError(f"malformed host {shown(host, 60)!r} (a name cannot end in a number)")
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(h))
    except OSError:
        raise HrefError(f"malformed IPv4 address {shown(host, 60)!r}") from None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo): each reaches it."""
    out = []
    if ip.ipv4_mapped:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour:
        out.append(ip.sixtofour)
    if ip.teredo:
        out.append(ip.teredo[1])
    if ip.packed[:12] == bytes(12) and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (not :: or ::1)
        out.append(ipaddress.IPv4Address(ip.packed[12:]))
    if any(ip in net for net in _NAT64_NETWORKS):
        out.append(ipaddress.IPv4Address(ip.packed[12:]))
    return out


def _never(ip: IPAddress) -> str | None:
    for net, why in _NEVER_NETWORKS:
        if ip.version == net.version and ip in net:
            return why
    if ip.is_link_local:
        return "a link-local address (instance metadata lives at 169.254.169.254)"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 4 and ip.is_reserved:
        return "a reserved address"
    return None


def _private(ip: IPAddress) -> bool:
    return ip.is_loopback or ip.is_private or (ip.version == 4 and ip in _SHARED_NETWORK)


def check_host(host: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a URL host the worker must never read from (:class:`HrefError` saying why).

    Always refused, however the address is written (decimal, hex, octal, short forms, IPv4-mapped or NAT64 IPv6):
    link-local addresses (169.254/16, fe80::/10: instance metadata), the cloud metadata addresses and host names
    (:data:`METADATA_HOSTS`, fd00:ec2::254...), unspecified, multicast and reserved addresses; IPv4 addresses not
    written as a plain dotted quad; percent-encoded or non-ASCII host names. Loopback and private addresses
    (``localhost`` included) are refused only when ``EARTHMON_ALLOW_PRIVATE_HOSTS=0``. Host names are not
    resolved: a name whose DNS answer is private or link-local is not caught here (see docs/security/worker.md)."""
    shown_host = shown(host, 80)
    if not host.isascii() or ("%" in host and ":" not in host):
        raise HrefError(
            f"host {shown_host!r}: percent-encoded or non-ASCII host names are not accepted (use the xn-- form)"
        )
    ip = host_address(host)
    if ip is None:
        name = host.lower().rstrip(".")
        if not _HOST_NAME.fullmatch(name):
            raise HrefError(f"malformed host name {shown_host!r}")
        if any(name == m or name.endswith("." + m) for m in METADATA_HOSTS):
            raise HrefError(
                f"host {shown_host!r}: instance metadata hosts are never read (link-local service)"
            )
        if (name == "localhost" or name.endswith(".localhost")) and not private_hosts_allowed(environ):
            raise HrefError(f"host {shown_host!r} is loopback, refused because {PRIVATE_HOSTS_ENV}=0")
        return
    addresses: list[IPAddress] = [ip]
    if ip.version == 6:
        addresses += _embedded_ipv4(ip)  # type: ignore[arg-type]
    for address in addresses:
        why = _never(address)
        if why:
            raise HrefError(
                f"host {shown_host!r} is {address}, {why}: link-local, metadata, multicast and unspecified "
                "addresses are never read"
            )
    if ip.version == 4 and (host.lower() != str(ip)):
        raise HrefError(
            f"host {shown_host!r} is {ip} written another way: write IPv4 addresses as a dotted quad"
        )
    if not private_hosts_allowed(environ) and any(_private(a) for a in addresses):
        raise HrefError(
            f"host {shown_host!r} is a loopback or private address, refused because {PRIVATE_HOSTS_ENV}=0"
        )


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


def check_assets_root(root: object) -> str:
    """Validate ``--assets-root`` (the URL the input folder mirrors: relative asset hrefs resolve under it), returned
    with one trailing ``/``. Only ``s3://bucket[/prefix]`` and ``https://host[/prefix]`` are accepted, with no
    query, fragment, ``.``/``..`` segment or percent-encoded dot; the host rules of :func:`check_host` apply."""
    if not isinstance(root, str) or not root:
        raise HrefError("the assets root is empty")
    scheme = _scheme(root)
    if scheme not in ("s3", "https"):
        raise HrefError("the assets root must be an s3:// or https:// URL")
    try:
        parts = urlsplit(root)
    except ValueError as exc:
        raise HrefError(f"malformed URL ({exc})") from None
    if parts.query or parts.fragment:
        raise HrefError("the assets root cannot have a query string or fragment")
    base = root.rstrip("/") + "/"
    _check_relative_path(parts.path.strip("/"), "the assets root")
    check_href(base + "x.tif")  # the scheme's own rules (bucket name, host, control characters, length)
    return base


INPUTS_HREF_SEGMENT = re.compile(r"^(\.\.|[A-Za-z0-9_][A-Za-z0-9._=+-]*)$")


def check_inputs_href(value: object) -> str:
    """Validate ``--inputs-href`` (where the input folder is published, seen from where the output folder is
    published: the base of the links that collection.json and index.html write to the inputs), returned with one
    trailing ``/``. Either a relative path of ``..`` and plain folder names (``../``, ``../run-0001/``), or an
    ``https://`` URL under the host rules of :func:`check_href`, with no query or fragment. The value is written
    into a web page: nothing else (no scheme, no ``//``, no quote, space or control character) is accepted."""
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise HrefError("the inputs href is empty or longer than 1024 characters")
    if re.search(r"[\s\"'<>`\\^{}|]", value) or _CONTROL.search(value):
        raise HrefError("the inputs href cannot hold spaces, quotes, <, >, backslashes or control characters")
    if _scheme(value) is not None:
        if _scheme(value) != "https":
            raise HrefError("the inputs href must be a relative path (../) or an https:// URL")
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            raise HrefError(f"malformed URL ({exc})") from None
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise HrefError("the inputs href cannot have a query string, fragment or user name")
        base = value.rstrip("/") + "/"
        _check_relative_path(parts.path.strip("/"), "the inputs href")
        check_href(base + "x.json")
        return base
    if value.startswith("/"):
        raise HrefError("the inputs href must be relative to the output folder (../) or an https:// URL")
    segments = [seg for seg in value.split("/") if seg]
    if (
        not segments
        or not all(INPUTS_HREF_SEGMENT.match(seg) for seg in segments)
        or "//" in value.rstrip("/")
    ):
        raise HrefError("the inputs href may hold only '..' and folder names of letters, digits and ._=+-")
    return "/".join(segments) + "/"


def _check_relative_path(path: str, what: str) -> None:
    if "%2e" in path.lower() or "\\" in path:
        raise HrefError(f"{what} contains a percent-encoded dot or a backslash")
    if any(seg in (".", "..") for seg in path.split("/") if seg):
        raise HrefError(f"{what} contains a '.' or '..' segment")


def under_assets_root(root: str, folder: str, href: str) -> str:
    """The URL of a relative asset href of an item found in ``folder`` (its folder relative to the input folder,
    ``''`` at the top) under a checked assets root: ``root + folder/href`` normalised, refused
    (:class:`HrefError`) when it would leave the root (``..`` above it, an absolute path) and checked again by
    :func:`check_href`."""
    if not isinstance(href, str) or not href or _scheme(href) is not None or href.startswith("/"):
        raise HrefError("only relative hrefs resolve against the assets root")
    if "%2e" in href.lower() or "\\" in href or "?" in href or "#" in href:
        raise HrefError("a relative href under the assets root cannot hold %2e, a backslash, ? or #")
    joined = posixpath.normpath(posixpath.join(folder or ".", href))
    if joined in (".", "..") or joined.startswith(("../", "/")):
        raise HrefError("the href leads out of the assets root")
    url = root + joined
    check_href(url)
    return url


# ----------------------------------------------------------------------------------------------- redaction

_SECRET_NAME = (
    r"[\w.-]*(?:signature|token|secret|password|passwd|credential|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|userpwd|session[_-]?key|auth|jwt)[\w.-]*|[\w.-]*key|sig|pass|pwd|code"
)
#: A name that says secret, matched in full against a (percent-decoded) parameter or variable name.
_SECRET_KEY = re.compile(rf"(?i)(?:{_SECRET_NAME})")
#: ``name=value`` in query strings, environment dumps and option lists (value up to a separator). The name may be
#: percent-encoded (``X-Amz-%53ignature``: S3 decodes it) and may follow an encoded ``?``/``&`` (a URL inside a
#: query string); it is decoded before :data:`_SECRET_KEY` decides.
_KEY_VALUE = re.compile(
    r"(?i)(?:(?<=%3F)|(?<=%26)|(?<![\w.%-]))((?:(?!%3F|%26)[\w.%-])+?)(=|%3D)((?:(?!%26)[^&\s\"'<>#;,])+)"
)
#: ``"name": "value"`` (JSON text) with a secret-looking name.
_JSON_PAIR = re.compile(r"(?i)([\"']([\w.%-]+)[\"']\s*:\s*[\"'])([^\"']+)")
#: ``scheme://user:password@host`` and ``scheme://token@host``: everything up to the LAST ``@`` before the path
#: (a password may hold ``@``; curl takes the last one too).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s?#\"'<>]*)@")
#: ``Authorization: Bearer xyz``, ``Authorization: AWS4-HMAC-SHA256 Credential=...``.
_AUTH_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*)([^\r\n\"']+)")
#: ``Bearer xyz`` anywhere (a header quoted without its name).
_BEARER = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/=-]+)")
#: JSON Web Tokens (``eyJ...``: base64url of ``{"``), signed or not, wherever they appear.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{10,}(?:\.[A-Za-z0-9_-]*){0,2}")
#: AWS access key ids (the secret key has no recognisable shape; it is caught by name above).
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}\b")
REDACTED = "***"


def _secret_name(name: str) -> bool:
    for _ in range(3):  # %2553 -> %53 -> S: a name encoded twice is still a name
        decoded = unquote(name)
        if decoded == name:
            break
        name = decoded
    return bool(_SECRET_KEY.fullmatch(name))


def _key_value(m: re.Match) -> str:
    if _secret_name(m.group(1)):
        return m.group(1) + m.group(2) + REDACTED
    # not a secret, but its value may be a URL with its own (encoded) query string: look inside
    return m.group(1) + m.group(2) + _KEY_VALUE.sub(_key_value, m.group(3))


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``***``: URL user info (up to the last ``@`` before the host), secret
    query parameters (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, Signature, sig, token, access_token,
    api_key, any name ending in ``key`` such as subscription-key, jwt, code...; percent-encoded names too),
    ``NAME=value`` pairs whose name says secret (AWS_SECRET_ACCESS_KEY=..., GDAL_HTTP_USERPWD=...), Authorization
    headers, ``Bearer`` tokens, JSON Web Tokens and AWS access key ids. The one redaction every log line, report,
    output item and ExitMessage goes through. Idempotent: ``redact(redact(t)) == redact(t)``."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEY_VALUE.sub(_key_value, text)
    text = _JSON_PAIR.sub(lambda m: m.group(1) + REDACTED if _secret_name(m.group(2)) else m.group(0), text)
    text = _JWT.sub(REDACTED, text)
    return _AWS_KEY_ID.sub(REDACTED, text)


def redact_obj(value: object) -> object:
    """A JSON-like value with every string redacted, and the values of secret-named keys replaced."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _secret_name(k) and isinstance(v, str) else redact_obj(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_obj(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------- paths

#: One path component built from data (a scene stem, an MGRS tile's composite stem, an output file name).
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,229}")


class UnsafePath(ValueError):
    """A file or folder name built from data that would leave its root; the message says why."""


def path_under(root: Path, name: str) -> Path:
    """``root / name`` for a ``name`` built from data, checked BEFORE anything is created, written or removed there:
    ``name`` must be one path component of safe characters (letters, digits, ``.``, ``-``, ``_``; no separator, no
    ``..``, not starting with a dot) and ``root / name`` must resolve (symbolic links followed) to a direct child of
    ``root``'s real path. :class:`UnsafePath` otherwise. The one containment check of the worker's writes
    (staging folders, composite and mosaic outputs); it reads the file system only to resolve links."""
    if not isinstance(name, str) or not _SAFE_COMPONENT.fullmatch(name) or ".." in name:
        raise UnsafePath(
            f"unsafe file name {shown(name, 80)!r}: one path component of letters, digits, '.', '-', '_'"
        )
    path = Path(root) / name
    base = Path(root).resolve()
    real = path.resolve()
    if real.parent != base:
        raise UnsafePath(
            f"{shown(str(path), 160)} resolves to {shown(str(real), 160)}, outside {shown(str(base), 160)}"
        )
    return path
