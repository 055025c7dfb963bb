"""In process, no server: batched detection is single-frame detection, frame codecs, gene name resolution."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from acquisition.twin import TwinConfig, TwinSample
from models.imaging import ImagingMitosisDetector, MitosisNet, render_frames
from serving._frames import FrameError, decode_json_frame, decode_npy, encode_npy
from serving._genes import GeneVocab, UnknownGenesError
from serving._imaging import DetectorState, detect_batch
from serving._schemas import FrameIn


def test_one_model_call_per_batch_finds_what_single_frames_do() -> None:
    torch.manual_seed(0)
    images = list(
        render_frames(
            lambda seed, size: TwinSample(TwinConfig(seed=seed, time_scale=0, width=size, height=size)),
            twin_seed=5,
            n_frames=3,
        ).images
    )
    images.append(images[0][:203, :301].copy())  # not a multiple of the net's stride: padded, then cropped
    plain = ImagingMitosisDetector(MitosisNet(), version="t", threshold=0.5)
    # an untrained net, with its threshold set where it has peaks: the comparison needs detections
    level = float(np.quantile(np.concatenate([plain.heatmap(i).ravel() for i in images]), 0.995))
    detector = ImagingMitosisDetector(plain.net, version="t", threshold=level)
    batched = detect_batch(DetectorState("cnn", "t", "mitosis-cnn", "production", detector), images)
    assert sum(len(s.detections) for s in batched) > 4
    for image, scored in zip(images, batched, strict=True):
        single = detector(image)
        assert [(d.y, d.x, d.area_px) for d in scored.detections] == [(d.y, d.x, d.area_px) for d in single]
        np.testing.assert_allclose([d.score for d in scored.detections], [d.score for d in single], rtol=1e-5)
        assert scored.event_score == pytest.approx(float(detector.heatmap(image).max()), rel=1e-5)


def test_frame_codecs_round_trip_and_refuse_what_is_not_a_frame() -> None:
    image = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    np.testing.assert_array_equal(decode_npy(encode_npy(image)), image)
    np.testing.assert_array_equal(decode_npy(encode_npy(image.astype(">u2"))), image)  # any byte order
    for name, raw in (("<u2", image.astype("<u2")), ("uint16", image.astype("<u2")), (">u2", image.astype(">u2"))):
        frame = FrameIn(shape=[64, 80], dtype=name, image_b64=base64.b64encode(raw.tobytes()).decode())
        np.testing.assert_array_equal(decode_json_frame(frame), image)
    with pytest.raises(FrameError, match="dtype"):
        decode_json_frame(FrameIn(shape=[64, 80], dtype="4^", image_b64=""))
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FrameError, match="not a readable"):
        decode_npy(pickled.getvalue())  # pickled objects are never loaded


def test_gene_names_resolve_by_symbol_or_id_in_any_case() -> None:
    vocab = GeneVocab()
    vocab.add("STAT1", "ENSG00000115415")
    vocab.add("JAK2", "ENSG00000096968.14")
    assert vocab.symbol("stat1") == vocab.symbol("ENSG00000115415.21") == "STAT1"
    assert vocab.resolve_perturbation(" jak2 + STAT1 ") == ["JAK2", "STAT1"]
    assert vocab.resolve_perturbation("STAT1+") is None
    with pytest.raises(UnknownGenesError, match=r"unknown perturbation.*FOO, STAT1\+BAR"):
        vocab.resolve_perturbations(["STAT1", "FOO", "STAT1+BAR", "FOO"])
