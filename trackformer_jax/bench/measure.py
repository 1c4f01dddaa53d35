"""Timing and compiled-memory helpers shared by the suites."""

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections


def compiled_memory(compiled: Any) -> dict[str, int]:
  """XLA's buffer assignment of a compiled program, in bytes, without running it.

  ``peak_bytes`` = arguments + outputs + temporaries − aliases (outputs written into a donated
  argument's buffer): what must be resident at once for one call. It is exact for what XLA
  allocates; the runtime adds a little (allocator slack, the host's own copies).
  """
  analysis = compiled.memory_analysis()
  figures = {
    "argument_bytes": int(analysis.argument_size_in_bytes),
    "output_bytes": int(analysis.output_size_in_bytes),
    "temp_bytes": int(analysis.temp_size_in_bytes),
    "alias_bytes": int(analysis.alias_size_in_bytes),
  }
  figures["peak_bytes"] = (
    figures["argument_bytes"]
    + figures["output_bytes"]
    + figures["temp_bytes"]
    - figures["alias_bytes"]
  )
  return figures


def compiled_flops(compiled: Any) -> float | None:
  """XLA's count of floating-point operations in one call of a compiled program.

  What the compiler schedules (forward, gradient, optimizer update; rematerialised work
  counted again), not an analytic model count; None where the backend gives no estimate.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement the analysis
    return None
  if isinstance(analysis, list | tuple):  # older jax: one dict per program
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def seconds_per_call(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
  """Calls ``fn`` once untimed (warm-up), then ``repeats`` times, blocking on each result.

  Returns ``median_seconds`` (robust to one call slowed by a neighbour on a shared machine),
  ``min_seconds``, ``warmup_seconds`` and ``repeats``.
  """
  start = time.perf_counter()
  jax.block_until_ready(fn())
  warmup = time.perf_counter() - start
  times = []
  for _ in range(max(int(repeats), 1)):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return {
    "median_seconds": statistics.median(times),
    "min_seconds": min(times),
    "warmup_seconds": warmup,
    "repeats": len(times),
  }


# Fields that never change the compiled step: where data comes from, evaluation and
# bookkeeping. Two configs that differ only in them share one compilation.
_FIELDS_OUTSIDE_THE_STEP = (
  "data",
  "init_from",
  "seed",
  "num_eval_examples",
  "eval_every_steps",
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "strict_data",
)


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """``training.steps.train_step`` of one config, compiled for one device as training does."""

  model: Any
  optimizer: Any
  mesh: Any
  executable: Any  # (state, batch, rng) -> (state, metrics); the state is donated
  compile_seconds: float
  memory: dict
  flops: float | None  # XLA's floating-point operations per step (``compiled_flops``)


_COMPILED_STEPS: dict[str, CompiledStep] = {}


def compiled_train_step(config: ml_collections.ConfigDict) -> CompiledStep:
  """The compiled train step of ``config``, compiled once per process.

  The memory, speed, mixit and seed-tables suites often need the same program (perf3 at
  batch 4 is in three of them); at full size one compilation takes minutes on a CPU.
  """
  from trackformer_jax import models, train

  fields = {k: v for k, v in config.to_dict().items() if k not in _FIELDS_OUTSIDE_THE_STEP}
  key = json.dumps(fields, sort_keys=True, default=str)
  if key not in _COMPILED_STEPS:
    model = models.create_model(config.model)
    optimizer = train.create_optimizer(config)
    mesh = train.create_mesh(jax.devices()[:1])
    start = time.perf_counter()
    step = train.compile_train_step(config, model, optimizer, mesh)
    executable = step.lower(*train.abstract_train_inputs(config, model, optimizer, mesh)).compile()
    _COMPILED_STEPS[key] = CompiledStep(
      model=model,
      optimizer=optimizer,
      mesh=mesh,
      executable=executable,
      compile_seconds=time.perf_counter() - start,
      memory=compiled_memory(executable),
      flops=compiled_flops(executable),
    )
  return _COMPILED_STEPS[key]
