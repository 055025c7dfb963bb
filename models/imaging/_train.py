"""Training the mitosis CNN on frames from the digital twin: data, crops, focal loss, threshold calibration."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from models._device import default_device
from models.imaging._data import LabelledFrames, PlateFactory, make_training_frames
from models.imaging._detector import ImagingMitosisDetector
from models.imaging._evaluate import match_detections, scores_from_counts
from models.imaging._net import STRIDE, MitosisNet, Normalisation

__all__ = [
    "DEFAULT_TWIN_SEEDS",
    "VALIDATION_TWIN_SEED",
    "TrainProgress",
    "calibrate_threshold",
    "heatmap_targets",
    "train_mitosis_model",
]

log = logging.getLogger(__name__)

# Twin plates the model learns from, and the one its threshold is tuned on. Evaluate on other seeds (the
# tests and the report use seeds below 1000) so that no cell the model has seen is scored.
DEFAULT_TWIN_SEEDS: tuple[int, ...] = tuple(range(1000, 1008))
VALIDATION_TWIN_SEED = 1999
_TARGET_SIGMA = 1.0  # heat-map cells (4 px): the width of the Gaussian bump painted at each mitotic centre
_FOCAL_ALPHA, _FOCAL_BETA = 2.0, 4.0  # CenterNet's focal loss


@dataclass(frozen=True)
class TrainProgress:
    """One line of training progress, given to `progress` after each epoch."""

    epoch: int
    epochs: int
    loss: float
    elapsed_s: float


def heatmap_targets(centroids: npt.NDArray[np.float64], height: int, width: int) -> npt.NDArray[np.float32]:
    """The heat map the net should paint for one frame: Gaussian bumps, exactly 1 at each centre's own cell.

    Centres outside the frame (cut by its edge) add their bump's tail but no positive cell.
    """
    hh, ww = math.ceil(height / STRIDE), math.ceil(width / STRIDE)
    out = np.zeros((hh, ww), np.float32)
    gi = np.arange(hh, dtype=np.float64)[:, None]
    gj = np.arange(ww, dtype=np.float64)[None, :]
    for r, c in np.asarray(centroids, dtype=np.float64).reshape(-1, 2):
        # in heat-map units: cell i is centred on pixel 4i + 1.5
        ci, cj = (r - (STRIDE - 1) / 2) / STRIDE, (c - (STRIDE - 1) / 2) / STRIDE
        bump = np.exp(-((gi - ci) ** 2 + (gj - cj) ** 2) / (2 * _TARGET_SIGMA**2)).astype(np.float32)
        np.maximum(out, bump, out=out)
        i, j = round(ci), round(cj)
        if 0 <= i < hh and 0 <= j < ww:
            out[i, j] = 1.0
    return out


def _focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss: rare positive cells, negatives near a centre are forgiven."""
    pos = target >= 1.0
    logp = torch.nn.functional.logsigmoid(logits)
    log1mp = torch.nn.functional.logsigmoid(-logits)
    p = logp.exp()
    pos_loss = -((1 - p) ** _FOCAL_ALPHA * logp)[pos].sum()
    neg_loss = -(((1 - target) ** _FOCAL_BETA) * p**_FOCAL_ALPHA * log1mp)[~pos].sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


class _Crops:
    """Random, augmented training crops: half of them placed on a mitotic cell (mitoses are rare)."""

    def __init__(self, data: LabelledFrames, norm: Normalisation, crop: int, rng: np.random.Generator) -> None:
        n, h, w = data.images.shape
        if crop % STRIDE or crop > min(h, w):
            raise ValueError(f"crop {crop} must be a multiple of {STRIDE} and fit in the {h} x {w} frames")
        self.images = data.images
        self.stats = np.array([norm.stats(img)[:3] for img in data.images], dtype=np.float32).reshape(-1, 3)
        self.targets = np.stack([heatmap_targets(c, h, w) for c in data.centroids])
        inside = [c[(c[:, 0] >= 0) & (c[:, 0] < h) & (c[:, 1] >= 0) & (c[:, 1] < w)] for c in data.centroids]
        self.mitoses = [(k, float(r), float(c)) for k, cs in enumerate(inside) for r, c in cs]
        self.crop, self.h, self.w, self.n = crop, h, w, n
        self.rng = rng

    def _origin(self, centre: float, size: int) -> int:
        lo = centre - self.crop + 8  # the cell lands anywhere but right at the crop's edge
        hi = centre - 8
        o = int(self.rng.uniform(lo, hi)) if hi > lo else int(centre - self.crop / 2)
        return int(np.clip(o // STRIDE * STRIDE, 0, size - self.crop))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, cs = self.crop, self.crop // STRIDE
        x = np.empty((size, 2, c, c), np.float32)
        y = np.empty((size, 1, cs, cs), np.float32)
        for b in range(size):
            if self.mitoses and self.rng.random() < 0.5:
                k, r, col = self.mitoses[int(self.rng.integers(len(self.mitoses)))]
                r0, c0 = self._origin(r, self.h), self._origin(col, self.w)
            else:
                k = int(self.rng.integers(self.n))
                r0 = int(self.rng.integers((self.h - c) // STRIDE + 1)) * STRIDE
                c0 = int(self.rng.integers((self.w - c) // STRIDE + 1)) * STRIDE
            bg, level, noise = self.stats[k]
            img = (self.images[k, r0 : r0 + c, c0 : c0 + c].astype(np.float32) - bg) / level
            tgt = self.targets[k, r0 // STRIDE : r0 // STRIDE + cs, c0 // STRIDE : c0 // STRIDE + cs]
            # the 8 flips and quarter turns: a cell has no preferred orientation, and the heat-map grid
            # (cell centres at 4i + 1.5) maps onto itself under all of them
            rot, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            img, tgt = np.rot90(img, rot), np.rot90(tgt, rot)
            if flip:
                img, tgt = img[:, ::-1], tgt[:, ::-1]
            x[b, 0], x[b, 1], y[b, 0] = img, noise, tgt
        return torch.from_numpy(x), torch.from_numpy(y)


def calibrate_threshold(
    detector: ImagingMitosisDetector,
    data: LabelledFrames,
    grid: Sequence[float] | None = None,
    *,
    f1_tolerance: float = 0.02,
) -> tuple[float, float]:
    """A heat-map threshold for `data`, and its F1: the highest within `f1_tolerance` of the best F1.

    Higher among near-equals because a false alarm is not free: the feedback policy answers it with a burst
    of extra frames, i.e. light dose on the cells.
    """
    thresholds = sorted(grid) if grid is not None else [round(0.1 + 0.05 * k, 2) for k in range(17)]
    h, w = data.images.shape[1:]
    counts = np.zeros((len(thresholds), 3), np.int64)
    for img, truth in zip(data.images, data.centroids, strict=True):
        peaks = detector.peaks(img, thresholds[0])
        for t_i, thr in enumerate(thresholds):
            kept = [_Point(y, x) for y, x, p in peaks if p >= thr]
            counts[t_i] += match_detections(kept, truth, (h, w))
    f1 = [scores_from_counts(*map(int, c)).f1 for c in counts]
    best = max(i for i in range(len(thresholds)) if f1[i] >= max(f1) - f1_tolerance)
    return float(thresholds[best]), float(f1[best])


@dataclass(frozen=True)
class _Point:
    y: float
    x: float


def _digest(net: MitosisNet) -> str:
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def train_mitosis_model(
    out_dir: str | Path | None = None,
    *,
    plates: PlateFactory,
    seed: int = 0,
    n_frames: int = 240,
    epochs: int = 20,
    crops_per_frame: int = 16,
    crop: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    channels: tuple[int, int] = (8, 16),
    dilations: tuple[int, ...] = (1, 2, 4),
    twin_seeds: Sequence[int] = DEFAULT_TWIN_SEEDS,
    val_twin_seed: int = VALIDATION_TWIN_SEED,
    n_val_frames: int = 60,
    frame_size: int = 512,
    version: str | None = None,
    device: str | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> ImagingMitosisDetector:
    """Train the mitosis CNN on frames of simulated plates; save it to `out_dir` when given.

    `plates` makes a plate per seed (the digital twin: see `models.imaging.Plate`). `n_frames` frames
    (randomised exposure, light power, defocus, plate age; see `make_training_frames`) from the `twin_seeds`
    plates; each epoch draws `crops_per_frame` augmented `crop`-pixel crops per frame.
    The detection threshold is then set for the best F1 on `n_val_frames` frames of another plate
    (`val_twin_seed`). Deterministic in `seed` on CPU. `device`: None picks CUDA when there is one, else the
    CPU; the returned detector runs on the CPU. `version` defaults to "cnn-" + a digest of the weights.
    """
    t0 = time.perf_counter()
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7EA1]))
    norm = Normalisation()

    train = make_training_frames(plates, n_frames, twin_seeds=twin_seeds, seed=seed, size=frame_size)
    val = make_training_frames(plates, n_val_frames, twin_seeds=(val_twin_seed,), seed=seed + 1, size=frame_size)
    log.info(
        "mitosis-cnn: %d training frames (%d mitoses), %d validation frames (%d), made in %.1f s",
        len(train),
        train.n_mitoses,
        len(val),
        val.n_mitoses,
        time.perf_counter() - t0,
    )
    crops = _Crops(train, norm, crop, rng)
    net = MitosisNet(channels, dilations).to(dev)
    steps_per_epoch = max(1, n_frames * crops_per_frame // batch_size)
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.15)
    net.train()
    for epoch in range(1, epochs + 1):
        running = 0.0
        for _ in range(steps_per_epoch):
            x, y = crops.batch(batch_size)
            loss = _focal_loss(net(x.to(dev)), y.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            running += float(loss.detach())
        stats = TrainProgress(epoch, epochs, running / steps_per_epoch, time.perf_counter() - t0)
        log.info("mitosis-cnn: epoch %d/%d loss %.4f (%.1f s)", epoch, epochs, stats.loss, stats.elapsed_s)
        if progress is not None:
            progress(stats)

    net = net.cpu().eval()
    detector = ImagingMitosisDetector(net, version=version or f"cnn-{_digest(net)}")
    threshold, val_f1 = calibrate_threshold(detector, val)
    detector.threshold = threshold
    detector.info = {
        "seed": seed,
        "n_frames": n_frames,
        "epochs": epochs,
        "crops_per_frame": crops_per_frame,
        "crop": crop,
        "batch_size": batch_size,
        "lr": lr,
        "twin_seeds": [int(s) for s in twin_seeds],
        "val_twin_seed": val_twin_seed,
        "n_val_frames": n_val_frames,
        "frame_size": frame_size,
        "train_mitoses": train.n_mitoses,
        "val_f1": round(val_f1, 4),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "device": str(dev),
        "torch": torch.__version__,
    }
    log.info(
        "mitosis-cnn: threshold %.2f (validation F1 %.3f), %.1f s in all",
        threshold,
        val_f1,
        detector.info["train_seconds"],
    )
    if out_dir is not None:
        detector.save(out_dir)
    return detector
