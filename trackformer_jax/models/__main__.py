"""Prints a model's parameter table and total.

python -m trackformer_jax.models --config configs/test.py [--config.model.name=convtasnet]
"""

import sys

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from trackformer_jax import models

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")


def count_parameters(params) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(params))


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    model = models.create_model(config.model)
  except ValueError as error:
    sys.exit(f"error: {error}")
  samples = int(round(config.segment_seconds * config.sample_rate_hz))
  mixture = jnp.zeros((1, config.channels, samples), jnp.float32)
  keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  table = model.tabulate(
    keys, mixture, deterministic=True, depth=2, console_kwargs={"width": 140, "no_color": True}
  )
  print(table)
  variables = jax.eval_shape(lambda: model.init(keys, mixture, deterministic=True))
  print(f"{config.model.name}: {count_parameters(variables['params']):,} parameters")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
