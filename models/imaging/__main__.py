"""`python -m models.imaging train OUT_DIR` / `evaluate MODEL_DIR`: train the mitosis CNN, or score it against
the classical detector on held-out twin plates (both need the digital twin, `acquisition.twin`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

import numpy as np

from models.imaging._data import render_frames
from models.imaging._detector import ImagingMitosisDetector
from models.imaging._evaluate import match_detections, scores_from_counts
from models.imaging._train import DEFAULT_TWIN_SEEDS, VALIDATION_TWIN_SEED, train_mitosis_model

# (exposure ms, light power %, defocus µm): the twin's default light, dimmer and dimmer, clipped, out of focus
SETTINGS: tuple[tuple[float, float, float], ...] = (
    (50.0, 50.0, 0.0),
    (20.0, 50.0, 0.0),
    (3.0, 10.0, 0.0),
    (2.0, 5.0, 0.0),
    (1.0, 5.0, 0.0),
    (100.0, 100.0, 0.0),
    (20.0, 50.0, 5.0),
    (20.0, 50.0, 8.0),
)


def _train(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k in ("n_frames", "epochs", "device", "version") and v is not None}
    det = train_mitosis_model(args.out_dir, seed=args.seed, **given)
    print(f"{det.name} {det.version}: threshold {det.threshold:.2f}, {det.info['train_seconds']} s -> {args.out_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from acquisition import detect_mitoses  # the classical baseline

    det = ImagingMitosisDetector.load(args.model_dir)
    used = {*det.info.get("twin_seeds", DEFAULT_TWIN_SEEDS), det.info.get("val_twin_seed", VALIDATION_TWIN_SEED)}
    if seen := sorted(used & set(args.seeds)):
        print(f"twin seeds {seen} were used in training: pick others", file=sys.stderr)
        return 2
    print(f"{det.name} {det.version} vs classical, twin seeds {args.seeds}, {args.frames} fields each")
    print("| exposure ms | power % | defocus µm | mitoses | CNN P / R / F1 | classical P / R / F1 |")
    print("|---|---|---|---|---|---|")
    times: list[float] = []
    for exposure, power, dz in SETTINGS:
        cnn, classical, n = np.zeros(3, np.int64), np.zeros(3, np.int64), 0
        for seed in args.seeds:
            data = render_frames(
                twin_seed=seed, n_frames=args.frames, exposure_ms=exposure, power_pct=power, defocus_um=dz
            )
            n += data.n_mitoses
            for img, truth in zip(data.images, data.centroids, strict=True):
                t0 = time.perf_counter()
                found = det(img)
                times.append(time.perf_counter() - t0)
                cnn += match_detections(found, truth, img.shape)
                classical += match_detections(detect_mitoses(img), truth, img.shape)
        c, k = scores_from_counts(*map(int, cnn)), scores_from_counts(*map(int, classical))
        print(
            f"| {exposure:g} | {power:g} | {dz:g} | {n} | {c.precision:.2f} / {c.recall:.2f} / {c.f1:.2f} "
            f"| {k.precision:.2f} / {k.recall:.2f} / {k.f1:.2f} |"
        )
    print(f"CNN inference: median {1000 * float(np.median(times)):.1f} ms per frame")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.imaging", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train on the digital twin and save the artifact")
    t.add_argument("out_dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--n-frames", type=int, default=None, help="training frames (default: train_mitosis_model's)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    t.add_argument("--version", default=None)
    t.set_defaults(run=_train)
    e = sub.add_parser("evaluate", help="precision / recall / F1 vs the classical detector on held-out plates")
    e.add_argument("model_dir")
    e.add_argument("--seeds", type=int, nargs="+", default=[99, 123])
    e.add_argument("--frames", type=int, default=30)
    e.set_defaults(run=_evaluate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
