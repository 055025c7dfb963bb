"""The demo's report: one self-contained folder (`index.html` and its PNGs) of what the loop did and measured."""

from __future__ import annotations

import html
import math
import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pyarrow as pa

import lake

if TYPE_CHECKING:
    import models
    from cellfarm._demo_models import ModelStep

__all__ = ["write_report"]

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
code, pre { background: #f6f6f6; padding: .1em .3em; border-radius: 3px; }
pre { padding: .6em; overflow-x: auto; } .ok { color: #17802d; } .no { color: #b3261e; }
"""

_EXPERIMENT_SQL = (
    "SELECT policy, count(*) AS seeds, round(avg(capture_fraction), 3) AS captured_fraction, "
    "round(avg(light_dose), 1) AS light_dose, round(avg(cells_harmed), 1) AS cells_harmed, "
    "sum(frames) AS frames, round(sum(bytes) / 1e6, 1) AS megabytes, "
    "round(avg(decision_p99_ms), 1) AS decision_p99_ms FROM policy_runs WHERE experiment_id = '{id}' "
    "GROUP BY ALL ORDER BY light_dose DESC"
)
_FARM_SQL = (
    "SELECT r.microscope_id, r.run_id, r.status, count(DISTINCT f.frame_id) AS frames, "
    "count(DISTINCT d.frame_id) AS decisions, any_value(d.model || ':' || d.model_version) AS served_model, "
    "round(quantile_cont(d.latency_ms, 0.5), 1) AS p50_ms, round(quantile_cont(d.latency_ms, 0.99), 1) AS p99_ms "
    "FROM acquisition_runs r JOIN frames f USING (run_id) LEFT JOIN decisions d USING (run_id, frame_id) "
    "WHERE r.run_id IN ({runs}) GROUP BY ALL ORDER BY 1"
)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>no rows</em></p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _arrow(t: pa.Table) -> str:
    return _table(t.to_pylist())


def _image(src: str | os.PathLike[str] | None, out: Path, alt: str) -> str:
    """Copy a PNG into the report folder (so the folder stands alone) and reference it relatively."""
    if not src or not Path(src).is_file():
        return ""
    dest = out / "img" / Path(src).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if Path(src).resolve() != dest.resolve():
        shutil.copyfile(src, dest)
    return f'<img src="img/{html.escape(dest.name)}" alt="{html.escape(alt)}">'


def _model_rows(step: ModelStep) -> list[dict[str, Any]]:
    rows = []
    for r in step.evaluated:
        ev = r.metrics.get("evaluation", {})
        summary, gate = ev.get("summary", {}), ev.get("gate", {})
        rows.append(
            {
                "model": r.ref,
                "stage": "production" if step.production and step.production.ref == r.ref else r.stage,
                "DES ↑": summary.get("overlap_at_N"),
                "PDS ↑": summary.get("discrimination_score_l1"),
                "MAE ↓": summary.get("mae"),
                "Pearson Δ ↑": summary.get("pearson_delta"),
                "margin vs control-mean": gate.get("margin"),
                "gate": "passed" if gate.get("passed") else "refused",
            }
        )
    return rows


def _imaging_rows(record: models.ModelRecord | None) -> list[dict[str, Any]]:
    if record is None:
        return []
    m = record.metrics
    return [
        {"light": light, "precision": m.get(f"{p}precision"), "recall": m.get(f"{p}recall"), "F1": m.get(f"{p}f1"),
         "classical F1": m.get(f"baseline_{p}f1")}
        for light, p in (("default", ""), ("dim", "dim_"))
    ]  # fmt: skip


def write_report(
    target: lake.Lake,
    out: Path,
    *,
    models_step: ModelStep,
    imaging: models.ModelRecord | None,
    experiment: Any,
    farm_runs: list[str],
    queries: Mapping[str, str],
    step_times: Mapping[str, float],
) -> Path:
    """Write `out/index.html`; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mem = psutil.virtual_memory().total / 2**30
    parts = [
        f"<h1>cellfarm demo report</h1><p>{now} · {os.cpu_count()} cores, {mem:.1f} GiB · lake "
        f"<code>{html.escape(target.root)}</code></p>",
        "<h2>Steps</h2>",
        _table([{"step": k, "seconds": round(v, 1)} for k, v in step_times.items()]),
        "<h2>Perturbation models</h2><p>Trained on the atlas, evaluated by cell-eval on held-out perturbations "
        "against the baselines; the gate asks for a positive mean margin over DES, PDS and MAE against "
        "control-mean.</p>",
        _table(_model_rows(models_step)),
    ]
    for r in models_step.evaluated:
        parts.append(_image(r.metrics.get("evaluation", {}).get("plot"), out, f"evaluation of {r.ref}"))
    parts += ["<h2>Imaging model (the feedback loop's mitosis detector)</h2>"]
    parts.append(
        f"<p>{html.escape(imaging.ref)} ({imaging.stage}), held-out twin plates:</p>" + _table(_imaging_rows(imaging))
        if imaging
        else "<p>No mitosis CNN passed its gate: the served Feedback uses the classical detector.</p>"
    )
    if farm_runs:
        runs = ", ".join(f"'{r}'" for r in farm_runs)
        parts += ["<h2>The farm (remote policy)</h2>", _arrow(lake.query(target, _FARM_SQL.format(runs=runs)))]
    if experiment is not None:
        parts += [
            "<h2>The smart-microscopy experiment</h2>",
            f"<p>{html.escape(str(getattr(experiment, 'verdict', '')))}</p>",
            _arrow(lake.query(target, _EXPERIMENT_SQL.format(id=experiment.experiment_id))),
            _image(getattr(experiment, "plot", None), out, "light dose against divisions captured"),
        ]
    parts.append("<h2>Next: SQL an analyst would run</h2>")
    for title, sql in queries.items():
        parts.append(f'<h3>{html.escape(title)}</h3><pre>cellfarm sql "{html.escape(sql)}"</pre>')
    parts.append(
        "<h2>The Dagster UI</h2><p><code>make ui</code> (or <code>cellfarm ui</code>) opens it on "
        "<a href='http://127.0.0.1:3001'>127.0.0.1:3001</a>: the asset graph of this lake; "
        "<em>Materialize all</em> runs the same loop as assets.</p>"
    )
    page = out / "index.html"
    tmp = page.with_suffix(".tmp")
    tmp.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>cellfarm demo</title><style>{_STYLE}</style>"
        f"</head><body>{''.join(parts)}</body></html>\n"
    )
    tmp.replace(page)
    return page
