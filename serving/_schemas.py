"""The wire contract: pydantic request and response models of both services, shared by the server and the client.

Limits live here, next to the fields they bound, so that an oversized or malformed request is refused by
validation (a 4xx naming the field) before any model runs. Top-level response fields are never nullable:
BentoML's OpenAPI writer keeps only the first branch of a top-level `X | None`, so a null there would break the
published schema (schemathesis checks responses against it).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pandas as pd

__all__ = [
    "MAX_CANDIDATES",
    "MAX_CELLS",
    "MAX_PERTURBATIONS",
    "MAX_PROGRAM_GENES",
    "MAX_SAMPLED_CELLS",
    "Action",
    "Context",
    "EmbedRequest",
    "EmbedResponse",
    "FrameDecision",
    "FrameDetection",
    "FrameIn",
    "FrameMeta",
    "GeneEffect",
    "GeneProgram",
    "ModelInfo",
    "PerturbationPrediction",
    "PredictRequest",
    "PredictResponse",
    "Revisit",
    "ScreenHit",
    "ScreenRequest",
    "ScreenResponse",
    "ServedModel",
    "SetLightPower",
    "SkipPosition",
    "Status",
]

MAX_PERTURBATIONS = 256  # per predict call: each one is a full gene-wide profile in the answer
MAX_SAMPLED_CELLS = 2_000  # predicted cells per predict call, all perturbations together (~5 MB of JSON)
MAX_CANDIDATES = 5_000  # per screen call
MAX_PROGRAM_GENES = 2_000
MAX_CELLS = 5_000  # per embed call
MAX_GENES = 60_000  # columns of an embed call (a whole transcriptome fits)

# A gene symbol or Ensembl id; a perturbation is one or more of them joined by "+" (a combination).
Gene = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Perturbation = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=400)]
Count = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Weight = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]


class _Strict(BaseModel):
    # an unknown field is most likely a typo of a known one: refuse it rather than silently ignore it
    model_config = ConfigDict(extra="forbid")


# -------------------------------------------------------------------------------------------- both services


class ModelInfo(BaseModel):
    """The registry version that answered: every response carries it."""

    name: str
    version: str
    kind: str
    stage: str


class ServedModel(ModelInfo):
    service: str
    loaded_at: datetime
    dataset: str = ""
    note: str = ""


class Status(BaseModel):
    """Readiness (`GET /readyz`, no token needed) and the answer of `POST /reload`."""

    ready: bool
    models: list[ServedModel]
    errors: list[str] = Field(default_factory=list)
    predictions_logged: int = 0
    predictions_pending: int = 0
    predictions_dropped: int = 0


# --------------------------------------------------------------------------------------------- VirtualCell


class Context(_Strict):
    """Where the in-silico experiment happens: the training dataset (or its cell line) and how many cells."""

    dataset: str = Field(default="", max_length=200, description="atlas dataset name or id; empty: the model's own")
    cell_line: str = Field(default="", max_length=200, description="cell type / line; empty: the dataset's")
    n_cells: int = Field(
        default=0, ge=0, le=MAX_SAMPLED_CELLS, description="predicted cells to sample per perturbation"
    )


class PredictRequest(_Strict):
    perturbations: list[Perturbation] = Field(
        min_length=1,
        max_length=MAX_PERTURBATIONS,
        description='target genes (symbols or Ensembl ids); "A+B" is a combination',
        examples=[["STAT1", "JAK2+STAT1"]],
    )
    context: Context = Field(default_factory=Context)
    top_k: int = Field(default=10, ge=1, le=1000, description="top up- and down-regulated genes to list")
    include_profile: bool = Field(default=True, description="return the gene-wide mean and delta vectors")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="seed of the sampled cells")


class GeneEffect(BaseModel):
    gene: str
    ensembl_id: str
    delta: float


class PerturbationPrediction(BaseModel):
    perturbation: str  # as asked
    label: str  # the model's label (symbols, "A+B")
    targets: list[str]
    seen_in_training: bool
    fallback: bool  # the model could not represent it and predicted the mean training effect
    mean: list[float]  # predicted mean log-expression (log1p counts per 10k), aligned with `genes`
    delta: list[float]  # change against control, aligned with `genes`
    cells: list[list[float]]  # sampled predicted cells (context.n_cells of them)
    top_up: list[GeneEffect]
    top_down: list[GeneEffect]


class PredictResponse(BaseModel):
    request_id: str
    model: ModelInfo
    dataset: str
    genes: list[str]  # symbols; empty unless include_profile or cells were asked for
    gene_ids: list[str]
    predictions: list[PerturbationPrediction]
    notes: list[str] = Field(default_factory=list)

    def top_genes(self) -> pd.DataFrame:
        """One row per (perturbation, direction, rank): the genes each perturbation moves most."""
        import pandas as pd

        rows = [
            {"perturbation": p.perturbation, "direction": d, "rank": i + 1, "gene": g.gene, "delta": g.delta}
            for p in self.predictions
            for d, genes in (("up", p.top_up), ("down", p.top_down))
            for i, g in enumerate(genes)
        ]
        return pd.DataFrame(rows, columns=["perturbation", "direction", "rank", "gene", "delta"])

    def deltas(self) -> pd.DataFrame:
        """Perturbations x genes change against control (needs include_profile)."""
        import pandas as pd

        return pd.DataFrame(
            [p.delta for p in self.predictions], index=[p.label for p in self.predictions], columns=self.genes
        )


class GeneProgram(_Strict):
    """A target gene program: genes (measured ones count), optional weights, and the wanted direction."""

    name: str = Field(default="", max_length=200)
    genes: list[Gene] = Field(min_length=1, max_length=MAX_PROGRAM_GENES)
    weights: list[Weight] = Field(default_factory=list, description="one per gene; empty: all 1")
    direction: Literal["up", "down", "any"] = "up"


class ScreenRequest(_Strict):
    candidates: list[Perturbation] = Field(min_length=1, max_length=MAX_CANDIDATES)
    program: GeneProgram
    context: Context = Field(default_factory=Context)
    top_k: int = Field(default=20, ge=1, le=MAX_CANDIDATES)


class ScreenHit(BaseModel):
    rank: int
    perturbation: str
    label: str
    score: float  # the ranking key: program effect in the wanted direction
    program_delta: float  # weighted mean change of the program's genes
    seen_in_training: bool
    fallback: bool


class ScreenResponse(BaseModel):
    request_id: str
    model: ModelInfo
    dataset: str
    program_genes: list[str]  # the measured genes the score used
    unmeasured_genes: list[str]  # known genes the model does not measure (left out of the score)
    n_candidates: int
    hits: list[ScreenHit]

    def table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([h.model_dump() for h in self.hits], columns=list(ScreenHit.model_fields))


class EmbedRequest(_Strict):
    counts: list[list[Count]] = Field(
        min_length=1, max_length=MAX_CELLS, description="cells x genes raw counts, columns in `genes` order"
    )
    genes: list[Gene] = Field(
        default_factory=list, max_length=MAX_GENES, description="column genes; empty: the model's genes in order"
    )


class EmbedResponse(BaseModel):
    request_id: str
    model: ModelInfo
    method: str  # which embedding: the model's encoder, or a PCA of its control cells
    dim: int
    genes_used: int
    genes_missing: int  # model genes absent from the request (counted as zero)
    embeddings: list[list[float]]

    def array(self) -> npt.NDArray[np.float32]:
        import numpy as np

        return np.asarray(self.embeddings, np.float32).reshape(len(self.embeddings), self.dim)


# ------------------------------------------------------------------------------------------------ Feedback


class FrameMeta(BaseModel):
    """A frame's metadata (what acquisition's `FrameView` carries besides the pixels)."""

    model_config = ConfigDict(extra="ignore")  # agents may send more than this version reads

    run_id: str = Field(default="", max_length=200)
    frame_id: int = Field(default=0, ge=0)
    t: int = Field(default=0, ge=0)
    p: int = Field(default=0, ge=0)
    c: int = Field(default=0, ge=0)
    z: int = Field(default=0, ge=0)
    channel: str | None = Field(default=None, max_length=200)
    well: str | None = Field(default=None, max_length=200)
    x_um: float | None = Field(default=None, allow_inf_nan=False)
    y_um: float | None = Field(default=None, allow_inf_nan=False)
    z_um: float | None = Field(default=None, allow_inf_nan=False)
    exposure_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    light_power: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    acquired_at: datetime | None = None
    bit_depth: int = Field(default=16, ge=1, le=16)


class FrameIn(FrameMeta):
    """A frame as JSON: metadata plus the plane as base64 little-endian bytes (for clients that cannot send
    binary). The binary form (`application/x-npy` body, metadata in the `X-Cellfarm-Frame` header) carries the
    same fields without the last three."""

    shape: list[Annotated[int, Field(ge=0, le=2**16)]] = Field(
        min_length=2, max_length=2, description="[height, width]"
    )
    dtype: str = Field(max_length=16, description="numpy dtype string: <u2 (uint16) or |u1 (uint8)")
    image_b64: str = Field(max_length=64 * 2**20)


class Revisit(BaseModel):
    """Image position `p` again soon (acquisition's `Revisit` action)."""

    action: Literal["revisit"] = "revisit"
    p: int
    delay_s: float = 0.0
    repeats: int = 3
    interval_s: float = 0.5
    z_planes: int = 1
    z_step_um: float = 1.0


class SetLightPower(BaseModel):
    action: Literal["set_light_power"] = "set_light_power"
    power: float


class SkipPosition(BaseModel):
    action: Literal["skip_position"] = "skip_position"
    p: int
    time_points: int | None = None


Action = Annotated[Revisit | SetLightPower | SkipPosition, Field(discriminator="action")]


class FrameDetection(BaseModel):
    """A dividing cell: centroid (row y, column x, pixels), model score, core area in pixels."""

    y: float
    x: float
    score: float
    area_px: int


class FrameDecision(BaseModel):
    run_id: str
    frame_id: int
    p: int
    model: str
    model_version: str
    event_score: float  # the frame's strongest mitosis evidence (the CNN's peak probability)
    detections: list[FrameDetection]
    actions: list[Action]
    server_ms: float  # from the request's arrival to its decision (queueing and batching included)
    batch_size: int  # frames in the model call this one was part of
