"""The shape of ``bench.json``: which fields each suite's records carry, and their types.

Checked before every write, so a suite that changes its output without this file fails the
tests instead of silently breaking the tables built from the JSON.
"""

from collections.abc import Mapping

from trackformer_jax.bench import SUITES, suite_key

NUMBER = (int, float)
MAYBE_NUMBER = (int, float, type(None))
MAYBE_BOOL = (bool, type(None))

META = {"date_utc": str, "command": str, "machine": dict, "jax_version": str, "smoke": bool}

RECORDS = {
  "memory": {
    "config": str,
    "model": str,
    "segment_seconds": NUMBER,
    "batch_size": int,
    "peak_bytes": int,
    "argument_bytes": int,
    "output_bytes": int,
    "temp_bytes": int,
    "alias_bytes": int,
    "peak_gib": NUMBER,
  },
  "speed": {
    "model": str,
    "config": str,
    "segment_seconds": NUMBER,
    "batch_size": int,
    "status": str,
    "peak_bytes": int,
    "compile_seconds": NUMBER,
    "step_seconds": MAYBE_NUMBER,
    "examples_per_second": MAYBE_NUMBER,
    "flops_per_step": MAYBE_NUMBER,
    "achieved_tflops_per_second": MAYBE_NUMBER,
    "model_flops_utilisation": MAYBE_NUMBER,
    "device_peak_bytes": MAYBE_NUMBER,
  },
  "mixit": {
    "num_mixtures": int,
    "num_estimates": int,
    "num_assignments": int,
    "samples": int,
    "batch_size": int,
    "fast_seconds": NUMBER,
    "fast_value_and_grad_seconds": NUMBER,
    "bruteforce_seconds": NUMBER,
    "bruteforce_over_fast": NUMBER,
    "max_loss_difference_db": NUMBER,
    "step_seconds": MAYBE_NUMBER,
    "search_fraction_of_step": MAYBE_NUMBER,
  },
  "favor": {
    "attention": str,
    "length": int,
    "heads": int,
    "head_dim": int,
    "status": str,
    "forward_peak_bytes": int,
    "train_peak_bytes": int,
    "forward_seconds": MAYBE_NUMBER,
    "train_seconds": MAYBE_NUMBER,
    "over_device_budget": bool,
  },
  "separate": {
    "model": str,
    "weights": str,
    "song_seconds": NUMBER,
    "sample_rate_hz": int,
    "channels": int,
    "separate_seconds": NUMBER,
    "real_time_factor": NUMBER,
    "peak_rss_bytes": int,
  },
  "pipeline": {
    "data": str,
    "segment_seconds": NUMBER,
    "batch_size": int,
    "num_batches": int,
    "batches_per_second": NUMBER,
    "examples_per_second": NUMBER,
    "audio_seconds_per_second": NUMBER,
  },
}

_CELL = {
  "model": str,
  "segment_seconds": NUMBER,
  "budget_seconds": NUMBER,
  "steps": int,
  "examples_per_second": NUMBER,
  "stem_si_snri_db": MAYBE_NUMBER,
  "control_stem_si_snri_db": MAYBE_NUMBER,
  "stem_si_snri_gain_db": MAYBE_NUMBER,
  "mask_overlap": MAYBE_NUMBER,
  "effective_masks": MAYBE_NUMBER,
  "status": str,
}
# seed-tables records differ by table; "status" alone is required of a cell that did not run.
SEED_TABLES = {
  "table1": {**_CELL, "full_size_oom": MAYBE_BOOL},
  "table2": {
    "segment_seconds": NUMBER,
    "performer_examples_per_second": NUMBER,
    "convtasnet_examples_per_second": NUMBER,
    "epoch_time_ratio": NUMBER,
  },
  "table3": {**_CELL, "mae_init": bool},
  "aux_ablation": {**_CELL, "aux_losses": bool},
}


class SchemaError(ValueError):
  """``bench.json`` does not have the promised shape; the message names the field."""


def _check_fields(record: Mapping, fields: Mapping, where: str) -> None:
  if not isinstance(record, Mapping):
    raise SchemaError(f"{where}: expected an object, got {type(record).__name__}")
  for name, types in fields.items():
    if name not in record:
      raise SchemaError(f"{where}: missing field {name!r}")
    value, allowed = record[name], types if isinstance(types, tuple) else (types,)
    # bool is an int to Python, never to a reader of the JSON.
    wrong_bool = isinstance(value, bool) and bool not in allowed
    if wrong_bool or not isinstance(value, allowed):
      names = "/".join("null" if t is type(None) else t.__name__ for t in allowed)
      raise SchemaError(f"{where}.{name}: expected {names}, got {value!r}")


def check_results(results: Mapping) -> None:
  """Raises SchemaError naming the first field of ``results`` that is missing or mistyped."""
  _check_fields(results.get("meta"), META, "meta")
  known = {suite_key(s) for s in SUITES}
  for key in results:
    if key not in known | {"meta", "summary"}:
      raise SchemaError(f"{key}: not a suite; suites are {sorted(known)}")
  for key in known & set(results):
    records = results[key]
    if not isinstance(records, list) or not records:
      raise SchemaError(f"{key}: expected a non-empty list of records")
    for i, record in enumerate(records):
      where = f"{key}[{i}]"
      if key != "seed_tables":
        _check_fields(record, RECORDS[key], where)
        continue
      table = record.get("table") if isinstance(record, Mapping) else None
      if table not in SEED_TABLES:
        raise SchemaError(f"{where}.table: expected one of {sorted(SEED_TABLES)}, got {table!r}")
      if str(record.get("status", "ran")).startswith("not run"):
        _check_fields(record, {"status": str}, where)
      else:
        _check_fields(record, SEED_TABLES[table], where)
    summary = results.get("summary", {}).get(key)
    if not isinstance(summary, Mapping):
      raise SchemaError(f"summary.{key}: expected an object (the suite's derived figures)")
