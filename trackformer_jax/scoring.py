"""Scoring of separated songs against their stems: the output-to-stem assignment, SI-SNR(i),
the ideal-ratio-mask ceiling and the NMF baseline (see ``trackformer_jax.evaluate``).

Everything here is numpy on whole songs ``[C, T]``; the stems are named by the caller (any
names: a track may have ``guitar`` and ``backing`` rather than the four MUSDB stems).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.signal

from trackformer_jax import baselines, metrics
from trackformer_jax.data.tracks import STEM_NAMES
from trackformer_jax.losses.mixit import assignment_labels, thresholded_neg_snr

SILENT_STEM_DBFS = metrics.SILENT_STEM_DBFS  # a stem quieter than this (mean power) is silent
SILENT_ESTIMATE_FLOOR_DB = -80.0  # what metrics.si_snr gives a silent estimate
MAX_ASSIGNMENTS = 2_000_000  # K^N beyond this: too many stems for the exact search


# --------------------------------------------------------------------------------------------
# Assignment of outputs to references


def all_assignments(num_references: int, num_outputs: int) -> np.ndarray:
  """``labels [K^N, N]``: every way to send each output to one reference (base-K digits)."""
  if num_references**num_outputs > MAX_ASSIGNMENTS:
    raise ValueError(
      f"{num_references} stems and {num_outputs} outputs: {num_references**num_outputs} "
      f"assignments, more than the exact search handles ({MAX_ASSIGNMENTS}); score fewer stems"
    )
  return assignment_labels(num_references, num_outputs, xp=np)


def best_assignment(
  outputs: np.ndarray,
  references: np.ndarray,
  *,
  snr_max_db: float = 30.0,
  required: np.ndarray | None = None,
) -> np.ndarray:
  """The best way to sum ``N`` outputs into ``K`` references (exact search over ``K^N``).

  The objective and the enumeration are MixIT's own (``losses.mixit.thresholded_neg_snr``
  and ``assignment_labels``, as ``mixit_loss`` searches in the graph); here the residuals
  come from inner products in float64 over the whole song, so the search costs
  ``O(K^N K N^2)`` whatever the length. Used by evaluation, calibration and validation's
  NMF baseline.

  Args:
    outputs: ``[N, ...]`` (channels and time flattened into one vector per output).
    references: ``[K, ...]`` of the same trailing shape.
    snr_max_db: MixIT's threshold.
    required: ``[K]`` bool: references that must receive at least one output (silent stems
      need not). Ignored when there are more required references than outputs.
  Returns:
    ``labels [N]``: the reference each output goes to.
  """
  n, k = outputs.shape[0], references.shape[0]
  gram, cross, energy = _inner_products(outputs.reshape(n, -1), references.reshape(k, -1))
  labels = all_assignments(k, n)  # [P, N]
  one_hot = labels[:, None, :] == np.arange(k)[None, :, None]  # [P, K, N]
  linear = np.einsum("pkn,kn->pk", one_hot, cross)
  quadratic = np.einsum("pkm,mn,pkn->pk", one_hot, gram, one_hot)
  residual = np.maximum(energy - 2 * linear + quadratic, 0.0)
  loss = thresholded_neg_snr(residual, energy, snr_max_db, xp=np)
  if required is not None and int(np.sum(required)) <= n:
    filled = one_hot.any(axis=-1)  # [P, K]
    loss = np.where((filled | ~np.asarray(required)[None]).all(axis=-1), loss, np.inf)
  return labels[int(np.argmin(loss))]


def _inner_products(outputs, references, chunk: int = 1 << 18):
  """``(outputs outputs^T [N, N], references outputs^T [K, N], ||references||^2 [K])`` in
  float64, accumulated over time chunks: a whole song is never copied to float64."""
  n, k = outputs.shape[0], references.shape[0]
  gram, cross, energy = np.zeros((n, n)), np.zeros((k, n)), np.zeros(k)
  for start in range(0, outputs.shape[-1], chunk):
    o = outputs[:, start : start + chunk].astype(np.float64)
    r = references[:, start : start + chunk].astype(np.float64)
    gram += o @ o.T
    cross += r @ o.T
    energy += np.sum(r**2, axis=-1)
  return gram, cross, energy


def remix(outputs: np.ndarray, labels: np.ndarray, num_references: int) -> np.ndarray:
  """``outputs [N, ...]`` summed by ``labels [N]`` into ``[K, ...]`` (empty groups silent).

  The numpy twin of ``losses.mixit.remix`` (one example, from labels rather than a mixing
  matrix), kept in numpy for whole songs.
  """
  return np.stack([outputs[labels == k].sum(axis=0) for k in range(num_references)])


# --------------------------------------------------------------------------------------------
# Scores


def si_snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
  """SI-SNR of one (multichannel ``[C, T]``) signal; -80 dB for a silent estimate."""
  return float(metrics.si_snr(estimate, reference, signal_ndim=estimate.ndim))


def is_silent(stems: np.ndarray, threshold_dbfs: float = SILENT_STEM_DBFS) -> np.ndarray:
  """``[K]`` bool for ``stems [K, C, T]``: mean power below ``threshold_dbfs``
  (``metrics.silent_stems``, the rule training's validation uses too)."""
  return np.asarray(metrics.silent_stems(stems, threshold_dbfs, signal_ndim=stems.ndim - 1, xp=np))


def oracle_ratio_mask(stems: np.ndarray, mixture: np.ndarray, sample_rate_hz: int) -> np.ndarray:
  """The ideal-ratio-mask separation ``[K, C, T]`` of ``mixture [C, T]`` given ``stems``.

  Mask ``M_k = |S_k| / sum_j |S_j|`` per channel, applied to the mixture's STFT: the best a
  real-valued-mask separator on this STFT can be expected to do.
  """
  n_fft = baselines.stft_size(sample_rate_hz, mixture.shape[-1])
  kwargs = dict(nperseg=n_fft, noverlap=n_fft * 3 // 4, window="hann")
  num_frames = mixture.shape[-1]
  separated = np.zeros(stems.shape, np.float32)
  # One channel at a time, in complex64: a whole stereo song's four STFTs at once would take
  # gigabytes.
  for c in range(mixture.shape[0]):
    _, _, mixture_spec = scipy.signal.stft(mixture[c].astype(np.float32), **kwargs)
    magnitudes = [np.abs(scipy.signal.stft(s[c].astype(np.float32), **kwargs)[2]) for s in stems]
    total = np.maximum(np.sum(magnitudes, axis=0), 1e-12)
    for k, magnitude in enumerate(magnitudes):
      _, signal = scipy.signal.istft(magnitude / total * mixture_spec, **kwargs)
      signal = signal[:num_frames]
      separated[k, c, : signal.shape[-1]] = signal
  return separated


def stem_scores(
  outputs: np.ndarray,
  stems: np.ndarray,
  mixture: np.ndarray,
  sample_rate_hz: int,
  *,
  snr_max_db: float = 30.0,
  museval: bool = False,
  pesq: bool = False,
  stem_names: Sequence[str] = STEM_NAMES,
) -> dict[str, Any]:
  """Every labelled score of one track.

  Args:
    outputs: ``[N, C, T]`` the separated song.
    stems: ``[K, C, T]`` the true stems; mixture ``[C, T]``.
  Returns:
    ``{metric: value}``: the per-stem values (``<metric>_<stem>``; NaN for silent stems),
    their mean over non-silent stems (``<metric>``), and ``assignment`` (stem per output).
  """
  silent = is_silent(stems)
  labels = best_assignment(outputs, stems, snr_max_db=snr_max_db, required=~silent)
  assigned = remix(outputs, labels, stems.shape[0])
  per_stem: dict[str, list[float]] = {}

  def put(metric, k, value):
    per_stem.setdefault(metric, [math.nan] * len(stem_names))[k] = value

  for k in range(len(stem_names)):
    if silent[k]:
      continue
    mixture_score = si_snr_db(mixture, stems[k])
    put("input_si_snr_db", k, mixture_score)
    put("stem_si_snr_db", k, si_snr_db(assigned[k], stems[k]))
    put("stem_si_snri_db", k, per_stem["stem_si_snr_db"][k] - mixture_score)
    single = max(si_snr_db(o, stems[k]) for o in outputs)
    put("best_output_si_snr_db", k, single)
    put("best_output_si_snri_db", k, single - mixture_score)
    put("usdr_db", k, float(metrics.usdr(assigned[k], stems[k], signal_ndim=stems[k].ndim)))
    if pesq:
      try:
        value = metrics.pesq_wb(stems[k].mean(axis=0), assigned[k].mean(axis=0), sample_rate_hz)
      except Exception:  # noqa: BLE001 - pesq raises its own types on e.g. silence
        value = math.nan
      put("pesq", k, value)
  if museval:
    sdr = metrics.bss_eval_v4(
      np.transpose(stems, (0, 2, 1)), np.transpose(assigned, (0, 2, 1)), sample_rate_hz
    )["SDR"]
    for k in range(len(stem_names)):
      if not silent[k]:
        put("museval_sdr_db", k, float(sdr[k]))
  result: dict[str, Any] = {}
  for metric, values in per_stem.items():
    result[metric] = nanmean(values)
    for name, value in zip(stem_names, values):
      result[_stem_key(metric, name)] = value
  result["assignment"] = [stem_names[k] for k in labels]
  result["silent_stems"] = [n for n, s in zip(stem_names, silent) if s]
  return result


def oracle_scores(
  stems: np.ndarray, mixture: np.ndarray, sample_rate_hz: int, stem_names=STEM_NAMES
) -> dict[str, float]:
  """``oracle_irm_stem_si_snr(i)_db`` (and per stem) of the ideal ratio mask."""
  silent = is_silent(stems)
  separated = oracle_ratio_mask(stems, mixture, sample_rate_hz)
  snr, snri = [], []
  for k in range(len(stem_names)):
    if silent[k]:
      snr.append(math.nan)
      snri.append(math.nan)
      continue
    snr.append(si_snr_db(separated[k], stems[k]))
    snri.append(snr[-1] - si_snr_db(mixture, stems[k]))
  result = {
    "oracle_irm_stem_si_snr_db": nanmean(snr),
    "oracle_irm_stem_si_snri_db": nanmean(snri),
  }
  for name, a, b in zip(stem_names, snr, snri):
    result[_stem_key("oracle_irm_stem_si_snr_db", name)] = a
    result[_stem_key("oracle_irm_stem_si_snri_db", name)] = b
  return result


def nmf_scores(
  stems: np.ndarray,
  mixture: np.ndarray,
  sample_rate_hz: int,
  *,
  snr_max_db: float = 30.0,
  stem_names: Sequence[str] = STEM_NAMES,
  num_components: int = baselines.NMF_COMPONENTS,
) -> dict[str, Any]:
  """``nmf_stem_si_snr(i)_db`` (and per stem): the NMF baseline scored exactly as a model is
  (``stem_scores``: best assignment of its components, every sounding stem at least one)."""
  outputs = baselines.nmf_separate(mixture, sample_rate_hz, num_components=num_components)
  scores = stem_scores(outputs, stems, mixture, sample_rate_hz, snr_max_db=snr_max_db,
                       stem_names=stem_names)  # fmt: skip
  result: dict[str, Any] = {}
  for metric in ("stem_si_snr_db", "stem_si_snri_db"):
    result[f"nmf_{metric}"] = scores.get(metric, math.nan)  # absent when every stem is silent
    for name in stem_names:
      result[f"nmf_{_stem_key(metric, name)}"] = scores.get(_stem_key(metric, name), math.nan)
  result["nmf_assignment"] = scores["assignment"]
  return result


def _stem_key(metric: str, stem: str) -> str:
  return f"{metric}_{stem}"


def is_number(value) -> bool:
  """True for a real number (numpy's too), False for a bool or anything else."""
  return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def nanmean(values) -> float:
  """The mean of the non-NaN ``values`` (NaN when there are none)."""
  values = np.asarray(values, np.float64)
  finite = values[~np.isnan(values)]
  return float(finite.mean()) if finite.size else math.nan


def standard_error(values) -> float:
  """Standard error of the mean of the finite ``values`` (NaN for fewer than two)."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  return float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else math.nan


def validation_nmf_scores(
  batches,
  sample_rate_hz: int,
  *,
  snr_max_db: float,
  silence_threshold_db: float,
  floor_db: float,
  stem_names: Sequence[str] = STEM_NAMES,
) -> dict[str, float]:
  """The NMF baseline on training's validation clips, scored as ``tasks.mixit.eval_step`` scores
  the model: each of an example's two mixtures separated alone, its stems rebuilt by the best
  assignment giving every stem louder than ``silence_threshold_db`` dBFS an output, SI-SNR
  floored at ``floor_db`` minus the mixture's; means over those stems (and per stem).

  Returns ``{}`` when the batches carry no stems. ``batches`` yields dicts with
  ``mixtures [B, 2, C, T]`` and ``stems [B, 2, K, C, T]``.
  """
  values: list[list[float]] = [[] for _ in stem_names]
  for batch in batches:
    if "stems" not in batch:
      return {}
    mixtures = np.asarray(batch["mixtures"], np.float32)
    stems_batch = np.asarray(batch["stems"], np.float32)
    for mixture, stems in zip(mixtures.reshape(-1, *mixtures.shape[2:]),
                              stems_batch.reshape(-1, *stems_batch.shape[2:])):  # fmt: skip
      flat = stems.reshape(stems.shape[0], -1).astype(np.float64)
      active = ~metrics.silent_stems(flat, silence_threshold_db, xp=np)
      if not active.any():
        continue
      outputs = baselines.nmf_separate(mixture, sample_rate_hz)
      labels = best_assignment(outputs, stems, snr_max_db=snr_max_db, required=active)
      assigned = remix(outputs, labels, stems.shape[0])
      for k in np.flatnonzero(active):
        reference = stems[k].reshape(-1)  # flattened, as eval_step scores
        score = max(si_snr_db(assigned[k].reshape(-1), reference), floor_db)
        values[k].append(score - si_snr_db(mixture.reshape(-1), reference))
  if not any(values):
    return {}
  result = {"nmf_stem_si_snri_db": float(np.mean([v for vs in values for v in vs]))}
  for name, vs in zip(stem_names, values):
    result[f"nmf_stem_si_snri_db_{name}"] = nanmean(vs)
  return result
