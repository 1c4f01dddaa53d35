"""Separation metrics: SI-SNR(i), SNR and the MDX challenge's uSDR in JAX; BSSEval v4 and PESQ
through their reference packages (the ``eval`` extra).

The JAX metrics take signals ``[..., time]`` and return ``[...]``: every leading axis is a
batch axis and broadcasts between the arguments. For multichannel signals ``[..., C, T]``
pass ``signal_ndim=2``: the channels are then one signal, every energy and inner product
summing over channels and time (one score per multichannel signal, as MDX scores a stereo
stem). Scores are in dB.

Silence. ``si_snr`` floors the ratio at ``eps`` (Asteroid's form): a silent estimate, or an
estimate of a silent reference, scores 10·log10(1e-8) = **-80 dB**, never a flattering
0 dB. ``snr`` and ``usdr`` are not scale-invariant, and a silent estimate gets their true
value, **0 dB** (the error is the whole reference). Against a silent reference ``snr``
gives -80 dB and ``usdr`` 10·log10(ε / (‖ŝ‖² + ε)) (0 dB only for a silent estimate).
"""

import functools
import importlib.util
import math
import os

import jax.numpy as jnp
import numpy as np

_EPS = 1e-8
# The MDX challenge's scoring code uses delta = 1e-7 in its per-song SDR.
_USDR_EPS = 1e-7
_PESQ_RATE_HZ = 16_000


def _energy(x, signal_ndim):
  return jnp.sum(x**2, axis=tuple(range(-signal_ndim, 0)))


def si_snr(estimate, reference, *, signal_ndim: int = 1, eps: float = _EPS):
  """Scale-invariant SNR, zero-mean (Conv-TasNet, Asteroid's ``sisdr`` with zero_mean).

  Both signals lose their mean over time (per channel); then with α = ⟨ŝ, s⟩ / (‖s‖² + ε),
  target = α·s and noise = ŝ − target, SI-SNR = 10·log10(‖target‖² / (‖noise‖² + ε) + ε).
  """
  estimate = jnp.asarray(estimate, jnp.float32)
  reference = jnp.asarray(reference, jnp.float32)
  estimate = estimate - jnp.mean(estimate, axis=-1, keepdims=True)
  reference = reference - jnp.mean(reference, axis=-1, keepdims=True)
  axes = tuple(range(-signal_ndim, 0))
  dot = jnp.sum(estimate * reference, axis=axes, keepdims=True)
  scale = dot / (jnp.sum(reference**2, axis=axes, keepdims=True) + eps)
  target = scale * reference
  noise = estimate - target
  ratio = _energy(target, signal_ndim) / (_energy(noise, signal_ndim) + eps)
  return 10.0 * jnp.log10(ratio + eps)


def si_snr_improvement(estimate, reference, mixture, *, signal_ndim: int = 1, eps: float = _EPS):
  """SI-SNR of the estimate minus SI-SNR of the unprocessed mixture, against the same reference.

  ``mixture`` broadcasts against ``reference`` (e.g. ``[batch, 1, time]`` against
  ``[batch, sources, time]``).
  """
  return si_snr(estimate, reference, signal_ndim=signal_ndim, eps=eps) - si_snr(
    mixture, reference, signal_ndim=signal_ndim, eps=eps
  )


def snr(estimate, reference, *, signal_ndim: int = 1, eps: float = _EPS):
  """Plain SNR, 10·log10(‖s‖² / (‖s − ŝ‖² + ε) + ε); not scale-invariant, no mean removed."""
  estimate = jnp.asarray(estimate, jnp.float32)
  reference = jnp.asarray(reference, jnp.float32)
  ratio = _energy(reference, signal_ndim) / (_energy(reference - estimate, signal_ndim) + eps)
  return 10.0 * jnp.log10(ratio + eps)


def usdr(estimate, reference, *, signal_ndim: int = 1, eps: float = _USDR_EPS):
  """The MDX challenge's per-song SDR: 10·log10((Σs² + ε) / (Σ(s − ŝ)² + ε)), ε = 1e-7.

  For a stereo stem ``[..., 2, T]`` pass ``signal_ndim=2`` (MDX sums over both channels).
  """
  estimate = jnp.asarray(estimate, jnp.float32)
  reference = jnp.asarray(reference, jnp.float32)
  numerator = _energy(reference, signal_ndim) + eps
  return 10.0 * jnp.log10(numerator / (_energy(reference - estimate, signal_ndim) + eps))


@functools.cache
def _museval_metrics():
  """museval's ``metrics`` module, loaded on its own.

  ``import museval`` runs museval/__init__.py, which imports musdb, whose stempeg dependency
  raises at import time unless the ffmpeg binary is installed; scoring arrays needs none
  of that, so only the self-contained metrics.py (numpy and scipy) is loaded.
  """
  package = importlib.util.find_spec("museval")  # locates the package without running it
  if package is None:
    raise ImportError("bss_eval_v4 needs museval: pip install -e '.[eval]'")
  path = os.path.join(os.path.dirname(package.origin), "metrics.py")
  spec = importlib.util.spec_from_file_location("trackformer_jax._museval_metrics", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def bss_eval_v4(references, estimates, sample_rate_hz: int, window_seconds: float = 1.0) -> dict:
  """BSSEval v4 (museval, as in SiSEC 2018 / MUSDB18): SDR, ISR, SIR, SAR per source.

  Args:
    references, estimates: ``[sources, time, channels]`` numpy arrays (museval's layout),
      estimate i matched to reference i (no permutation search).
    sample_rate_hz: sets the frame length, ``window_seconds`` of audio (hop = window).

  Returns:
    ``{"SDR", "ISR", "SIR", "SAR"}``: ``[sources]`` medians over frames, as the SiSEC
    tables report them; frames where some reference or estimate is silent are NaN in
    museval and skipped here (all-NaN gives NaN). Distortion filters (512 taps) are fitted
    once on the whole signals, as ``museval.evaluate(..., mode="v4")`` does.
  """
  references = np.asarray(references, np.float64)
  estimates = np.asarray(estimates, np.float64)
  if references.ndim != 3 or references.shape != estimates.shape:
    raise ValueError(
      "bss_eval_v4 expects references and estimates [sources, time, channels] of one "
      f"shape; got {references.shape} and {estimates.shape}"
    )
  window = int(round(window_seconds * sample_rate_hz))
  sdr, isr, sir, sar, _ = _museval_metrics().bss_eval(
    references,
    estimates,
    window=window,
    hop=window,
    compute_permutation=False,
    framewise_filters=False,
    bsseval_sources_version=False,
  )
  frames = {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}
  return {name: np.array([nanmedian(row) for row in values]) for name, values in frames.items()}


def nanmedian(values) -> float:
  """The median of the non-NaN ``values`` (NaN when there are none)."""
  values = np.asarray(values, np.float64)
  finite = values[~np.isnan(values)]
  return float(np.median(finite)) if finite.size else math.nan


# A stem whose mean power is below this (dBFS) is silent, here and in training's validation.
SILENT_STEM_DBFS = -50.0


def silent_stems(stems, threshold_dbfs: float = SILENT_STEM_DBFS, *, signal_ndim: int = 1, xp=jnp):
  """``[...]`` bool: the stems ``[..., *signal]`` whose mean power is below ``threshold_dbfs``.

  Silent: ``10·log10(mean(s²) + 1e-20) < threshold_dbfs``, the mean over the last
  ``signal_ndim`` axes (a stereo stem ``[C, T]``: ``signal_ndim=2``, one power over both
  channels). ``xp``: ``jax.numpy`` inside a jitted step, ``numpy`` for whole songs.

  The one rule for training's validation (``training.tasks.mixit``, with
  ``config.silence_threshold_db``, -50 by default, as here) and for evaluation and
  calibration (``scoring.is_silent``): a silent stem needs no output in the assignment and
  has no score. It is validation's absolute rule, kept so that validation's figures do not
  change; evaluation used "more than 60 dB below the mixture" before. The absolute rule
  follows what the input pipeline trains on (crops quieter than ``silence_threshold_db``
  are redrawn); its cost is that a whole recording mastered below -50 dBFS would count as
  silent throughout.
  """
  power = xp.mean(stems**2, axis=tuple(range(-signal_ndim, 0)))
  return 10 * xp.log10(power + 1e-20) < threshold_dbfs


def pesq_wb(reference, estimate, sample_rate_hz: int) -> float:
  """Wide-band PESQ (ITU-T P.862.2, MOS-LQO in about [1.0, 4.64]) through the ``pesq`` package.

  Mono ``[time]`` signals at any rate; they are resampled to 16 kHz with soxr first.
  Raises ``pesq``'s error when it finds no utterance (e.g. silence).
  """
  import pesq
  import soxr

  reference = np.asarray(reference, np.float64)
  estimate = np.asarray(estimate, np.float64)
  if reference.ndim != 1 or reference.shape != estimate.shape:
    raise ValueError(
      f"pesq_wb expects mono [time] signals of one length; got {reference.shape} and "
      f"{estimate.shape}"
    )
  if sample_rate_hz != _PESQ_RATE_HZ:
    reference = soxr.resample(reference, sample_rate_hz, _PESQ_RATE_HZ)
    estimate = soxr.resample(estimate, sample_rate_hz, _PESQ_RATE_HZ)
  return float(pesq.pesq(_PESQ_RATE_HZ, reference, estimate, "wb"))
