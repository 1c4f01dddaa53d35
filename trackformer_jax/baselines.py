"""Classical separation baselines (numpy/scipy only), scored beside the learned separators.

``nmf_separate``: KL-divergence NMF of the STFT magnitude with a fixed number of components,
each component's share of the model used as a soft mask on the mixture's STFT. It needs no
labels and no training, so it is the floor a label-free separator has to clear; evaluate
scores it with the very same output-to-stem assignment as the model.
"""

from __future__ import annotations

import numpy as np
import scipy.signal

NMF_COMPONENTS = 8
NMF_ITERATIONS = 150
_N_FFT = 2048
_N_FFT_LOW_RATE = 512  # below 16 kHz (as evaluate.oracle_ratio_mask)
_EPS = 1e-10


def stft_size(sample_rate_hz: int, num_frames: int) -> int:
  """The STFT size evaluate's oracle uses: 2048 at >= 16 kHz, 512 below (at most the length)."""
  n_fft = _N_FFT if sample_rate_hz >= 16000 else _N_FFT_LOW_RATE
  return max(min(n_fft, num_frames), 2)


def kl_nmf(
  v: np.ndarray, num_components: int, *, iterations: int = NMF_ITERATIONS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """``V [F, N] ~= W [F, K] @ H [K, N]`` minimising the generalised KL divergence.

  Lee & Seung's multiplicative updates in float32, every division guarded by ``eps``, from a
  seeded uniform start (deterministic for a seed). W's columns are renormalised to unit sum
  after each update (H rescaled to match), which leaves ``W @ H`` unchanged.
  """
  v = np.asarray(v, np.float32)
  f, n = v.shape
  rng = np.random.default_rng(seed)
  scale = float(np.sqrt(max(v.mean(), _EPS) / num_components))
  w = (rng.uniform(0.5, 1.5, (f, num_components)) * scale).astype(np.float32)
  h = (rng.uniform(0.5, 1.5, (num_components, n)) * scale).astype(np.float32)
  eps = np.float32(_EPS)
  ratio = np.empty_like(v)
  for _ in range(iterations):
    # In place: a whole song's [F, N] is millions of values, and temporaries dominate.
    np.matmul(w, h, out=ratio)
    ratio += eps
    np.divide(v, ratio, out=ratio)
    h *= (w.T @ ratio) / (w.sum(axis=0)[:, None] + eps)
    np.matmul(w, h, out=ratio)
    ratio += eps
    np.divide(v, ratio, out=ratio)
    w *= (ratio @ h.T) / (h.sum(axis=1)[None, :] + eps)
    norm = w.sum(axis=0) + eps
    w /= norm[None, :]
    h *= norm[:, None]
  return w, h


def nmf_separate(
  mixture: np.ndarray,
  sample_rate_hz: int,
  *,
  num_components: int = NMF_COMPONENTS,
  n_fft: int | None = None,
  iterations: int = NMF_ITERATIONS,
  seed: int = 0,
) -> np.ndarray:
  """Separates ``mixture [C, T]`` into ``float32 [num_components, C, T]`` that sum to it.

  The components are shared by the channels: NMF factorises the channel-summed STFT
  magnitude, and component ``k``'s share ``W_k H_k / sum_j W_j H_j`` masks every channel's
  complex STFT (one channel at a time, so a whole stereo song stays within a few hundred
  MB). The inverse STFTs' rounding residual is shared out equally, so the outputs sum to
  the mixture to float32 precision.
  """
  mixture = np.asarray(mixture, np.float32)
  if mixture.ndim != 2:
    raise ValueError(f"nmf_separate: mixture must be [channels, time], got {mixture.shape}")
  channels, num_frames = mixture.shape
  n_fft = stft_size(sample_rate_hz, num_frames) if n_fft is None else min(n_fft, num_frames)
  kwargs = dict(nperseg=n_fft, noverlap=n_fft * 3 // 4, window="hann")
  magnitude = None
  for c in range(channels):
    part = np.abs(scipy.signal.stft(mixture[c], **kwargs)[2]).astype(np.float32)
    magnitude = part if magnitude is None else magnitude + part
  w, h = kl_nmf(magnitude, num_components, iterations=iterations, seed=seed)
  del magnitude
  total = w @ h
  # Where the model is zero (digital silence) every component gets an equal share.
  silent = total <= _EPS
  inverse_total = np.where(silent, 0.0, 1.0 / np.maximum(total, _EPS)).astype(np.float32)
  del total
  separated = np.zeros((num_components, channels, num_frames), np.float32)
  for c in range(channels):
    spec = scipy.signal.stft(mixture[c], **kwargs)[2].astype(np.complex64)
    for k in range(num_components):
      mask = np.outer(w[:, k], h[k]) * inverse_total
      mask[silent] = 1.0 / num_components
      signal = scipy.signal.istft(mask * spec, **kwargs)[1][:num_frames]
      separated[k, c, : signal.shape[-1]] = signal
  separated += (mixture - separated.sum(axis=0)) / num_components
  return separated
