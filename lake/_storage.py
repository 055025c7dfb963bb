"""Object storage: where an ``s3://`` lake's endpoint and credentials come from, for every engine.

One place reads the standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``)
and hands each engine the settings it understands: delta-rs ``storage_options``, a TileDB context for SOMA,
fsspec (s3fs) options for the OME-Zarr store and a DuckDB secret for ``delta_scan``. Engines are given these
from the URI they open, so every caller of :mod:`lake` works on a remote root without passing anything.

Keys are :class:`pydantic.SecretStr`: no repr, log line or error message can print them.

Delta commits on S3 are made safe for concurrent writers (several machines included) by conditional put:
a commit file ``_delta_log/<version>.json`` is written with ``If-None-Match: *``, so two writers of the same
version cannot both succeed; the loser re-reads and retries. The store must support conditional writes (AWS S3
since 2024, MinIO, Cloudflare R2, moto); one that does not fails the commit instead of losing it.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, SecretStr

from lake._errors import LakeError, LakeNotWritableError

if TYPE_CHECKING:
    import duckdb
    import tiledbsoma
    from fsspec import AbstractFileSystem

__all__ = [
    "S3Storage",
    "check_reachable",
    "check_writable",
    "configure_duckdb",
    "delta_options",
    "download_dir",
    "filesystem",
    "fsspec_options",
    "is_remote",
    "reports_dir",
    "soma_context",
    "storage_for",
    "upload_dir",
]

DEFAULT_REGION = "us-east-1"
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")


def is_remote(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return len(scheme) > 1 and scheme != "file"  # a one-letter scheme is a Windows drive


class S3Storage(BaseModel):
    """An S3-compatible store: its endpoint (None: AWS), region and static keys (None: the SDKs' chains)."""

    model_config = ConfigDict(frozen=True)

    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Storage:
        env = os.environ if env is None else env

        def first(names: tuple[str, ...]) -> str | None:
            return next((env[n] for n in names if env.get(n)), None)

        def secret(name: str) -> SecretStr | None:
            return SecretStr(env[name]) if env.get(name) else None

        endpoint = first(_ENDPOINT_VARS)
        if endpoint is not None and urlparse(endpoint).scheme not in ("http", "https"):
            raise LakeError(f"AWS_ENDPOINT_URL must be an http(s) URL, e.g. http://127.0.0.1:9000, got {endpoint!r}")
        return cls(
            endpoint_url=endpoint.rstrip("/") if endpoint else None,
            region=first(_REGION_VARS) or DEFAULT_REGION,
            access_key_id=secret("AWS_ACCESS_KEY_ID"),
            secret_access_key=secret("AWS_SECRET_ACCESS_KEY"),
            session_token=secret("AWS_SESSION_TOKEN"),
        )

    @property
    def allow_http(self) -> bool:
        return self.endpoint_url is not None and self.endpoint_url.startswith("http://")

    @property
    def endpoint_host(self) -> str | None:
        """``host:port`` of a custom endpoint (what TileDB and DuckDB take)."""
        return urlparse(self.endpoint_url).netloc if self.endpoint_url else None

    def _keys(self) -> tuple[str | None, str | None, str | None]:
        def reveal(s: SecretStr | None) -> str | None:
            return s.get_secret_value() if s is not None else None

        return reveal(self.access_key_id), reveal(self.secret_access_key), reveal(self.session_token)


def storage_for(uri: str) -> S3Storage | None:
    """The store of ``uri`` from the environment: None for a local path; an error for a scheme we cannot use."""
    if not is_remote(uri):
        return None
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        raise LakeError(f"unsupported storage URI scheme {parsed.scheme!r} in {uri}: use a local path or s3://")
    if not parsed.netloc:
        raise LakeError(f"no bucket in {uri}: use s3://bucket/prefix")
    return S3Storage.from_env()


# -- delta-rs ---------------------------------------------------------------------------------------------------


def delta_options(uri: str) -> dict[str, str] | None:
    """delta-rs ``storage_options`` (object_store's S3 keys) for ``uri``; None for a local table."""
    store = storage_for(uri)
    if store is None:
        return None
    key, secret, token = store._keys()
    opts = {
        "aws_region": store.region,
        # commit files are created with If-None-Match: *, so concurrent writers never overwrite a commit
        "aws_conditional_put": "etag",
    }
    if store.endpoint_url:
        opts["aws_endpoint"] = store.endpoint_url
        opts["aws_virtual_hosted_style_request"] = "false"
        if store.allow_http:
            opts["aws_allow_http"] = "true"
    for name, value in (("aws_access_key_id", key), ("aws_secret_access_key", secret), ("aws_session_token", token)):
        if value:
            opts[name] = value
    return opts


# -- TileDB (SOMA) ----------------------------------------------------------------------------------------------


def _tiledb_config(store: S3Storage) -> dict[str, str | float]:
    key, secret, token = store._keys()
    cfg: dict[str, str | float] = {"vfs.s3.region": store.region}
    if store.endpoint_url:
        cfg["vfs.s3.endpoint_override"] = store.endpoint_host or ""
        cfg["vfs.s3.scheme"] = "http" if store.allow_http else "https"
        cfg["vfs.s3.use_virtual_addressing"] = "false"
    if key and secret:
        cfg["vfs.s3.aws_access_key_id"] = key
        cfg["vfs.s3.aws_secret_access_key"] = secret
        if token:
            cfg["vfs.s3.aws_session_token"] = token
    return cfg


@functools.lru_cache(maxsize=8)
def _soma_context(store: S3Storage) -> tiledbsoma.SOMATileDBContext:
    import tiledbsoma

    return tiledbsoma.SOMATileDBContext(tiledb_config=_tiledb_config(store))


def soma_context(uri: str) -> tiledbsoma.SOMATileDBContext | None:
    """The TileDB context that reaches ``uri`` (one per store and process: contexts own thread pools)."""
    store = storage_for(uri)
    return _soma_context(store) if store is not None else None


# -- fsspec (the image store, listings and deletes) --------------------------------------------------------------


def fsspec_options(uri: str) -> dict[str, Any] | None:
    """s3fs options for ``uri`` (what ``zarr.open_group(..., storage_options=)`` takes); None when local."""
    store = storage_for(uri)
    if store is None:
        return None
    key, secret, token = store._keys()
    opts: dict[str, Any] = {"client_kwargs": {"region_name": store.region}}
    if store.endpoint_url:
        opts["endpoint_url"] = store.endpoint_url
    if key and secret:
        opts.update(key=key, secret=secret)
        if token:
            opts["token"] = token
    return opts


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """An fsspec filesystem and the path in it: the local one for a path, s3fs for ``s3://``."""
    import fsspec

    opts = fsspec_options(uri)
    if opts is None:
        return fsspec.filesystem("file"), str(Path(uri.removeprefix("file://")))
    fs = fsspec.filesystem("s3", **opts)
    return fs, uri.removeprefix("s3://")


def _reason(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def check_reachable(uri: str) -> None:
    """Fail in one line, before any engine retries for minutes, when the bucket cannot be reached."""
    import fsspec

    store = storage_for(uri)
    if store is None:
        return
    bucket = urlparse(uri).netloc
    where = store.endpoint_url or f"AWS S3 ({store.region})"
    # one quick probe: no SDK retries, a short connect timeout (the engines' own retries stay as they are)
    quick = {"config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 1}}}
    fs = fsspec.filesystem("s3", **(fsspec_options(uri) or {}), **quick)
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise LakeError(f"bucket {bucket!r} does not exist at {where}") from None
    except PermissionError:
        raise LakeError(f"access to bucket {bucket!r} at {where} is denied for this key") from None
    except Exception as e:  # connection refused, DNS, TLS...: botocore's message names no key
        raise LakeError(f"cannot reach bucket {bucket!r} at {where}: {_reason(e)}") from None


def check_writable(uri: str) -> None:
    """Write and delete a probe object under a remote root: a missing bucket or no permission is one line."""
    fs, path = filesystem(uri)
    probe = f"{path}/.write-probe-{uuid.uuid4().hex}"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as e:  # botocore and s3fs raise many kinds; the message names the bucket, never a key
        raise LakeNotWritableError(f"lake {uri} is not writable: {_reason(e)}") from None


# -- folders in and out of the store (model artifacts) and this machine's copy of what people open ---------------


def upload_dir(local: str | os.PathLike[str], uri: str, *, last: tuple[str, ...] = ()) -> list[str]:
    """Copy the files of the folder ``local`` to ``uri``, replacing what is there; returns the relative paths.

    Files named in ``last`` are put after every other one, so a reader that checks for them (a marker written
    last, like a model's ``model.json``) never takes a half-uploaded folder for a whole one.
    """
    src = Path(local)
    files = sorted((p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()), key=lambda r: (r in last, r))
    fs, path = filesystem(uri)
    if stale := fs.find(path):  # what an earlier, interrupted upload left must not mix with this one
        fs.rm(stale)
    for rel in files:
        fs.put_file(str(src / rel), f"{path}/{rel}")
    return files


def download_dir(uri: str, local: str | os.PathLike[str]) -> list[str]:
    """Copy every file under ``uri`` into the folder ``local``; returns the relative paths (none: nothing there)."""
    fs, path = filesystem(uri)
    dest = Path(local)
    copied = []
    for remote in fs.find(path):
        rel = str(remote)[len(path) :].lstrip("/")
        if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
            continue  # an object named like a way out of the folder is never written
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(dest / rel))
        copied.append(rel)
    return copied


def reports_dir(uri: str) -> Path:
    """Where plots and reports about the lake at ``uri`` are written for the people at this machine.

    ``<root>/reports`` beside a local lake's data; for a remote lake a local folder named after it,
    ``./.cellfarm/<scheme>/<bucket>/<prefix>/reports`` (the folder ``cellfarm ui`` and the demo use for a remote
    lake), so a returned path is always a file one can open and nothing but lake data goes to the bucket.
    """
    if not is_remote(uri):
        return Path(uri.removeprefix("file://")) / "reports"
    parsed = urlparse(uri)
    parts = [p for p in (parsed.netloc, *parsed.path.split("/")) if p not in ("", ".", "..")]
    return Path(".cellfarm").resolve().joinpath(parsed.scheme, *parts, "reports")


# -- DuckDB -----------------------------------------------------------------------------------------------------


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _httpfs_extension() -> Path:
    import duckdb
    import duckdb_extension_httpfs

    base = Path(duckdb_extension_httpfs.__file__).parent / "extensions"
    exact = base / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    found = [exact] if exact.is_file() else sorted(base.glob("*/httpfs.duckdb_extension"))
    if not found:
        raise LakeError(f"duckdb-extension-httpfs has no extension file under {base}")
    return found[-1]


def configure_duckdb(con: duckdb.DuckDBPyConnection, uri: str, *, install: bool = False) -> None:
    """Let ``delta_scan`` read a remote lake: load httpfs from its wheel (never downloaded) and add a secret
    scoped to the lake's bucket. A no-op for a local lake. ``install`` also copies httpfs into DuckDB's
    extension folder (what a catalog file for the DuckDB CLI needs); the secret is never persisted."""
    import duckdb

    store = storage_for(uri)
    if store is None:
        return
    ext = _lit(str(_httpfs_extension()))
    key, secret, token = store._keys()
    params = ["TYPE s3", f"REGION {_lit(store.region)}", f"SCOPE {_lit('s3://' + urlparse(uri).netloc)}"]
    if key and secret:
        params += ["PROVIDER config", f"KEY_ID {_lit(key)}", f"SECRET {_lit(secret)}"]
        if token:
            params.append(f"SESSION_TOKEN {_lit(token)}")
    else:
        params.append("PROVIDER credential_chain")
    if store.endpoint_url:
        params += [f"ENDPOINT {_lit(store.endpoint_host or '')}", "URL_STYLE 'path'"]
        params.append(f"USE_SSL {'false' if store.allow_http else 'true'}")
    try:
        if install:
            con.execute(f"INSTALL {ext}")
        con.execute(f"LOAD {ext}")
        con.execute(f"CREATE OR REPLACE SECRET cellfarm_lake ({', '.join(params)})")
    except duckdb.Error as e:  # the statement holds the keys: only DuckDB's first line, which never quotes it
        raise LakeError(f"cannot configure DuckDB for {uri}: {str(e).splitlines()[0]}") from None
