"""The experiment configs the suites measure, loaded by file name from ``configs/``."""

import ml_collections

from trackformer_jax.training import config_files


def load_config(name: str) -> ml_collections.ConfigDict:
  """``configs/<name>.py``'s ``get_config()``; ``dense<S>`` is ``perf<S>`` with exact attention.

  There is no config file for the dense-attention control: it is the Performer recipe with
  only the attention swapped, which is exactly what a comparison of the two should hold fixed.
  """
  if name.startswith("dense"):
    config = load_config("perf" + name[len("dense") :])
    config.model.name = "dense_transformer"
    return config
  return config_files.load_config(name)


def sized_config(name: str, segment_seconds: float | None = None) -> ml_collections.ConfigDict:
  """``load_config(name)``, optionally at another segment length (perf60 = perf30 at 60 s)."""
  config = load_config(name)
  if segment_seconds is not None:
    config.segment_seconds = float(segment_seconds)
  return config


def smoke_config(model_name: str, segment_seconds: float) -> ml_collections.ConfigDict:
  """``configs/tiny.py:smoke`` (what ``--smoke`` runs) with this model and segment length."""
  config = load_config("tiny:smoke")
  config.model.name = model_name
  config.segment_seconds = float(segment_seconds)
  return config


def reduced_config(
  model_name: str, segment_seconds: float, smoke: bool
) -> ml_collections.ConfigDict:
  """``configs/reduced.py`` (what a CPU can train) with this model and segment length.

  ``smoke``: exactly the other smoke suites' config instead, so the compiled step is shared.
  """
  if smoke:
    return smoke_config(model_name, segment_seconds)
  config = load_config(f"reduced:{model_name}")
  config.segment_seconds = float(segment_seconds)
  return config
