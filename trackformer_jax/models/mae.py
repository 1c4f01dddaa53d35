"""Audio-MAE: masked-frame pre-training of the separator's front end and transformer.

mixture `[B, C, T]` -> span mask over frames -> masked samples zeroed -> front end -> tokens
-> `input_projection` -> hidden tokens replaced by a learned mask token -> `positional_conv`
-> `transformer` (the encoder) -> a light Performer decoder -> predictions of the masked
frames' targets `[B, frames, target_dim]`.

The front end, `input_projection`, `positional_conv` and `transformer` (and `encoder` for the
learned front end) are built exactly as in `TransformerSeparator` and under the same names, so
those parameter subtrees load into the separator by name (see `trackformer_jax.pretrain`).
Masked tokens stay in the sequence (as wav2vec 2.0, not MAE's dropping of them): the
separator's encoder always sees every frame in order, and its depthwise-conv positional
encoding only means something on neighbours in time.

Masking, with nothing recompiled (every count is static):
- `k = round(mask_ratio · frames)` frames are masked in every example, in spans of
  `span_frames` on a grid with a random offset (adjacent chosen spans merge; the grid's end
  spans may be shorter, and the one partly masked span makes the count exact).
- No leak through the front end. Each frame owns the hop-wide slice of samples at the centre
  of its window (the slices tile time); the slices of the masked frames are zeroed before the
  front end, and every token whose analysis window touches a zeroed sample is replaced by the
  mask token after the input projection. No visible token is then a function of a masked
  sample, and the masked samples themselves are zeros: the loss's gradient with respect to
  them is exactly zero (tested). With STFT windows 4 hops wide, a span of 4 masked frames
  hides 8 tokens: the 2 on each side whose windows reach into the span.
- Targets are computed from the unmasked mixture (stop-gradient) and normalised per position
  (zero mean, unit variance over features): log-magnitude spectra of all channels side by
  side (STFT front end) or the encoder's features (learned front end; the targets then move
  with the encoder, as in data2vec without the teacher average). The loss
  (`losses.mae.masked_reconstruction_loss`) is taken at the `k` masked frames only.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trackformer_jax.models.convtasnet import ConvEncoder, frame_padding
from trackformer_jax.models.frontends import log_magnitude_tokens
from trackformer_jax.models.separator import (
  TransformerStack,
  add_positional_information,
  layer_feature_keys,
  num_frames,
  stft,
)

# Variance floor of the per-position target normalisation: a silent frame (all bins at the
# magnitude floor) normalises to zeros instead of dividing by zero.
_TARGET_VARIANCE_FLOOR = 1e-6


def masked_count(frames: int, mask_ratio: float) -> int:
  """The static number of masked frames: round(mask_ratio · frames), at most frames − 1.

  At least one frame stays visible, or there is nothing to reconstruct from.
  """
  return int(min(round(mask_ratio * frames), max(frames - 1, 0)))


def span_mask(
  key: jax.Array, batch: int, frames: int, mask_ratio: float, span_frames: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Random span masks with exactly `masked_count(frames, mask_ratio)` frames per example.

  Frames are grouped into spans of `span_frames` on a grid shifted by a random offset; the
  spans are put in a random order, frames within a span in time order, and the first `k`
  frames of that order (`ids_shuffle[:, :k]`) are masked. As in MAE, `ids_restore` is the
  inverse permutation, so frame f is masked iff `ids_restore[f] < k`.

  Returns:
    ids_shuffle int32 `[batch, frames]`, ids_restore int32 `[batch, frames]`, and
    frame_mask bool `[batch, frames]` (True = masked).
  """
  k = masked_count(frames, mask_ratio)
  offset_key, order_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (batch, 1), 0, span_frames)
  position = jnp.arange(frames)
  span_index = (position[None] + offsets) // span_frames  # [B, frames]
  num_spans = frames // span_frames + 2
  # A random rank per span, then a sort key that orders frames by (span rank, time): integer
  # keys, so the order has no ties and is exact.
  span_rank = jnp.argsort(jax.random.uniform(order_key, (batch, num_spans)), axis=-1)
  span_rank = jnp.argsort(span_rank, axis=-1)
  sort_key = jnp.take_along_axis(span_rank, span_index, axis=-1) * frames + position[None]
  ids_shuffle = jnp.argsort(sort_key, axis=-1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=-1).astype(jnp.int32)
  return ids_shuffle, ids_restore, ids_restore < k


def frame_geometry(model_config: Any, length: int) -> tuple[int, int, int]:
  """(start of frame 0's window in samples, window, stride) of the separator's front end.

  Frame g analyses samples [start + g·stride, start + g·stride + window) of the unpadded
  input (the part outside [0, length) is zero padding).
  """
  c = model_config
  if c.frontend == "stft":
    return -(c.n_fft // 2), c.n_fft, c.hop
  left, _ = frame_padding(length, c.encoder_window, c.encoder_stride)
  return -left, c.encoder_window, c.encoder_stride


def frame_to_sample_mask(frame_mask: jax.Array, model_config: Any, length: int) -> jax.Array:
  """bool `[B, frames]` -> bool `[B, length]`: each frame's own slice of samples.

  Frame g owns the `stride` samples at the centre of its window; consecutive slices tile
  time, and the samples before the first (after the last) slice belong to the first (last)
  frame.
  """
  start, window, stride = frame_geometry(model_config, length)
  first_owned = start + (window - stride) // 2
  owner = np.clip(
    np.floor_divide(np.arange(length) - first_owned, stride), 0, frame_mask.shape[-1] - 1
  )
  return frame_mask[:, owner]


def tokens_touching(sample_mask: jax.Array, model_config: Any, num_tokens: int) -> jax.Array:
  """bool `[B, length]` -> bool `[B, frames]`: True where a frame's window holds a True sample."""
  length = sample_mask.shape[-1]
  start, window, stride = frame_geometry(model_config, length)
  left = -start
  right = (num_tokens - 1) * stride + window - left - length
  touched = jax.lax.reduce_window(
    sample_mask.astype(jnp.float32),
    0.0,
    jax.lax.max,
    (1, window),
    (1, stride),
    ((0, 0), (left, right)),
  )
  return touched > 0


def normalise_per_position(features: jax.Array) -> jax.Array:
  """`[..., features]` -> zero mean, unit variance over the last axis (MAE's norm_pix)."""
  mean = jnp.mean(features, axis=-1, keepdims=True)
  variance = jnp.var(features, axis=-1, keepdims=True)
  return (features - mean) / jnp.sqrt(variance + _TARGET_VARIANCE_FLOOR)


class AudioMAE(nn.Module):
  """The masked autoencoder; see the module docstring.

  `__call__(mixture [B, C, T], mask_key=None, *, deterministic=True, feature_seed=None)` ->
  (predictions `[B, frames, target_dim]`, aux) with aux:
    `targets` `[B, frames, target_dim]` (normalised, stop-gradient), `loss_mask` float
    `[B, frames]` (1 at the k masked frames), `hidden` bool `[B, frames]` (tokens replaced by
    the mask token), `sample_mask` bool `[B, T]` (zeroed samples), `ids_restore` int32
    `[B, frames]`, and `encoded` `[B, frames, d_model]` (the transformer's output, what the
    separator's `transformer` computes from the same parameters on an unmasked input).

  `mask_key` None masks nothing (initialisation and transfer checks). `config` is
  `config.model` (the separator's) and `mae_config` is `config.mae`.
  """

  config: ml_collections.FrozenConfigDict
  mae_config: ml_collections.FrozenConfigDict
  attention: str = "favor"

  @nn.compact
  def __call__(
    self,
    mixture: jax.Array,
    mask_key: jax.Array | None = None,
    *,
    deterministic: bool = True,
    feature_seed: Any = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    c, m = self.config, self.mae_config
    dtype = jnp.dtype(c.dtype)
    batch, _, length = mixture.shape
    mixture = mixture.astype(jnp.float32)
    frames = num_frames(c, length)

    if mask_key is None:
      frame_mask = jnp.zeros((batch, frames), bool)
      ids_restore = jnp.broadcast_to(jnp.arange(frames, dtype=jnp.int32), (batch, frames))
    else:
      _, ids_restore, frame_mask = span_mask(mask_key, batch, frames, m.mask_ratio, m.span_frames)
    sample_mask = frame_to_sample_mask(frame_mask, c, length)  # [B, T]
    hidden = tokens_touching(sample_mask, c, frames)  # [B, frames]
    visible_mixture = jnp.where(sample_mask[:, None, :], 0.0, mixture)

    # The front end as in TransformerSeparator (same computation, same submodule names).
    if c.frontend == "stft":

      def log_magnitude(audio):  # [B, C, T] -> [B, frames, C·bins]
        return log_magnitude_tokens(stft(audio, c.n_fft, c.hop))

      tokens = log_magnitude(visible_mixture)
      targets = log_magnitude(mixture)
    elif c.frontend == "learned":
      left, right = frame_padding(length, c.encoder_window, c.encoder_stride)
      encoder = ConvEncoder(
        c.encoder_filters, c.encoder_window, c.encoder_stride, dtype, name="encoder"
      )
      pad = lambda audio: jnp.pad(audio, ((0, 0), (0, 0), (left, right)))  # noqa: E731
      tokens = encoder(pad(visible_mixture)).astype(jnp.float32)
      targets = encoder(pad(mixture)).astype(jnp.float32)
    else:
      raise ValueError(f"config.model.frontend must be 'stft' or 'learned', got {c.frontend!r}")
    targets = jax.lax.stop_gradient(normalise_per_position(targets))

    dense = functools.partial(nn.Dense, dtype=dtype, param_dtype=jnp.float32)
    x = dense(c.d_model, name="input_projection")(tokens.astype(dtype))
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (c.d_model,), jnp.float32)
    # A select, so the hidden tokens' values (and gradients) are cut off entirely.
    x = jnp.where(hidden[..., None], mask_token.astype(dtype), x)
    x = add_positional_information(x, c, dtype, deterministic)

    def layer_keys(layers):
      return layer_feature_keys(c, feature_seed, layers)

    encoded = TransformerStack(c, self.attention, deterministic, name="transformer")(
      x, layer_keys(jnp.arange(c.num_layers))
    )

    # The decoder's layers draw their features after the encoder's (keys num_layers, ...).
    x = encoded
    if m.decoder_layers > 0:
      decoder_config = c.as_configdict()
      decoder_config.num_layers = m.decoder_layers
      x = TransformerStack(
        ml_collections.FrozenConfigDict(decoder_config),
        self.attention,
        deterministic,
        name="mae_decoder",
      )(x, layer_keys(c.num_layers + jnp.arange(m.decoder_layers)))
    x = nn.LayerNorm(dtype=dtype, name="mae_decoder_norm")(x)
    predictions = dense(targets.shape[-1], name="mae_prediction")(x).astype(jnp.float32)
    aux = {
      "targets": targets,
      "loss_mask": frame_mask.astype(jnp.float32),
      "hidden": hidden,
      "sample_mask": sample_mask,
      "ids_restore": ids_restore,
      "encoded": encoded,
    }
    return predictions, aux


# The parameter subtrees that pre-training shares with the separator, by name.
ENCODER_SUBTREES = ("encoder", "input_projection", "positional_conv", "transformer")


def check_mae_config(mae_config: Any) -> None:
  """Raises ValueError naming the `config.mae` field that pre-training cannot run with."""
  m = mae_config
  ratio = m.get("mask_ratio")
  if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
    raise ValueError(f"config.mae.mask_ratio = {ratio!r}: must be in [0, 1)")
  for field, low in (("span_frames", 1), ("decoder_layers", 0)):
    value = m.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"config.mae.{field} = {value!r}: must be an integer >= {low}")


def create_mae(config: ml_collections.ConfigDict) -> AudioMAE:
  """The AudioMAE for a whole config (`config.model` and `config.mae`)."""
  from trackformer_jax import models

  models.check_model_config(config.model)
  if config.model.name == "convtasnet":
    raise ValueError(
      "config.model.name = 'convtasnet': Audio-MAE pre-trains the transformer separators "
      "('performer' or 'dense_transformer')"
    )
  check_mae_config(config.mae)
  attention = "softmax" if config.model.name == "dense_transformer" else "favor"
  return AudioMAE(
    config=ml_collections.FrozenConfigDict(config.model),
    mae_config=ml_collections.FrozenConfigDict(config.mae),
    attention=attention,
  )
