"""The frame wire formats, shared by the server and `serving.client`.

- binary (preferred): the body is one `.npy` file (numpy's own format: dtype and shape in a short header, then
  the raw plane), `Content-Type: application/x-npy`; the metadata is a compact JSON object in the
  `X-Cellfarm-Frame` header. A 512 x 512 uint16 frame is 512 KiB + 128 bytes on the wire, read without a copy.
- JSON: the metadata fields plus `shape`, `dtype` and `image_b64` (base64 of the little-endian plane): what
  acquisition's `remote` policy sends today. A third larger and slower; kept for compatibility.

Either way a frame is a 2-D uint8 or uint16 plane of at most `MAX_SIDE` pixels a side.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from serving._schemas import FrameIn, FrameMeta

__all__ = [
    "FRAME_HEADER",
    "MAX_SIDE",
    "NPY_MEDIA_TYPE",
    "Frame",
    "FrameError",
    "decode_json_frame",
    "decode_npy",
    "encode_npy",
    "meta_header",
]

NPY_MEDIA_TYPE = "application/x-npy"
FRAME_HEADER = "X-Cellfarm-Frame"
MAX_SIDE = 8192
MIN_SIDE = 8
_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
_NPY_MAGIC = b"\x93NUMPY"
# the JSON form's dtype names; without a byte order the format's little-endian applies
_JSON_DTYPES: dict[str, np.dtype[Any]] = {
    **{name: np.dtype("<u2") for name in ("<u2", "u2", "=u2", "uint16")},
    ">u2": np.dtype(">u2"),
    **{name: np.dtype("u1") for name in ("|u1", "<u1", ">u1", "=u1", "u1", "uint8")},
}


class FrameError(ValueError):
    """A frame that is not one: bad encoding, dtype or shape (one line, for a 4xx)."""


@dataclass(frozen=True)
class Frame:
    meta: FrameMeta
    image: npt.NDArray[Any]
    received: float  # time.perf_counter() when the request was parsed: the start of `server_ms`


def check_image(image: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if image.ndim != 2:
        raise FrameError(f"a frame is a 2-D plane, not shape {list(image.shape)}")
    if image.dtype.newbyteorder("=") not in _DTYPES:
        raise FrameError(f"frame dtype must be uint16 or uint8, not {image.dtype}")
    h, w = image.shape
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise FrameError(f"frame sides must be {MIN_SIDE}-{MAX_SIDE} pixels, not {h} x {w}")
    return image


def decode_npy(body: bytes) -> npt.NDArray[Any]:
    if not body.startswith(_NPY_MAGIC):
        raise FrameError("body is not a .npy file (numpy.save output; magic \\x93NUMPY missing)")
    try:
        image = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # truncated, object dtype, bad header
        raise FrameError(f"body is not a readable .npy array: {' '.join(str(exc).split())[:160]}") from None
    if not isinstance(image, np.ndarray):
        raise FrameError("body is not a single .npy array")
    return check_image(image)


def encode_npy(image: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
    return buf.getvalue()


def meta_header(meta: FrameMeta | dict[str, Any]) -> str:
    data = meta.model_dump(mode="json", exclude_none=True) if isinstance(meta, FrameMeta) else meta
    return json.dumps(data, separators=(",", ":"), default=str)


def parse_meta_header(raw: str | None) -> FrameMeta:
    if not raw:
        return FrameMeta()
    try:
        return FrameMeta.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "header"
        raise FrameError(f"{FRAME_HEADER} header: {where}: {first.get('msg', 'invalid')}") from None


def decode_json_frame(frame: FrameIn) -> npt.NDArray[Any]:
    dtype = _JSON_DTYPES.get(frame.dtype.strip())  # named, never parsed: numpy's parser takes odd strings
    if dtype is None:
        raise FrameError(f"frame dtype must be uint16 or uint8 (e.g. '<u2', 'uint16'), not {frame.dtype[:20]!r}")
    h, w = frame.shape
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise FrameError(f"frame sides must be {MIN_SIDE}-{MAX_SIDE} pixels, not {h} x {w}")
    try:
        raw = base64.b64decode(frame.image_b64, validate=True)
    except (binascii.Error, ValueError):
        raise FrameError("image_b64 is not valid base64") from None
    if len(raw) != h * w * dtype.itemsize:
        raise FrameError(f"image_b64 holds {len(raw)} bytes; shape {[h, w]} of {dtype} needs {h * w * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(h, w)
