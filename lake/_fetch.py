"""Sources given as a path or a URL: downloaded into the cache with a progress callback, hashed once."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlsplit, urlunsplit

from lake._errors import InvalidInputError
from lake._progress import Progress, null_progress

__all__ = ["Source", "redact_url", "resolve_source", "sha256_file", "sha256_files"]

_BLOCK = 4 << 20


@dataclass(frozen=True)
class Source:
    """A source file on local disk, with the URI the user gave and its content hash."""

    path: Path
    uri: str
    sha256: str
    size: int


def _feed(h: hashlib._Hash, path: Path, progress: Progress, done: int, total: int) -> int:
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            done += len(block)
            progress("hash", done, total)
    return done


def sha256_file(path: Path, *, progress: Progress = null_progress) -> str:
    h = hashlib.sha256()
    _feed(h, path, progress, 0, path.stat().st_size)
    return h.hexdigest()


def sha256_files(root: Path, files: Sequence[Path], *, progress: Progress = null_progress) -> str:
    """One file: its plain sha256 (what ``sha256sum`` prints). Several (a zarr group, a multi-file OME-TIFF):
    a sha256 over each file's path relative to ``root``, size and bytes, in path order."""
    if len(files) == 1:
        return sha256_file(files[0], progress=progress)
    h = hashlib.sha256()
    total, done = sum(f.stat().st_size for f in files), 0
    for f in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.stat().st_size.to_bytes(8, "little"))
        done = _feed(h, f, progress, done, total)
    return h.hexdigest()


def redact_url(url: str) -> str:
    """`url` as it may be shown or stored: without a password (`user:secret@`) or a query (a presigned URL's
    signature and credential)."""
    parts = urlsplit(url)
    if not parts.password and not parts.query:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6
    netloc = (f"{parts.username}:***@" if parts.password else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def _download(url: str, cache_dir: Path, *, progress: Progress) -> Path:
    name = Path(urlparse(url).path).name or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    dest = cache_dir / "downloads" / key / name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + f".part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, part.open("wb") as out:
            total = int(r.headers.get("Content-Length") or 0) or None
            done = 0
            while block := r.read(_BLOCK):
                out.write(block)
                done += len(block)
                progress("download", done, total)
        if total is not None and done != total:
            raise InvalidInputError(f"download of {redact_url(url)} stopped at {done} of {total} bytes")
        os.replace(part, dest)  # only a complete download ever has the cache name
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InvalidInputError(f"cannot download {redact_url(url)}: {getattr(e, 'reason', None) or e}") from None
    finally:
        part.unlink(missing_ok=True)
    return dest


def resolve_source(source: str | os.PathLike[str], *, cache_dir: Path, progress: Progress = null_progress) -> Source:
    """A local path as is; ``http(s)://`` downloaded into ``cache_dir``; ``file://`` as a path."""
    text = str(source)
    scheme = urlparse(text).scheme
    if scheme in ("http", "https"):
        path, uri = _download(text, cache_dir, progress=progress), redact_url(text)
    elif scheme == "file":
        path = Path(urlparse(text).path)
        uri = text
    elif len(scheme) > 1:
        raise InvalidInputError(f"unsupported source URL scheme {scheme!r} in {redact_url(text)}")
    else:
        path = Path(text).expanduser().resolve()
        uri = str(path)
    if not path.is_file():
        raise InvalidInputError(f"no such file: {redact_url(text)}")
    return Source(path=path, uri=uri, sha256=sha256_file(path, progress=progress), size=path.stat().st_size)
