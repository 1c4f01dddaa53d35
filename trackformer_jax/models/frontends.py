"""The STFT front end's tokens, shared by the separator and Audio-MAE (same computation).

Audio-MAE's reconstruction targets and the separator's input are the same features, so an
encoder pre-trained on one reads the other unchanged (``training.transfer``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Floor under STFT magnitudes before the log: ~-100 dB re a full-scale sine's bin (0.5),
# below 16-bit quantisation noise, and it keeps the log and its gradient finite in silence.
MAGNITUDE_FLOOR = 1e-5


def log_magnitude_tokens(spectrum: jax.Array) -> jax.Array:
  """Complex ``spectrum`` [B, C, frames, bins] -> log magnitudes [B, frames, C·bins]."""
  batch, _, frames, _ = spectrum.shape
  # The 1e-20 inside the root keeps its gradient finite where a bin is exactly zero.
  magnitude = jnp.sqrt(jnp.square(spectrum.real) + jnp.square(spectrum.imag) + 1e-20)
  tokens = jnp.log(magnitude + MAGNITUDE_FLOOR)
  return jnp.moveaxis(tokens, 1, 2).reshape(batch, frames, -1)
