"""The trained imaging model behind the acquisition's `MitosisDetector` protocol, and its artifact on disk.

An artifact is a directory: `weights.pt` (the net's `state_dict`, written by `torch.save`) and `model.json`
(format, name, version, the net's hyper-parameters, the normalisation, the detection threshold and what the
model was trained on). `acquisition` is not imported: the protocol is structural, and the detections are this
module's own `MitosisDetection`s, with the fields `acquisition.DetectionLike` names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from models._artifacts import local_artifact, write_atomically
from models._errors import ArtifactError
from models.imaging._net import STRIDE, MitosisNet, Normalisation, find_peaks

__all__ = ["ARTIFACT_FORMAT", "KIND", "FrameDetections", "ImagingMitosisDetector", "MitosisDetection"]

ARTIFACT_FORMAT = "cellfarm.mitosis-cnn/1"
KIND = "mitosis-cnn"  # the registry's `kind` of these models (and the default registry name)
_WEIGHTS, _META = "weights.pt", "model.json"
_AREA_RADIUS = 10  # a mitotic nucleus is ~9 px across: its area is measured within this many pixels
# On a CPU, 2-frame forward passes are fastest per frame (measured on 512 x 512: 6.7 ms/frame for 2, 8.7 for 1,
# 12.6 for 8: bigger activations fall out of cache); a GPU takes a whole batch at once.
_CPU_PASS = 2


def _area_px(norm: npt.NDArray[np.float32], y: float, x: float) -> int:
    """Pixels of the nucleus at (y, x): 2 x 2 block means within `_AREA_RADIUS` above half their peak.

    Block means rather than pixels, so that a dim, noisy frame does not count noise spikes as area.
    """
    r0, c0 = max(round(y) - _AREA_RADIUS, 0), max(round(x) - _AREA_RADIUS, 0)
    win = norm[r0 : r0 + 2 * _AREA_RADIUS, c0 : c0 + 2 * _AREA_RADIUS]
    h, w = win.shape[0] // 2, win.shape[1] // 2
    if h == 0 or w == 0:
        return 0
    b = win[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
    peak = float(b.max())
    return 4 * int(np.count_nonzero(b >= 0.5 * peak)) if peak > 0 else 0


@dataclass(frozen=True, slots=True)
class MitosisDetection:
    """A dividing cell: centroid (row `y`, column `x`, pixels), heat-map probability `score`, core area in pixels."""

    y: float
    x: float
    score: float
    area_px: int


class FrameDetections(NamedTuple):
    """One frame's answer in a batch: its detections, and its event score (the heat map's maximum, 0-1)."""

    detections: list[MitosisDetection]
    event_score: float


class ImagingMitosisDetector:
    """A trained CNN that finds dividing cells in a 2-D nuclear-marker frame (`acquisition.MitosisDetector`).

    `score` of a detection is the heat map's probability at its peak (0-1, at least `threshold`); `area_px`
    is the bright core's area, measured on the frame. Detections are sorted by decreasing score.
    Thread-safe for concurrent calls (inference only reads the net).
    """

    name: str = KIND
    kind: ClassVar[str] = KIND

    def __init__(
        self,
        net: MitosisNet,
        *,
        version: str,
        threshold: float = 0.5,
        normalisation: Normalisation | None = None,
        info: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold is a probability in (0, 1), not {threshold}")
        self.version = version
        self.threshold = float(threshold)
        self.normalisation = normalisation or Normalisation()
        self.info = dict(info or {})
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    def __repr__(self) -> str:
        return f"ImagingMitosisDetector(version={self.version!r}, threshold={self.threshold:.3g})"

    @property
    def params(self) -> dict[str, Any]:
        """What defines the model besides its weights (the registry's `params`)."""
        return {
            "format": ARTIFACT_FORMAT,
            "threshold": self.threshold,
            "net": self.net.hparams,
            "normalisation": asdict(self.normalisation),
        }

    # ------------------------------------------------------------------ inference

    def _prepare(self, image: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float32], torch.Tensor, bool]:
        """The normalised frame, the net's input tensor, and whether the frame shows nuclei at all."""
        if image.ndim != 2:
            raise ValueError(f"the mitosis model takes a 2-D image, not shape {image.shape}")
        bg, level, noise, nuclei = self.normalisation.stats(image)
        norm = np.asarray(image, dtype=np.float32) - np.float32(bg)
        norm *= np.float32(1.0 / level)
        x = torch.from_numpy(norm)[None, None]
        h, w = norm.shape
        ph, pw = -h % STRIDE, -w % STRIDE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # zero is the background after normalisation
        if self.net.inputs == 2:  # the frame's noise level, as a constant second channel
            x = torch.cat([x, torch.full_like(x, noise)], dim=1)
        return norm, x.to(self.device), nuclei

    def heatmap(self, image: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Mitosis probability per 4 x 4 pixel cell, shape (ceil(H/4), ceil(W/4))."""
        img = np.asarray(image)
        if img.ndim == 2 and img.size == 0:
            return np.zeros((0, 0), np.float32)
        _, x, _ = self._prepare(img)
        with torch.inference_mode():
            prob = torch.sigmoid(self.net(x))[0, 0]
        out: npt.NDArray[np.float32] = prob.cpu().numpy()
        return out

    def _peaks(
        self, image: npt.NDArray[Any], threshold: float
    ) -> tuple[npt.NDArray[np.float32], list[tuple[float, float, float]]]:
        norm, x, nuclei = self._prepare(image)
        if not nuclei:
            # nothing in the frame stands out like a nucleus (a dark or empty field): no interphase level to
            # compare with, and no mitosis to find
            return norm, []
        with torch.inference_mode():
            prob = torch.sigmoid(self.net(x))[0, 0].cpu().numpy()
        return norm, self._frame_peaks(norm, prob, threshold)

    @staticmethod
    def _frame_peaks(
        norm: npt.NDArray[np.float32], prob: npt.NDArray[np.float32], threshold: float
    ) -> list[tuple[float, float, float]]:
        h, w = norm.shape
        # peaks in the padding (frames not a multiple of 4 pixels) are not in the frame
        return [(y, xx, p) for y, xx, p in find_peaks(prob, threshold) if y < h and xx < w]

    @staticmethod
    def _detections(norm: npt.NDArray[np.float32], peaks: list[tuple[float, float, float]]) -> list[MitosisDetection]:
        found = [MitosisDetection(y=y, x=x, score=p, area_px=_area_px(norm, y, x)) for y, x, p in peaks]
        found.sort(key=lambda d: -d.score)
        return found

    def detect_batch(
        self, images: Sequence[npt.NDArray[Any]], *, pass_size: int | None = None
    ) -> list[FrameDetections]:
        """Detect in many frames with batched forward passes: what adaptive batching buys on a CNN.

        Frames of one shape share passes of `pass_size` frames (default: the whole batch on a GPU, 2 on a CPU).
        Each frame's detections equal those of a single-frame call.
        """
        prepared = [self._prepare(np.asarray(img)) for img in images]
        step = pass_size or (len(images) if self.device.type == "cuda" else _CPU_PASS)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, x, _) in enumerate(prepared):
            groups.setdefault(tuple(x.shape), []).append(i)
        out: list[FrameDetections] = [FrameDetections([], 0.0)] * len(prepared)
        for idx in (ids[k : k + step] for ids in groups.values() for k in range(0, len(ids), step)):
            with torch.inference_mode():
                probs = torch.sigmoid(self.net(torch.cat([prepared[i][1] for i in idx])))[:, 0].cpu().numpy()
            for prob, i in zip(probs, idx, strict=True):
                norm, _, nuclei = prepared[i]
                if nuclei:
                    h, w = norm.shape
                    peaks = self._frame_peaks(norm, prob, self.threshold)
                    score = float(prob[: math.ceil(h / STRIDE), : math.ceil(w / STRIDE)].max())
                    out[i] = FrameDetections(self._detections(norm, peaks), score)
        return out

    def peaks(self, image: npt.ArrayLike, threshold: float | None = None) -> list[tuple[float, float, float]]:
        """(row, col, probability) of the heat map's peaks at or above `threshold` (default: the detector's)."""
        img = np.asarray(image)
        if img.ndim == 2 and img.size == 0:
            return []
        return self._peaks(img, self.threshold if threshold is None else threshold)[1]

    def __call__(self, image: np.ndarray) -> list[MitosisDetection]:
        img = np.asarray(image)
        if img.ndim == 2 and img.size == 0:
            return []
        norm, peaks = self._peaks(img, self.threshold)
        return self._detections(norm, peaks)

    # ------------------------------------------------------------------ artifact

    def save(self, path: str | Path) -> Path:
        """Write the artifact directory, replacing any artifact there.

        Atomically (a temporary sibling, then a rename), as the registry expects: a crash leaves either the
        old artifact or the new one, never half of one.
        """
        return write_atomically(path, self._write)

    def _write(self, out: Path) -> None:
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, out / _WEIGHTS)
        meta = {
            "format": ARTIFACT_FORMAT,
            "name": self.name,
            "version": self.version,
            "threshold": self.threshold,
            "stride": STRIDE,
            "net": self.net.hparams,
            "normalisation": asdict(self.normalisation),
            "training": self.info,
        }
        (out / _META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(
        cls, path: str | Path, *, version: str | None = None, device: str | torch.device = "cpu"
    ) -> ImagingMitosisDetector:
        """Read an artifact written by `save`; `version` overrides the recorded one (e.g. the registry's).

        `path` may be an `s3://` URI (a remote lake's registry): it is read from this machine's cached copy.
        Raises `ArtifactError` (one line) when the directory, a file, or a field is missing or corrupt.
        """
        root = local_artifact(path)
        if not root.is_dir():
            raise ArtifactError(f"no mitosis model at {root}: not a directory")
        for name in (_META, _WEIGHTS):
            if not (root / name).is_file():
                raise ArtifactError(f"mitosis model at {root} is incomplete: {name} is missing")
        try:
            meta = json.loads((root / _META).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"mitosis model at {root}: {_META} is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ArtifactError(f"mitosis model at {root}: format {found!r}, expected {ARTIFACT_FORMAT!r}")
        try:
            hparams = dict(meta["net"])
            net = MitosisNet(
                channels=(int(hparams["channels"][0]), int(hparams["channels"][1])),
                dilations=tuple(int(d) for d in hparams["dilations"]),
                inputs=int(hparams["inputs"]),
            )
            nm = meta["normalisation"]
            norm = Normalisation(
                block=int(nm["block"]),
                hi_percentile=float(nm["hi_percentile"]),
                fg_fraction=float(nm["fg_fraction"]),
                fg_sigmas=float(nm["fg_sigmas"]),
                min_fg_blocks=int(nm["min_fg_blocks"]),
                min_level_sigmas=float(nm["min_level_sigmas"]),
            )
            threshold = float(meta["threshold"])
            recorded = str(meta["version"])
            if int(meta["stride"]) != STRIDE or not math.isfinite(threshold):
                raise ValueError(f"stride {meta['stride']} or threshold {threshold} does not fit this code")
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ArtifactError(f"mitosis model at {root}: {_META} has a missing or bad field ({e!r})") from None
        try:
            state = torch.load(root / _WEIGHTS, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as e:  # torch raises many kinds (pickle, zip, size mismatch) for one cause: bad weights
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ArtifactError(f"mitosis model at {root}: {_WEIGHTS} cannot be read ({msg})") from None
        try:
            return cls(
                net,
                version=version if version is not None else recorded,
                threshold=threshold,
                normalisation=norm,
                info=dict(meta.get("training") or {}),
                device=device,
            )
        except ValueError as e:
            raise ArtifactError(f"mitosis model at {root}: {e}") from None
