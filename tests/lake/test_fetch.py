"""Sources given as URLs: downloaded from a real HTTP server on 127.0.0.1 into the cache, then ingested."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import lake
from tests.conftest import CXG, need


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def test_ingest_from_url_is_cached_and_checksummed(http_root: tuple[str, Path], tmp_lake: lake.Lake) -> None:
    base, root = http_root
    data = need(CXG).read_bytes()
    (root / "cxg.h5ad").write_bytes(data)
    seen: list[tuple[str, int, int | None]] = []
    r = lake.ingest_atlas(tmp_lake, f"{base}/cxg.h5ad", progress=lambda s, d, t: seen.append((s, d, t)))
    assert r.status == "ingested"
    row = tmp_lake.find_dataset(name="cxg")
    assert row is not None
    assert row["source_uri"] == f"{base}/cxg.h5ad"
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    cached = list((tmp_lake.settings.cache_dir / "downloads").rglob("cxg.h5ad"))
    assert len(cached) == 1
    assert cached[0].read_bytes() == data
    assert ("download", len(data), len(data)) in seen
    (root / "cxg.h5ad").unlink()  # the second run needs no server: the cache answers
    assert lake.ingest_atlas(tmp_lake, f"{base}/cxg.h5ad").status == "unchanged"


def test_url_errors_are_one_line(http_root: tuple[str, Path], tmp_lake: lake.Lake) -> None:
    base, _ = http_root
    with pytest.raises(lake.InvalidInputError, match=r"cannot download .*missing\.h5ad: File not found"):
        lake.ingest_atlas(tmp_lake, f"{base}/missing.h5ad")
    with pytest.raises(lake.InvalidInputError, match="unsupported source URL scheme 'ftp'"):
        lake.ingest_atlas(tmp_lake, "ftp://example.org/x.h5ad")
    assert tmp_lake.read("datasets").num_rows == 0
