"""The pieces the separator stitches a song with, each testable alone.

Arrays are ``float32``; ``N`` outputs, ``C`` channels, ``T`` frames.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import numpy as np
import scipy.optimize
import scipy.signal

CHANNEL_MASK_N_FFT = 1024  # STFT for spreading a mono model's outputs over stereo channels


def overlap_add_weights(segment_frames: int, overlap_frames: int) -> np.ndarray:
  """Trapezoid ``[segment_frames]``: linear ramps over the overlap, strictly positive."""
  t = np.arange(segment_frames, dtype=np.float64)
  ramp = np.minimum((t + 1) / (overlap_frames + 1), (segment_frames - t) / (overlap_frames + 1))
  return np.minimum(ramp, 1.0).astype(np.float32)


def best_permutation(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
  """The order of ``candidate``'s outputs that best matches ``reference``.

  Args:
    reference: ``[N, ...]`` the outputs already in place, on the overlap.
    candidate: ``[N, ...]`` the new segment's outputs, on the same frames.
  Returns:
    ``perm [N]`` such that ``candidate[perm]`` is aligned with ``reference``: it maximises
    ``sum_i <reference_i, candidate_perm[i]>`` (Hungarian algorithm, exact).
  """
  n = reference.shape[0]
  correlation = reference.reshape(n, -1).astype(np.float64) @ candidate.reshape(n, -1).T
  rows, cols = scipy.optimize.linear_sum_assignment(correlation, maximize=True)
  return cols[np.argsort(rows)]


def share_residual(estimates: np.ndarray, mixture: np.ndarray) -> np.ndarray:
  """Mixture consistency: ``estimates [N, C, T]`` shifted so that they sum to ``mixture [C, T]``.

  The residual is shared equally among outputs: the numpy twin, for one whole song, of
  ``losses.mixit.mixture_consistency``'s unweighted projection.
  """
  residual = mixture - estimates.sum(axis=0)
  return estimates + residual[None] / estimates.shape[0]


def spread_over_channels(
  estimates_mono: np.ndarray, channels_audio: np.ndarray, n_fft: int = CHANNEL_MASK_N_FFT
) -> np.ndarray:
  """Applies a mono separation to each channel of a multichannel signal.

  Args:
    estimates_mono: ``[N, T]`` outputs of a mono model on the downmix.
    channels_audio: ``[C, T]`` the signal whose channels are to be split.
  Returns:
    ``[N, C, T]``: channel ``c`` of output ``i`` is ``istft(M_i * stft(x_c))`` with the
    magnitude ratio mask ``M_i = |E_i| / sum_j |E_j|`` (masks sum to 1, so the outputs of a
    channel sum to that channel up to the STFT's round trip).
  """
  n_fft = min(n_fft, estimates_mono.shape[-1])
  kwargs = dict(nperseg=n_fft, noverlap=n_fft * 3 // 4, window="hann", boundary="even")
  num_frames = channels_audio.shape[-1]
  _, _, est_spec = scipy.signal.stft(estimates_mono, **kwargs)  # [N, F, frames]
  magnitude = np.abs(est_spec)
  total = magnitude.sum(axis=0, keepdims=True)
  num_outputs = estimates_mono.shape[0]
  # Where every output is silent the share is undefined; split it equally.
  masks = np.where(total > 1e-12, magnitude / np.maximum(total, 1e-12), 1.0 / num_outputs)
  _, _, channel_spec = scipy.signal.stft(channels_audio, **kwargs)  # [C, F, frames]
  _, separated = scipy.signal.istft(masks[:, None] * channel_spec[None], **kwargs)
  separated = separated[..., :num_frames]
  if separated.shape[-1] < num_frames:
    separated = np.pad(separated, [(0, 0), (0, 0), (0, num_frames - separated.shape[-1])])
  return separated.astype(np.float32)


class Fifo:
  """A queue of ``[C, n]`` blocks from which any number of frames can be taken."""

  def __init__(self, channels: int):
    self._blocks: collections.deque[np.ndarray] = collections.deque()
    self._channels = channels
    self.frames = 0

  def push(self, block: np.ndarray) -> None:
    if block.shape[-1]:
      self._blocks.append(block)
      self.frames += block.shape[-1]

  def pop(self, n: int) -> np.ndarray:
    """Takes ``n`` frames (zero-padded if fewer are queued)."""
    parts, needed = [], n
    while needed and self._blocks:
      block = self._blocks.popleft()
      if block.shape[-1] > needed:
        self._blocks.appendleft(block[..., needed:])
        block = block[..., :needed]
      parts.append(block)
      needed -= block.shape[-1]
    self.frames -= n - needed
    if needed:
      parts.append(np.zeros(block_shape(parts, self._channels, needed), np.float32))
    return np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

  def peek(self, n: int) -> np.ndarray:
    """The next ``n`` frames, left queued (zero padding, if any, stays queued too)."""
    taken = self.pop(n)
    self._blocks.appendleft(taken)
    self.frames += n
    return taken


def block_shape(parts: list[np.ndarray], channels: int, frames: int) -> tuple[int, ...]:
  lead = parts[0].shape[:-1] if parts else (channels,)
  return (*lead, frames)


def batched(items: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch
