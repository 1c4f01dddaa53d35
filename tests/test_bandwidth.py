"""bandwidth: the band above a lower-rate model's Nyquist is shared by what the outputs hold.

The signals are synthetic and short (a second or two at 44.1 kHz); the "model" outputs are
the true sources band-limited by the same soxr round trip the Separator uses, so the part
of the mixture above the model's Nyquist is exactly what the extension has to place.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import soxr
from helpers import band_split_model

from trackformer_jax import audio, bandwidth, separate
from trackformer_jax.separate import Separator

FILE_RATE_HZ = 44100
MODEL_RATE_HZ = 16000


def through_model_rate(signals: np.ndarray, model_rate_hz=MODEL_RATE_HZ) -> np.ndarray:
  """``[N, C, T]`` down to the model's rate and back, as the Separator does (same length)."""
  n, c, t = signals.shape
  flat = signals.reshape(n * c, t).T.astype(np.float32)
  down = soxr.resample(flat, FILE_RATE_HZ, model_rate_hz)
  up = soxr.resample(down, model_rate_hz, FILE_RATE_HZ)[:t]
  up = np.pad(up, [(0, t - up.shape[0]), (0, 0)])
  return up.T.reshape(n, c, t)


def highpass(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
  sos = scipy.signal.butter(8, cutoff_hz, "highpass", fs=FILE_RATE_HZ, output="sos")
  return scipy.signal.sosfiltfilt(sos, x, axis=-1)


def gated_sources(seconds=2.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
  """``sources [4, 1, T]`` and A's gate: A = a 5 kHz tone plus 9-18 kHz noise, both sounding
  in alternate 0.25 s; B = a 300 Hz tone throughout (with a little 12 kHz air of its own
  during A's gaps); outputs 2 and 3 are silent."""
  rng = np.random.default_rng(seed)
  t = np.arange(round(seconds * FILE_RATE_HZ)) / FILE_RATE_HZ
  gate = (np.floor(t / 0.25) % 2 == 0).astype(np.float64)
  gate = np.convolve(gate, np.hanning(441) / np.hanning(441).sum(), mode="same")  # 10 ms edges
  sos = scipy.signal.butter(6, [9000, 18000], "bandpass", fs=FILE_RATE_HZ, output="sos")
  noise = scipy.signal.sosfilt(sos, rng.standard_normal(t.size))
  a = gate * (0.2 * np.sin(2 * np.pi * 5000 * t) + 0.5 * noise / noise.std() * 0.1)
  b = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.003 * (1 - gate) * np.sin(2 * np.pi * 12000 * t)
  sources = np.zeros((4, 1, t.size))
  sources[0, 0], sources[1, 0] = a, b
  return sources.astype(np.float32), gate


def high_energy(x: np.ndarray, cutoff_hz=MODEL_RATE_HZ / 2 + 500) -> float:
  return float(np.sum(highpass(np.asarray(x, np.float64), cutoff_hz) ** 2))


def test_outputs_sum_to_the_mixture():
  rng = np.random.default_rng(1)
  mixture = (0.3 * rng.standard_normal((2, 30000))).astype(np.float32)
  outputs = through_model_rate(0.1 * rng.standard_normal((8, 2, 30000)).astype(np.float32))
  extended = bandwidth.extend_band(outputs, mixture, FILE_RATE_HZ, MODEL_RATE_HZ)
  assert extended.shape == outputs.shape and extended.dtype == np.float32
  np.testing.assert_allclose(extended.sum(axis=0), mixture, atol=2e-6)


def test_high_band_goes_with_the_output_whose_top_octave_is_active():
  sources, gate = gated_sources()
  mixture = sources.sum(axis=0)
  outputs = through_model_rate(sources)
  extended = bandwidth.extend_band(outputs, mixture, FILE_RATE_HZ, MODEL_RATE_HZ)
  np.testing.assert_allclose(extended.sum(axis=0), mixture, atol=2e-6)
  energies = np.array([high_energy(e) for e in extended])
  share_a = energies[0] / energies.sum()
  old = separate.share_residual(outputs, mixture)  # the equal split it replaces
  old_share_a = high_energy(old[0]) / sum(high_energy(o) for o in old)
  assert old_share_a == pytest.approx(1 / 4, abs=0.01)
  assert share_a > 0.9, energies
  # What A got above the cutoff is A's own high band (not just as loud: the same signal).
  truth = highpass(sources[0], 8500)
  error = highpass(extended[0], 8500) - truth
  assert np.sum(error**2) < 0.05 * np.sum(truth**2)
  # Silent outputs get (almost) nothing; B gets no share of A's noise while A plays.
  assert energies[2:].sum() < 1e-3 * energies.sum()
  playing = gate > 0.99
  assert high_energy(extended[1][..., playing]) < 0.02 * high_energy(extended[0][..., playing])


def test_silence_stays_silent_and_equal_rates_change_nothing(tmp_path):
  silent = bandwidth.extend_band(
    np.zeros((8, 2, 5000), np.float32), np.zeros((2, 5000), np.float32), 44100, 16000
  )
  assert silent.shape == (8, 2, 5000) and not silent.any()
  short = bandwidth.extend_band(np.ones((3, 1, 7)), np.full((1, 7), 6.0), 44100, 16000)
  np.testing.assert_allclose(short.sum(axis=0), 6.0, rtol=1e-6)
  # At the model's own rate the Separator takes no STFT step: the equal split, untouched.
  calls = []
  original = bandwidth.BandExtender.__init__

  def recording_init(self, *args, **kwargs):
    calls.append(args)
    original(self, *args, **kwargs)

  mixture = np.random.default_rng(2).uniform(-0.3, 0.3, (1, 8000)).astype(np.float32)
  try:
    bandwidth.BandExtender.__init__ = recording_init
    result = Separator(band_split_model(), segment_seconds=0.5).separate_array(mixture, 8000)
  finally:
    bandwidth.BandExtender.__init__ = original
  assert not calls
  np.testing.assert_allclose(result.outputs.sum(axis=0), mixture, atol=1e-5)


def test_streaming_in_any_blocks_equals_the_whole_array():
  sources, _ = gated_sources(1.5, seed=3)
  sources = np.concatenate([sources, sources[:, :, ::-1]], axis=1)  # stereo
  mixture = sources.sum(axis=0)
  outputs = through_model_rate(sources)
  whole = bandwidth.extend_band(outputs, mixture, FILE_RATE_HZ, MODEL_RATE_HZ)
  rng = np.random.default_rng(0)
  extender = bandwidth.BandExtender(4, 2, FILE_RATE_HZ, MODEL_RATE_HZ)
  parts, position = [], 0
  while position < mixture.shape[-1]:
    n = int(rng.integers(1, 9000))
    parts.append(
      extender.push(outputs[..., position : position + n], mixture[:, position : position + n])
    )
    position += n
  parts.append(extender.finish())
  streamed = np.concatenate(parts, axis=-1)
  assert streamed.shape == whole.shape
  np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_separator_on_a_44k_file_shares_the_high_band_by_content(tmp_path):
  # An 8 kHz band-splitting stand-in model (output i: the i-th of 8 bands of 0-4 kHz) on a
  # 44.1 kHz file: a 3.25 kHz tone (band 6) with 6-16 kHz noise sounding with it, and a
  # 300 Hz tone (band 0) throughout.
  rng = np.random.default_rng(4)
  t = np.arange(round(3.0 * FILE_RATE_HZ)) / FILE_RATE_HZ
  gate = (np.floor(t / 0.4) % 2 == 0).astype(np.float64)
  sos = scipy.signal.butter(6, [6000, 16000], "bandpass", fs=FILE_RATE_HZ, output="sos")
  noise = scipy.signal.sosfilt(sos, rng.standard_normal(t.size))
  mixture = gate * (0.2 * np.sin(2 * np.pi * 3250 * t) + 0.05 * noise / noise.std())
  mixture += 0.3 * np.sin(2 * np.pi * 300 * t)
  path = tmp_path / "song.wav"
  audio.write_audio(path, mixture[None].astype(np.float32), FILE_RATE_HZ, subtype="FLOAT")
  separator = Separator(band_split_model(), segment_seconds=1.0)
  written = separator.separate_to_folder(path, tmp_path / "out", subtype="FLOAT")
  stems = np.stack([audio.read_audio(p) for p in written.values()])  # [8, 1, T]
  np.testing.assert_allclose(stems.sum(axis=0), audio.read_audio(path), atol=1e-5)
  energies = np.array([high_energy(s, 5000) for s in stems])
  assert energies[6] / energies.sum() > 0.8, energies / energies.sum()
  # The whole array at once (no blocks) gives the same outputs: no seams at block edges.
  whole = separator.separate_array(mixture[None].astype(np.float32), FILE_RATE_HZ).outputs
  np.testing.assert_allclose(stems, whole, atol=1e-5)


def test_streaming_memory_does_not_grow_with_the_song():
  import tracemalloc

  rng = np.random.default_rng(5)
  outputs = (0.1 * rng.standard_normal((4, 1, 8000))).astype(np.float32)
  mixture = (0.3 * rng.standard_normal((1, 8000))).astype(np.float32)
  peaks = []
  for blocks in (4, 40):
    tracemalloc.start()
    extender = bandwidth.BandExtender(4, 1, FILE_RATE_HZ, MODEL_RATE_HZ)
    frames = sum(extender.push(outputs, mixture).shape[-1] for _ in range(blocks))
    frames += extender.finish().shape[-1]
    peaks.append(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
    assert frames == blocks * 8000
  assert peaks[1] < 1.2 * peaks[0] + 100_000, peaks
