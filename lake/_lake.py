"""The :class:`Lake` handle: settings plus the Delta tables and the dataset registry under one root."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from lake import _delta
from lake._errors import LakeNotWritableError
from lake._lease import lease, lease_held
from lake._lock import is_held, liveness_lock
from lake._schemas import TABLES, spec
from lake._settings import LakeSettings
from lake._storage import check_reachable, check_writable

__all__ = ["Lake"]


class Lake:
    """A lake root: Delta tables under ``delta/``, the SOMA census under ``soma/``, images under ``images/``.

    >>> lake = Lake.open("./.cellfarm/lake")
    >>> lake.read("datasets").num_rows
    """

    def __init__(self, settings: LakeSettings) -> None:
        self.settings = settings

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str] | None = None,
        *,
        gene_reference: str | None = None,
        create: bool = True,
    ) -> Lake:
        """Open the lake at ``root`` (else ``$CELLFARM_LAKE``, else ``./.cellfarm/lake``).

        With ``create`` every table of :data:`lake.TABLES` is created when missing, so that SQL sees the whole
        catalog (empty tables included) from the first command on.
        """
        lake = cls(LakeSettings.resolve(root, gene_reference=gene_reference))
        check_reachable(lake.root)  # a no-op for a local lake
        if create:
            missing = [s for s in TABLES.values() if not _delta.exists(lake.table_uri(s.name))]
            if missing:  # a read-only lake that has every table still opens for SQL
                lake.ensure_writable()
            for s in missing:
                _delta.create(lake.table_uri(s.name), s)
        return lake

    def __repr__(self) -> str:
        return f"Lake({self.settings.root!r})"

    @property
    def root(self) -> str:
        return self.settings.root

    def ensure_writable(self) -> None:
        if not self.settings.is_local:
            check_writable(self.root)  # a missing bucket, a wrong endpoint or no permission: one line
            return
        root = Path(self.root)
        probe = root / f".write-probe-{uuid.uuid4().hex}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise LakeNotWritableError(f"lake path {root} is not writable: {e.strerror or e}") from None

    # -- liveness (a writer that may die: an acquisition run) --------------------------------------------
    def liveness(self, *name: str) -> AbstractContextManager[None]:
        """Hold ``name`` (e.g. ``"runs", run_id``) while this process lives and is in the block; others ask
        :meth:`is_live`. A local lake uses a ``flock`` the kernel drops when the process dies; an ``s3://`` lake,
        whose writers may be on other machines, a lease object on the store that expires unless renewed.
        """
        *folders, last = name
        if self.settings.is_local:
            return liveness_lock(self.settings.local_state_dir.joinpath(*folders, f"{last}.lock"))
        return lease(self.settings.uri("_state", *folders, f"{last}.lease"), timeout_s=0.0)

    def is_live(self, *name: str) -> bool:
        *folders, last = name
        if self.settings.is_local:
            return is_held(self.settings.local_state_dir.joinpath(*folders, f"{last}.lock"))
        return lease_held(self.settings.uri("_state", *folders, f"{last}.lease"))

    # -- tables -------------------------------------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        return self.settings.table_uri(spec(name).name)

    def table(self, name: str) -> DeltaTable:
        return _delta.open_table(self.table_uri(name), spec(name))

    def append(self, name: str, data: pa.Table | Sequence[dict[str, Any]]) -> int:
        return _delta.append(self.table_uri(name), data, spec=spec(name))

    def merge(
        self,
        name: str,
        data: pa.Table | Sequence[dict[str, Any]],
        *,
        mode: Literal["insert", "upsert"] = "insert",
        keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        return _delta.merge(self.table_uri(name), data, spec=spec(name), mode=mode, keys=keys)

    def delete(self, name: str, predicate: str) -> dict[str, Any]:
        return _delta.delete(self.table_uri(name), predicate, spec=spec(name))

    def read(self, name: str, **kwargs: Any) -> pa.Table:
        return _delta.read(self.table_uri(name), **kwargs)

    def version(self, name: str) -> int:
        return _delta.version(self.table_uri(name))

    def optimize(self, name: str) -> dict[str, Any]:
        return _delta.optimize(self.table_uri(name), spec=spec(name))

    def vacuum(self, name: str, *, retention_hours: int = 168, dry_run: bool = False, full: bool = False) -> list[str]:
        return _delta.vacuum(
            self.table_uri(name), spec=spec(name), retention_hours=retention_hours, dry_run=dry_run, full=full
        )

    # -- the dataset registry (the commit point) ----------------------------------------------------------
    def datasets(self, *, kind: str | None = None) -> pa.Table:
        rows = self.read("datasets")
        if kind is not None:
            rows = rows.filter(pc.equal(rows["kind"], kind))
        return rows.sort_by("ingested_at")

    def find_dataset(self, *, sha256: str | None = None, name: str | None = None) -> dict[str, Any] | None:
        rows = self.read("datasets")
        if sha256 is not None:
            rows = rows.filter(pc.equal(rows["sha256"], sha256))
        if name is not None:
            rows = rows.filter(pc.equal(rows["name"], name))
        return rows.slice(0, 1).to_pylist()[0] if rows.num_rows else None

    def register_dataset(self, row: dict[str, Any]) -> bool:
        """Commit a dataset: after this one Delta commit, its rows in every table become visible.

        Returns False when a dataset with the same id was already registered (a concurrent ingest won).
        """
        metrics = self.merge("datasets", [row], mode="insert")
        return int(metrics.get("num_target_rows_inserted", 0)) == 1

    def committed_soma_timestamp(self) -> int | None:
        """The SOMA timestamp readers open at: the newest one any committed dataset registered."""
        ts = self.read("datasets", columns=["soma_timestamp"])["soma_timestamp"]
        value = pc.max(ts).as_py()
        return int(value) if value is not None else None
