"""Metrics against direct numpy formulas and against fast_bss_eval / museval on fixtures."""

import jax.numpy as jnp
import numpy as np
import pytest

# The numpy backend directly: fast_bss_eval's top-level dispatcher (0.1.4) looks up its torch
# backend even for numpy arrays and fails when torch is not installed.
from fast_bss_eval.numpy import si_sdr_loss

from trackformer_jax import metrics

RATE_HZ = 8_000


def _fixture(shape, noise, seed=0):
  """A reference with a DC offset, and an estimate = scaled reference + noise."""
  rng = np.random.default_rng(seed)
  reference = rng.standard_normal(shape) + 0.3
  estimate = 0.7 * reference + noise * rng.standard_normal(shape) - 0.1
  return estimate.astype(np.float32), reference.astype(np.float32)


def _si_snr_numpy(estimate, reference):
  """Conv-TasNet's formula in float64, without eps."""
  estimate = estimate.astype(np.float64)
  reference = reference.astype(np.float64)
  estimate = estimate - estimate.mean(axis=-1, keepdims=True)
  reference = reference - reference.mean(axis=-1, keepdims=True)
  target = (
    np.sum(estimate * reference, -1, keepdims=True)
    / np.sum(reference**2, -1, keepdims=True)
    * reference
  )
  return 10 * np.log10(np.sum(target**2, -1) / np.sum((estimate - target) ** 2, -1))


@pytest.mark.parametrize("shape", [(1000,), (3, 1000), (2, 4, 1000)])
@pytest.mark.parametrize("noise", [0.01, 0.5, 3.0])
def test_si_snr_matches_direct_formula(shape, noise):
  estimate, reference = _fixture(shape, noise)
  got = metrics.si_snr(estimate, reference)
  assert got.shape == shape[:-1]
  np.testing.assert_allclose(got, _si_snr_numpy(estimate, reference), atol=1e-3)


@pytest.mark.parametrize("noise", [0.01, 0.3, 2.0])
def test_si_snr_matches_fast_bss_eval(noise):
  estimate, reference = _fixture((4, 3, 16_000), noise, seed=1)
  ours = np.asarray(metrics.si_snr(estimate, reference))
  theirs = -si_sdr_loss(estimate.astype(np.float64), reference.astype(np.float64), zero_mean=True)
  np.testing.assert_allclose(ours, theirs, atol=0.01)


def test_si_snr_is_scale_and_offset_invariant():
  estimate, reference = _fixture((2, 5000), 0.5, seed=2)
  base = metrics.si_snr(estimate, reference)
  np.testing.assert_allclose(metrics.si_snr(3.0 * estimate + 1.0, reference), base, atol=1e-3)
  np.testing.assert_allclose(metrics.si_snr(estimate, 0.2 * reference - 4.0), base, atol=1e-3)


def test_multichannel_signals_flatten_channels():
  estimate, reference = _fixture((3, 2, 4000), 0.5, seed=3)
  got = metrics.si_snr(estimate, reference, signal_ndim=2)
  assert got.shape == (3,)
  # Per-channel zero mean, then one scale over channels and time.
  centred_est = estimate - estimate.mean(-1, keepdims=True)
  centred_ref = reference - reference.mean(-1, keepdims=True)
  np.testing.assert_allclose(
    got, _si_snr_numpy(centred_est.reshape(3, -1), centred_ref.reshape(3, -1)), atol=1e-3
  )
  flat_snr = metrics.snr(estimate.reshape(3, -1), reference.reshape(3, -1))
  np.testing.assert_allclose(metrics.snr(estimate, reference, signal_ndim=2), flat_snr, atol=1e-5)
  flat_usdr = metrics.usdr(estimate.reshape(3, -1), reference.reshape(3, -1))
  np.testing.assert_allclose(metrics.usdr(estimate, reference, signal_ndim=2), flat_usdr, atol=1e-5)


def test_snr_and_usdr_match_direct_formulas():
  estimate, reference = _fixture((2, 3, 5000), 0.4, seed=4)
  e64, r64 = estimate.astype(np.float64), reference.astype(np.float64)
  error = np.sum((r64 - e64) ** 2, -1)
  np.testing.assert_allclose(
    metrics.snr(estimate, reference), 10 * np.log10(np.sum(r64**2, -1) / error), atol=1e-3
  )
  mdx = 10 * np.log10((np.sum(r64**2, -1) + 1e-7) / (error + 1e-7))
  np.testing.assert_allclose(metrics.usdr(estimate, reference), mdx, atol=1e-3)


def test_si_snr_improvement():
  estimate, reference = _fixture((2, 3, 4000), 0.2, seed=5)
  mixture = reference.sum(axis=1, keepdims=True)  # [2, 1, T] broadcasts over sources
  got = metrics.si_snr_improvement(estimate, reference, mixture)
  want = _si_snr_numpy(estimate, reference) - _si_snr_numpy(
    np.broadcast_to(mixture, reference.shape), reference
  )
  assert got.shape == (2, 3)
  np.testing.assert_allclose(got, want, atol=1e-3)
  np.testing.assert_allclose(metrics.si_snr_improvement(mixture, reference, mixture), 0.0)


def test_silence_is_never_flattering():
  _, reference = _fixture((2, 4000), 0.0, seed=6)
  silent = np.zeros_like(reference)
  np.testing.assert_allclose(metrics.si_snr(silent, reference), -80.0, atol=1e-3)
  np.testing.assert_allclose(metrics.si_snr(reference, silent), -80.0, atol=1e-3)
  np.testing.assert_allclose(metrics.si_snr(silent, silent), -80.0, atol=1e-3)
  # A silent estimate's true SNR / uSDR is 0 dB: the error is the whole reference.
  np.testing.assert_allclose(metrics.snr(silent, reference), 0.0, atol=1e-4)
  np.testing.assert_allclose(metrics.usdr(silent, reference), 0.0, atol=1e-4)
  np.testing.assert_allclose(metrics.snr(reference, silent), -80.0, atol=1e-3)
  np.testing.assert_allclose(metrics.usdr(silent, silent), 0.0, atol=1e-6)
  # Any real estimate scores above the silent one under si_snr.
  noisy, _ = _fixture((2, 4000), 10.0, seed=6)
  assert np.all(metrics.si_snr(noisy, reference) > -80.0)


def _framewise_snr_median(estimate, reference, window):
  """Median over whole frames of 10 log10(Σ s² / Σ (s - ŝ)²), summed over channels."""
  frames = reference.shape[1] // window
  values = []
  for f in range(frames):
    part = slice(f * window, (f + 1) * window)
    s, e = reference[:, part].astype(np.float64), estimate[:, part].astype(np.float64)
    values.append(10 * np.log10(np.sum(s**2, axis=(1, 2)) / np.sum((s - e) ** 2, axis=(1, 2))))
  return np.median(np.stack(values, axis=1), axis=1)


@pytest.mark.slow
def test_bss_eval_v4_sdr_is_the_framewise_snr():
  """BSSEval v4 (images) SDR is plain SNR per frame; check museval's against it."""
  rng = np.random.default_rng(7)
  references = rng.standard_normal((2, 5 * RATE_HZ, 2))
  gains = np.geomspace(0.05, 1.0, 5).repeat(RATE_HZ)[None, :, None]  # SNR varies per frame
  estimates = references + gains * rng.standard_normal(references.shape)
  scores = metrics.bss_eval_v4(references, estimates, RATE_HZ)
  assert set(scores) == {"SDR", "ISR", "SIR", "SAR"}
  assert all(v.shape == (2,) for v in scores.values())
  np.testing.assert_allclose(
    scores["SDR"], _framewise_snr_median(estimates, references, RATE_HZ), atol=0.01
  )
  # Independent white noise is mostly artefact, little of it counts as interference.
  assert np.all(scores["SIR"] > scores["SDR"] + 5)


@pytest.mark.slow
def test_bss_eval_v4_interference_only():
  """ŝ_i = s_i + 0.1·s_j: no artefact, SIR ≈ the energy ratio (up to the 512-tap filters'
  small leakage, ~0.1 dB here)."""
  rng = np.random.default_rng(9)
  references = rng.standard_normal((2, 5 * RATE_HZ, 2))
  estimates = references + 0.1 * references[::-1]
  scores = metrics.bss_eval_v4(references, estimates, RATE_HZ)
  energy = np.sum(references**2, axis=(1, 2))
  np.testing.assert_allclose(scores["SIR"], 10 * np.log10(energy / (0.01 * energy[::-1])), atol=0.2)
  assert np.all(scores["SAR"] > 100.0)


@pytest.mark.slow
def test_bss_eval_v4_skips_silent_frames():
  rng = np.random.default_rng(8)
  references = rng.standard_normal((2, 3 * RATE_HZ, 1))
  references[0, :RATE_HZ] = 0.0  # museval marks this frame NaN for every source
  estimates = references + 0.1 * rng.standard_normal(references.shape)
  scores = metrics.bss_eval_v4(references, estimates, RATE_HZ)
  want = _framewise_snr_median(estimates[:, RATE_HZ:], references[:, RATE_HZ:], RATE_HZ)
  np.testing.assert_allclose(scores["SDR"], want, atol=0.01)


def test_bss_eval_v4_rejects_bad_layouts():
  with pytest.raises(ValueError, match="sources, time, channels"):
    metrics.bss_eval_v4(np.zeros((2, 100)), np.zeros((2, 100)), RATE_HZ)


def _speech_like(rate_hz, seconds=3.0, seed=0):
  """Voiced 'syllables': a 120 Hz harmonic series with formant-like weights, gated at 4 Hz."""
  t = np.arange(int(seconds * rate_hz)) / rate_hz
  pitch = 120 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
  phase = 2 * np.pi * np.cumsum(pitch) / rate_hz
  harmonics = sum(
    np.sin(h * phase) * np.exp(-(((h * 120 - 700) / 400) ** 2)) / h for h in range(1, 30)
  )
  gate = np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 2
  noise = np.random.default_rng(seed).standard_normal(t.shape)
  return (0.3 * harmonics * gate + 0.002 * noise).astype(np.float32)


def test_pesq_wb_orders_degradations_and_resamples():
  reference = _speech_like(16_000)
  rng = np.random.default_rng(1)
  clean = metrics.pesq_wb(reference, reference, 16_000)
  slightly = metrics.pesq_wb(
    reference, reference + 0.01 * rng.standard_normal(reference.shape), 16_000
  )
  badly = metrics.pesq_wb(reference, reference + 0.2 * rng.standard_normal(reference.shape), 16_000)
  assert clean > 4.0 and clean > slightly > badly >= 1.0
  # At 44.1 kHz the wrapper resamples to 16 kHz itself.
  reference_44k = _speech_like(44_100)
  assert metrics.pesq_wb(reference_44k, reference_44k, 44_100) > 4.0
  with pytest.raises(ValueError, match="mono"):
    metrics.pesq_wb(np.zeros((2, 100)), np.zeros((2, 100)), 16_000)


def test_silent_stems_is_validations_rule_in_jax_and_numpy():
  # Stems from silence to loud, some at a hair either side of -50 dBFS.
  rng = np.random.default_rng(0)
  unit = rng.standard_normal((6, 2, 4000)).astype(np.float32)
  unit /= np.sqrt(np.mean(unit**2, axis=(-2, -1), keepdims=True))
  levels_db = np.array([-200.0, -70.0, -50.01, -49.99, -20.0, 0.0])
  stems = unit * (10 ** (levels_db / 20))[:, None, None].astype(np.float32)
  flat = stems.reshape(6, -1)
  # Validation's rule written out directly (active = louder than the threshold).
  active = 10 * jnp.log10(jnp.mean(jnp.asarray(flat) ** 2, axis=-1) + 1e-20) >= -50.0
  np.testing.assert_array_equal(~metrics.silent_stems(flat, -50.0), active)
  np.testing.assert_array_equal(np.asarray(active), [False, False, False, True, True, True])
  whole = metrics.silent_stems(stems.astype(np.float64), signal_ndim=2, xp=np)
  np.testing.assert_array_equal(whole, ~np.asarray(active))
  np.testing.assert_array_equal(metrics.silent_stems(np.zeros((2, 8)), xp=np), [True, True])


def test_the_default_config_validates_with_the_silent_stem_threshold():
  from trackformer_jax.training.config_files import load_config

  assert load_config("default").silence_threshold_db == metrics.SILENT_STEM_DBFS


def test_nanmedian_ignores_nan():
  assert metrics.nanmedian([1.0, np.nan, 3.0, 2.0]) == 2.0
  assert np.isnan(metrics.nanmedian([np.nan]))
