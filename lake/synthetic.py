"""Generated h5ad files for tests, benchmarks and the demo on machines without the shared data.

``write_perturbseq_h5ad`` makes a Perturb-seq-like file with known effects: each perturbation knocks down its
target gene and shifts a few downstream genes by a known fold change, recorded in ``uns['true_effects']``.
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["write_perturbseq_h5ad"]


def write_perturbseq_h5ad(
    path: str | os.PathLike[str],
    *,
    n_cells: int = 2000,
    n_genes: int = 500,
    n_perturbations: int = 10,
    control_fraction: float = 0.15,
    density: float = 0.1,
    seed: int = 0,
    gene_ids: list[str] | None = None,
    gene_symbols: list[str] | None = None,
    block: int = 20_000,
) -> Path:
    """Write a CSR h5ad of integer counts with ``target_gene`` / ``guide_id`` / ``bio_rep`` obs columns."""
    rng = np.random.default_rng(seed)
    ids = gene_ids[:n_genes] if gene_ids else [f"ENSG{90_000_000_000 + i:011d}" for i in range(n_genes)]
    symbols = gene_symbols[:n_genes] if gene_symbols else [f"GENE{i}" for i in range(n_genes)]
    targets = [symbols[i] for i in rng.choice(n_genes, size=n_perturbations, replace=False)]
    labels = np.where(
        rng.random(n_cells) < control_fraction,
        "non-targeting",
        np.asarray(targets, dtype=object)[rng.integers(0, n_perturbations, n_cells)],
    )
    base_mean = rng.gamma(1.5, 2.0, n_genes)
    effects: dict[str, dict[str, float]] = {}
    fold = np.ones((n_perturbations + 1, n_genes))  # last row: controls
    for k, t in enumerate(targets):
        down = rng.choice(n_genes, size=5, replace=False)
        fc = np.exp(rng.normal(0, 1.0, 5))
        fold[k, down] = fc
        fold[k, symbols.index(t)] = 0.1
        effects[t] = {symbols[g]: float(f) for g, f in zip(down, fc, strict=True)} | {t: 0.1}
    code = np.array([targets.index(v) if v != "non-targeting" else n_perturbations for v in labels])

    blocks = []
    for start in range(0, n_cells, block):
        stop = min(n_cells, start + block)
        mean = base_mean[None, :] * fold[code[start:stop]]
        mask = rng.random((stop - start, n_genes)) < density * np.minimum(mean / base_mean.mean(), 3)
        counts = np.where(mask, 1 + rng.poisson(mean), 0).astype(np.float32)
        blocks.append(sp.csr_matrix(counts))
    x = sp.vstack(blocks, format="csr")
    guide = [f"{v}g{rng.integers(1, 5)}" if v != "non-targeting" else f"NTg{rng.integers(1, 9)}" for v in labels]
    obs = pd.DataFrame(
        {
            "target_gene": pd.Categorical(labels),
            "guide_id": pd.Categorical(guide),
            "bio_rep": pd.Categorical(rng.choice(["rep_1", "rep_2", "rep_3"], n_cells)),
        },
        index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame({"feature_name": symbols}, index=pd.Index(ids))
    adata = ad.AnnData(
        X=x,
        obs=obs,
        var=var,
        uns={
            "true_effects": {
                k: {"genes": list(v), "fold_change": np.array(list(v.values()))} for k, v in effects.items()
            }
        },
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    return out
