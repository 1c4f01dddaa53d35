"""The MixIT task (``config.task = "mixit"``): unsupervised separation of mixtures of mixtures.

Training minimises MixIT on the mixture of mixtures plus two mask regularisers; validation
rebuilds both mixtures from the outputs (and, where the data has stems, each mixture's four
stems) by the best MixIT assignment. The best checkpoint maximises the stem SI-SNRi (the
MoM SI-SNRi without stems). See ``training.tasks`` for what a task module supplies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trackformer_jax.data.tracks import STEM_NAMES

# The stem SI-SNR given to an estimate worse than this: a silent stem (which the assignment
# may leave without any output), or an output that holds almost nothing of its stem.
STEM_SI_SNR_FLOOR_DB = -30.0

TRAIN_FIELDS = ("mom", "mixtures")
EVAL_FIELDS = None  # mom, mixtures and, where the data has them, stems
WITH_STEMS = None  # the input pipeline's default: stems where the data has them


def validate_config(config: ml_collections.ConfigDict) -> None:
  """MixIT's fields are checked by ``config_checks.validate_config`` for every task."""
  del config


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  from trackformer_jax import models

  return models.create_model(config.model)


def _loss_fns():
  # Imported here so that config checks and the CLI's --help never pay for them.
  from trackformer_jax.losses import masks, mixit

  return mixit, masks


def training_loss(
  params: Any,
  model: nn.Module,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  config: ml_collections.ConfigDict,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """MixIT on the mixture of mixtures plus the two mask regularisers.

  loss = mean_b MixIT(estimates_b, mixtures_b) + λ_div · diversity(masks)
         + λ_sparse · sparsity(estimates, mom)

  Args:
    batch: ``mom`` [B, C, T] and ``mixtures`` [B, 2, C, T].

  Returns:
    (loss [], parts): parts holds ``mixit``, ``diversity`` and ``sparsity`` (unweighted).
  """
  estimates, aux = model.apply(
    {"params": params}, batch["mom"], deterministic=False, rngs={"dropout": rng}
  )
  return mixit_objective(estimates, aux["masks"], batch, config)


def mixit_objective(
  estimates: jax.Array,
  output_masks: jax.Array,
  batch: Mapping[str, jax.Array],
  config: ml_collections.ConfigDict,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``training_loss`` from the model's outputs on ``batch["mom"]``: ``estimates`` [B, M, C, T]
  and their ``output_masks`` (the model's ``aux["masks"]``); the same ``(loss, parts)``."""
  mixit, masks = _loss_fns()
  mixit_per_example, _ = mixit.mixit_loss(estimates, batch["mixtures"], config.snr_max_db)
  mixit_term = jnp.mean(mixit_per_example)
  diversity = jnp.mean(masks.diversity_loss(output_masks))
  sparsity = jnp.mean(masks.sparsity_loss(estimates, batch["mom"], kind=config.sparsity_kind))
  loss = mixit_term + config.diversity_weight * diversity + config.sparsity_weight * sparsity
  return loss, {"mixit": mixit_term, "diversity": diversity, "sparsity": sparsity}


def flatten_audio(x: jax.Array) -> jax.Array:
  """[..., C, T] -> [..., C·T]: SI-SNR over both channels of a source at once."""
  return x.reshape(*x.shape[:-2], -1)


def eval_step(
  params: Any,
  batch: Mapping[str, jax.Array],
  key: jax.Array | None = None,
  *,
  model: nn.Module,
  config: ml_collections.ConfigDict,
) -> dict[str, jax.Array]:
  """Per-example validation scores (host code averages them, dropping padded examples).

  Args:
    batch: ``mom`` [B, C, T], ``mixtures`` [B, 2, C, T] and, where the data has them,
      ``stems`` [B, 2, 4, C, T] (the four stems of each of the two mixtures).
    key: unused (MixIT's validation draws nothing at random); the loop passes every task one.

  Returns:
    ``mixit_loss`` [B]; ``mom_si_snri_db`` [B] (the two mixtures rebuilt from the outputs on the
    mixture of mixtures by the best MixIT assignment); ``mask_overlap`` [B]
    (``diversity_loss`` of the masks) and ``effective_masks`` [B]; with stems, each single
    mixture is separated and its 4 stems rebuilt by the best assignment (MixIT with K = 4)
    that gives every sounding stem at least one output:
    ``stem_si_snri_db`` [B, 2, 4] (the estimate's SI-SNR floored at ``STEM_SI_SNR_FLOOR_DB``,
    minus the unprocessed mixture's), ``usdr_db`` [B, 2, 4], ``stem_active`` [B, 2, 4] (1 where
    the stem is louder than ``silence_threshold_db`` dBFS; silent stems have no SI-SNR).
  """
  from trackformer_jax import metrics as metrics_lib

  del key
  mixit, masks = _loss_fns()
  variables = {"params": params}
  mom, mixtures = batch["mom"], batch["mixtures"]
  estimates, aux = model.apply(variables, mom, deterministic=True)
  loss, mixing = mixit.mixit_loss(estimates, mixtures, config.snr_max_db)
  rebuilt = mixit.remix(mixing, estimates)  # [B, 2, C, T]
  reference = flatten_audio(mixtures)
  mom_si_snri = metrics_lib.si_snr_improvement(
    flatten_audio(rebuilt),
    reference,
    jnp.broadcast_to(flatten_audio(mom)[:, None], reference.shape),
  )
  out = {
    "eval_weight": batch["eval_weight"] if "eval_weight" in batch else jnp.ones_like(loss),
    "mixit_loss": loss,
    "mom_si_snri_db": jnp.mean(mom_si_snri, axis=1),
    # diversity_loss averages over the batch; vmap over single examples keeps them apart.
    "mask_overlap": jax.vmap(lambda m: masks.diversity_loss(m[None]))(aux["masks"]),
    "effective_masks": masks.effective_mask_count(estimates),
  }
  if "stems" in batch:
    b, k, c, t = mixtures.shape
    singles = mixtures.reshape(b * k, c, t)
    stems = batch["stems"].reshape(b * k, *batch["stems"].shape[2:])  # [2B, 4, C, T]
    single_estimates, _ = model.apply(variables, singles, deterministic=True)
    stem_reference = flatten_audio(stems)
    active = ~metrics_lib.silent_stems(stem_reference, config.silence_threshold_db)  # [2B, 4]
    # Every sounding stem gets at least one output, as in the whole-song evaluation: left
    # free, the search may leave a hard stem empty, which scores the floor and makes the
    # untrained control look worse than it is.
    _, stem_mixing = mixit.mixit_loss(single_estimates, stems, config.snr_max_db, required=active)
    stem_estimates = flatten_audio(mixit.remix(stem_mixing, single_estimates))
    single_flat = jnp.broadcast_to(flatten_audio(singles)[:, None], stem_reference.shape)
    # An output-less (all-zero) stem estimate has no meaningful SI-SNR (it comes out near
    # 10·log10(eps), -80 dB, and would swamp every average): it scores the floor instead.
    stem_si_snr = jnp.maximum(
      metrics_lib.si_snr(stem_estimates, stem_reference), STEM_SI_SNR_FLOOR_DB
    )
    stem_si_snri = stem_si_snr - metrics_lib.si_snr(single_flat, stem_reference)
    usdr = metrics_lib.usdr(stem_estimates, stem_reference)
    shape = (b, k, stems.shape[1])
    out["stem_si_snri_db"] = stem_si_snri.reshape(shape)
    out["usdr_db"] = jnp.broadcast_to(usdr, stem_si_snri.shape).reshape(shape)
    out["stem_active"] = active.astype(jnp.float32).reshape(shape)
  return out


def summarize_eval(per_example: list[dict[str, np.ndarray]], weights: list[np.ndarray]) -> dict:
  """Weighted means over the validation set of ``eval_step``'s per-example scores."""
  w = np.concatenate(weights)
  result = {}
  for name in ("mixit_loss", "mom_si_snri_db", "mask_overlap", "effective_masks"):
    values = np.concatenate([np.asarray(m[name], np.float64) for m in per_example])
    result[name] = float(np.sum(values * w) / np.sum(w))
  if "stem_si_snri_db" in per_example[0]:
    active = np.concatenate([m["stem_active"] for m in per_example]) * w[:, None, None]
    for name in ("stem_si_snri_db", "usdr_db"):
      values = np.concatenate([np.asarray(m[name], np.float64) for m in per_example])
      values = np.where(active > 0, values, 0.0)
      count = active.sum()
      result[name] = float(values.sum() / count) if count else float("nan")
      if name == "stem_si_snri_db":
        for index, stem in enumerate(STEM_NAMES):
          count = active[..., index].sum()
          result[f"{name}_{stem}"] = (
            float(values[..., index].sum() / count) if count else float("nan")
          )
  return result


def best_score(scores: Mapping[str, float]) -> float:
  """The number the best checkpoint maximises: stem SI-SNRi with stems, else MoM SI-SNRi."""
  value = scores.get("stem_si_snri_db", float("nan"))
  if not math.isfinite(value):
    value = scores["mom_si_snri_db"]
  return value


def eval_baselines(
  config: ml_collections.ConfigDict, eval_batches: Iterable[Mapping[str, np.ndarray]], scores
) -> dict[str, float]:
  """The NMF baseline on the validation clips (``scoring.validation_nmf_scores``), with stems.

  It does not train, so the loop computes it once per run; host 0's clips are logged.
  """
  if "stem_si_snri_db" not in scores or not config.get("eval_nmf", True):
    return {}
  from trackformer_jax import scoring

  nmf = scoring.validation_nmf_scores(
    eval_batches,
    int(config.sample_rate_hz),
    snr_max_db=float(config.snr_max_db),
    silence_threshold_db=float(config.silence_threshold_db),
    floor_db=STEM_SI_SNR_FLOOR_DB,
  )
  return {name: value for name, value in (nmf or {}).items() if name != "nmf"}


def format_train_log(averaged: Mapping[str, float]) -> str:
  return (
    f"loss {averaged['loss']:.3f} (mixit {averaged['mixit']:.3f} div "
    f"{averaged['diversity']:.4f} sparse {averaged['sparsity']:.4f})"
  )


def format_eval_log(scores: Mapping[str, float]) -> str:
  return ", ".join(f"{name} {value:.3f}" for name, value in sorted(scores.items()))
