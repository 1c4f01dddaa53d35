"""Memory suite: compiled memory of one training step, Performer vs Conv-TasNet vs dense.

The step is ``training.steps.train_step`` itself (MixIT + diversity + sparsity, gradient, clipping,
AdamW, the non-finite guard), lowered from abstract inputs and compiled for one device with
the state donated, exactly as the trainer compiles it; nothing is allocated, so a CPU reports
sizes no CPU could run. The figure is per device at the config's batch (4).
"""

import math

import ml_collections
import numpy as np

from trackformer_jax.bench.experiments import sized_config, smoke_config
from trackformer_jax.bench.measure import compiled_train_step
from trackformer_jax.bench.options import GIB, BenchOptions

MODEL_OF_PREFIX = {"perf": "performer", "convtasnet": "convtasnet", "dense": "dense_transformer"}
SECONDS = (3, 5, 10, 30)
# Beyond the configs: the Performer at 60 and 120 s shows how its memory grows with length.
PERFORMER_EXTRA_SECONDS = (60, 120)
PERFORMER_TARGET_GIB = 16.0  # issue 9's target for perf30
# The seed's card (the seed: docs/history.md): its 30 s Conv-TasNet did not fit.
CONVTASNET_OOM_GIB = 32.0


def step_memory_bytes(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Bytes XLA assigns to one ``training.steps.train_step`` of ``config`` on one device.

  Returns argument, output, temp and alias bytes and ``peak_bytes`` (their sum less the
  aliases: the donated state's buffers are reused for the new state).
  """
  return dict(compiled_train_step(config).memory)


def planned_configs(smoke: bool) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, config) for every entry, in the order they are measured."""
  if smoke:
    # Every model at 0.5 s, the Performer also at 1 s for its growth: compiling is the cost.
    planned = [(f"{p}0.5", smoke_config(m, 0.5)) for p, m in MODEL_OF_PREFIX.items()]
    return planned + [("perf1", smoke_config("performer", 1.0))]
  planned = []
  for prefix in MODEL_OF_PREFIX:
    for seconds in SECONDS:
      planned.append((f"{prefix}{seconds}", sized_config(f"{prefix}{seconds}")))
  for seconds in PERFORMER_EXTRA_SECONDS:
    planned.append((f"perf{seconds}", sized_config("perf30", seconds)))
  return planned


def run(options: BenchOptions, results: dict) -> list[dict]:
  del results
  records = []
  planned = planned_configs(options.smoke)
  if options.memory_configs:
    unknown = set(options.memory_configs) - {name for name, _ in planned}
    if unknown:
      raise ValueError(
        f"--memory-configs: unknown {sorted(unknown)}; known {[n for n, _ in planned]}"
      )
    planned = [(name, config) for name, config in planned if name in options.memory_configs]
  for name, config in planned:
    compiled = compiled_train_step(config)
    figures = dict(compiled.memory)
    record = {
      "config": name,
      "model": config.model.name,
      "segment_seconds": float(config.segment_seconds),
      "batch_size": int(config.batch_size),
      "sample_rate_hz": int(config.sample_rate_hz),
      **figures,
      "peak_gib": figures["peak_bytes"] / GIB,
      "compile_seconds": compiled.compile_seconds,
    }
    print(f"memory {name}: {record['peak_gib']:.2f} GiB", flush=True)
    records.append(record)
  return records


def record_key(record: dict) -> str:
  """What identifies a record when ``--update`` merges runs of a few configs each."""
  return record["config"]


def growth_exponent(seconds: list[float], values: list[float]) -> float:
  """Slope of log(value) against log(seconds): 1 is linear growth, 2 quadratic."""
  if len(seconds) < 2:
    return math.nan
  slope, _ = np.polyfit(np.log(seconds), np.log(values), 1)
  return float(slope)


def summarize(records: list[dict]) -> dict:
  """Targets (perf30 <= 16 GiB, convtasnet30 > 32 GiB) and each model's growth with length.

  Growth is fitted on ``temp_bytes`` (activations and workspace), the part that depends on
  the length; parameters and optimiser state do not.
  """
  by_config = {r["config"]: r for r in records}
  summary: dict = {}
  for model in sorted({r["model"] for r in records}):
    rows = sorted((r for r in records if r["model"] == model), key=lambda r: r["segment_seconds"])
    summary[f"{model}_temp_growth_exponent"] = growth_exponent(
      [r["segment_seconds"] for r in rows], [max(r["temp_bytes"], 1) for r in rows]
    )
  if "perf30" in by_config:
    summary["perf30_gib"] = by_config["perf30"]["peak_gib"]
    summary["perf30_within_16_gib"] = by_config["perf30"]["peak_gib"] <= PERFORMER_TARGET_GIB
  if "convtasnet30" in by_config:
    summary["convtasnet30_gib"] = by_config["convtasnet30"]["peak_gib"]
    summary["convtasnet30_over_32_gib"] = by_config["convtasnet30"]["peak_gib"] > CONVTASNET_OOM_GIB
  if "perf30" in by_config and "convtasnet30" in by_config:
    summary["convtasnet30_over_perf30"] = (
      by_config["convtasnet30"]["peak_bytes"] / by_config["perf30"]["peak_bytes"]
    )
  return summary
