"""Separator models, looked up by ``config.model.name``.

Every model maps ``mixture [batch, channels, time]`` to ``(estimates [batch, N, channels,
time], aux)``, ``aux["masks"]`` being ``[batch, N, frames, …]`` in [0, 1].
"""

import flax.linen as nn
import ml_collections

from trackformer_jax.models.convtasnet import ConvTasNet
from trackformer_jax.models.separator import DenseTransformerSeparator, PerformerSeparator

MODELS = {
  "performer": PerformerSeparator,
  "convtasnet": ConvTasNet,
  "dense_transformer": DenseTransformerSeparator,
}

_CHOICES = {
  "frontend": ("stft", "learned"),
  "mask_activation": ("sigmoid", "softmax"),
  "dtype": ("float32", "bfloat16"),
  "tasnet_norm": ("gLN", "fLN"),
}
_POSITIVE = {
  "performer": ("num_outputs", "d_model", "num_layers", "num_heads", "mlp_dim", "num_features"),
  "convtasnet": ("num_outputs", "tasnet_N", "tasnet_L", "tasnet_B", "tasnet_H", "tasnet_Sc"),
}


def check_model_config(model_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the ``config.model`` field that no model can run with."""
  name = model_config.get("name")
  if name not in MODELS:
    raise ValueError(f"config.model.name = {name!r} is not a model; known: {sorted(MODELS)}")
  c = model_config

  def need(ok, field, problem):
    if not ok:
      raise ValueError(f"config.model.{field} = {c.get(field)!r}: {problem}")

  for field, choices in _CHOICES.items():
    need(c.get(field) in choices, field, f"must be one of {list(choices)}")
  kind = "convtasnet" if name == "convtasnet" else "performer"
  for field in _POSITIVE[kind]:
    need(isinstance(c.get(field), int) and c.get(field) >= 1, field, "must be an integer >= 1")
  need(c.num_outputs >= 2, "num_outputs", "a separator needs at least 2 outputs")
  if kind == "convtasnet":
    need(c.tasnet_L >= 2 and c.tasnet_L % 2 == 0, "tasnet_L", "must be even (stride is L/2)")
    need(c.tasnet_P >= 1 and c.tasnet_X >= 1 and c.tasnet_R >= 1, "tasnet_P", "P, X, R >= 1")
    return
  need(c.d_model % c.num_heads == 0, "d_model", f"must be divisible by num_heads ({c.num_heads})")
  need(c.pos_conv_kernel >= 1, "pos_conv_kernel", "must be >= 1")
  need(0.0 <= c.dropout_rate < 1.0, "dropout_rate", "must be in [0, 1)")
  if c.frontend == "stft":
    need(
      c.hop >= 1 and c.n_fft % c.hop == 0 and c.n_fft >= 2 * c.hop,
      "n_fft",
      f"must be a multiple of hop ({c.hop}) and at least 2·hop, for an invertible STFT",
    )
  else:
    need(c.encoder_window >= c.encoder_stride >= 1, "encoder_stride", "must be in [1, window]")


def create_model(model_config: ml_collections.ConfigDict) -> nn.Module:
  """The model ``model_config.name`` names, built from ``model_config`` (``config.model``)."""
  check_model_config(model_config)
  return MODELS[model_config.name](config=ml_collections.FrozenConfigDict(model_config))
