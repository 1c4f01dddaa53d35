"""Config checks: one line naming the field, before anything is built or compiled."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

from trackformer_jax.losses.masks import SPARSITY_KINDS
from trackformer_jax.training import tasks
from trackformer_jax.training.config_files import segment_samples
from trackformer_jax.training.errors import ConfigError


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

  need(
    config.get("task", "mixit") in tasks.TASK_NAMES,
    "task",
    f"expected {' or '.join(map(repr, tasks.TASK_NAMES))}",
  )
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
  if config.get("augment") is not None and config.augment.get("stem_dropout", 0.0):
    need(
      0 <= number("augment.stem_dropout") < 1,
      "augment.stem_dropout",
      "must be in [0, 1) (0 leaves no stem out)",
    )
    need(
      bool(config.augment.get("remix_stems", False)),
      "augment.stem_dropout",
      "leaves out stems of remixed mixtures: needs config.augment.remix_stems = True",
    )
  _validate_data_spec(config.data)
  need(number("model.num_outputs") >= 2, "model.num_outputs", "MixIT needs at least 2 outputs")
  from trackformer_jax import models

  try:
    models.check_model_config(config.model)
  except ValueError as error:
    raise ConfigError(str(error).splitlines()[0]) from None
  need(isinstance(config.get("init_from", ""), str), "init_from", "expected a workdir or ''")
  tasks.get_task(config).validate_config(config)
  if config.model.get("frontend") == "stft" and config.model.name != "convtasnet":
    segment = segment_samples(config)
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
  # With a ``pretrain`` recipe, training.recipe pre-trains into init_from when it is missing.
  need(
    not init_from
    or "://" in init_from
    or pathlib.Path(init_from).is_dir()
    or config.get("pretrain") is not None,
    "init_from",
    "no such workdir (an Audio-MAE pre-training run, or a separator run to fine-tune); "
    "pre-train first with `python -m trackformer_jax.main --config=configs/mae_pretrain.py`, "
    "or train from scratch with the *_nomae twin (or --config.init_from='')",
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
