"""Conv-TasNet (Luo & Mesgarani 2019), the convolutional baseline, and its learned front end.

Encoder: a 1-D convolution (N filters, window L, stride L/2) with ReLU. Separator: a temporal
convolutional network of R repeats of X dilated blocks (dilations 1, 2, …, 2^(X−1)), each
block 1×1 conv B→H, PReLU, norm, depthwise conv (kernel P), PReLU, norm, then 1×1 convs to a
residual (B) and a skip (Sc) path; the summed skips give one sigmoid mask per output over the
encoder's basis. Decoder: a transposed convolution back to audio.

The encoder and decoder are also the Performer separator's `learned` front end.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from trackformer_jax.losses.mixit import mixture_consistency


def frame_padding(length: int, window: int, stride: int) -> tuple[int, int]:
  """(left, right) zero padding so that every sample lies under window/stride frames.

  `window − stride` on the left gives the first samples as many frames as the rest; the
  right side is padded at least as much and up to the next whole frame.
  """
  left = window - stride
  total = max(length + 2 * left, window)
  right = total - length - left
  right += (-(total - window)) % stride
  return left, right


class ConvEncoder(nn.Module):
  """Padded audio `[batch, channels, time]` -> ReLU basis weights `[batch, frames, filters]`."""

  filters: int
  window: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, audio: jax.Array) -> jax.Array:
    frames = nn.Conv(
      self.filters,
      (self.window,),
      strides=(self.stride,),
      padding="VALID",
      use_bias=False,
      dtype=self.dtype,
      name="conv",
    )(jnp.swapaxes(audio, 1, 2).astype(self.dtype))
    return nn.relu(frames)


class ConvDecoder(nn.Module):
  """Weights `[batch, frames, filters]` -> audio `[batch, channels, (frames−1)·stride + window]`."""

  channels: int
  window: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, weights: jax.Array) -> jax.Array:
    audio = nn.ConvTranspose(
      self.channels,
      (self.window,),
      strides=(self.stride,),
      padding="VALID",
      use_bias=False,
      dtype=self.dtype,
      name="conv_transpose",
    )(weights)
    return jnp.swapaxes(audio, 1, 2).astype(jnp.float32)


def encode(encoder: ConvEncoder, mixture: jax.Array) -> jax.Array:
  """Mixture `[B, C, T]` -> basis weights `[B, frames, filters]` (float32), padded per
  `frame_padding`."""
  left, right = frame_padding(mixture.shape[-1], encoder.window, encoder.stride)
  padded = jnp.pad(mixture.astype(jnp.float32), ((0, 0), (0, 0), (left, right)))
  return encoder(padded).astype(jnp.float32)


def decode_masked(
  decoder: ConvDecoder, masks: jax.Array, encoded: jax.Array, length: int
) -> jax.Array:
  """Masks `[B, N, frames, filters]` applied to `encode`'s output, decoded and cropped back to
  `length`: `[B, N, channels, length]`."""
  batch, num_outputs = masks.shape[:2]
  masked = masks * encoded[:, None]
  audio = decoder(masked.reshape(batch * num_outputs, *masked.shape[2:]).astype(decoder.dtype))
  left, _ = frame_padding(length, decoder.window, decoder.stride)
  return audio.reshape(batch, num_outputs, decoder.channels, -1)[..., left : left + length]


class GlobalLayerNorm(nn.Module):
  """gLN: normalise over time and channels of each example, then a per-channel gain and bias.

  Note that its mean and variance span the whole input, so every output depends (weakly) on
  every input sample: gLN alone gives Conv-TasNet a global, if two-number, context.
  """

  epsilon: float = 1e-8

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [batch, frames, channels]
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2), keepdims=True)
    gain = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return ((x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * gain + bias).astype(x.dtype)


def make_norm(kind: str, name: str) -> nn.Module:
  """`gLN` (the paper's non-causal choice) or `fLN` (per-frame LayerNorm over channels)."""
  if kind == "gLN":
    return GlobalLayerNorm(name=name)
  if kind == "fLN":
    return nn.LayerNorm(epsilon=1e-8, name=name)
  raise ValueError(f"config.model.tasnet_norm must be 'gLN' or 'fLN', got {kind!r}")


class TemporalBlock(nn.Module):
  """One dilated 1-D conv block: `[batch, frames, B]` -> (residual `[…, B]`, skip `[…, Sc]`)."""

  hidden: int
  kernel: int
  dilation: int
  bottleneck: int
  skip: int
  norm: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = nn.Conv(self.hidden, (1,), dtype=self.dtype, name="expand")(x)
    y = make_norm(self.norm, "norm_1")(nn.PReLU(name="prelu_1")(y))
    y = nn.Conv(
      self.hidden,
      (self.kernel,),
      kernel_dilation=(self.dilation,),
      feature_group_count=self.hidden,
      padding="SAME",
      dtype=self.dtype,
      name="depthwise",
    )(y)
    y = make_norm(self.norm, "norm_2")(nn.PReLU(name="prelu_2")(y))
    residual = nn.Conv(self.bottleneck, (1,), dtype=self.dtype, name="residual")(y)
    skip = nn.Conv(self.skip, (1,), dtype=self.dtype, name="skip")(y)
    return residual, skip


def receptive_field_frames(model_config: ml_collections.ConfigDict) -> int:
  """Encoder frames one separator output frame sees: 1 + R·(P−1)·(2^X − 1)."""
  c = model_config
  return 1 + c.tasnet_R * (c.tasnet_P - 1) * (2**c.tasnet_X - 1)


def receptive_field_samples(model_config: ml_collections.ConfigDict) -> int:
  """One-sided reach in samples: output sample s depends only on inputs within s ± reach.

  A decoder frame j covers samples [jS, jS + L) (S = L/2); its mask sees encoder frames
  j ± (receptive_field_frames − 1)/2, each covering L samples, so reach = S·(F − 1)/2 + L.
  """
  stride = model_config.tasnet_L // 2
  return stride * (receptive_field_frames(model_config) - 1) // 2 + model_config.tasnet_L


class ConvTasNet(nn.Module):
  """Conv-TasNet with `config.num_outputs` outputs.

  `__call__(mixture [batch, channels, time], *, deterministic=True)` ->
  (estimates `[batch, N, channels, time]`, {"masks": `[batch, N, frames, tasnet_N]`}).
  There is no dropout; `deterministic` is accepted for the shared interface.
  """

  config: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, mixture: jax.Array, *, deterministic: bool = True, **unused_kwargs):
    del deterministic, unused_kwargs
    c = self.config
    dtype = jnp.dtype(c.dtype)
    batch, channels, length = mixture.shape
    stride = c.tasnet_L // 2
    encoder = ConvEncoder(c.tasnet_N, c.tasnet_L, stride, dtype, name="encoder")
    encoded = encode(encoder, mixture)
    x = make_norm(c.tasnet_norm, "input_norm")(encoded)
    x = nn.Conv(c.tasnet_B, (1,), dtype=dtype, name="bottleneck")(x)
    skips = 0.0
    for r in range(c.tasnet_R):
      for i in range(c.tasnet_X):
        residual, skip = TemporalBlock(
          c.tasnet_H,
          c.tasnet_P,
          2**i,
          c.tasnet_B,
          c.tasnet_Sc,
          c.tasnet_norm,
          dtype,
          name=f"block_{r}_{i}",
        )(x)
        x = x + residual
        skips = skips + skip
    y = nn.PReLU(name="mask_prelu")(skips)
    logits = nn.Conv(c.num_outputs * c.tasnet_N, (1,), dtype=dtype, name="mask_conv")(y)
    logits = logits.astype(jnp.float32).reshape(batch, -1, c.num_outputs, c.tasnet_N)
    masks = mask_activation(jnp.moveaxis(logits, 2, 1), c.mask_activation)  # [B, N, F, basis]

    decoder = ConvDecoder(channels, c.tasnet_L, stride, dtype, name="decoder")
    estimates = decode_masked(decoder, masks, encoded, length)
    if c.mixture_consistency:
      estimates = mixture_consistency(estimates, mixture.astype(jnp.float32))
    return estimates, {"masks": masks}


def mask_activation(logits: jax.Array, kind: str) -> jax.Array:
  """Masks in [0, 1] from logits `[batch, N, …]`: `sigmoid` each, or `softmax` across N."""
  if kind == "sigmoid":
    return jax.nn.sigmoid(logits)
  if kind == "softmax":
    return jax.nn.softmax(logits, axis=1)
  raise ValueError(f"config.model.mask_activation must be 'sigmoid' or 'softmax', got {kind!r}")
