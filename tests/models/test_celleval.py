"""cell-eval through `models._celleval`, on a small log1p slice of the Papalexi Perturb-seq."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from models._celleval import VCC_METRICS, CellEvalResult, margins, normalized_score, run_cell_eval
from models._errors import InvalidTrainingDataError
from tests.conftest import PAPALEXI, need

CONTROL = "non-targeting"
# Three knock-downs with real DE genes in 150 cells each (CD86, say, has none: its overlap would be 0).
TARGETS = ("IFNGR2", "JAK2", "STAT1")
VCC_NAMES = ("overlap_at_N", "discrimination_score_l1", "mae", "pearson_delta")


def _counts_slice() -> ad.AnnData:
    full = ad.read_h5ad(need(PAPALEXI))
    labels = full.obs["target_gene"].astype(str).to_numpy()
    keep = np.flatnonzero(labels == CONTROL)[:300].tolist()
    for target in TARGETS:
        keep += np.flatnonzero(labels == target)[:150].tolist()
    sub = full[np.sort(keep)].copy()
    sub.obs = sub.obs[["target_gene", "bio_rep"]].astype(str)
    return sub


def _log1p(counts: ad.AnnData) -> ad.AnnData:
    out = counts.copy()
    x = sp.csr_matrix(out.X, dtype=np.float32)
    totals = np.asarray(x.sum(axis=1)).ravel()
    x = sp.csr_matrix(sp.diags((1e4 / totals).astype(np.float32)) @ x)
    x.data = np.log1p(x.data)
    out.X = x
    return out


def _control_mean(real: ad.AnnData) -> ad.AnnData:
    """The no-effect prediction: the real controls, and every perturbed cell at the control mean."""
    x = np.asarray(real.X.toarray(), dtype=np.float32)
    is_control = real.obs["target_gene"].to_numpy() == CONTROL
    x[~is_control] = x[is_control].mean(axis=0)
    return ad.AnnData(X=x, obs=real.obs.copy(), var=real.var.copy())


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    return _counts_slice()


@pytest.fixture(scope="module")
def real(counts: ad.AnnData) -> ad.AnnData:
    return _log1p(counts)


@pytest.fixture(scope="module")
def perfect(real: ad.AnnData) -> CellEvalResult:
    return run_cell_eval(real, real.copy())


@pytest.fixture(scope="module")
def baseline(real: ad.AnnData) -> CellEvalResult:
    return run_cell_eval(real, _control_mean(real))


def test_perfect_prediction_beats_control_mean(perfect: CellEvalResult, baseline: CellEvalResult) -> None:
    assert perfect.summary["pearson_delta"] == pytest.approx(1.0, abs=1e-6)
    assert baseline.summary["pearson_delta"] < 0.5  # no effect predicted: rounding noise at best
    assert perfect.summary["mae"] == 0.0 < baseline.summary["mae"]
    assert perfect.summary["discrimination_score_l1"] == 1.0
    assert perfect.summary["overlap_at_N"] == 1.0
    assert perfect.missing_metrics == baseline.missing_metrics == ()


def test_summary_uses_cell_eval_names_and_means(perfect: CellEvalResult) -> None:
    assert set(VCC_NAMES) <= set(perfect.summary)
    table = perfect.per_perturbation.to_pandas()
    means = table.groupby("metric")["value"].mean()
    assert set(means.index) == set(perfect.summary)
    for metric, value in perfect.summary.items():
        assert value == pytest.approx(means[metric], nan_ok=True), metric


def test_per_perturbation_has_one_row_per_held_out_perturbation_and_metric(
    perfect: CellEvalResult,
) -> None:
    table = perfect.per_perturbation
    assert table.schema == pa.schema([("perturbation", pa.string()), ("metric", pa.string()), ("value", pa.float64())])
    rows = list(zip(table["perturbation"].to_pylist(), table["metric"].to_pylist(), strict=True))
    assert len(rows) == len(set(rows)) == len(TARGETS) * len(perfect.summary)
    assert set(table["perturbation"].to_pylist()) == set(TARGETS) == set(perfect.perturbations)


def test_normalized_score_against_control_mean(perfect: CellEvalResult, baseline: CellEvalResult) -> None:
    score = normalized_score(perfect, baseline)
    assert score["avg_score"] > 0.5
    assert score["mae"] == 1.0
    assert "de_nsig_counts_real" not in score  # no best value: cell-eval does not normalise it
    itself = normalized_score(baseline, baseline)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in itself.values()), itself
    vcc = normalized_score(perfect, baseline, metrics=VCC_METRICS)
    assert set(vcc) == {*VCC_METRICS, "avg_score"}
    assert vcc["avg_score"] == pytest.approx(np.mean([vcc[m] for m in VCC_METRICS]))


def test_margins_are_signed_where_the_score_clips(perfect: CellEvalResult, baseline: CellEvalResult) -> None:
    ahead = margins(perfect.summary, baseline.summary)
    behind = margins(baseline.summary, perfect.summary)
    assert ahead["mean"] > 0 > behind["mean"]
    assert ahead["mae"] == pytest.approx(normalized_score(perfect, baseline, metrics=VCC_METRICS)["mae"])
    assert normalized_score(baseline, perfect, metrics=VCC_METRICS)["avg_score"] == 0  # clipped: the loss hides
    hand = {"mae": 0.2, "overlap_at_N": 0.5, "discrimination_score_l1": float("nan")}
    base = {"mae": 0.1, "overlap_at_N": 0.0, "discrimination_score_l1": 0.5}
    got = margins(hand, base)
    assert got["mae"] == pytest.approx(-1.0)  # twice the baseline's error
    assert got["overlap_at_N"] == pytest.approx(0.5)
    assert got["discrimination_score_l1"] == 0  # NaN on one side counts as no difference
    assert got["mean"] == pytest.approx(-0.5 / 3)
    with pytest.raises(InvalidTrainingDataError, match="no baseline normalisation"):
        margins(hand, base, metrics=["de_nsig_counts_real"])


def test_normalized_score_refuses_metrics_it_cannot_compare(
    perfect: CellEvalResult, baseline: CellEvalResult, real: ad.AnnData
) -> None:
    with pytest.raises(InvalidTrainingDataError, match="no baseline normalisation for de_nsig_counts_real"):
        normalized_score(perfect, baseline, metrics=["de_nsig_counts_real"])
    pds_only = run_cell_eval(real, _control_mean(real), profile="pds")
    with pytest.raises(InvalidTrainingDataError, match=r"baseline's evaluation lacks .*mae"):
        normalized_score(perfect, pds_only)


def test_counts_are_normalised_on_a_copy_quietly_and_deterministically(
    counts: ad.AnnData, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    before = counts.X.copy()
    first = run_cell_eval(counts, counts, profile="vcc", num_threads=2, outdir=tmp_path / "ce")
    again = run_cell_eval(counts, counts.copy(), profile="vcc")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # no progress bars, no printed warnings
    assert np.array_equal(counts.X.toarray(), before.toarray())  # cell-eval log-normalised its own copy
    assert first.summary == again.summary == {"overlap_at_N": 1.0, "discrimination_score_l1": 1.0, "mae": 0.0}
    assert first.per_perturbation.equals(again.per_perturbation)
    assert {p.name for p in (tmp_path / "ce").iterdir()} == {
        "real_de.csv",
        "pred_de.csv",
        "results.csv",
        "agg_results.csv",
    }


def _drop_gene(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    return real, real[:, 1:].copy()


def _reorder_genes(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    return real, real[:, ::-1].copy()


def _no_controls(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    kept = real[real.obs["target_gene"] != CONTROL].copy()
    return kept, kept.copy()


def _unknown_perturbation(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    pred = real.copy()
    pred.obs.loc[pred.obs["target_gene"] == TARGETS[0], "target_gene"] = "NOT_A_GENE"
    return real, pred


def _missing_perturbation(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    return real, real[real.obs["target_gene"] != TARGETS[0]].copy()


def _nan_in_pred(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    pred = real.copy()
    pred.X = pred.X.toarray()
    pred.X[5, 7] = np.nan
    return real, pred


def _negative_in_pred(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    pred = real.copy()
    pred.X = pred.X.toarray() - 0.5
    return real, pred


def _no_pert_column(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    pred = real.copy()
    pred.obs = pred.obs.drop(columns="target_gene")
    return real, pred


def _unlabelled_cells(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    pred = real.copy()
    pred.obs["target_gene"] = pred.obs["target_gene"].where(np.arange(pred.n_obs) != 3)
    return real, pred


def _not_log1p(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    pred = real.copy()
    pred.X = pred.X.toarray() * 100.0  # normalised but never log1p'd: cell-eval's range check
    return real, pred


def _counts_against_log(real: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    counts = real.copy()
    counts.X = np.rint(np.expm1(real.X.toarray()))
    return counts, real


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_drop_gene, r"genes differ between real \(299\) and pred \(298\): 1 only in real"),
        (_reorder_genes, r"genes of real in another order .* reorder with pred\[:, real.var_names\]"),
        (_no_controls, r"real has no control cells \(target_gene == 'non-targeting'\)"),
        (_unknown_perturbation, "pred has perturbations not in real: NOT_A_GENE"),
        (_missing_perturbation, f"real has perturbations missing from pred: {TARGETS[0]}"),
        (_nan_in_pred, "pred X has 1 NaN or infinite values"),
        (_negative_in_pred, "pred X has negative values"),
        (_no_pert_column, "pred has no obs column 'target_gene'"),
        (_unlabelled_cells, "1 cells of pred have no 'target_gene'"),
        (_not_log1p, "pred X: Invalid scale: max value .* exceeds log1p threshold"),
        (_counts_against_log, r"real X looks like raw counts \(all integers\) but pred X like log1p"),
    ],
)
def test_bad_input_raises_one_line_error(
    make: Callable[[ad.AnnData], tuple[ad.AnnData, ad.AnnData]], message: str, real: ad.AnnData
) -> None:
    real_in, pred_in = make(real)
    with pytest.raises(InvalidTrainingDataError, match=message) as caught:
        run_cell_eval(real_in, pred_in)
    assert "\n" not in str(caught.value)


def test_bad_arguments(real: ad.AnnData) -> None:
    with pytest.raises(ValueError, match="unknown cell-eval profile 'vcc2'"):
        run_cell_eval(real, real, profile="vcc2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        run_cell_eval(real, real, num_threads=0)
