"""MixIT suite: the assignment search against the whole step, and against brute force.

M = 8 estimates, K = 2 and K = 4 mixtures, at the size of the speed suite's 3 s Performer
step (batch 4; 44.1 kHz at full scale, 8 kHz at reduced scale). The fast search
(``losses.mixit.mixit_loss``) scores all K^M assignments from the M x M Gram matrix of the
estimates and their K x M inner products with the mixtures; brute force remixes the full
signals for every assignment. The whole-step time is the speed suite's when it ran in this
invocation, otherwise measured here.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from trackformer_jax import train
from trackformer_jax.bench.options import BenchOptions
from trackformer_jax.bench.speed import speed_config, time_train_step
from trackformer_jax.losses.mixit import assignment_matrices, mixit_loss, thresholded_neg_snr

NUM_ESTIMATES = 8


def mixit_loss_bruteforce(estimates: jax.Array, mixtures: jax.Array, chunk: int = 16) -> jax.Array:
  """The loss ``[batch]`` the slow way, for timing: the full signals remixed by every one of
  the K^M assignment matrices (``chunk`` at a time), each scored by MixIT's objective.
  (tests/mixit_reference.py holds the independent reference the tests check against.)"""
  batch, num_estimates, num_mixtures = estimates.shape[0], estimates.shape[1], mixtures.shape[1]
  estimates, mixtures = (
    estimates.reshape(batch, num_estimates, -1),
    mixtures.reshape(batch, num_mixtures, -1),
  )
  mixture_energy = jnp.sum(mixtures**2, axis=-1)  # [batch, K]

  def loss_of(matrix):  # [K, M] -> [batch]
    remixed = jnp.einsum("km,bmt->bkt", matrix, estimates, precision=jax.lax.Precision.HIGHEST)
    return thresholded_neg_snr(jnp.sum((mixtures - remixed) ** 2, -1), mixture_energy, 30.0)

  matrices = assignment_matrices(num_mixtures, num_estimates)
  return jnp.min(jax.lax.map(loss_of, matrices, batch_size=chunk), axis=0)


def _timed(fn, *args, repeats: int, warm_up: bool = True):
  """(seconds per call of the compiled ``fn``, its output); compilation is not timed."""
  compiled = jax.jit(fn).lower(*args).compile()
  if warm_up:
    jax.block_until_ready(compiled(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    output = jax.block_until_ready(compiled(*args))
  return (time.perf_counter() - start) / repeats, output


def run_mixit_benchmark(samples: int = 480_000, batch: int = 4, smoke: bool = False) -> dict:
  """Times jitted MixIT (M = 8; K = 2 and K = 4) after warm-up, fast search vs brute force.

  Inputs are random ``[batch, 8, samples]`` estimates and ``[batch, K, samples]`` mixtures.
  ``smoke=True`` shrinks to 4,800 samples and batch 2 for a quick check of the code path.
  Returns a flat dict of seconds per call (forward loss; the fast path's value-and-grad
  too) and the largest loss difference between the two, in dB.
  """
  if smoke:
    samples, batch = 4_800, 2
  rng = np.random.default_rng(0)
  result = {"samples": samples, "batch": batch, "num_estimates": 8, "device": str(jax.devices()[0])}

  def fast(estimates, mixtures):
    return mixit_loss(estimates, mixtures)[0]

  def brute(estimates, mixtures):
    return mixit_loss_bruteforce(estimates, mixtures)

  fast_grad = jax.value_and_grad(lambda s, y: jnp.sum(fast(s, y)))
  for num_mixtures in (2, 4):
    estimates = jnp.asarray(rng.standard_normal((batch, 8, samples), np.float32))
    mixtures = jnp.asarray(rng.standard_normal((batch, num_mixtures, samples), np.float32))
    repeats = 3 if smoke else 10
    key = f"k{num_mixtures}"
    result[f"{key}_fast_s"], fast_loss = _timed(fast, estimates, mixtures, repeats=repeats)
    result[f"{key}_fast_value_and_grad_s"], _ = _timed(
      fast_grad, estimates, mixtures, repeats=repeats
    )
    # One call, after compiling: at full length it takes minutes on a CPU.
    result[f"{key}_bruteforce_s"], brute_loss = _timed(
      brute, estimates, mixtures, repeats=1, warm_up=False
    )
    result[f"{key}_max_loss_difference_db"] = float(jnp.max(jnp.abs(fast_loss - brute_loss)))
  # The machine's 1-minute load average at the end: CPU timings on a shared host vary with it.
  result["load_average"] = os.getloadavg()[0]
  return result


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
