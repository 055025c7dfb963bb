"""Model artifacts: folders written whole or not at all, and where they live for the registry.

On a local lake an artifact is the folder `<lake>/models/<name>/<version>`, written in place. On a remote lake
(`s3://...`) the model is saved to a staging folder on this machine and uploaded to that URI before its registry
row commits (the commit point: no row ever points at a missing artifact); a load downloads it once into this
machine's cache (`LakeSettings.cache_dir`), keyed by lake, name, version and the ETag of its `model.json` (so a
lake re-created at the same URI never serves an old copy), and reads it from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lake
from models._errors import ArtifactError

__all__ = ["StagedArtifact", "artifact_uri", "local_artifact", "stage_artifact", "write_atomically"]

MARKER = "model.json"  # every artifact kind writes it last; uploaded last too, so it marks a whole artifact
_NAME_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/\d+$")


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """`write` fills a temporary sibling of `path`, which then replaces `path` by a rename: a crash leaves the old
    artifact or the new one, never half of one (and no temporary folder)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def artifact_uri(target: lake.Lake, name: str, version: int) -> str:
    """Where the registry keeps version `version` of `name`: `<lake root>/models/<name>/<version>`."""
    return target.settings.uri("models", name, str(version))


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__  # botocore's messages never carry the keys


def _cache_folder(uri: str) -> Path:
    """This machine's folder for the copies of a remote artifact: `<cache>/models/<lake hash>/<name>/<version>`."""
    head, sep, tail = uri.rpartition("/models/")
    if not (sep and _NAME_VERSION.match(tail)):  # not laid out by the registry: keyed by the whole URI
        head, tail = uri, "artifact"
    settings = lake.LakeSettings.resolve(head)
    key = hashlib.sha256(settings.root.encode()).hexdigest()[:16]
    return settings.cache_dir.joinpath("models", key, *tail.split("/"))


def _etag(uri: str) -> str:
    """The store's tag of the artifact's marker: a new upload to the same URI gets a new one."""
    fs, path = lake.filesystem(uri)
    try:
        info = fs.info(f"{path}/{MARKER}", refresh=True)  # never s3fs's listing cache: another process uploads
    except FileNotFoundError:
        raise ArtifactError(f"no model artifact at {uri} ({MARKER} is missing)") from None
    except Exception as e:
        raise ArtifactError(f"cannot reach model artifact {uri}: {_reason(e)}") from None
    tag = str(info.get("ETag") or info.get("etag") or info.get("LastModified") or "").strip('"')
    return hashlib.sha256(tag.encode()).hexdigest()[:16]


def _settle(folder: Path, final: Path) -> Path:
    """Rename `folder` to `final`, unless another process put the same copy there first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.rename(final)
    except OSError:
        if not final.is_dir():
            raise
    return final


def local_artifact(path: str | os.PathLike[str]) -> Path:
    """A local folder holding the artifact at `path`: `path` itself when local; for an `s3://` URI this machine's
    cached copy, downloaded on the first use (a one-line `ArtifactError` when it cannot be)."""
    if not isinstance(path, str) or not lake.is_remote(path):
        return Path(path)
    cached = _cache_folder(path) / _etag(path)
    if cached.is_dir():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.download-", dir=cached.parent))
    try:
        try:
            files = lake.download_dir(path, tmp)
        except Exception as e:
            raise ArtifactError(f"cannot download model artifact {path}: {_reason(e)}") from None
        if MARKER not in files:
            raise ArtifactError(f"no model artifact at {path} ({MARKER} is missing)")
        return _settle(tmp, cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class StagedArtifact:
    """An artifact in place for its registry row: `uri` goes into the row; `keep()` once the row has committed."""

    uri: str
    _staged: Path | None = None  # the local copy of an uploaded artifact
    _cached: Path | None = None  # where this machine's cache keeps it

    def keep(self) -> None:
        """The row committed: the uploaded artifact's local copy becomes this machine's cached one (no download).

        Never fails: the row is committed already, and a copy that could not be kept is downloaded when loaded."""
        if self._staged is not None and self._cached is not None:
            with contextlib.suppress(OSError):
                _settle(self._staged, self._cached)
            self._staged = None


@contextmanager
def stage_artifact(
    target: lake.Lake, name: str, version: int, save: Callable[[Path], Path]
) -> Iterator[StagedArtifact]:
    """Put the artifact `save` writes where the registry keeps version `version` of `name`, before its row commits.

    A local lake: `save` writes the folder in place. A remote lake: `save` writes a staging folder in this
    machine's cache, which is uploaded to the lake (its `model.json` last) and removed on exit unless kept.
    """
    uri = artifact_uri(target, name, version)
    if target.settings.is_local:
        yield StagedArtifact(str(save(Path(uri))))
        return
    cache = _cache_folder(uri)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
    try:
        folder = save(staging / "artifact")
        try:
            lake.upload_dir(folder, uri, last=(MARKER,))
        except Exception as e:
            raise ArtifactError(f"cannot upload model artifact to {uri}: {_reason(e)}") from None
        yield StagedArtifact(uri, folder, cache / _etag(uri))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
