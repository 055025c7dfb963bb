"""The model registry: `models` rows (the commit point) and artifact folders under `<lake>/models/<name>/<version>`.

A version exists once its row is committed; the artifact is written (atomically; on a remote lake, uploaded: see
`models._artifacts`) before that, so a crash in between leaves an unregistered folder that the next registration of
that version replaces. `NAME`, `NAME:latest` and `NAME:VERSION` resolve to a row. Stages: candidate -> production
(one per name; the previous one is archived).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow.compute as pc

import lake
from models._artifacts import stage_artifact
from models._base import PerturbationModel, load_model
from models._errors import ModelNotFoundError

__all__ = [
    "ModelRecord",
    "Registrable",
    "Stage",
    "list_models",
    "parse_ref",
    "register",
    "resolve",
    "set_stage",
]

Stage = Literal["candidate", "production", "archived"]
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?::(?P<version>latest|\d+))?$")


class Registrable(Protocol):
    """What `register` needs of a model: a `PerturbationModel`, the imaging models, anything with these three."""

    @property
    def kind(self) -> str: ...

    @property
    def params(self) -> dict[str, Any]: ...

    def save(self, path: Path, /) -> Path:
        """Write the artifact folder at `path` (atomically) and return it."""
        ...


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: int
    kind: str
    params: dict[str, Any]
    trained_on: dict[str, Any]
    metrics: dict[str, Any]
    stage: str
    artifact_uri: str
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def load(self) -> PerturbationModel:
        """The model, from its artifact (on a remote lake: this machine's cached copy, downloaded once)."""
        return load_model(self.artifact_uri)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ModelRecord:
        return cls(
            name=row["name"],
            version=int(row["version"]),
            kind=row["kind"],
            params=json.loads(row["params"] or "{}"),
            trained_on=json.loads(row["trained_on"] or "{}"),
            metrics=json.loads(row["metrics"] or "{}"),
            stage=row["stage"],
            artifact_uri=row["artifact_uri"],
            created_at=row["created_at"],
        )

    def to_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "params": json.dumps(self.params, sort_keys=True),
            "trained_on": json.dumps(self.trained_on, sort_keys=True),
            "metrics": json.dumps(self.metrics, sort_keys=True),
            "stage": self.stage,
            "artifact_uri": self.artifact_uri,
            "created_at": self.created_at,
        }


def parse_ref(ref: str) -> tuple[str, int | None]:
    """ "name" / "name:latest" -> (name, None); "name:3" -> (name, 3)."""
    m = _REF.match(ref.strip())
    if not m:
        raise ModelNotFoundError(f"not a model reference: {ref!r} (expected NAME, NAME:latest or NAME:VERSION)")
    v = m.group("version")
    return m.group("name"), (int(v) if v and v != "latest" else None)


def list_models(target: lake.Lake, name: str | None = None) -> list[ModelRecord]:
    rows = target.read("models")
    if name is not None:
        rows = rows.filter(pc.equal(rows["name"], name))
    return sorted((ModelRecord.from_row(r) for r in rows.to_pylist()), key=lambda r: (r.name, r.version))


def resolve(target: lake.Lake, ref: str, *, stage: str | None = None) -> ModelRecord:
    """The registry row for `ref`; `stage="production"` picks the production version of `ref`'s name."""
    name, version = parse_ref(ref)
    records = list_models(target, name)
    if not records:
        have = sorted({r.name for r in list_models(target)})
        raise ModelNotFoundError(f"no model named {name!r} (have: {', '.join(have) or 'none'})")
    if stage is not None:
        records = [r for r in records if r.stage == stage]
        if not records:
            raise ModelNotFoundError(f"model {name!r} has no {stage} version")
    if version is None:
        return records[-1]
    for r in records:
        if r.version == version:
            return r
    raise ModelNotFoundError(
        f"model {name!r} has no version {version} (have {', '.join(str(r.version) for r in records)})"
    )


def register(
    target: lake.Lake,
    model: Registrable,
    *,
    name: str,
    trained_on: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> ModelRecord:
    """Save the artifact, then commit its `models` row (the commit point); returns the new version."""
    parse_ref(name)  # a usable name
    for _ in range(20):  # another registration of the same name may take the version first
        existing = list_models(target, name)
        version = (existing[-1].version if existing else 0) + 1
        with stage_artifact(target, name, version, model.save) as artifact:
            record = ModelRecord(
                name=name,
                version=version,
                kind=model.kind,
                params=model.params,
                trained_on=trained_on,
                metrics=metrics or {},
                stage="candidate",
                artifact_uri=artifact.uri,
                created_at=datetime.now(UTC),
            )
            out = target.merge("models", [record.to_row()], mode="insert")
            if int(out.get("num_target_rows_inserted", 0)) == 1:
                artifact.keep()
                return record
    raise lake.LakeBusyError(f"could not register a version of {name!r}: too many concurrent registrations")


def update(target: lake.Lake, record: ModelRecord) -> None:
    target.merge("models", [record.to_row()], mode="upsert")


def set_stage(target: lake.Lake, record: ModelRecord, stage: Stage) -> ModelRecord:
    """Move a version to `stage`; promoting one archives the name's previous production version."""
    changed = []
    if stage == "production":
        changed = [
            _with(r, stage="archived")
            for r in list_models(target, record.name)
            if r.stage == "production" and r.version != record.version
        ]
    new = _with(record, stage=stage)
    target.merge("models", [r.to_row() for r in [*changed, new]], mode="upsert")  # one commit
    return new


def _with(record: ModelRecord, **changes: Any) -> ModelRecord:
    return ModelRecord(**{**record.__dict__, **changes})
