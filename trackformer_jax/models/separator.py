"""The Performer separator and its exact-softmax twin, the dense-attention control.

mixture `[B, C, T]` -> front end -> tokens `[B, frames, features]` -> Dense(d_model)
-> depthwise-conv positional encoding -> L pre-LN transformer layers (FAVOR+ or exact softmax)
-> LayerNorm -> Dense(N · bins) -> N masks in [0, 1] over the front end's representation
-> inverse front end -> estimates `[B, N, C, T]` (-> mixture consistency).

Front ends (`config.frontend`):
- `stft`: Hann window `n_fft`, hop `hop`; one token per frame; masks over time-frequency bins,
  so an output can take one pitch and leave another sounding at the same time. The model
  sees log magnitudes of all channels side by side; one mask per bin is shared by the
  channels, so each output keeps the stereo image of what it takes (per-channel masks could
  pull a source apart between the ears, and double the head for no gain in mono).
- `learned`: Conv-TasNet's encoder/decoder; masks over the encoder's basis.

Both models have the same parameters, so the dense control can run the Performer's weights.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trackformer_jax.losses.mixit import mixture_consistency
from trackformer_jax.models.convtasnet import (
  ConvDecoder,
  ConvEncoder,
  decode_masked,
  encode,
  frame_padding,
  mask_activation,
)
from trackformer_jax.models.favor import favor_attention, orthogonal_features, softmax_attention
from trackformer_jax.models.frontends import log_magnitude_tokens


def hann_window(length: int) -> np.ndarray:
  """The periodic Hann window (scipy.signal.get_window("hann", length)), float64 `[length]`.

  numpy, not jax: `stft` and `istft` fold it into constants at trace time.
  """
  return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def _check_stft_sizes(n_fft: int, hop: int):
  if hop < 1 or n_fft % hop:
    raise ValueError(
      f"config.model.n_fft ({n_fft}) must be a whole multiple of config.model.hop ({hop})"
    )


def stft(audio: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """Short-time Fourier transform, `[..., time]` -> complex `[..., frames, n_fft//2 + 1]`.

  As scipy.signal.stft(window="hann", boundary="zeros", padded=True) on the input zero-padded
  to a whole number of hops: frames centred on t = 0, hop, 2·hop, …, frames = ⌈time/hop⌉ + 1,
  scaled by 1/Σwindow. Frames are cut with a reshape rather than a gather (n_fft must be a
  multiple of hop), so the backward pass is a sum of shifted slices, not a scatter.
  """
  _check_stft_sizes(n_fft, hop)
  length = audio.shape[-1]
  hops_per_frame = n_fft // hop
  num_hops = -(-length // hop)
  half = n_fft // 2
  padding = [(0, 0)] * (audio.ndim - 1) + [(half, num_hops * hop - length + n_fft - half)]
  blocks = jnp.pad(audio.astype(jnp.float32), padding)
  blocks = blocks.reshape(*audio.shape[:-1], num_hops + hops_per_frame, hop)
  num_frames = num_hops + 1
  frames = jnp.concatenate(
    [blocks[..., r : r + num_frames, :] for r in range(hops_per_frame)], axis=-1
  )
  window = hann_window(n_fft)
  return jnp.fft.rfft(frames * (window / np.sum(window)).astype(np.float32), axis=-1)


def _istft_constants(n_fft: int, hop: int, num_frames: int, length: int):
  """numpy constants of `istft`: the synthesis window `[n_fft]` and 1/envelope `[length]`.

  Built in numpy at trace time, so the compiled program holds two small constants instead
  of computing the envelope and scaling the complex spectrum at every call.
  """
  hops_per_frame = n_fft // hop
  window = hann_window(n_fft)
  # The analysis scaling (1/Σwindow) is undone here, on the real frames, not the spectrum.
  synthesis = window * np.sum(window)
  envelope = np.zeros((num_frames + hops_per_frame - 1, hop))
  squared = (window**2).reshape(hops_per_frame, hop)
  for r in range(hops_per_frame):
    envelope[r : r + num_frames] += squared[r]
  half = n_fft // 2
  envelope = envelope.reshape(-1)[half : half + length]
  # Inside the cropped range a Hann window at hop <= n_fft/2 keeps the envelope >= 0.5 (1.5
  # everywhere at hop = n_fft/4); the floor only guards degenerate sizes.
  inverse_envelope = 1.0 / np.maximum(envelope, 1e-8)
  return synthesis.astype(np.float32), inverse_envelope.astype(np.float32)


def istft(spectrum: jax.Array, n_fft: int, hop: int, length: int) -> jax.Array:
  """Inverse of `stft`: complex `[..., frames, bins]` -> `[..., length]`.

  Windowed overlap-add divided by the overlap-added squared window (the least-squares
  inverse, as scipy.signal.istft), so stft -> istft reconstructs the input exactly.
  """
  _check_stft_sizes(n_fft, hop)
  hops_per_frame = n_fft // hop
  num_frames = spectrum.shape[-2]
  half = n_fft // 2
  num_blocks = num_frames + hops_per_frame - 1
  if half + length > num_blocks * hop:
    raise ValueError(f"{num_frames} STFT frames at hop {hop} cannot give {length} samples")
  synthesis, inverse_envelope = _istft_constants(n_fft, hop, num_frames, length)
  frames = jnp.fft.irfft(spectrum, n=n_fft, axis=-1) * synthesis
  frames = frames.reshape(*frames.shape[:-1], hops_per_frame, hop)
  lead = [(0, 0)] * (frames.ndim - 3)
  audio = sum(
    jnp.pad(frames[..., r, :], lead + [(r, num_blocks - num_frames - r), (0, 0)])
    for r in range(hops_per_frame)
  )
  audio = audio.reshape(*frames.shape[:-3], num_blocks * hop)
  return audio[..., half : half + length] * inverse_envelope


class TransformerLayer(nn.Module):
  """Pre-LN layer: x + Drop(Attn(LN x)), then x + Drop(FFN(LN x)); `[B, L, d_model]`.

  `attention` is "favor" (FAVOR+ with `num_features` random features drawn from the
  layer's key) or "softmax" (exact). Shaped for `nn.scan`: `(x, key) -> (x, None)`.
  """

  config: ml_collections.FrozenConfigDict
  attention: str
  deterministic: bool

  @nn.compact
  def __call__(self, x: jax.Array, feature_key: jax.Array) -> tuple[jax.Array, None]:
    c = self.config
    dtype = jnp.dtype(c.dtype)
    head_dim = c.d_model // c.num_heads
    dense = functools.partial(nn.DenseGeneral, dtype=dtype, param_dtype=jnp.float32)
    dropout = functools.partial(nn.Dropout, c.dropout_rate, deterministic=self.deterministic)

    h = nn.LayerNorm(dtype=dtype, name="attention_norm")(x)
    q, k, v = (dense((c.num_heads, head_dim), name=n)(h) for n in ("query", "key", "value"))
    if self.attention == "favor":
      features = orthogonal_features(feature_key, c.num_features, head_dim)
      attended = favor_attention(q, k, v, features)
    else:
      attended = softmax_attention(q, k, v)
    h = dense(c.d_model, axis=(-2, -1), name="attention_out")(attended)
    x = x + dropout()(h)

    h = nn.LayerNorm(dtype=dtype, name="mlp_norm")(x)
    h = nn.gelu(dense(c.mlp_dim, name="mlp_in")(h))
    h = dense(c.d_model, name="mlp_out")(dropout()(h))
    x = x + dropout()(h)
    return x, None


class TransformerStack(nn.Module):
  """`num_layers` TransformerLayers under `nn.scan`, each rematerialised when `remat`.

  Scan, not a Python loop: XLA then keeps one layer's activations at a time in the backward
  pass, whereas `jax.checkpoint` on unrolled layers saves nothing (XLA reschedules the
  recomputation away). The figures are in docs/history.md.
  """

  config: ml_collections.FrozenConfigDict
  attention: str
  deterministic: bool

  @nn.compact
  def __call__(self, x: jax.Array, feature_keys: jax.Array) -> jax.Array:
    layer = TransformerLayer
    if self.config.remat:
      # Under scan there is no common subexpression to protect; prevent_cse only slows it.
      layer = nn.remat(layer, prevent_cse=False)
    layers = nn.scan(
      layer,
      variable_axes={"params": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=0,
      length=self.config.num_layers,
    )
    x, _ = layers(self.config, self.attention, self.deterministic, name="layers")(x, feature_keys)
    return x


def add_positional_information(
  x: jax.Array, config: ml_collections.FrozenConfigDict, dtype: Any, deterministic: bool
) -> jax.Array:
  """`[B, frames, d_model]` plus a depthwise-conv positional term, then dropout.

  Call it from a compact module: it creates that module's `positional_conv` submodule (the
  name Audio-MAE transfer relies on). A depthwise convolution over frames (as wav2vec 2.0)
  is relative and translation-equivariant, so a model trained on 3 s segments meets no
  unseen positions on 30 s ones or whole songs, unlike absolute (sinusoidal or learned)
  codes; relative attention biases would need the length × length logits FAVOR+ avoids.
  """
  positional = nn.Conv(
    config.d_model,
    (config.pos_conv_kernel,),
    feature_group_count=config.d_model,
    padding="SAME",
    dtype=dtype,
    name="positional_conv",
  )(x)
  x = x + nn.gelu(positional)
  return nn.Dropout(config.dropout_rate, deterministic=deterministic)(x)


def layer_feature_keys(
  config: ml_collections.FrozenConfigDict, feature_seed: Any, layers: jax.Array
) -> jax.Array:
  """The FAVOR+ feature key of each layer index in `layers`: `[len(layers), 2]`.

  `fold_in(PRNGKey(config.feature_seed), layer)`, first folded with `feature_seed` when it is
  given (an int or traced int, to redraw features without retracing).
  """
  base_key = jax.random.PRNGKey(config.feature_seed)
  if feature_seed is not None:
    base_key = jax.random.fold_in(base_key, feature_seed)
  return jax.vmap(lambda i: jax.random.fold_in(base_key, i))(layers)


class TransformerSeparator(nn.Module):
  """Mask-based separator with a transformer body; see the module docstring.

  `__call__(mixture [B, C, T], *, deterministic=True, feature_seed=None)` ->
  (estimates `[B, N, C, T]`, {"masks": `[B, N, frames, bins or filters]`}).

  FAVOR+ features are not parameters: each layer draws its own from
  `fold_in(PRNGKey(config.feature_seed), layer)` at every call (a few small QRs). So they
  are the same at training and inference, cost nothing in checkpoints, and need no extra
  variable collection in the train state. `feature_seed` (an int or a traced int, e.g.
  step // interval) redraws them without retracing, for feature redrawing in training.
  """

  config: ml_collections.FrozenConfigDict
  attention: str = "favor"

  @nn.compact
  def __call__(
    self, mixture: jax.Array, *, deterministic: bool = True, feature_seed: Any = None
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    c = self.config
    dtype = jnp.dtype(c.dtype)
    batch, channels, length = mixture.shape
    mixture = mixture.astype(jnp.float32)

    if c.frontend == "stft":
      spectrum = stft(mixture, c.n_fft, c.hop)  # [B, C, frames, bins]
      tokens = log_magnitude_tokens(spectrum)
      representation = spectrum
      num_bins = spectrum.shape[-1]
    elif c.frontend == "learned":
      encoder = ConvEncoder(
        c.encoder_filters, c.encoder_window, c.encoder_stride, dtype, name="encoder"
      )
      representation = encode(encoder, mixture)  # [B, frames, filters]
      tokens = representation
      num_bins = c.encoder_filters
    else:
      raise ValueError(f"config.model.frontend must be 'stft' or 'learned', got {c.frontend!r}")

    dense = functools.partial(nn.Dense, dtype=dtype, param_dtype=jnp.float32)
    x = dense(c.d_model, name="input_projection")(tokens.astype(dtype))
    x = add_positional_information(x, c, dtype, deterministic)
    feature_keys = layer_feature_keys(c, feature_seed, jnp.arange(c.num_layers))
    x = TransformerStack(c, self.attention, deterministic, name="transformer")(x, feature_keys)

    x = nn.LayerNorm(dtype=dtype, name="output_norm")(x)
    logits = dense(c.num_outputs * num_bins, name="mask_head")(x).astype(jnp.float32)
    logits = logits.reshape(batch, -1, c.num_outputs, num_bins)
    masks = mask_activation(jnp.moveaxis(logits, 2, 1), c.mask_activation)  # [B, N, frames, F]

    if c.frontend == "stft":
      masked = masks[:, :, None] * representation[:, None]  # [B, N, C, frames, bins]
      estimates = istft(masked, c.n_fft, c.hop, length)
    else:
      decoder = ConvDecoder(channels, c.encoder_window, c.encoder_stride, dtype, name="decoder")
      estimates = decode_masked(decoder, masks, representation, length)
    if c.mixture_consistency:
      estimates = mixture_consistency(estimates, mixture)
    return estimates, {"masks": masks}


class PerformerSeparator(TransformerSeparator):
  """The seed's separator: FAVOR+ attention, linear in the number of frames."""

  attention: str = "favor"


class DenseTransformerSeparator(TransformerSeparator):
  """The control: the same network with exact softmax attention (quadratic in frames)."""

  attention: str = "softmax"


def num_frames(model_config: ml_collections.ConfigDict, length: int) -> int:
  """Tokens the Performer/dense separators make from `length` samples."""
  c = model_config
  if c.frontend == "stft":
    return -(-length // c.hop) + 1
  left, right = frame_padding(length, c.encoder_window, c.encoder_stride)
  return (length + left + right - c.encoder_window) // c.encoder_stride + 1
