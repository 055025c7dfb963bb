"""Streaming reader of the parts of an h5ad file the lake ingests: obs, var and a raw-counts matrix.

The matrix is read in row chunks straight from HDF5 so that an atlas larger than memory ingests with
bounded memory; obs and var are small and read whole.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import h5py
import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from lake._errors import InvalidInputError

__all__ = ["CountsMatrix", "H5ad", "RowChunk"]

Where = Literal["X", "raw.X", "layers/counts"]


@dataclass(frozen=True)
class RowChunk:
    """Rows ``[start, stop)`` of a matrix as COO triplets (``rows`` relative to the whole file)."""

    start: int
    stop: int
    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    data: npt.NDArray[Any]
    row_nnz: npt.NDArray[np.int64]


class CountsMatrix:
    """One 2-D matrix element of an h5ad file (CSR, CSC or dense), readable in row chunks."""

    def __init__(self, elem: h5py.Group | h5py.Dataset | sp.spmatrix | np.ndarray, where: Where, var: pd.DataFrame):
        self.where = where
        self.var = var
        self._elem: Any = elem
        self._format: Literal["csr", "csc", "dense", "memory"]
        if isinstance(elem, h5py.Dataset):
            self._format = "dense"
            self.shape: tuple[int, int] = (int(elem.shape[0]), int(elem.shape[1]))
        elif isinstance(elem, h5py.Group):
            enc = elem.attrs.get("encoding-type", elem.attrs.get("h5sparse_format", ""))
            enc = enc.decode() if isinstance(enc, bytes) else str(enc)
            if "csr" in enc:
                self._format = "csr"
            elif "csc" in enc:
                self._format = "csc"
            else:
                raise InvalidInputError(f"{where} has an unsupported encoding {enc!r}")
            shape = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape"))
            self.shape = (int(shape[0]), int(shape[1]))
        else:
            self._format = "memory"
            self.shape = (int(elem.shape[0]), int(elem.shape[1]))
            self._elem = sp.csr_matrix(elem)
        self.dtype = np.dtype(self._dtype())

    def _dtype(self) -> Any:
        if self._format == "dense":
            return self._elem.dtype
        if self._format in ("csr", "csc"):
            return self._elem["data"].dtype
        return self._elem.dtype

    @property
    def nnz_estimate(self) -> int:
        if self._format in ("csr", "csc"):
            return int(self._elem["data"].shape[0])
        return self.shape[0] * self.shape[1]

    def _in_memory_csr(self) -> sp.csr_matrix:
        if self._format == "memory":
            out: sp.csr_matrix = self._elem
            return out
        # CSC on disk: a row stream would re-read every column; convert once (such files are rare and small).
        g = self._elem
        m = sp.csc_matrix((g["data"][...], g["indices"][...], g["indptr"][...]), shape=self.shape)
        csr = m.tocsr()
        self._elem, self._format = csr, "memory"
        return csr

    def iter_chunks(self, *, chunk_nnz: int = 8_000_000) -> Iterator[RowChunk]:
        """Yield row chunks of about ``chunk_nnz`` stored values each."""
        n_rows, n_cols = self.shape
        if self._format == "dense":
            step = max(1, chunk_nnz // max(n_cols, 1))
            for start in range(0, n_rows, step):
                stop = min(n_rows, start + step)
                block = np.asarray(self._elem[start:stop])
                r, c = np.nonzero(block)
                yield RowChunk(
                    start,
                    stop,
                    (r + start).astype(np.int64),
                    c.astype(np.int64),
                    block[r, c],
                    np.count_nonzero(block, axis=1).astype(np.int64),
                )
            return
        if self._format == "csc":
            self._in_memory_csr()
        if self._format == "memory":
            m = self._elem
            indptr = np.asarray(m.indptr, dtype=np.int64)
            data_src, ind_src = m.data, m.indices
        else:
            g = self._elem
            indptr = np.asarray(g["indptr"][...], dtype=np.int64)
            data_src, ind_src = g["data"], g["indices"]
        start = 0
        while start < n_rows:
            # The first row whose end passes the budget closes the chunk; at least one row per chunk.
            stop = int(np.searchsorted(indptr, indptr[start] + chunk_nnz, side="right")) - 1
            stop = min(max(stop, start + 1), n_rows)
            lo, hi = int(indptr[start]), int(indptr[stop])
            row_nnz = np.diff(indptr[start : stop + 1])
            rows = np.repeat(np.arange(start, stop, dtype=np.int64), row_nnz)
            yield RowChunk(
                start,
                stop,
                rows,
                np.asarray(ind_src[lo:hi], dtype=np.int64),
                np.asarray(data_src[lo:hi]),
                row_nnz,
            )
            start = stop

    def head_values(self, n_rows: int = 2000) -> npt.NDArray[Any]:
        """The stored values of the first rows: enough to tell counts from normalized data up front."""
        chunk = next(self.iter_chunks(chunk_nnz=max(1, n_rows * 64)), None)
        return chunk.data if chunk is not None else np.empty(0)


class H5ad:
    """An open h5ad file. Use as a context manager; every read error becomes :class:`InvalidInputError`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise InvalidInputError(f"{self.path} is not a readable h5ad (HDF5) file: {_reason(e)}") from None
        self._legacy: ad.AnnData | None = None
        try:
            if "obs" not in self._f or "var" not in self._f or "X" not in self._f:
                raise InvalidInputError(f"{self.path} is HDF5 but not an AnnData file (no obs/var/X)")
            if "encoding-type" not in self._f.attrs:
                # Files written by anndata < 0.7 store obs/var as compound records; anndata reads those.
                with warnings.catch_warnings():  # anndata's notes on moving old layouts are not the user's
                    warnings.simplefilter("ignore", FutureWarning)
                    self._legacy = ad.read_h5ad(self.path, backed="r")
            self.obs = self._read_frame("obs")
            self.var = self._read_frame("var")
        except InvalidInputError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise InvalidInputError(f"{self.path} is not a readable h5ad file: {_reason(e)}") from None

    def __enter__(self) -> H5ad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._legacy is not None and self._legacy.file.is_open:
            self._legacy.file.close()
        self._f.close()

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    def _read_frame(self, key: str) -> pd.DataFrame:
        if self._legacy is not None:
            frame = {"obs": self._legacy.obs, "var": self._legacy.var}.get(key)
            if frame is None:  # raw/var of a legacy file
                raw = self._legacy.raw
                if raw is None:
                    raise InvalidInputError(f"{self.path} has no {key}")
                frame = raw.var
            return frame.copy()
        out = ad.io.read_elem(self._f[key])
        if not isinstance(out, pd.DataFrame):
            raise InvalidInputError(f"{self.path}: {key} is not a dataframe")
        return out

    def uns(self, key: str) -> Any:
        if self._legacy is not None:
            return self._legacy.uns.get(key)
        if "uns" in self._f and key in self._f["uns"]:
            return ad.io.read_elem(self._f["uns"][key])
        return None

    def candidates(self) -> list[CountsMatrix]:
        """The matrices that may hold raw counts, in the order a curator would look: X, raw.X, layers['counts']."""
        out = [CountsMatrix(self._f["X"], "X", self.var)]
        if "raw" in self._f and "X" in self._f["raw"]:
            out.append(CountsMatrix(self._f["raw"]["X"], "raw.X", self._read_frame("raw/var")))
        elif "raw.X" in self._f:
            out.append(CountsMatrix(self._f["raw.X"], "raw.X", self._read_frame("raw/var")))
        if "layers" in self._f and "counts" in self._f["layers"]:
            out.append(CountsMatrix(self._f["layers"]["counts"], "layers/counts", self.var))
        return out


def _reason(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return msg.strip().rstrip(".")


def describe_values(values: npt.NDArray[Any]) -> str | None:
    """None when the values look like raw counts, else a short description of what they look like."""
    if values.size == 0:
        return None
    if values.dtype.kind in "iu":
        return "negative values" if values.dtype.kind == "i" and values.min() < 0 else None
    if values.dtype.kind != "f":
        return f"values of dtype {values.dtype}"
    if not np.isfinite(values).all():
        return "NaN or infinite values"
    lo = float(values.min())
    if lo < 0:
        return f"negative values (min {lo:.3g}): looks scaled / z-scored"
    frac = values[values != np.rint(values)]
    if frac.size:
        return f"non-integer values (e.g. {float(frac[0]):.4g}): looks normalized or log-transformed"
    return None
