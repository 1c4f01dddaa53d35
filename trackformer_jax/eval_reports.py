"""evaluate's reports: the Markdown tables, the PNG of per-stem distributions, the JSON.

Every report shows, per stem, the model(s), the untrained control, the NMF baseline and the
ideal-ratio-mask ceiling side by side, for whatever stems the tracks have.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import numpy as np

from trackformer_jax.atomic_files import atomic_path, write_json_atomic, write_text_atomic

_HEAD_METRICS = (
  "stem_si_snri_db",
  "control_stem_si_snri_db",
  "stem_si_snri_gain_db",
  "nmf_stem_si_snri_db",
  "stem_si_snri_vs_nmf_db",
  "stem_si_snr_db",
)
_PER_STEM_METRICS = ("stem_si_snri_db", "stem_si_snri_gain_db", "stem_si_snri_vs_nmf_db")
_TAIL_METRICS = (
  "best_output_si_snri_db",
  "usdr_db",
  "museval_sdr_db",
  "pesq",
  "mom_si_snri_db",
  "control_mom_si_snri_db",
  "mask_overlap",
  "effective_mask_count",
  "oracle_irm_stem_si_snri_db",
)


def stem_names_of(results: list[dict[str, Any]]) -> list[str]:
  """The stems any scored track has, the four standard ones first (``sources`` order)."""
  from trackformer_jax.data import sources

  names = {n for r in results for t in r.get("tracks", []) for n in t.get("stem_names", ())}
  return list(sources.order_stem_names(names))


def table_metrics(results: list[dict[str, Any]]) -> list[str]:
  """The metric table's rows, in order: those present in some result."""
  stems = stem_names_of(results)
  metrics = [
    *_HEAD_METRICS,
    *(f"{m}_{s}" for m in _PER_STEM_METRICS for s in stems),
    *_TAIL_METRICS,
  ]
  return [m for m in metrics if any(m in r["aggregate"] for r in results)]


def _name(result: dict[str, Any]) -> str:
  return pathlib.Path(result["workdir"]).name or result["workdir"]


def _cell(aggregate: dict[str, Any], metric: str, with_error: bool = True) -> str:
  value = aggregate.get(metric)
  cell = "" if value is None or not np.isfinite(value) else f"{value:.2f}"
  error = aggregate.get(f"{metric}_stderr")
  if with_error and cell and error is not None and np.isfinite(error):
    cell += f" ± {error:.2f}"  # standard error over tracks
  return cell


def stem_table(results: list[dict[str, Any]]) -> str:
  """Per stem (and the mean over stems): SI-SNRi in dB of each model, its untrained control,
  the NMF baseline and the ideal-ratio-mask ceiling, side by side ("" when no such stem)."""
  stems = stem_names_of(results)
  if not stems:
    return ""
  columns: list[tuple[str, dict[str, Any], str]] = []  # (header, aggregate, metric prefix)
  for r in results:
    columns.append((_name(r), r["aggregate"], "stem_si_snri_db"))
    if "control_stem_si_snri_db" in r["aggregate"]:
      columns.append((f"{_name(r)} control", r["aggregate"], "control_stem_si_snri_db"))
  # NMF and the ceiling do not depend on the model: the first result's are everyone's.
  first = results[0]["aggregate"]
  if "nmf_stem_si_snri_db" in first:
    columns.append(("NMF (8 components)", first, "nmf_stem_si_snri_db"))
  if "oracle_irm_stem_si_snri_db" in first:
    columns.append(("ideal ratio mask", first, "oracle_irm_stem_si_snri_db"))
  lines = [
    "| stem (SI-SNRi, dB) | " + " | ".join(c[0] for c in columns) + " |",
    "|---|" + "---:|" * len(columns),
  ]
  for stem in ["mean", *stems]:
    suffix = "" if stem == "mean" else f"_{stem}"
    cells = [_cell(aggregate, prefix + suffix, False) for _, aggregate, prefix in columns]
    lines.append(f"| {stem} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def markdown_table(results: list[dict[str, Any]]) -> str:
  """Metrics as rows, workdirs as columns; then the per-stem side-by-side table."""
  names = [_name(r) for r in results]
  lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
  for metric in table_metrics(results):
    cells = [_cell(r["aggregate"], metric) for r in results]
    lines.append(f"| {metric} | " + " | ".join(cells) + " |")
  lines.append(
    "| tracks | " + " | ".join(str(r["aggregate"]["num_tracks"]) for r in results) + " |"
  )
  text = "\n".join(lines) + "\n"
  stems = stem_table(results)
  return text + ("\n" + stems if stems else "")


def _finite(values) -> list[float]:
  return [v for v in values if v is not None and np.isfinite(v)]


def plot_distributions(results: list[dict[str, Any]], path: str | os.PathLike) -> None:
  """Box plots of per-track stem SI-SNRi, one panel per stem: one box per model and its
  control, then NMF and the ideal ratio mask."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  stems = stem_names_of(results) or ["(no stems)"]
  fig, axes = plt.subplots(1, len(stems), figsize=(3.6 * len(stems), 3.8), squeeze=False)
  for ax, stem in zip(axes[0], stems):
    series, labels = [], []
    for r in results:
      name = _name(r)
      for prefix, label in (("", name), ("control_", f"{name}\ncontrol")):
        values = _finite(t.get(f"{prefix}stem_si_snri_db_{stem}") for t in r["tracks"])
        if values:
          series.append(values)
          labels.append(label)
    for prefix, label in (("nmf_", "NMF"), ("oracle_irm_", "oracle\nIRM")):
      values = _finite(t.get(f"{prefix}stem_si_snri_db_{stem}") for t in results[0]["tracks"])
      if values:
        series.append(values)
        labels.append(label)
    if series:
      ax.boxplot(series)
      ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_title(stem)
  axes[0][0].set_ylabel("SI-SNRi (dB)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_reports(results: list[dict[str, Any]], out: str | os.PathLike) -> list[pathlib.Path]:
  """``out`` (JSON), ``out`` with ``.md`` and ``.png``; each written whole or not at all."""
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  payload = results[0] if len(results) == 1 else results
  write_json_atomic(out, json_safe(payload))
  table, figure = out.with_suffix(".md"), out.with_suffix(".png")
  write_text_atomic(table, markdown_table(results))
  with atomic_path(figure) as tmp:
    plot_distributions(results, tmp)
  return [out, table, figure]


def json_safe(obj):
  """NaN -> null (strict JSON), numpy scalars -> Python numbers."""
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    return None if not math.isfinite(obj) else float(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  return obj
