"""Markdown tables of a ``bench.json``: what docs/benchmarks.md and the README show."""

from collections.abc import Callable, Sequence

GIB = 2**30


def _cell(value, fmt: str = "{:.2f}") -> str:
  if value is None:
    return "—"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    return fmt.format(value)
  return str(value)


def _table(headers: Sequence[str], rows: list[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def memory_table(records: list[dict]) -> str:
  seconds = sorted({r["segment_seconds"] for r in records})
  models = sorted(
    {r["model"] for r in records}, key=["performer", "dense_transformer", "convtasnet"].index
  )
  by = {(r["model"], r["segment_seconds"]): r for r in records}
  rows = [
    [model] + [_cell(by[(model, s)]["peak_gib"]) if (model, s) in by else "—" for s in seconds]
    for model in models
  ]
  return _table(["GiB per step, batch 4"] + [f"{s:g} s" for s in seconds], rows)


def speed_table(records: list[dict], summary: dict) -> str:
  seconds = sorted({r["segment_seconds"] for r in records})
  by = {(r["model"], r["segment_seconds"]): r for r in records}
  models = ("performer", "convtasnet")

  def row(model: str, title: str, field: str, fmt: str, scale: float = 1.0) -> list[str]:
    values = [by.get((model, s), {}).get(field) for s in seconds]
    return [f"{model} {title}"] + [_cell(None if v is None else v * scale, fmt) for v in values]

  rows = [row(model, "s/step", "step_seconds", "{:.3f}") for model in models]
  rows.append(
    ["ratio performer / convtasnet"]
    + [_cell(summary.get(f"step_ratio_{s:g}s"), "{:.3f}") for s in seconds]
  )
  for model in models:
    rows.append(row(model, "GFLOP/step (XLA)", "flops_per_step", "{:.1f}", 1e-9))
    rows.append(row(model, "achieved TFLOP/s", "achieved_tflops_per_second", "{:.3f}"))
    if any(by.get((model, s), {}).get("model_flops_utilisation") for s in seconds):
      rows.append(row(model, "MFU", "model_flops_utilisation", "{:.1%}"))
  return _table(["step time"] + [f"{s:g} s" for s in seconds], rows)


def mixit_table(records: list[dict]) -> str:
  rows = [
    [
      f"K = {r['num_mixtures']} ({r['num_assignments']} assignments)",
      _cell(r["fast_seconds"] * 1e3, "{:.1f}"),
      _cell(r["fast_value_and_grad_seconds"] * 1e3, "{:.1f}"),
      _cell(r["bruteforce_seconds"] * 1e3, "{:.0f}"),
      _cell(r["bruteforce_over_fast"], "{:.0f}x"),
      _cell(r["search_fraction_of_step"] and 100 * r["search_fraction_of_step"], "{:.1f} %"),
      _cell(r["max_loss_difference_db"], "{:.1e}"),
    ]
    for r in records
  ]
  headers = [
    "M = 8",
    "fast ms",
    "fast + grad ms",
    "brute force ms",
    "speed-up",
    "share of a perf3 step",
    "max |Δloss| dB",
  ]
  return _table(headers, rows)


def favor_table(records: list[dict]) -> str:
  lengths = sorted({r["length"] for r in records})
  by = {(r["attention"], r["length"]): r for r in records}
  rows = []
  for attention in ("favor", "exact"):
    for label, key, fmt in (
      ("fwd+grad ms", "train_seconds", "{:.1f}"),
      ("fwd+grad MiB", "train_peak_bytes", "{:,.0f}"),
    ):
      row = [f"{attention} {label}"]
      for n in lengths:
        value = by.get((attention, n), {}).get(key)
        if value is not None and key.endswith("seconds"):
          value = value * 1e3
        elif value is not None:
          value = value / 2**20
        row.append(_cell(value, fmt))
      rows.append(row)
  return _table(["tokens"] + [f"{n:,}" for n in lengths], rows)


def separate_table(records: list[dict]) -> str:
  rows = [
    [
      f"{r['song_seconds'] / 60:g} min",
      _cell(r["separate_seconds"], "{:.1f}"),
      _cell(r["real_time_factor"], "{:.3f}"),
      _cell(r["peak_rss_bytes"] / 2**20, "{:.0f}"),
    ]
    for r in records
  ]
  return _table(["44.1 kHz stereo song", "seconds", "real-time factor", "peak RSS MiB"], rows)


def pipeline_table(records: list[dict]) -> str:
  rows = [
    [
      f"{r['segment_seconds']:g} s",
      _cell(r["batches_per_second"]),
      _cell(r["examples_per_second"]),
      _cell(r["audio_seconds_per_second"], "{:.0f}"),
    ]
    for r in records
  ]
  return _table(["segment", "batches/s", "examples/s", "audio s/s"], rows)


def seed_tables(records: list[dict]) -> str:
  parts = []
  table1 = [r for r in records if r["table"] == "table1"]
  rows = [
    [
      r["model"],
      f"{r['segment_seconds']:g} s",
      str(r["steps"]),
      _cell(r["stem_si_snri_db"]),
      _cell(r["control_stem_si_snri_db"]),
      _cell(r["stem_si_snri_gain_db"]),
      _cell(r.get("full_size_peak_gib")),
      _cell(r.get("full_size_oom")),
    ]
    for r in table1
  ]
  parts.append(
    "Table 1 (stem SI-SNRi, dB)\n\n"
    + _table(
      [
        "model",
        "segment",
        "steps",
        "trained",
        "untrained control",
        "gain",
        "full-size GiB",
        "full-size OOM",
      ],
      rows,
    )
  )
  table2 = [r for r in records if r["table"] == "table2"]
  rows = [
    [
      f"{r['segment_seconds']:g} s",
      _cell(r["performer_examples_per_second"]),
      _cell(r["convtasnet_examples_per_second"]),
      _cell(r["epoch_time_ratio"]),
    ]
    for r in table2
  ]
  parts.append(
    "Table 2 (time per epoch)\n\n"
    + _table(
      ["segment", "performer ex/s", "convtasnet ex/s", "epoch time convtasnet / performer"], rows
    )
  )
  for table, flag, label in (
    ("table3", "mae_init", "Audio-MAE init"),
    ("aux_ablation", "aux_losses", "diversity + sparsity"),
  ):
    rows = []
    cells = [r for r in records if r["table"] == table]
    for r in cells:
      if str(r.get("status", "ran")).startswith("not run"):
        rows.append([_cell(r.get(flag)), r["status"], "", "", "", "", ""])
        continue
      rows.append(
        [
          _cell(r[flag]),
          str(r["steps"]),
          _cell(r["stem_si_snri_db"]),
          _cell(r["control_stem_si_snri_db"]),
          _cell(r["stem_si_snri_gain_db"]),
          _cell(r["mask_overlap"], "{:.3f}"),
          _cell(r["effective_masks"]),
        ]
      )
    name = "Table 3" if table == "table3" else "Auxiliary-loss ablation"
    parts.append(
      f"{name} (Performer, {cells[0].get('segment_seconds', 0):g} s)\n\n"
      + _table(
        [label, "steps", "stem SI-SNRi", "control", "gain", "mask overlap", "effective masks"], rows
      )
    )
  return "\n\n".join(parts)


RENDERERS: dict[str, Callable[[list[dict], dict], str]] = {
  "memory": lambda records, summary: memory_table(records),
  "speed": speed_table,
  "mixit": lambda records, summary: mixit_table(records),
  "favor": lambda records, summary: favor_table(records),
  "separate": lambda records, summary: separate_table(records),
  "pipeline": lambda records, summary: pipeline_table(records),
  "seed_tables": lambda records, summary: seed_tables(records),
}


def markdown_tables(results: dict) -> str:
  """One section per suite present in ``results``, each with the run that measured it."""
  sections = []
  for key, render in RENDERERS.items():
    if key not in results:
      continue
    summary = results.get("summary", {}).get(key, {})
    run = summary.get("run", {})
    sections.append(
      f"### {key}\n\n{render(results[key], summary)}\n\n"
      f"Measured {run.get('date_utc', '?')} UTC, commit {run.get('git_commit', '?')}: "
      f"`{run.get('command', '?')}`"
    )
  return "\n\n".join(sections) + "\n"
