"""MixIT training: the train state, the sharded train step, evaluation and the loop.

``train_and_evaluate(config, workdir)`` is the whole of training. It builds the model, the
optimiser and a ``TrainState``; restores the newest checkpoint in ``workdir`` if there is one
(and then continues the same data stream from that step); and loops
``train_step(state, batch, rng) -> (state, metrics)``, compiled once with explicit shardings on
a one-axis ``data`` mesh over every device (batch split, parameters replicated). Every
``eval_every_steps`` it scores the validation split; every ``checkpoint_every_steps`` (and at
each evaluation, so the best step is always on disk) it saves through ``checkpoints``.

Reproducibility: step ``s`` sees batch ``s`` of the input stream and dropout key
``fold_in(state.rng, s)``, and a skipped step still consumes both; so a run restarted from a
checkpoint at step ``s`` performs exactly the computations an uninterrupted run performs after
``s`` (bitwise on the CPU).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trackformer_jax import checkpoints, resources

STEM_NAMES = ("vocals", "bass", "drums", "other")
SPARSITY_KINDS = ("rms_ratio", "entropy")
# The stem SI-SNR given to an estimate worse than this: a silent stem (which the assignment
# may leave without any output), or an output that holds almost nothing of its stem.
STEM_SI_SNR_FLOOR_DB = -30.0


class ConfigError(ValueError):
  """An impossible config value; the message is one line naming the field."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used (not writable, or another training holds it)."""


class NonFiniteError(RuntimeError):
  """Training stopped after a run of steps with a non-finite loss or gradient."""


# --------------------------------------------------------------------------------------------
# Config checks: one line naming the field, before anything is built or compiled.


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ``ConfigError("config.<field>: <reason>")`` for the first impossible value."""

  def need(condition: bool, field: str, reason: str) -> None:
    if not condition:
      raise ConfigError(f"config.{field} = {config_value(field)!r}: {reason}")

  def config_value(field: str) -> Any:
    value = config
    for part in field.split("."):
      value = value.get(part) if isinstance(value, Mapping | ml_collections.ConfigDict) else None
    return value

  def number(field: str) -> float:
    value = config_value(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
      raise ConfigError(f"config.{field} = {value!r}: expected a finite number")
    return value

  need(config.get("task", "mixit") in ("mixit", "mae"), "task", "expected 'mixit' or 'mae'")
  need(number("num_train_steps") >= 1, "num_train_steps", "must be at least 1")
  need(number("batch_size") >= 1, "batch_size", "must be at least 1")
  if num_devices is not None:
    need(
      config.batch_size % num_devices == 0,
      "batch_size",
      f"must be a multiple of the {num_devices} devices the batch is split over",
    )
  need(number("learning_rate") > 0, "learning_rate", "must be positive")
  need(number("end_learning_rate") >= 0, "end_learning_rate", "must be zero or positive")
  need(number("warmup_steps") >= 0, "warmup_steps", "must be zero or positive")
  need(number("weight_decay") >= 0, "weight_decay", "must be zero or positive")
  need(number("grad_clip_norm") > 0, "grad_clip_norm", "must be positive")
  need(0 <= number("ema_decay") < 1, "ema_decay", "must be in [0, 1) (0 keeps no average)")
  need(number("snr_max_db") > 0, "snr_max_db", "must be positive")
  need(number("diversity_weight") >= 0, "diversity_weight", "must be zero or positive")
  need(number("sparsity_weight") >= 0, "sparsity_weight", "must be zero or positive")
  need(config.sparsity_kind in SPARSITY_KINDS, "sparsity_kind", f"expected one of {SPARSITY_KINDS}")
  for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    need(number(field) >= 1, field, "must be at least 1")
  need(number("keep_checkpoints") >= 1, "keep_checkpoints", "must be at least 1")
  need(number("max_consecutive_nonfinite") >= 1, "max_consecutive_nonfinite", "must be >= 1")
  need(number("num_eval_examples") >= 1, "num_eval_examples", "must be at least 1")
  need(number("sample_rate_hz") >= 1000, "sample_rate_hz", "must be at least 1000")
  need(config.channels in (1, 2), "channels", "must be 1 (mono) or 2 (stereo)")
  need(number("segment_seconds") > 0, "segment_seconds", "must be positive")
  _validate_data_spec(config.data)
  need(number("model.num_outputs") >= 2, "model.num_outputs", "MixIT needs at least 2 outputs")
  from trackformer_jax import models

  try:
    models.check_model_config(config.model)
  except ValueError as error:
    raise ConfigError(str(error).splitlines()[0]) from None
  need(isinstance(config.get("init_from", ""), str), "init_from", "expected a workdir or ''")
  if config.get("task", "mixit") == "mae":
    from trackformer_jax import pretrain

    pretrain.validate_mae_config(config)
  if config.model.get("frontend") == "stft" and config.model.name != "convtasnet":
    segment = int(round(config.segment_seconds * config.sample_rate_hz))
    need(number("model.hop") >= 1, "model.hop", "must be at least 1")
    need(
      segment >= config.model.n_fft,
      "segment_seconds",
      f"{segment} samples is shorter than one STFT window (model.n_fft = {config.model.n_fft})",
    )
  else:
    # The learned encoders are strided convolutions: a segment shorter than their window
    # is only ever seen zero-padded, never as one whole frame of signal.
    window_field = "tasnet_L" if config.model.name == "convtasnet" else "encoder_window"
    window = config.model.get(window_field)
    need(
      segment_samples(config) >= window,
      "segment_seconds",
      f"{segment_samples(config)} samples is shorter than one encoder window "
      f"(model.{window_field} = {window})",
    )
  init_from = config.get("init_from", "")
  need(
    not init_from or "://" in init_from or pathlib.Path(init_from).is_dir(),
    "init_from",
    "no such pre-training workdir; pre-train first with "
    "`python -m trackformer_jax.main --config=configs/mae_pretrain.py`, or train from "
    "scratch with the *_nomae twin (or --config.init_from='')",
  )


def _validate_data_spec(spec: Any) -> None:
  from trackformer_jax.data import sources

  if not isinstance(spec, str):
    raise ConfigError(f"config.data = {spec!r}: expected a data spec string such as 'chorales'")
  try:
    _, path = sources.parse_spec(spec)
  except sources.DataError as error:
    raise ConfigError(f"config.data: {error}") from None
  if path is not None and not path.exists():
    raise ConfigError(f"config.data = {spec!r}: {path} does not exist")


def segment_samples(config: ml_collections.ConfigDict) -> int:
  return int(round(config.segment_seconds * config.sample_rate_hz))


# --------------------------------------------------------------------------------------------
# Train state and optimiser.


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; arrays only, so it checkpoints and shards as one pytree.

  Attributes:
    step: int32 [], the number of steps taken (skipped ones included).
    params: the model's parameters.
    opt_state: the optimiser's state.
    rng: uint32 [2], the run's base key; step s uses ``fold_in(rng, s)`` for dropout.
    nonfinite_steps: int32 [], how many steps were skipped for a non-finite loss or gradient.
    consecutive_nonfinite: int32 [], the length of the current run of skipped steps.
    ema_params: the exponential moving average of ``params`` (``config.ema_decay``), or None
      when the run keeps none. Evaluation, the best checkpoint and the tools use it.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_steps: jax.Array
  consecutive_nonfinite: jax.Array
  ema_params: Any = None

  @property
  def eval_params(self) -> Any:
    """The weights to evaluate and serve: the moving average when the run keeps one."""
    return self.params if self.ema_params is None else self.ema_params


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 to ``learning_rate``, then cosine down to ``end_learning_rate``."""
  warmup = min(int(config.warmup_steps), int(config.num_train_steps))
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(int(config.num_train_steps), warmup + 1),
    end_value=config.end_learning_rate,
  )
  # Read one step ahead: the warm-up starts at 0, and the first update should not be wasted
  # on a learning rate of exactly zero.
  return lambda count: schedule(count + 1)


def ema_decay_at(config: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
  """``config.ema_decay``, held lower over the first steps: ``min(decay, (1+s)/(10+s))``.

  Without the ramp the average would still remember the random initialisation long after
  training moved away from it (at 0.995, 0.995^500 ≈ 8 % of it after 500 steps).
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))


def _decay_mask(params: Any) -> Any:
  # Weight decay on matrices and kernels only: decaying biases and norm scales towards zero
  # only fights the normalisation and is the usual AdamW practice to leave out.
  return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.chain(
    optax.clip_by_global_norm(config.grad_clip_norm),
    optax.adamw(learning_rate_schedule(config), weight_decay=config.weight_decay, mask=_decay_mask),
  )


def create_train_state(
  config: ml_collections.ConfigDict, model: nn.Module, optimizer: optax.GradientTransformation
) -> TrainState:
  """A fresh state from ``config.seed`` (params, optimiser state, base key, counters)."""
  root = jax.random.PRNGKey(config.seed)
  init_key, train_key = jax.random.split(root)
  sample = jnp.zeros((1, config.channels, segment_samples(config)), jnp.float32)
  params = model.init({"params": init_key, "dropout": init_key}, sample, deterministic=True)[
    "params"
  ]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=train_key,
    nonfinite_steps=jnp.zeros((), jnp.int32),
    consecutive_nonfinite=jnp.zeros((), jnp.int32),
    ema_params=params if config.get("ema_decay", 0.0) > 0 else None,
  )


def init_train_state(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
) -> TrainState:
  """``create_train_state`` compiled, its arrays replicated over ``mesh``.

  Compiled rather than run op by op: eagerly, initialising even a tiny model takes many
  seconds of dispatch.
  """
  create = jax.jit(
    lambda: create_train_state(config, model, optimizer), out_shardings=NamedSharding(mesh, P())
  )
  return create()


# --------------------------------------------------------------------------------------------
# Losses and the train step.


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
  mixit, masks = _loss_fns()
  estimates, aux = model.apply(
    {"params": params}, batch["mom"], deterministic=False, rngs={"dropout": rng}
  )
  mixit_per_example, _ = mixit.mixit_loss(estimates, batch["mixtures"], config.snr_max_db)
  mixit_term = jnp.mean(mixit_per_example)
  diversity = jnp.mean(masks.diversity_loss(aux["masks"]))
  sparsity = jnp.mean(masks.sparsity_loss(estimates, batch["mom"], kind=config.sparsity_kind))
  loss = mixit_term + config.diversity_weight * diversity + config.sparsity_weight * sparsity
  return loss, {"mixit": mixit_term, "diversity": diversity, "sparsity": sparsity}


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
  return jnp.stack(leaves).all()


def train_step(
  state: TrainState,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  *,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW step; a non-finite loss or gradient leaves params and optimiser untouched.

  Args:
    state: the current state.
    batch: ``mom`` [B, C, T], ``mixtures`` [B, 2, C, T] (global arrays, split over ``data``).
    rng: the dropout key of this step.

  Returns:
    (new state, metrics): scalars ``loss``, ``mixit``, ``diversity``, ``sparsity``,
    ``grad_norm`` (before clipping), ``learning_rate``, ``skipped`` (1.0 when the update was
    dropped), ``nonfinite_steps`` and ``consecutive_nonfinite``.
  """
  grad_fn = jax.value_and_grad(training_loss, has_aux=True)
  (loss, parts), grads = grad_fn(state.params, model, batch, rng, config)
  new_state, step_metrics = apply_gradients(state, loss, grads, optimizer, config)
  return new_state, {"loss": loss, **parts, **step_metrics}


def apply_gradients(
  state: TrainState,
  loss: jax.Array,
  grads: Any,
  optimizer: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """The state after one optimiser step, or with only its counters moved if it is not finite.

  Shared by MixIT and Audio-MAE training. Also advances the weights' moving average, when
  the state keeps one.

  Returns:
    (new state, metrics): ``grad_norm`` (before clipping), ``learning_rate``, ``skipped``,
    ``nonfinite_steps`` and ``consecutive_nonfinite``.
  """
  finite = jnp.isfinite(loss) & _all_finite(grads)
  updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  # A select, not a cond: both branches are cheap next to the step, and the step stays one
  # straight-line program that XLA can fuse.
  keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
  new_params = jax.tree.map(keep, new_params, state.params)
  ema_params = state.ema_params
  if ema_params is not None:
    decay = ema_decay_at(config, state.step)
    averaged = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, new_params)
    ema_params = jax.tree.map(keep, averaged, ema_params)
  consecutive = jnp.where(finite, 0, state.consecutive_nonfinite + 1)
  new_state = state.replace(
    step=state.step + 1,
    params=new_params,
    ema_params=ema_params,
    opt_state=jax.tree.map(keep, new_opt_state, state.opt_state),
    nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
    consecutive_nonfinite=consecutive.astype(jnp.int32),
  )
  metrics = {
    "grad_norm": optax.tree.norm(grads),
    "learning_rate": learning_rate_schedule(config)(state.step),
    "skipped": (~finite).astype(jnp.float32),
    "nonfinite_steps": new_state.nonfinite_steps,
    "consecutive_nonfinite": new_state.consecutive_nonfinite,
  }
  return new_state, metrics


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh named ``data`` over ``devices`` (default: every device of every host)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def compile_train_step(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array], tuple[TrainState, dict]]:
  """``train_step`` under ``jax.jit`` with explicit shardings; the state is donated.

  The batch's leading axis is split over ``data`` and everything else is replicated, so one
  device, one GPU and many devices (and hosts) run the same program; XLA inserts the
  gradient all-reduce.
  """
  replicated = NamedSharding(mesh, P())
  batch_split = NamedSharding(mesh, P("data"))

  def step(state, batch, rng):
    return train_step(state, batch, rng, model=model, optimizer=optimizer, config=config)

  return jax.jit(
    step,
    in_shardings=(replicated, batch_split, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )


def abstract_train_inputs(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
) -> tuple[TrainState, dict[str, jax.ShapeDtypeStruct], jax.ShapeDtypeStruct]:
  """(state, batch, rng) as ``jax.ShapeDtypeStruct``s with shardings: lowering needs no data."""
  replicated = NamedSharding(mesh, P())
  batch_split = NamedSharding(mesh, P("data"))
  state_shape = jax.eval_shape(lambda: create_train_state(config, model, optimizer))
  state = jax.tree.map(
    lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated), state_shape
  )
  length = segment_samples(config)
  batch = {
    "mom": jax.ShapeDtypeStruct(
      (config.batch_size, config.channels, length), jnp.float32, sharding=batch_split
    ),
    "mixtures": jax.ShapeDtypeStruct(
      (config.batch_size, 2, config.channels, length), jnp.float32, sharding=batch_split
    ),
  }
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
  return state, batch, rng


# --------------------------------------------------------------------------------------------
# Evaluation.


def _flatten_audio(x: jax.Array) -> jax.Array:
  """[..., C, T] -> [..., C·T]: SI-SNR over both channels of a source at once."""
  return x.reshape(*x.shape[:-2], -1)


def _apply_mixing(mixing: jax.Array, estimates: jax.Array) -> jax.Array:
  """mixing [B, K, M] and estimates [B, M, C, T] -> the K remixed sources [B, K, C, T]."""
  return jnp.einsum("bkm,bmct->bkct", mixing, estimates)


def eval_step(
  params: Any,
  batch: Mapping[str, jax.Array],
  *,
  model: nn.Module,
  config: ml_collections.ConfigDict,
) -> dict[str, jax.Array]:
  """Per-example validation scores (host code averages them, dropping padded examples).

  Args:
    batch: ``mom`` [B, C, T], ``mixtures`` [B, 2, C, T] and, where the data has them,
      ``stems`` [B, 2, 4, C, T] (the four stems of each of the two mixtures).

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

  mixit, masks = _loss_fns()
  variables = {"params": params}
  mom, mixtures = batch["mom"], batch["mixtures"]
  estimates, aux = model.apply(variables, mom, deterministic=True)
  loss, mixing = mixit.mixit_loss(estimates, mixtures, config.snr_max_db)
  rebuilt = _apply_mixing(mixing, estimates)  # [B, 2, C, T]
  reference = _flatten_audio(mixtures)
  mom_si_snri = metrics_lib.si_snr_improvement(
    _flatten_audio(rebuilt),
    reference,
    jnp.broadcast_to(_flatten_audio(mom)[:, None], reference.shape),
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
    stem_reference = _flatten_audio(stems)
    rms_db = 10 * jnp.log10(jnp.mean(stem_reference**2, axis=-1) + 1e-20)
    active = rms_db >= config.silence_threshold_db  # [2B, 4]
    # Every sounding stem gets at least one output, as in the whole-song evaluation: left
    # free, the search may leave a hard stem empty, which scores the floor and makes the
    # untrained control look worse than it is.
    _, stem_mixing = mixit.mixit_loss(single_estimates, stems, config.snr_max_db, required=active)
    stem_estimates = _flatten_audio(_apply_mixing(stem_mixing, single_estimates))
    single_flat = jnp.broadcast_to(_flatten_audio(singles)[:, None], stem_reference.shape)
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


def _pad_batch(batch: Mapping[str, np.ndarray], multiple: int) -> tuple[dict, np.ndarray]:
  """Pads the leading axis to a multiple of the device count; returns (batch, weights [B'])."""
  size = len(batch["mom"])
  padded = -(-size // multiple) * multiple
  weights = np.zeros(padded, np.float32)
  weights[:size] = 1.0
  if padded == size:
    return dict(batch), weights
  # Repeat real examples (not zeros) so padded rows stay numerically harmless; weight 0 drops
  # them from the averages.
  index = np.arange(padded) % size
  return {name: np.asarray(value)[index] for name, value in batch.items()}, weights


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


def evaluate(
  params: Any,
  eval_fn: Callable,
  batches: Iterable[dict[str, np.ndarray]],
  mesh: Mesh,
) -> dict[str, float]:
  """Scores ``params`` on ``batches`` with the compiled ``eval_fn``; {} when there are none."""
  per_example, weights = [], []
  for batch in batches:
    padded, w = _pad_batch(batch, jax.local_device_count())
    # The weights travel with the batch so that, with several hosts, each example's weight
    # comes back beside its scores in the gathered (replicated) output.
    scores = eval_fn(params, _to_global({**padded, "eval_weight": w}, mesh))
    scores = {name: _host(value) for name, value in scores.items()}
    weights.append(scores.pop("eval_weight"))
    per_example.append(scores)
  return summarize_eval(per_example, weights) if per_example else {}


def best_score(scores: Mapping[str, float]) -> float:
  """The number the best checkpoint maximises: stem SI-SNRi with stems, else MoM SI-SNRi."""
  value = scores.get("stem_si_snri_db", float("nan"))
  if not math.isfinite(value):
    value = scores["mom_si_snri_db"]
  return value


# --------------------------------------------------------------------------------------------
# Host-side plumbing: batches onto the mesh, metric writers, progress, the workdir lock.


def _host(value: Any) -> np.ndarray:
  """A replicated array's value on this host (``device_get`` refuses arrays spanning hosts)."""
  if isinstance(value, jax.Array):
    return np.asarray(value.addressable_data(0))
  return np.asarray(value)


def _to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host batch -> global arrays split over ``data``.

  Each host passes its own slice of the global batch (the input pipeline shards per host).
  """
  sharding = NamedSharding(mesh, P("data"))
  return {
    name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for name, value in batch.items()
  }


class JsonLinesWriter(metric_writers.MetricWriter):
  """Appends one JSON object per ``write_scalars`` call: ``{"step": s, name: value, ...}``."""

  def __init__(self, path: pathlib.Path):
    self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = {"step": int(step)}
    row.update({name: float(value) for name, value in scalars.items()})
    self._file.write(json.dumps(row) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def _truncate_metrics(path: pathlib.Path, keep_through_step: int) -> None:
  """Drops rows after ``keep_through_step``: a resumed run rewrites them."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      if json.loads(line)["step"] <= keep_through_step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue  # a line cut short by a kill
  # Whole or not at all: a kill during a plain rewrite would leave the file cut short.
  temporary = path.with_suffix(".jsonl.tmp")
  temporary.write_text("".join(row + "\n" for row in kept), encoding="utf-8")
  temporary.replace(path)


def create_writer(workdir: pathlib.Path, resume_step: int | None) -> metric_writers.MetricWriter:
  """TensorBoard (``workdir``) and ``workdir/metrics.jsonl`` on host 0; nothing elsewhere."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  jsonl = workdir / "metrics.jsonl"
  _truncate_metrics(jsonl, -1 if resume_step is None else resume_step)
  return metric_writers.AsyncMultiWriter(
    [metric_writers.SummaryWriter(str(workdir / "tensorboard")), JsonLinesWriter(jsonl)]
  )


def peak_memory_bytes() -> int:
  """Peak memory of the first local device (GPU/TPU), else the process's peak RSS (CPU)."""
  device_peak = resources.device_peak_bytes()
  return resources.peak_rss_bytes() if device_peak is None else device_peak


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _lock_workdir(workdir: pathlib.Path):
  """Holds ``workdir/.lock`` for the process's lifetime; a second training refuses to start.

  An flock dies with its process, so a killed run never leaves a stale lock behind.
  """
  handle = open(workdir / ".lock", "w")  # noqa: SIM115 - held until the process exits
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.close()
    raise WorkdirError(f"{workdir}: another training is using this workdir") from None
  return handle


def _prepare_workdir(workdir: pathlib.Path) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    # One probe per process: the hosts of a multi-host run share the workdir, and with one
    # name a host could unlink the probe under another one's feet.
    probe = workdir / f".write_probe.{jax.process_index()}.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as error:
    raise WorkdirError(f"{workdir}: not writable ({error.strerror or error})") from None


# The fields that make the trained function what it is. A resumed run may change any other
# (more steps, another evaluation interval, new data), not these.
_MODEL_FIELDS = ("task", "model", "sample_rate_hz", "channels")


def _check_same_model(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume checkpoints trained as another model.

  Parameters of the same shapes restore without complaint (quick.py's STFT hop changed
  without changing one shape), so the run would go on silently as a hybrid of two models.
  """
  try:
    saved = checkpoints.read_config(workdir).to_dict()
  except checkpoints.CheckpointError:
    return  # a missing or unreadable config.json is rewritten below; the checkpoints decide
  # Through JSON as config.json was written, so tuples compare as the lists saved there.
  now = json.loads(json.dumps(config.to_dict(), default=list))
  before = flax.traverse_util.flatten_dict(
    {name: saved[name] for name in _MODEL_FIELDS if name in saved}, sep="."
  )
  after = flax.traverse_util.flatten_dict(
    {name: now[name] for name in _MODEL_FIELDS if name in now}, sep="."
  )
  # Fields on one side only are left alone: a field added to the code since the run started
  # takes a default that keeps the old behaviour, and must not lock its workdir.
  changed = [
    f"{key} {before[key]!r} -> {after[key]!r}"
    for key in sorted(set(before) & set(after))
    if before[key] != after[key]
  ]
  if changed:
    raise WorkdirError(
      f"{workdir}: its checkpoints were trained as another model ({'; '.join(changed[:4])}"
      f"{'; …' if len(changed) > 4 else ''}); train into a new --workdir, or move this one aside"
    )


def _check_free_space(workdir: pathlib.Path, abstract_state: Any, keep_checkpoints: int) -> None:
  """Refuses to start when the checkpoints the run will keep cannot fit in ``workdir``.

  On disk at once: ``keep_checkpoints`` steps, the best one and the one being written (a
  resumed run's own checkpoints count as room). Found out at the first save instead, a full
  disk would stop the run with an orbax traceback, possibly days in.
  """
  checkpoint_bytes = sum(
    leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract_state)
  )
  needed = (keep_checkpoints + 2) * checkpoint_bytes
  # A resumed run's own checkpoints count as room: the new ones replace them.
  saved = workdir / checkpoints.CHECKPOINT_DIR
  if saved.is_dir():
    needed -= sum(path.stat().st_size for path in saved.rglob("*") if path.is_file())
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise WorkdirError(
      f"{workdir}: {free / 2**20:.1f} MiB free, but checkpoints need {needed / 2**20:.1f} MiB "
      f"more ({keep_checkpoints + 2} of {checkpoint_bytes / 2**20:.1f} MiB: "
      f"config.keep_checkpoints = {keep_checkpoints}, the best one and the one being written)"
    )


# --------------------------------------------------------------------------------------------
# The loop.


def _train_batches(config, start_step) -> Iterator[dict[str, np.ndarray]]:
  from trackformer_jax import input_pipeline

  return input_pipeline.train_batches(config, start_step=start_step)


def _eval_batches(config) -> Iterable[dict[str, np.ndarray]]:
  # Iterated afresh at each evaluation, never held: 64 stem-annotated 30 s examples are
  # gigabytes of host memory.
  from trackformer_jax import input_pipeline

  return input_pipeline.eval_batches(config, split="validation")


def _validation_nmf(config, eval_batches) -> dict[str, float]:
  """``scoring.validation_nmf_scores`` of this host's validation clips (host 0's are logged)."""
  from trackformer_jax import scoring

  return scoring.validation_nmf_scores(
    eval_batches,
    int(config.sample_rate_hz),
    snr_max_db=float(config.snr_max_db),
    silence_threshold_db=float(config.silence_threshold_db),
    floor_db=STEM_SI_SNR_FLOOR_DB,
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  stop_after_step: int | None = None,
) -> TrainState:
  """Trains ``config`` into ``workdir`` (resuming from its newest checkpoint) and returns the state.

  Args:
    config: see ``configs/default.py``.
    workdir: checkpoints, ``config.json``, ``metrics.jsonl`` and TensorBoard files go here.
    stop_after_step: stop (with a checkpoint) once this step is reached, as if the run had
      been interrupted there; the schedule still follows ``config.num_train_steps``.
  """
  if config.get("task", "mixit") == "mae":
    from trackformer_jax import pretrain

    return pretrain.pretrain_and_evaluate(config, workdir, stop_after_step=stop_after_step)
  workdir = pathlib.Path(workdir)
  mesh = create_mesh()
  validate_config(config, num_devices=mesh.devices.size)
  _prepare_workdir(workdir)
  lock = _lock_workdir(workdir) if jax.process_index() == 0 else None
  try:
    return _train_holding_lock(config, workdir, mesh, stop_after_step)
  finally:
    # Also on an error before the first step: in a notebook, a lock left to the garbage
    # collector would refuse the corrected retry ("another training is using this workdir").
    if lock is not None:
      lock.close()


def _train_holding_lock(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  mesh: Mesh,
  stop_after_step: int | None,
) -> TrainState:
  from trackformer_jax import models

  logging.info(
    "host %d/%d, %d local of %d devices (%s); workdir %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
    workdir,
  )

  model = models.create_model(config.model)
  optimizer = create_optimizer(config)
  abstract_state, _, _ = abstract_train_inputs(config, model, optimizer, mesh)
  _check_free_space(workdir, abstract_state, config.keep_checkpoints)
  manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
  if manager.all_steps():
    _check_same_model(workdir, config)
  state = checkpoints.restore_latest(manager, abstract_state, TrainState)
  resumed = state is not None
  if state is None:
    state = init_train_state(config, model, optimizer, mesh)
    if config.get("init_from", ""):
      # Audio-MAE weights into the fresh params; Adam's moments start at zero either way.
      from trackformer_jax import pretrain

      params = pretrain.transfer_encoder(state.params, config)
      # The average starts from the transferred weights too, not from the random ones.
      ema = None if state.ema_params is None else params
      state = state.replace(params=params, ema_params=ema)
  if jax.process_index() == 0:
    checkpoints.write_config(workdir, config)
  start_step = int(_host(state.step))
  # Step keys are derived on the host's CPU device: deriving them on the accelerator would
  # queue behind the running step and make the host wait for it.
  base_rng = jax.device_put(_host(state.rng), jax.local_devices(backend="cpu")[0])
  writer = create_writer(workdir, start_step if resumed else None)
  if resumed:
    logging.info("resuming at step %d", start_step)
  else:
    num_params = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    logging.info("model %s: %.2fM parameters", config.model.name, num_params / 1e6)

  step_fn = compile_train_step(config, model, optimizer, mesh)
  eval_batches = _eval_batches(config)
  eval_fn = jax.jit(
    lambda params, batch: eval_step(params, batch, model=model, config=config),
    in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
    out_shardings=NamedSharding(mesh, P()),
  )

  last_step = config.num_train_steps
  if stop_after_step is not None:
    last_step = min(last_step, stop_after_step)

  nmf_scores: dict[str, float] = {}

  def run_eval(step: int) -> dict[str, float]:
    scores = evaluate(state.eval_params, eval_fn, eval_batches, mesh)
    if scores:
      scores["best_score"] = best_score(scores)
      if "stem_si_snri_db" in scores and config.get("eval_nmf", True):
        # The NMF baseline on the same clips: it does not train, so it is computed once.
        if not nmf_scores:
          nmf_scores.update(_validation_nmf(config, eval_batches) or {"nmf": math.nan})
        scores.update({k: v for k, v in nmf_scores.items() if k != "nmf"})
      writer.write_scalars(step, {f"eval/{name}": value for name, value in scores.items()})
      logging.info(
        "eval step %d: %s",
        step,
        ", ".join(f"{name} {value:.3f}" for name, value in sorted(scores.items())),
      )
    return scores

  if not resumed and start_step < last_step:
    # The untrained control: the first point of the curve, and what training must beat.
    run_eval(start_step)

  batches = _train_batches(config, start_step)
  accumulated: list[dict[str, jax.Array]] = []
  interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0
  run_start, run_start_step = time.perf_counter(), start_step
  step = start_step
  previous_metrics = None
  keep = lambda batch: {name: batch[name] for name in ("mom", "mixtures")}  # noqa: E731
  try:
    while step < last_step:
      batch = _to_global(keep(next(batches)), mesh)
      step_rng = np.asarray(jax.random.fold_in(base_rng, step))
      state, metrics = step_fn(state, batch, step_rng)
      step += 1
      interval_steps += 1
      accumulated.append(metrics)
      if step == start_step + 1:
        # Time from the end of the first step: it includes compilation, which would
        # otherwise drag the first steps/s and ETA down.
        jax.block_until_ready(metrics)
        interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0
        run_start, run_start_step = interval_start, step
      # Read the previous step's counters, not this one's, so the host never waits on the
      # step it just launched; a run of skipped steps stops at most one step late.
      if previous_metrics is not None:
        consecutive = int(_host(previous_metrics["consecutive_nonfinite"]))
        if consecutive >= config.max_consecutive_nonfinite:
          raise NonFiniteError(
            f"stopped at step {step - 1}: {consecutive} consecutive steps had a non-finite "
            f"loss or gradient (config.max_consecutive_nonfinite = "
            f"{config.max_consecutive_nonfinite}); the last good checkpoint in "
            f"{workdir / checkpoints.CHECKPOINT_DIR} is kept"
          )
      previous_metrics = metrics

      is_eval = step % config.eval_every_steps == 0 or step == config.num_train_steps
      is_checkpoint = step % config.checkpoint_every_steps == 0 or step == last_step
      if step % config.log_every_steps == 0 or step == last_step:
        averaged = {
          name: float(np.mean([_host(metrics[name]) for metrics in accumulated]))
          for name in accumulated[-1]
        }
        # Counters are states, not rates: report their newest value.
        for name in ("nonfinite_steps", "consecutive_nonfinite"):
          averaged[name] = float(_host(accumulated[-1][name]))
        accumulated = []
        elapsed = time.perf_counter() - interval_start - paused
        steps_per_second = interval_steps / max(elapsed, 1e-9) if interval_steps else 0.0
        overall = (step - run_start_step) / max(time.perf_counter() - run_start, 1e-9)
        scalars = {f"train/{name}": float(value) for name, value in averaged.items()}
        scalars["train/steps_per_second"] = steps_per_second
        scalars["train/examples_per_second"] = steps_per_second * config.batch_size
        scalars["train/peak_memory_gib"] = peak_memory_bytes() / 2**30
        writer.write_scalars(step, scalars)
        logging.info(
          "step %d/%d | %.2f steps/s %.1f ex/s | ETA %s | lr %.2e | grad %.3f | loss %.3f "
          "(mixit %.3f div %.4f sparse %.4f) | skipped %d | peak mem %.2f GiB",
          step,
          config.num_train_steps,
          steps_per_second,
          steps_per_second * config.batch_size,
          _format_duration((config.num_train_steps - step) / max(overall, 1e-9)),
          averaged["learning_rate"],
          averaged["grad_norm"],
          averaged["loss"],
          averaged["mixit"],
          averaged["diversity"],
          averaged["sparsity"],
          int(averaged["nonfinite_steps"]),
          scalars["train/peak_memory_gib"],
        )
        interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0

      if is_eval or is_checkpoint:
        pause_start = time.perf_counter()
        # Never checkpoint in the middle of a run of skipped steps: the params are those of
        # the last good step anyway, and the stop message promises that checkpoint is kept.
        if int(_host(state.consecutive_nonfinite)) == 0:
          scores = run_eval(step) if is_eval else {}
          checkpoint_metrics = {"best_score": scores["best_score"]} if scores else None
          checkpoints.save(manager, state, step, checkpoint_metrics)
          # Rows up to a checkpoint must be on disk before a kill can strike: a restart keeps
          # only the rows up to its checkpoint, so buffered ones would be lost for good.
          writer.flush()
        paused += time.perf_counter() - pause_start
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
  return state
