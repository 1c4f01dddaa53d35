"""Compiled memory of one training step (loss, gradient, AdamW update), without running it.

XLA's buffer assignment for the whole step, from
`jax.jit(step).lower(...).compile().memory_analysis()`; nothing is allocated, so it works on
a CPU for sizes no CPU could run. Figures are per device for the given batch.

  python -m trackformer_jax.bench_memory [seconds ...]   # default 3 10 30, all three models
"""

import sys

import jax
import jax.numpy as jnp
import ml_collections
import optax

from trackformer_jax import models
from trackformer_jax.losses.mixit import mixit_loss


def step_memory_bytes(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Bytes XLA assigns to one training step of `config.model` at `config`'s batch and segment.

  The step is MixIT on a mixture of two mixtures (`mixit_loss`, K = 2) with dropout on, its
  gradient and an `optax.adamw` update: the train step without the mask regularisers,
  gradient clipping and non-finite guards, which add O(parameters) at most.

  Returns:
    argument_bytes (params, optimiser state, batch), output_bytes (new params and optimiser
    state, loss), temp_bytes (activations and workspace), alias_bytes (outputs sharing an
    argument's buffer; 0 here, nothing is donated) and total_bytes, their sum minus aliases.
  """
  model = models.create_model(config.model)
  samples = int(round(config.segment_seconds * config.sample_rate_hz))
  batch, channels = config.batch_size, config.channels
  mom = jax.ShapeDtypeStruct((batch, channels, samples), jnp.float32)
  mixtures = jax.ShapeDtypeStruct((batch, 2, channels, samples), jnp.float32)
  key = jax.random.PRNGKey(0)
  optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)

  def init():
    params = model.init({"params": key, "dropout": key}, jnp.zeros(mom.shape), deterministic=True)
    return params["params"], optimizer.init(params["params"])

  params, opt_state = jax.eval_shape(init)

  def loss_fn(params, mom, mixtures, rng):
    estimates, _ = model.apply({"params": params}, mom, deterministic=False, rngs={"dropout": rng})
    loss, _ = mixit_loss(estimates, mixtures, config.snr_max_db)
    return jnp.mean(loss)

  def step(params, opt_state, mom, mixtures, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, mom, mixtures, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  compiled = jax.jit(step).lower(params, opt_state, mom, mixtures, key).compile()
  analysis = compiled.memory_analysis()
  figures = {
    "argument_bytes": int(analysis.argument_size_in_bytes),
    "output_bytes": int(analysis.output_size_in_bytes),
    "temp_bytes": int(analysis.temp_size_in_bytes),
    "alias_bytes": int(analysis.alias_size_in_bytes),
  }
  figures["total_bytes"] = (
    figures["argument_bytes"]
    + figures["output_bytes"]
    + figures["temp_bytes"]
    - figures["alias_bytes"]
  )
  return figures


def main(argv: list[str]) -> None:
  from configs import default

  seconds = [float(s) for s in argv] or [3.0, 10.0, 30.0]
  print(f"{'model':<18} {'seconds':>7} {'total GiB':>10} {'temp GiB':>9}")
  for name in ("performer", "convtasnet", "dense_transformer"):
    for segment in seconds:
      config = default.get_config()
      config.model.name = name
      config.segment_seconds = segment
      figures = step_memory_bytes(config)
      print(
        f"{name:<18} {segment:>7g} {figures['total_bytes'] / 2**30:>10.2f} "
        f"{figures['temp_bytes'] / 2**30:>9.2f}",
        flush=True,
      )


if __name__ == "__main__":
  main(sys.argv[1:])
