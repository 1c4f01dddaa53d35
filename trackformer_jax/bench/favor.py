"""FAVOR+ suite: linear-time FAVOR+ against exact softmax attention, lengths 1k to 64k tokens.

One attention call at the Performer configs' shape (8 heads of 32 dimensions, 256 random
features, batch 1), forward and forward + gradient (what training pays). Memory is XLA's
compiled figure, so exact attention's is known even where it cannot run; a call whose
compiled memory exceeds the host budget is reported, not run. For scale: a 30 s segment is
5,169 STFT frames at hop 256, a 120 s one 20,673.
"""

import time

import jax
import jax.numpy as jnp

from trackformer_jax.bench.measure import compiled_memory, seconds_per_call
from trackformer_jax.bench.options import GIB, BenchOptions
from trackformer_jax.models.favor import favor_attention, orthogonal_features, softmax_attention

HEADS, HEAD_DIM, NUM_FEATURES, BATCH = 8, 32, 256, 1
SMOKE_SHAPE = dict(heads=2, head_dim=8, num_features=16, lengths=(64, 128))


def attention_fns(features: jax.Array) -> dict:
  """name -> attention(q, k, v) [batch, length, heads, head_dim]."""
  return {
    "favor": lambda q, k, v: favor_attention(q, k, v, features),
    "exact": softmax_attention,
  }


def with_gradient(attention):
  """Forward and backward of the attention, as training runs it (a fixed random cotangent)."""

  def loss(q, k, v):
    out = attention(q, k, v)
    return jnp.sum(out * jnp.cos(jnp.arange(out.shape[-1], dtype=out.dtype)))

  return jax.value_and_grad(loss, argnums=(0, 1, 2))


def measure_one(attention, length: int, heads: int, head_dim: int, repeats: int, budget: float):
  """Compiled memory and (when within ``budget`` GiB) time of forward and forward + gradient."""
  shape = jax.ShapeDtypeStruct((BATCH, length, heads, head_dim), jnp.float32)
  record = {}
  compiled = {}
  for mode, fn in (("forward", attention), ("train", with_gradient(attention))):
    start = time.perf_counter()
    compiled[mode] = jax.jit(fn).lower(shape, shape, shape).compile()
    record[f"{mode}_compile_seconds"] = time.perf_counter() - start
    record[f"{mode}_peak_bytes"] = compiled_memory(compiled[mode])["peak_bytes"]
  if record["train_peak_bytes"] > budget * GIB:
    record["status"] = (
      f"not run: forward + gradient needs {record['train_peak_bytes'] / GIB:.1f} GiB, over the "
      f"{budget:g} GiB host budget"
    )
    record["forward_seconds"] = record["train_seconds"] = None
    return record
  keys = jax.random.split(jax.random.PRNGKey(length), 3)
  q, k, v = (jax.random.normal(key, shape.shape, jnp.float32) for key in keys)
  for mode in ("forward", "train"):
    timing = seconds_per_call(lambda mode=mode: compiled[mode](q, k, v), repeats)
    record[f"{mode}_seconds"] = timing["median_seconds"]
  record["status"] = "ran"
  return record


def run(options: BenchOptions, results: dict) -> list[dict]:
  del results
  if options.smoke:
    heads, head_dim, num_features = (SMOKE_SHAPE[k] for k in ("heads", "head_dim", "num_features"))
    lengths, repeats = SMOKE_SHAPE["lengths"], 1
  else:
    heads, head_dim, num_features = HEADS, HEAD_DIM, NUM_FEATURES
    lengths, repeats = options.favor_lengths, 3
  features = orthogonal_features(jax.random.PRNGKey(0), num_features, head_dim)
  records = []
  for length in lengths:
    for name, attention in attention_fns(features).items():
      record = {
        "attention": name,
        "length": int(length),
        "batch_size": BATCH,
        "heads": heads,
        "head_dim": head_dim,
        "num_features": num_features if name == "favor" else None,
        **measure_one(attention, length, heads, head_dim, repeats, options.host_memory_gib),
      }
      record["over_device_budget"] = record["train_peak_bytes"] > options.device_memory_gib * GIB
      print(f"favor {name} {length}: {record['status']}", flush=True)
      records.append(record)
  return records


def summarize(records: list[dict]) -> dict:
  """The crossover: the shortest length from which FAVOR+ is faster at every longer length.

  Lengths where exact attention could not run count as FAVOR+ wins only for memory; the
  crossover is judged on lengths where both ran.
  """
  by = {(r["attention"], r["length"]): r for r in records}
  lengths = sorted({r["length"] for r in records})
  summary: dict = {}
  for mode in ("forward", "train"):
    both = [
      n
      for n in lengths
      if by.get(("favor", n), {}).get(f"{mode}_seconds")
      and by.get(("exact", n), {}).get(f"{mode}_seconds")
    ]
    faster = [
      by[("favor", n)][f"{mode}_seconds"] < by[("exact", n)][f"{mode}_seconds"] for n in both
    ]
    crossover = None
    for i, n in enumerate(both):
      if all(faster[i:]):
        crossover = n
        break
    summary[f"{mode}_crossover_length"] = crossover
  exact_not_run = [n for n in lengths if by.get(("exact", n), {}).get("status", "ran") != "ran"]
  summary["exact_not_run_from_length"] = min(exact_not_run) if exact_not_run else None
  longest = lengths[-1] if lengths else None
  if longest is not None and ("favor", longest) in by and ("exact", longest) in by:
    summary[f"exact_over_favor_train_memory_at_{longest}"] = (
      by[("exact", longest)]["train_peak_bytes"] / by[("favor", longest)]["train_peak_bytes"]
    )
  return summary
