"""Where the lake lives: one place that resolves the root URI and every path under it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict

from lake._errors import InvalidInputError
from lake._storage import is_remote, storage_for

__all__ = ["DEFAULT_LAKE", "ENV_GENE_REFERENCE", "ENV_LAKE", "LakeSettings"]

DEFAULT_LAKE = "./.cellfarm/lake"
ENV_LAKE = "CELLFARM_LAKE"
ENV_GENE_REFERENCE = "CELLFARM_GENE_REFERENCE"


class LakeSettings(BaseModel):
    """The lake root and the optional gene reference, from arguments or the environment.

    A local root is made absolute so that views written into a DuckDB catalog keep working from any folder.
    A remote root is ``s3://bucket/prefix``; its endpoint and credentials come from the environment
    (:mod:`lake._storage`), never from here, so settings can be printed and passed to other processes.
    """

    model_config = ConfigDict(frozen=True)

    root: str
    gene_reference: str | None = None

    @classmethod
    def resolve(cls, root: str | os.PathLike[str] | None = None, *, gene_reference: str | None = None) -> LakeSettings:
        raw = str(root) if root is not None else os.environ.get(ENV_LAKE) or DEFAULT_LAKE
        if raw.startswith("file://"):
            raw = urlparse(raw).path
        if not is_remote(raw):
            raw = str(Path(raw).expanduser().resolve())
        else:
            storage_for(raw)  # an unsupported scheme or a missing bucket fails here, in one line
        ref = gene_reference or os.environ.get(ENV_GENE_REFERENCE) or None
        return cls(root=raw.rstrip("/"), gene_reference=ref)

    @property
    def is_local(self) -> bool:
        return not is_remote(self.root)

    def uri(self, *parts: str) -> str:
        for part in parts:  # names (tables, runs, positions), never a way out of the root
            if part in ("", ".", "..") or "/" in part or "\\" in part:
                raise InvalidInputError(f"{part!r} is not a name inside the lake (no '/', '\\', '..')")
        return "/".join([self.root, *parts])

    def table_uri(self, table: str) -> str:
        return self.uri("delta", table)

    @property
    def soma_uri(self) -> str:
        return self.uri("soma")

    def image_uri(self, run_id: str, position: str) -> str:
        """The OME-Zarr image of one run and position."""
        return self.uri("images", run_id, f"{position}.ome.zarr")

    @property
    def cache_dir(self) -> Path:
        """Downloads are cached on local disk even for a remote lake: they are inputs, not lake data."""
        if self.is_local:
            return Path(self.root) / "_cache"
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cellfarm"

    @property
    def local_state_dir(self) -> Path:
        """Locks and other machine-local state (one folder per remote lake)."""
        if self.is_local:
            return Path(self.root) / "_state"
        return self.cache_dir / "state" / hashlib.sha256(self.root.encode()).hexdigest()[:16]
