"""Atlas ingest into the SOMA census and the Delta tables, on the shared real files and generated ones."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import cellxgene_census
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tiledbsoma

import lake
from lake.synthetic import write_perturbseq_h5ad
from tests.conftest import CXG, GENE_REF, PAPALEXI, PBMC, need

REF_IDS = ["ENSG00000141510", "ENSG00000012048", "ENSG00000139618", "ENSG00000146648", "ENSG00000157764"]
REF_SYMBOLS = ["TP53", "BRCA1", "BRCA2", "EGFR", "BRAF"]


def _write(path: Path, x: object, var_index: list[str], **obs_cols: list[object]) -> Path:
    n = x.shape[0]  # type: ignore[attr-defined]
    obs = pd.DataFrame(obs_cols or {"k": np.arange(n)}, index=[f"c{i}" for i in range(n)])
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=var_index)).write_h5ad(path)
    return path


def test_papalexi_groups_match_the_source(papalexi_lake: lake.Lake) -> None:
    src = ad.read_h5ad(PAPALEXI, backed="r").obs["target_gene"].astype(str)
    expected = src.where(src != "non-targeting", None).value_counts(dropna=False)
    got = lake.query(papalexi_lake, "select perturbation, count(*) as n from cells group by 1").to_pandas()
    assert len(got) == len(expected) == 26  # 25 targets + the non-targeting controls (null perturbation)
    got_map = {(None if pd.isna(p) else p): n for p, n in zip(got["perturbation"], got["n"], strict=True)}
    assert got_map == {(None if pd.isna(k) else k): v for k, v in expected.items()}
    ctrl = lake.query(papalexi_lake, "select count(*) from cells where is_control").column(0)[0].as_py()
    assert ctrl == 2386
    guides = lake.query(papalexi_lake, "select count(distinct guide_id) from cells").column(0)[0].as_py()
    assert guides == ad.read_h5ad(PAPALEXI, backed="r").obs["guide_id"].nunique()


def test_papalexi_registry_row(papalexi_lake: lake.Lake) -> None:
    row = papalexi_lake.find_dataset(name="papalexi2021")
    assert row is not None
    assert (row["kind"], row["n_obs"], row["n_vars"], row["counts_source"]) == ("atlas", 20729, 299, "X")
    assert row["gene_id_source"] == "symbol"
    assert row["perturbation_column"] == "target_gene"
    assert 0 < row["n_unmapped_genes"] < 299 * 0.5  # retired GENCODE symbols are kept, not dropped
    assert row["soma_timestamp"] == papalexi_lake.committed_soma_timestamp()


def test_census_client_reads_the_lab_atlas(papalexi_lake: lake.Lake) -> None:
    src = ad.read_h5ad(PAPALEXI)
    ctx = tiledbsoma.SOMATileDBContext(timestamp=papalexi_lake.committed_soma_timestamp())
    with cellxgene_census.open_soma(uri=papalexi_lake.settings.soma_uri, context=ctx) as census:
        got = cellxgene_census.get_anndata(census, "Homo sapiens", obs_value_filter="perturbation == 'STAT1'")
        presence = cellxgene_census.get_presence_matrix(census, "Homo sapiens")
    want = src[src.obs["target_gene"] == "STAT1"]
    assert got.n_obs == want.n_obs == 444
    assert sorted(got.obs.index) == sorted(want.obs_names)
    # Same counts, cell by cell and gene by gene (var is keyed by the mapped id; map back via source ids).
    genes = lake.query(papalexi_lake, "select ensembl_id, source_id from dataset_genes").to_pandas()
    to_src = dict(zip(genes["ensembl_id"], genes["source_id"], strict=True))
    got_df = pd.DataFrame(got.X.toarray(), index=got.obs.index, columns=[to_src[f] for f in got.var["feature_id"]])
    want_df = pd.DataFrame(want.X.toarray(), index=want.obs_names, columns=want.var_names)
    pd.testing.assert_frame_equal(got_df.loc[want_df.index, want_df.columns], want_df, check_dtype=False)
    assert presence.shape[1] == 299
    assert presence.sum() == 299


def test_reingest_same_file_is_a_noop(papalexi_lake: lake.Lake) -> None:
    before = papalexi_lake.version("cells"), papalexi_lake.version("datasets")
    result = lake.ingest_atlas(papalexi_lake, PAPALEXI, name="another-name")
    assert result.status == "unchanged"
    assert result.name == "papalexi2021"
    assert (papalexi_lake.version("cells"), papalexi_lake.version("datasets")) == before


def test_datasets_append_with_one_var_axis(tmp_path: Path, lake_dir: Path) -> None:
    ref = pd.read_csv(need(GENE_REF), header=None, nrows=400)
    ids = ref[0].tolist()
    target = lake.Lake.open(lake_dir)
    a = write_perturbseq_h5ad(tmp_path / "a.h5ad", n_cells=300, n_genes=200, gene_ids=ids[:200], seed=1)
    b = write_perturbseq_h5ad(tmp_path / "b.h5ad", n_cells=200, n_genes=200, gene_ids=ids[100:300], seed=2)
    c = write_perturbseq_h5ad(tmp_path / "c.h5ad", n_cells=100, n_genes=100, gene_ids=ids[150:250], seed=3)
    for f in (a, b, c):
        assert lake.ingest_atlas(target, f).status == "ingested"
    genes = lake.query(target, "select ensembl_id, soma_joinid, n_datasets from genes").to_pandas()
    assert len(genes) == 300
    assert genes["soma_joinid"].is_unique
    assert sorted(genes["soma_joinid"]) == list(range(300))
    assert genes.set_index("ensembl_id").loc[ids[160], "n_datasets"] == 3
    assert (genes.set_index("ensembl_id").loc[ids[0]]["n_datasets"]) == 1
    with lake.open_experiment(
        target.settings.soma_uri, "homo_sapiens", timestamp=target.committed_soma_timestamp()
    ) as e:
        var = e.ms["RNA"].var.read().concat().to_pandas()
        assert len(var) == 300
        assert var.set_index("feature_id").loc[ids[160], "n_measured_obs"] == 600
        with e.axis_query("RNA", obs_query=tiledbsoma.AxisQuery(value_filter="dataset_id == 'x'")) as q:
            assert q.n_obs == 0
        joinids = e.obs.read(column_names=["soma_joinid"]).concat()["soma_joinid"].to_pylist()
    assert joinids == list(range(600))
    # A cell of the third file reads back with its own counts, through the shared var axis.
    src = ad.read_h5ad(c)
    with (
        lake.open_experiment(
            target.settings.soma_uri, "homo_sapiens", timestamp=target.committed_soma_timestamp()
        ) as e,
        e.axis_query(
            "RNA", obs_query=tiledbsoma.AxisQuery(value_filter="obs_id == 'cell_7' and dataset_id != ''")
        ) as q,
    ):
        got = q.to_anndata(X_name="raw")
    mine = got[
        got.obs["dataset_id"]
        == lake.query(target, "select dataset_id from datasets where name='c'").column(0)[0].as_py()
    ]
    got_row = pd.Series(mine.X.toarray()[0], index=mine.var["feature_id"])
    want_row = pd.Series(src.X[7].toarray()[0], index=src.var_names)
    assert (got_row[want_row.index] == want_row).all()
    assert got_row.drop(want_row.index).sum() == 0


def test_scaled_pbmc_is_refused_with_what_was_found(tmp_lake: lake.Lake) -> None:
    with pytest.raises(lake.InvalidInputError) as e:
        lake.ingest_atlas(tmp_lake, need(PBMC))
    msg = str(e.value)
    assert "no raw integer counts" in msg
    assert "X holds negative values" in msg
    assert "raw.X holds non-integer" in msg
    assert "\n" not in msg
    assert tmp_lake.read("datasets").num_rows == 0


def test_cellxgene_file_takes_raw_and_keeps_ontologies(tmp_lake: lake.Lake) -> None:
    r = lake.ingest_atlas(tmp_lake, need(CXG))
    assert (r.counts_source, r.n_obs, r.n_vars, r.n_unmapped_genes) == ("raw.X", 2, 7, 0)
    cells = lake.query(tmp_lake, "select * from cells").to_pylist()
    assert {c["cell_type_ontology_term_id"] for c in cells} == {"CL:0000066"}
    assert {c["tissue_ontology_term_id"] for c in cells} == {"UBERON:0002048"}
    assert {c["donor_id"] for c in cells} == {"donor_1"}
    assert all(c["perturbation"] is None and c["is_control"] is None for c in cells)


@pytest.mark.parametrize("layout", ["csr", "csc", "dense", "int32"])
def test_matrix_layouts(tmp_path: Path, tmp_lake: lake.Lake, layout: str) -> None:
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.7, size=(40, 5)).astype(np.float32)
    x = {
        "csr": sp.csr_matrix(dense),
        "csc": sp.csc_matrix(dense),
        "dense": dense,
        "int32": sp.csr_matrix(dense.astype(np.int32)),
    }[layout]
    f = _write(tmp_path / f"{layout}.h5ad", x, REF_IDS)
    r = lake.ingest_atlas(tmp_lake, f)
    assert (r.n_obs, r.n_vars) == (40, 5)
    sums = lake.query(tmp_lake, "select obs_id, raw_sum, nnz from cells order by soma_joinid").to_pandas()
    np.testing.assert_array_equal(sums["raw_sum"].to_numpy(), dense.sum(axis=1))
    np.testing.assert_array_equal(sums["nnz"].to_numpy(), (dense > 0).sum(axis=1))


def test_counts_from_layer_when_x_is_normalized(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    counts = sp.csr_matrix(np.random.default_rng(1).poisson(2.0, size=(30, 5)).astype(np.float32))
    norm = sp.csr_matrix(np.log1p(counts.toarray() / 3.3))
    a = ad.AnnData(X=norm, var=pd.DataFrame(index=REF_IDS), layers={"counts": counts})
    a.obs_names = [f"c{i}" for i in range(30)]
    a.write_h5ad(tmp_path / "layer.h5ad")
    r = lake.ingest_atlas(tmp_lake, tmp_path / "layer.h5ad")
    assert r.counts_source == "layers/counts"
    total = lake.query(tmp_lake, "select sum(raw_sum) from cells").column(0)[0].as_py()
    assert total == counts.sum()


def test_odd_gene_ids(tmp_path: Path, lake_dir: Path) -> None:
    x = sp.csr_matrix(np.ones((3, 5), dtype=np.float32))
    target = lake.Lake.open(lake_dir, gene_reference=str(need(GENE_REF)))
    versioned = [f"{g}.{i + 3}" for i, g in enumerate(REF_IDS)]
    r = lake.ingest_atlas(target, _write(tmp_path / "v.h5ad", x, versioned))
    assert r.n_unmapped_genes == 0
    lower = [s.lower() for s in REF_SYMBOLS[:4]] + ["NOT_A_GENE"]
    r2 = lake.ingest_atlas(target, _write(tmp_path / "s.h5ad", x * 2, lower))
    assert r2.n_unmapped_genes == 1
    genes = lake.query(target, "select ensembl_id, symbol, n_datasets from genes order by ensembl_id").to_pylist()
    by_id = {g["ensembl_id"]: g for g in genes}
    assert by_id["ENSG00000141510"]["symbol"] == "TP53"
    assert by_id["ENSG00000141510"]["n_datasets"] == 2
    assert by_id["NOT_A_GENE"]["n_datasets"] == 1


def test_symbols_without_a_reference_need_one(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    f = _write(tmp_path / "s.h5ad", sp.csr_matrix(np.ones((2, 5), dtype=np.float32)), REF_SYMBOLS)
    with pytest.raises(lake.InvalidInputError, match="needs a gene reference"):
        lake.ingest_atlas(tmp_lake, f)


def test_perturbation_conventions(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    x = sp.csr_matrix(np.ones((5, 5), dtype=np.float32))
    f = _write(
        tmp_path / "p.h5ad", x, REF_IDS,
        perturbation=["TP53", "ctrl", "TP53+BRCA1", "BRCA1 + ctrl", None],
        sgRNA=["g1", "g2", "g3", "g4", None],
    )  # fmt: skip
    lake.ingest_atlas(tmp_lake, f)
    rows = lake.query(tmp_lake, "select perturbation, is_control, guide_id from cells order by soma_joinid").to_pylist()
    assert [(r["perturbation"], r["is_control"], r["guide_id"]) for r in rows] == [
        ("TP53", False, "g1"),
        (None, True, "g2"),
        ("TP53+BRCA1", False, "g3"),
        ("BRCA1", False, "g4"),
        (None, None, None),
    ]


def test_cellxgene_genetic_perturbation_columns(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    a = ad.AnnData(X=sp.csr_matrix(np.ones((3, 5), dtype=np.float32)), var=pd.DataFrame(index=REF_IDS))
    a.obs_names = ["a", "b", "c"]
    a.obs["genetic_perturbation_id"] = pd.Categorical(["P1", "P1 || P2", "NT1"])
    a.obs["genetic_perturbation_strategy"] = ["CRISPR knockout screen", "CRISPR knockout screen", "control"]
    a.uns["genetic_perturbations"] = {
        "P1": {"role": "targeting", "target_features": {"ENSG00000141510": "TP53"}},
        "P2": {"role": "targeting", "target_features": {"ENSG00000012048": "BRCA1"}},
        "NT1": {"role": "control"},
    }
    a.write_h5ad(tmp_path / "cxg7.h5ad")
    lake.ingest_atlas(tmp_lake, tmp_path / "cxg7.h5ad")
    rows = lake.query(tmp_lake, "select perturbation, is_control, guide_id from cells order by obs_id").to_pylist()
    assert [(r["perturbation"], r["is_control"]) for r in rows] == [
        ("TP53", False),
        ("TP53+BRCA1", False),
        (None, True),
    ]
    assert rows[1]["guide_id"] == "P1 || P2"


def test_name_clash_with_other_content_is_refused(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    x = sp.csr_matrix(np.ones((2, 5), dtype=np.float32))
    lake.ingest_atlas(tmp_lake, _write(tmp_path / "one.h5ad", x, REF_IDS), name="same")
    with pytest.raises(lake.InvalidInputError, match="already exists"):
        lake.ingest_atlas(tmp_lake, _write(tmp_path / "two.h5ad", x * 3, REF_IDS), name="same")
