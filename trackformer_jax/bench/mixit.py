"""MixIT suite: the assignment search against the whole step, and against brute force.

M = 8 estimates, K = 2 and K = 4 mixtures, at the size of the speed suite's 3 s Performer
step (batch 4; 44.1 kHz at full scale, 8 kHz at reduced scale). The fast search
(``losses.mixit.mixit_loss``) scores all K^M assignments from the M x M Gram matrix of the
estimates and their K x M inner products with the mixtures; brute force remixes the full
signals for every assignment. The whole-step time is the speed suite's when it ran in this
invocation, otherwise measured here.
"""

from trackformer_jax import train
from trackformer_jax.bench.options import BenchOptions
from trackformer_jax.bench.speed import speed_config, time_train_step
from trackformer_jax.bench_mixit import run_mixit_benchmark

NUM_ESTIMATES = 8


def whole_step_seconds(options: BenchOptions, results: dict) -> tuple[float | None, str]:
  """(seconds of one Performer train step at 3 s, where the figure comes from)."""
  config = step_config(options)
  for record in results.get("speed", []):
    if (
      record["model"] == "performer"
      and record["segment_seconds"] == config.segment_seconds
      and record["sample_rate_hz"] == config.sample_rate_hz
      and record["batch_size"] == config.batch_size
      and record["step_seconds"]
    ):
      return record["step_seconds"], "speed suite"
  steps = 1 if options.smoke else options.speed_steps
  timing = time_train_step(config, steps, options.host_memory_gib)
  return timing["step_seconds"], "measured by the mixit suite"


def step_config(options: BenchOptions):
  """The speed suite's Performer config at 3 s (0.5 s in smoke mode), at its scale."""
  return speed_config("performer", 0.5 if options.smoke else 3, options)


def run(options: BenchOptions, results: dict) -> list[dict]:
  config = step_config(options)
  # The search sees [batch, M, channels * samples]: size it like the step it is part of.
  samples = train.segment_samples(config) * config.channels
  flat = run_mixit_benchmark(samples=samples, batch=config.batch_size)
  step_seconds, step_source = whole_step_seconds(options, results)
  records = []
  for num_mixtures in (2, 4):
    key = f"k{num_mixtures}"
    fast, brute = flat[f"{key}_fast_s"], flat[f"{key}_bruteforce_s"]
    search_with_grad = flat[f"{key}_fast_value_and_grad_s"]
    records.append(
      {
        "num_mixtures": num_mixtures,
        "num_estimates": NUM_ESTIMATES,
        "num_assignments": num_mixtures**NUM_ESTIMATES,
        "samples": int(flat["samples"]),
        "sample_rate_hz": int(config.sample_rate_hz),
        "batch_size": int(flat["batch"]),
        "fast_seconds": fast,
        "fast_value_and_grad_seconds": search_with_grad,
        "bruteforce_seconds": brute,
        "bruteforce_over_fast": brute / fast,
        "max_loss_difference_db": flat[f"{key}_max_loss_difference_db"],
        "step_seconds": step_seconds,
        "step_source": step_source,
        # Only K = 2 is in the training step; K = 4 is what evaluation runs per stem set.
        "search_fraction_of_step": search_with_grad / step_seconds if step_seconds else None,
      }
    )
    print(f"mixit K={num_mixtures}: fast {fast:.4f} s, brute force {brute:.3f} s", flush=True)
  return records


def summarize(records: list[dict]) -> dict:
  return {
    f"k{r['num_mixtures']}_bruteforce_over_fast": r["bruteforce_over_fast"] for r in records
  } | {
    f"k{r['num_mixtures']}_search_fraction_of_step": r["search_fraction_of_step"] for r in records
  }
