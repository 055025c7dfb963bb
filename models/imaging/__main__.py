"""`python -m models.imaging train|register|promote|evaluate`: train the mitosis CNN on the digital twin,
register it in a lake's model registry with its held-out scores, promote it past the feedback loop's gate, or
score it against the classical detector.

This file is a composition root, like the `cellfarm` command line: the only place in `models` that imports
`acquisition`, for the two things it contributes here, the digital twin (the simulator whose plates are the
training data, handed to the library as a `PlateFactory`) and the classical detector (the baseline).
tests/test_boundaries.py holds it to exactly these two imports.

    python -m models.imaging train artifacts/mitosis-cnn --lake ./.cellfarm/lake --promote
    python -m models.imaging register artifacts/mitosis-cnn --lake ./.cellfarm/lake --name mitosis-cnn
    python -m models.imaging promote mitosis-cnn:2 --lake ./.cellfarm/lake
    python -m models.imaging evaluate mitosis-cnn:production --lake ./.cellfarm/lake
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

import lake
from models._errors import ModelError
from models._registry import ModelRecord, set_stage
from models.imaging._data import Plate, render_frames
from models.imaging._detector import KIND, ImagingMitosisDetector
from models.imaging._evaluate import Located, match_detections, scores_from_counts
from models.imaging._registry import (
    HELDOUT_TWIN_SEEDS,
    detector_gate,
    heldout_metrics,
    load_detector,
    register_detector,
    resolve_detector,
)
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


def twin_plate(seed: int, size: int) -> Plate:
    """The digital twin's plate `seed` with a frozen clock and a `size` x `size` camera (a `PlateFactory`)."""
    from acquisition.twin import frozen_plate

    return frozen_plate(seed, size)


def classical(image: npt.NDArray[Any]) -> Sequence[Located]:
    """The classical detector of dividing cells, the baseline a learned one must beat."""
    from acquisition import detect_mitoses

    return detect_mitoses(image)


def _register(args: argparse.Namespace, det: ImagingMitosisDetector) -> int:
    """Score `det` on held-out plates, register it in `args.lake`, and promote it when asked and it passes."""
    target = lake.Lake.open(args.lake)
    metrics = heldout_metrics(
        det, twin_plate, seeds=args.heldout_seeds, n_frames=args.heldout_frames, baseline=classical
    )
    record = register_detector(target, det, name=args.name, metrics=metrics)
    print(
        f"registered {record.ref}: held-out precision {metrics['precision']:.2f} recall {metrics['recall']:.2f} "
        f"(dim light: {metrics['dim_precision']:.2f} / {metrics['dim_recall']:.2f}; classical "
        f"{metrics['baseline_dim_precision']:.2f} / {metrics['baseline_dim_recall']:.2f})"
    )
    if args.promote:
        return _promote(target, record)
    return 0


def _promote(target: lake.Lake, record: ModelRecord) -> int:
    passed, why = detector_gate(record)
    if passed:
        set_stage(target, record, "production")
        print(f"promoted {record.ref} to production")
        return 0
    print(f"not promoted: {record.ref} has {why}", file=sys.stderr)
    return 1


def _train(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k in ("n_frames", "epochs", "device", "version") and v is not None}
    det = train_mitosis_model(args.out_dir, plates=twin_plate, seed=args.seed, **given)
    print(f"{det.name} {det.version}: threshold {det.threshold:.2f}, {det.info['train_seconds']} s -> {args.out_dir}")
    return _register(args, det) if args.lake else 0


def _register_saved(args: argparse.Namespace) -> int:
    return _register(args, ImagingMitosisDetector.load(args.model_dir))


def _promote_registered(args: argparse.Namespace) -> int:
    target = lake.Lake.open(args.lake)
    return _promote(target, resolve_detector(target, args.model))


def _evaluate(args: argparse.Namespace) -> int:
    det = load_detector(lake.Lake.open(args.lake), args.model) if args.lake else ImagingMitosisDetector.load(args.model)
    used = {*det.info.get("twin_seeds", DEFAULT_TWIN_SEEDS), det.info.get("val_twin_seed", VALIDATION_TWIN_SEED)}
    if seen := sorted(used & set(args.seeds)):
        print(f"twin seeds {seen} were used in training: pick others", file=sys.stderr)
        return 2
    print(f"{det.name} {det.version} vs classical, twin seeds {args.seeds}, {args.frames} fields each")
    print("| exposure ms | power % | defocus µm | mitoses | CNN P / R / F1 | classical P / R / F1 |")
    print("|---|---|---|---|---|---|")
    times: list[float] = []
    for exposure, power, dz in SETTINGS:
        cnn, base, n = np.zeros(3, np.int64), np.zeros(3, np.int64), 0
        for seed in args.seeds:
            data = render_frames(
                twin_plate, twin_seed=seed, n_frames=args.frames, exposure_ms=exposure, power_pct=power, defocus_um=dz
            )
            n += data.n_mitoses
            for img, truth in zip(data.images, data.centroids, strict=True):
                t0 = time.perf_counter()
                found = det(img)
                times.append(time.perf_counter() - t0)
                cnn += match_detections(found, truth, img.shape)
                base += match_detections(classical(img), truth, img.shape)
        c, k = scores_from_counts(*map(int, cnn)), scores_from_counts(*map(int, base))
        print(
            f"| {exposure:g} | {power:g} | {dz:g} | {n} | {c.precision:.2f} / {c.recall:.2f} / {c.f1:.2f} "
            f"| {k.precision:.2f} / {k.recall:.2f} / {k.f1:.2f} |"
        )
    print(f"CNN inference: median {1000 * float(np.median(times)):.1f} ms per frame")
    return 0


def _registry_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--lake", required=required, default=None, help="register into this lake's model registry (a root URI)"
    )
    p.add_argument("--name", default=KIND, help=f"registry name (default: {KIND})")
    p.add_argument("--promote", action="store_true", help="make it production if it beats the classical detector")
    p.add_argument("--heldout-seeds", type=int, nargs="+", default=list(HELDOUT_TWIN_SEEDS), help="held-out plates")
    p.add_argument("--heldout-frames", type=int, default=20, help="fields per held-out plate and light")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.imaging", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train on the digital twin, save the artifact, register it with --lake")
    t.add_argument("out_dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--n-frames", type=int, default=None, help="training frames (default: train_mitosis_model's)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    t.add_argument("--version", default=None)
    _registry_options(t, required=False)
    t.set_defaults(run=_train)
    r = sub.add_parser("register", help="register a saved artifact, with its held-out scores")
    r.add_argument("model_dir")
    _registry_options(r, required=True)
    r.set_defaults(run=_register_saved)
    p = sub.add_parser("promote", help="make a registered version production if its held-out scores pass the gate")
    p.add_argument("model", help="a registry reference, e.g. mitosis-cnn:2")
    p.add_argument("--lake", required=True, help="the lake whose registry holds it")
    p.set_defaults(run=_promote_registered)
    e = sub.add_parser("evaluate", help="precision / recall / F1 vs the classical detector on held-out plates")
    e.add_argument("model", help="an artifact folder, or with --lake a registry reference (e.g. mitosis-cnn:2)")
    e.add_argument("--lake", default=None, help="resolve MODEL in this lake's model registry")
    e.add_argument("--seeds", type=int, nargs="+", default=list(HELDOUT_TWIN_SEEDS))
    e.add_argument("--frames", type=int, default=30)
    e.set_defaults(run=_evaluate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        code: int = args.run(args)
    except (ModelError, lake.LakeError, ValueError) as e:  # bad input: one line, no traceback
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
