"""Bad input at every door, in one table: each malformed input gets one clear line and a failure code, and the lake
stays as it was.

Doors: the CLI's files and URLs (`cellfarm ingest`), SQL (`cellfarm sql`), plan files (`cellfarm acquire --plan`),
model references, the `--lake` URI, and the HTTP bodies of the served APIs. CLI rows run the real `cellfarm`
executable; each must exit 1 with exactly one line on stderr, `error: ...` naming the problem (no traceback), and
leave every Delta table at its version and no new file in the lake. HTTP rows go to one real server
(`cellfarm serve` on 127.0.0.1, a small synthetic atlas with a production model) and must answer the status
with a one-line `error` in a JSON body. Older, more detailed tests of single doors stay where they are
(tests/lake/test_bad_input.py, tests/serving/test_robustness.py, tests/acquisition/test_plan.py).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import lake
import models
from lake.synthetic import write_perturbseq_h5ad
from tests.conftest import CXG, GENE_REF, HPA, need, run_cli
from tests.lake.test_bad_input import truncated, unmappable_genes
from tests.serving.conftest import Server, run_server

TOKEN_HEADER = "Authorization"


@dataclass(frozen=True)
class Places:
    """Where a case's inputs live: a scratch folder, the lake under test, a port nothing listens on."""

    tmp: Path
    lake_dir: Path
    closed_port: int


@dataclass(frozen=True)
class Cli:
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    lake: bool = True  # run with --lake <the sweep's lake>


@dataclass(frozen=True)
class Http:
    path: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    auth: bool = True
    stream_mib: int = 0  # send this many MiB of body without a Content-Length


# ------------------------------------------------------------------------------------------------ the inputs


def _truncated_hpa(p: Places) -> Cli:
    lines = need(HPA).read_text().splitlines(keepends=True)
    cut = p.tmp / "subcellular_location.tsv"
    cut.write_text("".join(lines[:40]) + lines[40][:25])  # an interrupted download: cut inside a row
    return Cli(["ingest", "hpa", str(cut)])


def _plan(name: str, text: str) -> Callable[[Places], Cli]:
    def make(p: Places) -> Cli:
        path = p.tmp / f"{name}.yaml"
        path.write_text(text)
        return Cli(["acquire", "--twin", "--plan", str(path)])

    return make


CLI_CASES: list[tuple[str, Callable[[Places], Cli], str]] = [
    (
        "corrupt-h5ad",
        lambda p: Cli(["ingest", "atlas", str(truncated(p.tmp)[0])]),
        "is not a readable h5ad (HDF5) file",
    ),
    (
        "h5ad-wrong-gene-ids",
        lambda p: Cli(
            ["ingest", "atlas", str(unmappable_genes(p.tmp)[0])], {"CELLFARM_GENE_REFERENCE": str(need(GENE_REF))}
        ),
        "of 3 gene ids map to the gene reference",
    ),
    ("truncated-hpa-tsv", _truncated_hpa, "ends in the middle of a row"),
    ("missing-file", lambda p: Cli(["ingest", "hpa", str(p.tmp / "nope.tsv")]), "no such file"),
    (
        "url-closed-port",
        lambda p: Cli(["ingest", "atlas", f"http://127.0.0.1:{p.closed_port}/x.h5ad"]),
        "/x.h5ad: [Errno 111] Connection refused",
    ),
    ("url-unknown-scheme", lambda p: Cli(["ingest", "atlas", "gopher://host/x.h5ad"]), "unsupported source URL"),
    (
        "sql-bad",
        lambda p: Cli(["sql", "select nope from cells"]),
        'SQL error: Binder Error: Referenced column "nope" not found',
    ),
    ("sql-write-read-only", lambda p: Cli(["sql", f"copy (select 1) to '{p.tmp}/out.csv'"]), "read-only: COPY"),
    (
        "sql-file-outside-lake",
        lambda p: Cli(["sql", "select * from read_csv('/etc/passwd')"]),
        'Permission Error: Cannot access file "/etc/passwd"',
    ),
    (
        "plan-malformed-yaml",
        _plan("malformed", "channels: [GFP\n  exposure: : 10\n"),
        "does not parse: expected ',' or ']', but got ':' (line 2, column 11)",
    ),
    (
        "plan-invalid-useq",
        _plan("invalid", "channels:\n  - {config: GFP, exposure: -5}\n"),
        "not a valid MDASequence: channels.exposure: Input should be greater than 0",
    ),
    (
        "acquire-microscope-id-path",  # the id names the run's images and lock: never a way out of the lake
        lambda p: Cli(["acquire", "--twin", "--microscope-id", "../../escape"]),
        "microscope id '../../escape' must be letters, digits",
    ),
    ("plan-missing", lambda p: Cli(["acquire", "--twin", "--plan", str(p.tmp / "nope.yaml")]), "cannot read plan"),
    ("model-unknown-ref", lambda p: Cli(["promote", "no-such-model:1"]), "no model named 'no-such-model'"),
    (
        "lake-bad-scheme",
        lambda p: Cli(["--lake", "gopher://host/lake", "sql", "select 1"], lake=False),
        "unsupported storage URI scheme",
    ),
]

HTTP_CASES: list[tuple[str, Http, int, str]] = [
    (
        "malformed-json",
        Http("/predict", content=b'{"perturbations": [', headers={"content-type": "application/json"}),
        400,
        "body: Invalid JSON: EOF while parsing a list",
    ),
    (
        "wrong-types",
        Http("/predict", json={"perturbations": "STAT1"}),
        400,
        "invalid request: perturbations: Input should be a valid array",
    ),
    (
        "unknown-field",
        Http("/predict", json={"perturbations": ["GENE1"], "contxt": {}}),
        400,
        "contxt: Extra inputs are not permitted",
    ),
    ("unknown-gene", Http("/predict", json={"perturbations": ["NOTAGENE"]}), 422, "unknown perturbation(s): NOTAGENE"),
    # 17 MiB read in chunks: over VirtualCell's 16 MiB
    (
        "oversized-body",
        Http("/predict", headers={"content-type": "application/json"}, stream_mib=17),
        413,
        "over this route",
    ),
    (
        "missing-token",
        Http("/predict", json={"perturbations": ["GENE1"]}, auth=False),
        401,
        "missing or wrong bearer token",
    ),
    (
        "frame-not-npy",
        Http("/decide", content=b"not a frame", headers={"content-type": "application/x-npy"}),
        400,
        "not a .npy file",
    ),
]

CASES = [pytest.param("cli", make, expect, 1, id=name) for name, make, expect in CLI_CASES] + [
    pytest.param("http", req, expect, status, id=name) for name, req, status, expect in HTTP_CASES
]


# ------------------------------------------------------------------------------------------------ the places


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Places:
    """A lake with an atlas and the HPA table in it (so that every table has versions to keep)."""
    root = tmp_path_factory.mktemp("sweep")
    target = lake.Lake.open(root / "lake")
    lake.ingest_atlas(target, need(CXG))
    with socket.socket() as s:  # bound, never listening: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scratch = root / "inputs"
    scratch.mkdir()
    return Places(scratch, root / "lake", port)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server over a small synthetic atlas whose perturbation-mean model is in production."""
    root = tmp_path_factory.mktemp("sweep-serve")
    target = lake.Lake.open(root / "lake")
    atlas = write_perturbseq_h5ad(root / "synthetic.h5ad", n_cells=400, n_genes=60, n_perturbations=4, seed=3)
    lake.ingest_atlas(target, atlas, name="synthetic")
    models.set_stage(target, models.train(target, "perturbation-mean", "synthetic"), "production")
    with run_server(target, root) as srv:
        yield srv


def _state(lake_dir: Path) -> tuple[dict[str, int], set[str]]:
    """Every table's Delta version and every file of the lake but the download cache and the locks."""
    target = lake.Lake.open(lake_dir, create=False)
    versions = {name: target.version(name) for name in lake.TABLES}
    files = {
        str(f.relative_to(lake_dir))
        for f in lake_dir.rglob("*")
        if f.is_file() and f.relative_to(lake_dir).parts[0] not in ("_cache", "_state")
    }
    return versions, files


# ------------------------------------------------------------------------------------------------ the sweep


@pytest.mark.parametrize(("door", "given", "expect", "code"), CASES)
def test_bad_input_gets_one_clear_line_and_changes_nothing(
    door: str, given: Any, expect: str, code: int, places: Places, request: pytest.FixtureRequest
) -> None:
    if door == "http":
        server: Server = request.getfixturevalue("served")
        before = _state(Path(server.lake.root))
        _http(server, given, expect, code)
        assert _state(Path(server.lake.root)) == before  # a refused request logs no prediction
        return
    call: Cli = given(places)
    before = _state(places.lake_dir)
    proc = run_cli(*call.args, lake_dir=places.lake_dir if call.lake else None, **call.env)
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, len(lines)) == (code, 1), f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert expect in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert _state(places.lake_dir) == before


def _http(server: Server, req: Http, expect: str, status: int) -> None:
    headers = {**(server.auth if req.auth else {}), **req.headers}
    content: Any = req.content
    if req.stream_mib:
        content = (b" " * 2**20 for _ in range(req.stream_mib))
    resp = httpx.post(server.url + req.path, json=req.json, content=content, headers=headers, timeout=60)
    assert resp.status_code == status, resp.text[:500]
    error = resp.json()["error"]
    assert isinstance(error, str), resp.text
    assert error.strip(), resp.text
    assert "\n" not in error, error
    assert "Traceback" not in resp.text
    assert expect in error, error
