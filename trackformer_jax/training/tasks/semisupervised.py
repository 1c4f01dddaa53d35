"""Semi-supervised MixIT (``config.task = "semisupervised"``): MixIT beside a stem loss.

The MixIT paper's own semi-supervised setting: the unlabeled data (``config.data``, e.g. a
user's folder of songs) trains by MixIT exactly as the ``mixit`` task does, and a second,
labelled source (``config.supervised.data``, e.g. ``bundled``, whose stems are known) adds a
supervised term on single songs: the model's outputs on a song's mixture are remixed into its
four stems by the best of all 4^8 assignments (every sounding stem gets at least one output),
and the negative thresholded SNR of those remixes is the loss, as in MixIT with the stems as
its references.

  loss = MixIT + λ_div · diversity + λ_sparse · sparsity        (the ``mixit`` task's loss)
         + config.supervised.weight · StemMixIT(model(song), stems)

Both terms go through one forward pass of the model (the labelled songs appended to the batch
of mixtures of mixtures). Validation, its scores and the best checkpoint are the ``mixit``
task's, on ``config.data``'s validation split. Labels are used only from
``config.supervised.data``: ``config.data`` is read for its mixtures alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from trackformer_jax.training.errors import ConfigError
from trackformer_jax.training.tasks import mixit as mixit_task

TRAIN_FIELDS = ("mom", "mixtures", "labeled_mixture", "labeled_stems")
EVAL_FIELDS = mixit_task.EVAL_FIELDS
WITH_STEMS = False  # config.data's stream: mixtures only, as a user's folder has

create_model = mixit_task.create_model
eval_step = mixit_task.eval_step
summarize_eval = mixit_task.summarize_eval
best_score = mixit_task.best_score
eval_baselines = mixit_task.eval_baselines
format_eval_log = mixit_task.format_eval_log


def validate_config(config: ml_collections.ConfigDict) -> None:
  """``config.supervised``: ``data`` (a source with stems), ``weight`` > 0, ``batch_size`` >= 1."""
  supervised = config.get("supervised", None)
  if supervised is None or not supervised.get("data", ""):
    raise ConfigError(
      "config.supervised.data: the semisupervised task needs a labelled source, e.g. "
      "bundled (configs/semisupervised.py sets config.supervised)"
    )
  weight = supervised.get("weight", 1.0)
  if not isinstance(weight, (int, float)) or not weight > 0:
    raise ConfigError(f"config.supervised.weight = {weight!r}: must be a positive number")
  batch_size = supervised.get("batch_size", 0)
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ConfigError(f"config.supervised.batch_size = {batch_size!r}: must be at least 1")
  if batch_size % jax.device_count():
    raise ConfigError(
      f"config.supervised.batch_size = {batch_size}: must divide over the "
      f"{jax.device_count()} devices (the labelled rows are split over them too)"
    )


def extra_batch_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """The shapes of the labelled fields of a training batch (for lowering without data)."""
  from trackformer_jax.data.tracks import STEM_NAMES
  from trackformer_jax.training.config_files import segment_samples

  rows, channels = int(config.supervised.batch_size), int(config.channels)
  length = segment_samples(config)
  return {
    "labeled_mixture": (rows, channels, length),
    "labeled_stems": (rows, len(STEM_NAMES), channels, length),
  }


def labeled_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of the labelled stream: ``config`` with the supervised source and batch."""
  labeled = ml_collections.ConfigDict(config.to_dict())
  labeled.data = config.supervised.data
  labeled.batch_size = int(config.supervised.batch_size)
  # Its own seeded stream: the labelled songs' order never follows the unlabeled one's.
  labeled.seed = int(config.seed) + 1
  return labeled


def train_batches(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
  """Batch ``s`` of both streams: config.data's MixIT fields and one labelled song per row.

  ``labeled_mixture`` [B_s, C, T] is the first song of a labelled example and
  ``labeled_stems`` [B_s, 4, C, T] its stems (which sum to it). Both sources are opened, and
  the labelled one's first batch read, here (before training starts): a labelled source
  without stems is refused at once.
  """
  from trackformer_jax import input_pipeline
  from trackformer_jax.data import sources

  unlabeled = input_pipeline.train_batches(config, start_step=start_step, with_stems=False)
  labeled = input_pipeline.train_batches(
    labeled_config(config), start_step=start_step, with_stems=True
  )
  first = next(labeled)
  if "stems" not in first:  # train_batches gives stems wherever the source has them
    raise sources.DataError(
      f"config.supervised.data = {config.supervised.data}: has no stems to supervise with"
    )
  return (
    {
      "mom": batch["mom"],
      "mixtures": batch["mixtures"],
      "labeled_mixture": extra["mixtures"][:, 0],
      "labeled_stems": extra["stems"][:, 0],
    }
    for batch, extra in zip(unlabeled, itertools.chain([first], labeled))
  )


def stem_loss(
  estimates: jax.Array, stems: jax.Array, snr_max_db: float, silence_threshold_db: float
) -> jax.Array:
  """Per-example supervised loss ``[B]``: MixIT with the stems ``[B, K, C, T]`` as references.

  Stems quieter than ``silence_threshold_db`` (RMS, dBFS) need no output; every other stem
  gets at least one. A silent stem's term is 0 dB at best (no output sent to it).
  """
  from trackformer_jax.losses import mixit

  flat = stems.reshape(*stems.shape[:2], -1)
  rms_db = 10 * jnp.log10(jnp.mean(flat**2, axis=-1) + 1e-20)
  active = rms_db >= silence_threshold_db
  loss, _ = mixit.mixit_loss(estimates, stems, snr_max_db, required=active)
  return loss


def training_loss(params, model, batch, rng, config) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The ``mixit`` task's loss plus ``config.supervised.weight`` times ``stem_loss``.

  Arguments as every task's ``training_loss`` (``training.tasks``); ``batch`` holds ``mom``
  [B, C, T], ``mixtures`` [B, 2, C, T], ``labeled_mixture`` [B_s, C, T] and
  ``labeled_stems`` [B_s, 4, C, T].

  Returns:
    (loss [], parts): ``mixit``, ``diversity``, ``sparsity`` (over the mixtures of mixtures)
    and ``supervised`` (unweighted means).
  """
  num_unlabeled = batch["mom"].shape[0]
  inputs = jnp.concatenate([batch["mom"], batch["labeled_mixture"]])
  estimates, aux = model.apply(
    {"params": params}, inputs, deterministic=False, rngs={"dropout": rng}
  )
  loss, parts = mixit_task.mixit_objective(
    estimates[:num_unlabeled], aux["masks"][:num_unlabeled], batch, config
  )
  supervised = jnp.mean(
    stem_loss(
      estimates[num_unlabeled:],
      batch["labeled_stems"],
      config.snr_max_db,
      float(config.silence_threshold_db),
    )
  )
  return loss + config.supervised.weight * supervised, {**parts, "supervised": supervised}


def format_train_log(averaged: Mapping[str, float]) -> str:
  return f"{mixit_task.format_train_log(averaged)} supervised {averaged['supervised']:.3f}"
