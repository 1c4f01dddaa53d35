"""The Audio-MAE task (``config.task = "mae"``): masked reconstruction pre-training.

``models.mae.AudioMAE`` reconstructs the hidden frames of the training mixtures of mixtures
(stems are never read). Each evaluation scores the validation split with fixed masks (the
same at every evaluation, so the curve compares like with like): ``reconstruction_loss``
(lower is better; the best checkpoint minimises it) and, as the reference to beat,
``interpolation_loss``, the same loss of a straight line drawn across each hidden gap from
the visible frames' clean targets. ``training.transfer.transfer_encoder`` loads the result
into a MixIT separator (``config.init_from``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trackformer_jax.losses import mae as mae_loss_lib
from trackformer_jax.models import mae as mae_lib
from trackformer_jax.training.errors import ConfigError

TRAIN_FIELDS = ("mom",)
EVAL_FIELDS = ("mom",)
WITH_STEMS = False


def validate_config(config: ml_collections.ConfigDict) -> None:
  """The Audio-MAE checks; ``config_checks.validate_config`` calls this for ``task = "mae"``."""
  if config.model.get("name") == "convtasnet":
    raise ConfigError(
      "config.model.name = 'convtasnet': Audio-MAE pre-trains the transformer separators"
    )
  try:
    mae_lib.check_mae_config(config.mae)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  if config.get("init_from", ""):
    raise ConfigError(f"config.init_from = {config.init_from!r}: pre-training starts from scratch")


def create_model(config: ml_collections.ConfigDict) -> mae_lib.AudioMAE:
  return mae_lib.create_mae(config)


def training_loss(
  params: Any,
  model: mae_lib.AudioMAE,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  config: ml_collections.ConfigDict,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean masked reconstruction loss of ``batch["mom"]`` [B, C, T] under fresh masks.

  ``rng`` is the step's key: split into the mask key and the dropout key.
  """
  del config
  mask_key, dropout_key = jax.random.split(rng)
  predictions, aux = model.apply(
    {"params": params},
    batch["mom"],
    mask_key,
    deterministic=False,
    rngs={"dropout": dropout_key},
  )
  per_example = mae_loss_lib.masked_reconstruction_loss(
    predictions, aux["targets"], aux["loss_mask"]
  )
  loss = jnp.mean(per_example)
  return loss, {"reconstruction": loss}


def eval_step(
  params: Any,
  batch: Mapping[str, jax.Array],
  key: jax.Array,
  *,
  model: mae_lib.AudioMAE,
  config: ml_collections.ConfigDict,
) -> dict[str, jax.Array]:
  """Per-example ``reconstruction_loss`` [B] and ``interpolation_loss`` [B] of ``batch["mom"]``.

  ``key`` draws the masks: the loop's fixed key of the batch, so every evaluation hides the
  same frames. ``eval_weight`` [B] comes back beside the scores.
  """
  del config
  predictions, aux = model.apply({"params": params}, batch["mom"], key, deterministic=True)
  interpolated = mae_loss_lib.interpolate_from_visible(aux["targets"], ~aux["hidden"])
  score = lambda estimate: mae_loss_lib.masked_reconstruction_loss(  # noqa: E731
    estimate, aux["targets"], aux["loss_mask"]
  )
  weight = batch["eval_weight"] if "eval_weight" in batch else jnp.ones(len(predictions))
  return {
    "eval_weight": weight,
    "reconstruction_loss": score(predictions),
    "interpolation_loss": score(interpolated),
  }


def summarize_eval(per_example: list[dict[str, np.ndarray]], weights: list[np.ndarray]) -> dict:
  """Weighted means of ``eval_step``'s scores over the validation batches."""
  totals: dict[str, float] = {}
  for scores, batch_weights in zip(per_example, weights, strict=True):
    for name, values in scores.items():
      totals[name] = totals.get(name, 0.0) + float(np.sum(np.asarray(values) * batch_weights))
  weight_sum = sum(float(batch_weights.sum()) for batch_weights in weights)
  if not weight_sum:
    return {}
  return {name: total / weight_sum for name, total in totals.items()}


def best_score(scores: Mapping[str, float]) -> float:
  """Higher is better for the checkpoint manager's best-step policy."""
  return -scores["reconstruction_loss"]


def eval_baselines(
  config: ml_collections.ConfigDict, eval_batches: Iterable[Mapping[str, np.ndarray]], scores
) -> dict[str, float]:
  """None beyond ``interpolation_loss``, which every evaluation scores beside the model."""
  del config, eval_batches, scores
  return {}


def format_train_log(averaged: Mapping[str, float]) -> str:
  return f"reconstruction {averaged['reconstruction']:.4f}"


def format_eval_log(scores: Mapping[str, float]) -> str:
  return (
    f"reconstruction {scores['reconstruction_loss']:.4f} "
    f"(linear interpolation {scores['interpolation_loss']:.4f})"
  )
