"""Speed suite: training-step time of the Performer against Conv-TasNet at 3, 5 and 10 s.

Both run in one process on the same machine, one after the other, each step compiled exactly
as the trainer compiles it (``train.compile_train_step``) and fed a fixed random batch (the
step's cost does not depend on the audio). The seed reports epochs 1.36x faster at 3 s, a
step-time ratio of 1/1.36 = 0.74; issue 9 aims for <= 0.5 (the seed: docs/history.md).

Each record also carries the step's floating-point operations as XLA counts them, the
achieved TFLOP/s, the model FLOPs utilisation when ``--peak-tflops`` gives the device's
peak (no peak is guessed: it depends on the card and the dtype), and the device's own peak
memory where the runtime reports one (GPU, TPU; None on the CPU).
"""

import jax
import ml_collections
import numpy as np

from trackformer_jax import resources, train
from trackformer_jax.bench.experiments import reduced_config, sized_config, smoke_config
from trackformer_jax.bench.measure import compiled_train_step, seconds_per_call
from trackformer_jax.bench.options import GIB, BenchOptions

SECONDS = (3, 5, 10)
SMOKE_SECONDS = (0.5,)
MODELS = {"performer": "perf", "convtasnet": "convtasnet"}
SEED_STEP_RATIO_3S = 1 / 1.36  # the seed's Table 2: epochs 1.36x faster at 3 s


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """A training batch of noise: ``mixtures`` [B, 2, C, T] and their sum ``mom`` [B, C, T]."""
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, 2, config.channels, train.segment_samples(config))
  mixtures = (0.1 * rng.standard_normal(shape)).astype(np.float32)
  return {"mom": mixtures.sum(axis=1), "mixtures": mixtures}


def time_train_step(
  config: ml_collections.ConfigDict,
  steps: int,
  host_memory_gib: float,
  peak_tflops: float | None = None,
) -> dict:
  """Compiles ``config``'s train step, reads its memory, and times ``steps`` steps.

  A step whose compiled memory exceeds ``host_memory_gib`` is not run (``status`` says so).
  """
  compiled = compiled_train_step(config)
  record = {
    "compile_seconds": compiled.compile_seconds,
    "peak_bytes": compiled.memory["peak_bytes"],
    "flops_per_step": compiled.flops,
    "achieved_tflops_per_second": None,
    "model_flops_utilisation": None,
    "device_peak_bytes": None,
  }
  if record["peak_bytes"] > host_memory_gib * GIB:
    record.update(
      status=f"not run: needs {record['peak_bytes'] / GIB:.1f} GiB, over the "
      f"{host_memory_gib:g} GiB host budget",
      step_seconds=None,
      examples_per_second=None,
    )
    return record
  state = train.init_train_state(config, compiled.model, compiled.optimizer, compiled.mesh)
  batch = {name: jax.device_put(value) for name, value in random_batch(config).items()}
  rng = jax.random.PRNGKey(0)
  carried = {"state": state}  # the state is donated: each step must take the previous output

  def one_step():
    carried["state"], metrics = compiled.executable(carried["state"], batch, rng)
    return metrics

  timing = seconds_per_call(one_step, steps)
  record.update(
    status="ran",
    step_seconds=timing["median_seconds"],
    min_step_seconds=timing["min_seconds"],
    first_step_seconds=timing["warmup_seconds"],
    steps_timed=timing["repeats"],
    examples_per_second=config.batch_size / timing["median_seconds"],
    # A running peak: it covers every step this process ran so far, this one's included.
    device_peak_bytes=resources.device_peak_bytes(),
  )
  if compiled.flops:
    achieved = compiled.flops / timing["median_seconds"] / 1e12
    record["achieved_tflops_per_second"] = achieved
    if peak_tflops:
      record["model_flops_utilisation"] = achieved / peak_tflops
  return record


def speed_config(model_name: str, seconds: float, options: BenchOptions):
  """The config the speed suite times for ``model_name`` at ``seconds`` (scale and batch)."""
  if options.smoke:
    config = smoke_config(model_name, seconds)
  elif options.speed_scale == "reduced":
    config = reduced_config(model_name, seconds, smoke=False)
  else:
    config = sized_config(f"{MODELS[model_name]}{seconds:g}")
  if options.speed_batch_size:
    config.batch_size = int(options.speed_batch_size)
  return config


def config_label(model_name: str, seconds: float, options: BenchOptions) -> str:
  if options.smoke:
    return "test"
  label = f"{MODELS[model_name]}{seconds:g}"
  return label if options.speed_scale == "full" else f"{label} (reduced)"


def run(options: BenchOptions, results: dict) -> list[dict]:
  del results
  records = []
  for seconds in SMOKE_SECONDS if options.smoke else SECONDS:
    for model_name in MODELS:
      config = speed_config(model_name, seconds, options)
      record = {
        "model": model_name,
        "config": config_label(model_name, seconds, options),
        "scale": "smoke" if options.smoke else options.speed_scale,
        "segment_seconds": float(seconds),
        "batch_size": int(config.batch_size),
        "sample_rate_hz": int(config.sample_rate_hz),
        **time_train_step(
          config,
          1 if options.smoke else options.speed_steps,
          options.host_memory_gib,
          options.peak_tflops,
        ),
      }
      step = record["step_seconds"]
      print(f"speed {model_name} {seconds} s: {step if step is None else round(step, 3)} s/step")
      records.append(record)
  return records


def summarize(records: list[dict]) -> dict:
  """Performer / Conv-TasNet step-time ratio per length (< 1: the Performer is faster)."""
  steps = {(r["model"], r["segment_seconds"]): r["step_seconds"] for r in records}
  summary: dict = {"seed_step_ratio_3s": SEED_STEP_RATIO_3S}
  for seconds in sorted({r["segment_seconds"] for r in records}):
    performer, convtasnet = steps.get(("performer", seconds)), steps.get(("convtasnet", seconds))
    ratio = performer / convtasnet if performer and convtasnet else None
    summary[f"step_ratio_{seconds:g}s"] = ratio
  return summary
