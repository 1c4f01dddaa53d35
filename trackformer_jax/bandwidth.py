"""Full-band outputs from a lower-rate model: the band above its Nyquist, shared by content.

A model running at ``model_rate_hz`` sees nothing above ``model_rate_hz / 2``. When its
outputs are resampled up to a file's higher rate they sum to the mixture only below that
cutoff; the residual ``R = mixture - sum_i E_i`` holds the whole band above it (cymbals,
distortion, breath, air) plus a small resampling error below it. Rather than splitting ``R``
equally, each output gets the part of it that matches what the output does contain:

* in the STFT of ``R`` and of every upsampled output ``E_i`` (Hann window of about 46 ms,
  75 % overlap, so the window's square overlap-adds to a constant),
* **below the cutoff** output ``i`` takes ``|E_i| / sum_j |E_j|`` of ``R`` in each bin (its
  own ratio mask, so the resampling error follows the outputs),
* **above the cutoff** output ``i`` takes, in each frame, its share of the outputs' energy in
  the top octave they have (``[0.45, 0.9]`` of the model's Nyquist, in each channel),
  smoothed over five frames (about 60 ms at 44.1 kHz): harmonics and noise of a source go on
  upward with the source's top-octave activity,
* between ``0.85`` and ``0.95`` of the model's Nyquist (the resampler's roll-off) the two are
  cross-faded,
* where all outputs are silent the shares are equal.

The shares sum to one in every bin, so the pieces of ``R`` sum to ``R``; what the STFT round
trip leaves over (float rounding) is shared equally at the end, so the outputs sum exactly
(to float precision) to the mixture.

``BandExtender`` does this as a stream (blocks in, finished blocks out, bounded memory, a
delay of about ``n_fft + 2 * hop`` frames); ``extend_band`` pushes one array through it, so
the two agree to float rounding however a song is cut into blocks.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

_SMOOTH_KERNEL = np.array([1.0, 2.0, 3.0, 2.0, 1.0])  # over frames, centred
_LOW_EDGE, _HIGH_EDGE = 0.85, 0.95  # cross-fade, as fractions of the model's Nyquist
_OCTAVE_TOP = 0.9  # top octave the outputs have: [_OCTAVE_TOP / 2, _OCTAVE_TOP] of Nyquist
_SILENT = 1e-20  # a total power (or magnitude) below this: equal shares


def default_n_fft(sample_rate_hz: int) -> int:
  """A power of two near 46 ms (2048 at 44.1 and 48 kHz, 512 at 11.025 kHz)."""
  return int(2 ** round(np.log2(max(sample_rate_hz * 0.0464, 16))))


def _shares(values: np.ndarray, axis: int = 0) -> np.ndarray:
  """``values / sum(values)`` along ``axis`` (equal shares where the sum is ~0)."""
  total = values.sum(axis=axis, keepdims=True)
  n = values.shape[axis]
  return np.where(total > _SILENT, values / np.maximum(total, _SILENT), 1.0 / n)


class BandExtender:
  """Streams ``(outputs, mixture)`` blocks at the file's rate; returns finished blocks.

  Args:
    num_outputs, channels: the outputs' shape ``[N, C, ...]``.
    sample_rate_hz: the file's rate (the blocks' rate).
    model_rate_hz: the model's rate; its Nyquist is the cutoff.
    n_fft: STFT length (default ``default_n_fft(sample_rate_hz)``); a multiple of 4.

  ``push(outputs [N, C, n], mixture [C, n])`` returns the next finished frames ``[N, C, m]``
  (``m`` may be 0: about ``n_fft + 2 * n_fft / 4`` frames are held back), ``finish()`` the
  rest; in total as many frames as were pushed, summing to the mixture pushed.
  """

  def __init__(self, num_outputs, channels, sample_rate_hz, model_rate_hz, n_fft=None):
    self.num_outputs, self.channels = int(num_outputs), int(channels)
    n = int(n_fft or default_n_fft(sample_rate_hz))
    if n < 8 or n % 4:
      raise ValueError(f"n_fft must be a multiple of 4 and at least 8, got {n}")
    self.n_fft, self.hop = n, n // 4
    self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)  # Hann
    self._norm = float((self.window**2).reshape(4, -1).sum(axis=0).mean())  # 1.5
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate_hz)
    nyquist = model_rate_hz / 2
    # Weight of the outputs' own ratio mask in each bin (1 below, 0 above the cutoff).
    low = np.clip((_HIGH_EDGE * nyquist - freqs) / ((_HIGH_EDGE - _LOW_EDGE) * nyquist), 0, 1)
    self._num_low = int(np.count_nonzero(low))  # bins [0, num_low) use the ratio masks
    self._low = low[: self._num_low].astype(np.float32)
    octave = (freqs >= _OCTAVE_TOP * nyquist / 2) & (freqs < _OCTAVE_TOP * nyquist)
    if not octave.any():  # too coarse an STFT for the band: the bins nearest below it
      octave = freqs < _OCTAVE_TOP * nyquist
      octave[: max(0, int(octave.sum()) - 2)] = False
    self._octave = octave
    self._smooth = len(_SMOOTH_KERNEL) // 2
    shape = (self.num_outputs, self.channels)
    # Samples not yet handed on, from absolute frame self._base; their extension so far.
    self._base = 0
    self._outputs = np.zeros((*shape, 0), np.float32)
    self._mixture = np.zeros((self.channels, 0), np.float32)
    self._extension = np.zeros((*shape, 0), np.float32)
    # Analysis: samples from the next frame's start (frame k starts at k * hop - n + hop,
    # so every sample is covered by four frames, the first ones reaching before 0).
    self._analysis = np.zeros((self.num_outputs + 1, self.channels, n - self.hop), np.float32)
    self._frames_analysed = 0
    # Analysed frames not yet synthesised (from frame self._next_synth), and the top-octave
    # power of every frame from self._next_synth - smooth on.
    self._next_synth = 0
    self._residual_spec = np.zeros((0, self.channels, n // 2 + 1), np.complex64)
    self._masks = np.zeros((0, *shape, self._num_low), np.float32)
    self._power = np.zeros((0, *shape), np.float32)
    self._power_start = 0
    self._pushed = 0

  # ---- public ---------------------------------------------------------------------------------

  def push(self, outputs: np.ndarray, mixture: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs, np.float32)
    mixture = np.asarray(mixture, np.float32)
    self._outputs = np.concatenate([self._outputs, outputs], axis=-1)
    self._mixture = np.concatenate([self._mixture, mixture], axis=-1)
    residual = mixture - outputs.sum(axis=0)
    new = np.concatenate([outputs, residual[None]])
    self._analysis = np.concatenate([self._analysis, new], axis=-1)
    self._pushed += outputs.shape[-1]
    self._analyse()
    self._synthesise(self._frames_analysed - self._smooth)
    return self._emit(self._next_synth * self.hop - self.n_fft + self.hop)

  def finish(self) -> np.ndarray:
    # The frames still to come that start before the end (the buffer starts at the next
    # frame's start), the last of them zero-padded: every sample gets all four of its frames.
    length = self._analysis.shape[-1]
    frames = -(-length // self.hop)
    pad = (frames - 1) * self.hop + self.n_fft - length if frames > 0 else 0
    if pad > 0:
      zeros = np.zeros((*self._analysis.shape[:2], pad), np.float32)
      self._analysis = np.concatenate([self._analysis, zeros], axis=-1)
    self._analyse()
    self._synthesise(self._frames_analysed)
    return self._emit(self._pushed)

  # ---- steps ------------------------------------------------------------------------------------

  def _analyse(self) -> None:
    n, hop = self.n_fft, self.hop
    count = (self._analysis.shape[-1] - n) // hop + 1
    if count <= 0:
      return
    frames = np.lib.stride_tricks.sliding_window_view(self._analysis, n, axis=-1)[..., ::hop, :]
    spectra = scipy.fft.rfft(frames[..., :count, :] * self.window, axis=-1, workers=-1)
    spectra = np.moveaxis(spectra, 2, 0)  # [K, N+1, C, F]
    magnitude = np.abs(spectra[:, :-1])
    masks = _shares(magnitude[..., : self._num_low], axis=1).astype(np.float32)
    self._masks = np.concatenate([self._masks, masks])
    self._residual_spec = np.concatenate([self._residual_spec, spectra[:, -1]])
    power = (magnitude[..., self._octave] ** 2).sum(axis=-1)  # [K, N, C]
    self._power = np.concatenate([self._power, power])
    self._analysis = self._analysis[..., count * hop :]
    self._frames_analysed += count

  def _synthesise(self, until: int) -> None:
    """Synthesises frames ``[self._next_synth, until)``, adding them to the extension."""
    count = until - self._next_synth
    if count <= 0:
      return
    n, hop, s = self.n_fft, self.hop, self._smooth
    # Smoothed top-octave power of frames next_synth .. until-1; missing frames count as 0.
    offset = self._next_synth - s - self._power_start
    padded = self._power[max(0, offset) :]
    if offset < 0:  # before the first frame
      padded = np.concatenate([np.zeros((-offset, *padded.shape[1:]), np.float32), padded])
    needed = count + 2 * s
    if padded.shape[0] < needed:  # after the last frame
      tail = np.zeros((needed - padded.shape[0], *padded.shape[1:]), np.float32)
      padded = np.concatenate([padded, tail])
    smoothed = sum(k * padded[i : i + count] for i, k in enumerate(_SMOOTH_KERNEL))
    high = _shares(smoothed, axis=1).astype(np.float32)[..., None]  # [K, N, C, 1]
    weights = np.broadcast_to(high, (*high.shape[:-1], n // 2 + 1)).copy()
    nl = self._num_low
    weights[..., :nl] = self._low * self._masks[:count] + (1 - self._low) * high
    pieces = scipy.fft.irfft(weights * self._residual_spec[:count, None], n=n, axis=-1, workers=-1)
    pieces *= self.window / self._norm  # [K, N, C, n]
    # Overlap-add into the extension buffer (absolute frame t at index t - base).
    first_start = self._next_synth * hop - n + hop
    end = first_start + (count - 1) * hop + n - self._base
    if self._extension.shape[-1] < end:
      grow = np.zeros((*self._extension.shape[:2], end - self._extension.shape[-1]), np.float32)
      self._extension = np.concatenate([self._extension, grow], axis=-1)
    for k in range(count):
      start = first_start + k * hop - self._base
      clip = max(0, -start)
      self._extension[..., start + clip : start + n] += pieces[k, ..., clip:]
    self._masks = self._masks[count:]
    self._residual_spec = self._residual_spec[count:]
    self._next_synth = until
    drop = max(0, until - s - self._power_start)
    self._power = self._power[drop:]
    self._power_start += drop

  def _emit(self, until: int) -> np.ndarray:
    """Hands on the finished frames ``[base, until)``."""
    m = max(0, min(until, self._pushed) - self._base)
    outputs = self._outputs[..., :m] + self._extension[..., :m].astype(np.float64)
    mixture = self._mixture[..., :m]
    # What the STFT round trip left over (float rounding), shared equally: exact sums.
    outputs += (mixture - outputs.sum(axis=0))[None] / self.num_outputs
    self._outputs = self._outputs[..., m:]
    self._mixture = self._mixture[..., m:]
    self._extension = self._extension[..., m:]
    self._base += m
    return outputs.astype(np.float32)


def extend_band(
  outputs: np.ndarray,
  mixture: np.ndarray,
  sample_rate_hz: int,
  model_rate_hz: int,
  n_fft: int | None = None,
) -> np.ndarray:
  """Shares the residual of upsampled outputs among them by their content (module doc).

  Args:
    outputs: ``[N, C, T]`` a model's outputs, resampled to ``sample_rate_hz``.
    mixture: ``[C, T]`` the input at ``sample_rate_hz``.
    sample_rate_hz: the signals' rate.
    model_rate_hz: the model's rate (its Nyquist is the cutoff).
    n_fft: STFT length (default about 46 ms).
  Returns:
    ``[N, C, T]`` float32, summing over outputs to ``mixture`` (to float precision).
  """
  outputs = np.asarray(outputs)
  if outputs.ndim != 3 or np.shape(mixture) != outputs.shape[1:]:
    raise ValueError(
      f"expected outputs [N, C, T] and mixture [C, T], got {outputs.shape} and {np.shape(mixture)}"
    )
  extender = BandExtender(*outputs.shape[:2], sample_rate_hz, model_rate_hz, n_fft=n_fft)
  first = extender.push(outputs, mixture)
  return np.concatenate([first, extender.finish()], axis=-1)
