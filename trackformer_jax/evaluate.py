"""Evaluate trained separators on whole songs, side by side, against a control and a ceiling.

CLI::

  python -m trackformer_jax.evaluate --workdir runs/x [--workdir runs/y ...]
      [--checkpoint best|latest|STEP] --data musdb:PATH|moisesdb:PATH|chorales:PATH
      [--split test] [--out results.json] [--museval] [--pesq] [--no-control]

Each song is separated whole, in overlapping segments (``separate.Separator``), and scored
at the data's own sample rate and channel count. Per track, and averaged over tracks:

* ``stem_si_snr_db`` / ``stem_si_snri_db`` (and ``_<stem>``): the 8 outputs are assigned to
  the 4 stems by MixIT's best assignment (K = 4; the objective of ``losses.mixit.mixit_loss``)
  with one constraint: every stem that is not silent receives at least one output, so a
  model cannot score by leaving a hard stem empty. Silent stems (more than 60 dB below the
  mixture) are left out of the stem scores.
* ``best_output_si_snr_db`` / ``best_output_si_snri_db``: for each stem, the best single
  output.
* ``usdr_db``: the MDX challenge's SDR of the assigned stems.
* ``museval_sdr_db`` (``--museval``): BSSEval v4 SDR, median over 1 s frames; aggregated as
  the median over tracks.
* ``mom_si_snri_db``: mixture of mixtures: each track's mixture plus the next track's, cut to
  ``--mom-seconds``, separated, outputs assigned (K = 2) to the two mixtures.
* ``mask_overlap``, ``effective_mask_count``: the label-free diagnostics, per segment.
* ``pesq_<stem>`` (``--pesq``): wide-band PESQ of each assigned stem (mono downmix).
* ``oracle_irm_stem_si_snr(i)_db``: the ceiling of a mask-based separator: each stem's ideal
  ratio mask ``|S_k| / sum_j |S_j|`` applied to the mixture's STFT.

A silent estimate scores **-80 dB** SI-SNR: ``metrics.si_snr`` floors its ratio at 1e-8
rather than giving the 0 dB a naive formula gives an all-zero signal.

The best-assignment search flatters any model, so with ``--control`` (on by default) the same
config at random initialisation is scored too, and each metric's gain over it reported:
``control_<metric>`` and ``<metric>_gain_db`` (``<metric>_gain`` for unitless ones). The stem
gains come with ``<gain>_stderr``, the standard error of their per-track differences (shown
as ``gain ± error`` in the table): on a handful of songs it is a dB or more.

Output: JSON, one object ``{"workdir", ..., "aggregate": {...}, "tracks": [{...}]}`` per
workdir (the object itself for one ``--workdir``, a list of them for several), a Markdown
table (``.md`` beside it) and a PNG of per-stem distributions (``.png`` beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.signal

from trackformer_jax import export as export_lib
from trackformer_jax import metrics
from trackformer_jax.separate import Separator

STEM_NAMES = export_lib.STEM_NAMES
SILENT_STEM_DB = -60.0  # a stem this far below the mixture (energy) is silent
SILENT_ESTIMATE_FLOOR_DB = -80.0  # what metrics.si_snr gives a silent estimate
_ORACLE_N_FFT = 2048
_ORACLE_N_FFT_LOW_RATE = 512  # below 16 kHz


# --------------------------------------------------------------------------------------------
# Assignment of outputs to references


def all_assignments(num_references: int, num_outputs: int) -> np.ndarray:
  """``labels [K^N, N]``: every way to send each output to one reference (base-K digits)."""
  digits = num_references ** np.arange(num_outputs)
  return (np.arange(num_references**num_outputs)[:, None] // digits) % num_references


def assign_outputs(
  outputs: np.ndarray,
  references: np.ndarray,
  *,
  snr_max_db: float = 30.0,
  required: np.ndarray | None = None,
) -> np.ndarray:
  """The best way to sum ``N`` outputs into ``K`` references (exact search over ``K^N``).

  The objective is MixIT's (``losses.mixit.mixit_loss``): the sum over references of the
  thresholded SNR ``-10 log10((||y - y_hat||^2 + tau ||y||^2) / ||y||^2)``, computed from
  inner products only (float64), so the search costs ``O(K^N K N^2)`` whatever the length.

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
  tau = 10.0 ** (-snr_max_db / 10.0)
  loss = np.sum(10 * np.log10(residual + tau * energy + 1e-8) - 10 * np.log10(energy + 1e-8), -1)
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
  """``outputs [N, ...]`` summed by ``labels [N]`` into ``[K, ...]`` (empty groups silent)."""
  return np.stack([outputs[labels == k].sum(axis=0) for k in range(num_references)])


# --------------------------------------------------------------------------------------------
# Scores


def si_snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
  """SI-SNR of one (multichannel ``[C, T]``) signal; -80 dB for a silent estimate."""
  return float(metrics.si_snr(estimate, reference, signal_ndim=estimate.ndim))


def is_silent(stems: np.ndarray, mixture: np.ndarray) -> np.ndarray:
  """``[K]`` bool: stems more than ``-SILENT_STEM_DB`` dB below the mixture (or all zero)."""
  stem_energy = np.sum(stems.reshape(stems.shape[0], -1).astype(np.float64) ** 2, axis=-1)
  mixture_energy = float(np.sum(mixture.astype(np.float64) ** 2))
  return stem_energy <= max(mixture_energy * 10 ** (SILENT_STEM_DB / 10), 1e-20)


def oracle_ratio_mask(stems: np.ndarray, mixture: np.ndarray, sample_rate_hz: int) -> np.ndarray:
  """The ideal-ratio-mask separation ``[K, C, T]`` of ``mixture [C, T]`` given ``stems``.

  Mask ``M_k = |S_k| / sum_j |S_j|`` per channel, applied to the mixture's STFT: the best a
  real-valued-mask separator on this STFT can be expected to do.
  """
  n_fft = _ORACLE_N_FFT if sample_rate_hz >= 16000 else _ORACLE_N_FFT_LOW_RATE
  n_fft = min(n_fft, mixture.shape[-1])
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
  silent = is_silent(stems, mixture)
  labels = assign_outputs(outputs, stems, snr_max_db=snr_max_db, required=~silent)
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
    result[metric] = _nanmean(values)
    for name, value in zip(stem_names, values):
      result[_stem_key(metric, name)] = value
  result["assignment"] = [stem_names[k] for k in labels]
  result["silent_stems"] = [n for n, s in zip(stem_names, silent) if s]
  return result


def oracle_scores(
  stems: np.ndarray, mixture: np.ndarray, sample_rate_hz: int, stem_names=STEM_NAMES
) -> dict[str, float]:
  """``oracle_irm_stem_si_snr(i)_db`` (and per stem) of the ideal ratio mask."""
  silent = is_silent(stems, mixture)
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
    "oracle_irm_stem_si_snr_db": _nanmean(snr),
    "oracle_irm_stem_si_snri_db": _nanmean(snri),
  }
  for name, a, b in zip(stem_names, snr, snri):
    result[_stem_key("oracle_irm_stem_si_snr_db", name)] = a
    result[_stem_key("oracle_irm_stem_si_snri_db", name)] = b
  return result


def mom_si_snri(
  separator: Separator,
  first: np.ndarray,
  second: np.ndarray,
  sample_rate_hz: int,
  snr_max_db: float = 30.0,
) -> float:
  """Mixture-of-mixtures SI-SNR improvement: separate ``first + second`` (``[C, T]`` each),
  assign the outputs to the two mixtures (each gets at least one), mean improvement."""
  references = np.stack([first, second])
  mom = first + second
  outputs = separator.separate_array(mom, sample_rate_hz).outputs
  labels = assign_outputs(outputs, references, snr_max_db=snr_max_db, required=np.ones(2, bool))
  assigned = remix(outputs, labels, 2)
  gains = [si_snr_db(assigned[k], references[k]) - si_snr_db(mom, references[k]) for k in range(2)]
  return float(np.mean(gains))


class _SegmentDiagnostics:
  """Collects the label-free diagnostics over a song's segments (``segment_callback``)."""

  def __init__(self):
    self.overlap: list[float] = []
    self.count: list[float] = []

  def __call__(self, estimates, masks):
    from trackformer_jax.losses import masks as mask_losses

    self.count.extend(np.asarray(mask_losses.effective_mask_count(estimates)).tolist())
    if masks is not None:
      for i in range(masks.shape[0]):
        self.overlap.append(float(mask_losses.mask_overlap(masks[i : i + 1])))

  def result(self) -> dict[str, float]:
    return {"mask_overlap": _nanmean(self.overlap), "effective_mask_count": _nanmean(self.count)}


# --------------------------------------------------------------------------------------------
# Whole evaluation


@dataclasses.dataclass
class EvalOptions:
  split: str = "test"
  museval: bool = False
  pesq: bool = False
  control: bool = True
  mom_seconds: float = 30.0
  segment_seconds: float | None = None
  overlap: float = 0.25
  batch_size: int = 4
  max_tracks: int | None = None
  progress: bool = False


def native_format(spec: str) -> tuple[int, int]:
  """The data's own ``(sample_rate_hz, channels)``, from its first track's header."""
  from trackformer_jax import audio
  from trackformer_jax.data import sources

  probe = sources.open_source(spec, sample_rate_hz=44100, channels=1)
  info = audio.audio_info(probe.tracks[0].mixture_files[0])
  return info.sample_rate_hz, info.channels


def score_model(
  separator: Separator, tracks, options: EvalOptions, snr_max_db: float, *, with_oracle: bool
) -> list[dict[str, Any]]:
  """Per-track records of one model on ``tracks`` (``data.sources.Track``s)."""
  records = []
  for i, track in enumerate(tracks):
    mixture = track.read_mixture()
    stems = track.read_stems()
    diagnostics = _SegmentDiagnostics()
    outputs = separator.separate_array(
      mixture, track.sample_rate_hz, segment_callback=diagnostics, name=track.track_id
    ).outputs
    record: dict[str, Any] = {
      "track": track.track_id,
      "duration_seconds": track.num_frames / track.sample_rate_hz,
    }
    if stems is not None:
      record.update(
        stem_scores(
          outputs,
          stems,
          mixture,
          track.sample_rate_hz,
          snr_max_db=snr_max_db,
          museval=options.museval,
          pesq=options.pesq,
        )
      )
      if with_oracle:
        record.update(oracle_scores(stems, mixture, track.sample_rate_hz))
    record.update(diagnostics.result())
    if len(tracks) > 1 and options.mom_seconds > 0:
      partner = tracks[(i + 1) % len(tracks)]
      frames = min(
        track.num_frames, partner.num_frames, round(options.mom_seconds * track.sample_rate_hz)
      )
      record["mom_si_snri_db"] = mom_si_snri(
        separator,
        mixture[:, :frames],
        partner.read_mixture(0, frames),
        track.sample_rate_hz,
        snr_max_db,
      )
    records.append(record)
  return records


def aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
  """Means over tracks (NaN-aware); BSSEval SDRs as the median, as SiSEC reports them."""
  keys = [k for k, v in records[0].items() if _is_number(v)] if records else []
  for record in records[1:]:
    keys += [k for k, v in record.items() if _is_number(v) and k not in keys]
  result: dict[str, float] = {"num_tracks": len(records)}
  for key in keys:
    if key == "duration_seconds":
      continue
    values = np.array([r.get(key, math.nan) for r in records], np.float64)
    if key.startswith("museval_"):
      result[key] = _nanmedian(values)
    else:
      result[key] = _nanmean(values)
  return result


def gain_key(key: str) -> str:
  """``stem_si_snri_db -> stem_si_snri_gain_db``; ``mask_overlap -> mask_overlap_gain``."""
  for stem in STEM_NAMES:
    suffix = f"_db_{stem}"
    if key.endswith(suffix):
      return key[: -len(suffix)] + f"_gain_db_{stem}"
  if key.endswith("_db"):
    return key[:-3] + "_gain_db"
  return key + "_gain"


def evaluate_workdir(
  workdir: str,
  data: str,
  *,
  checkpoint: str | int = "best",
  weights: str = "ema",
  options: EvalOptions | None = None,
) -> dict[str, Any]:
  """One result object ``{"workdir", ..., "aggregate", "tracks"}`` for one model.

  ``weights``: "ema" (the moving average where the run kept one, as it validated) or "raw".
  """
  from trackformer_jax.data import sources

  options = options or EvalOptions()
  model = export_lib.load_model(workdir, checkpoint=checkpoint, weights=weights)
  sample_rate_hz, channels = native_format(data)
  source = sources.open_source(data, sample_rate_hz=sample_rate_hz, channels=channels)
  tracks = source.split(options.split)
  if not tracks:
    raise sources.DataError(f"{data}: split {options.split!r} has no tracks")
  if options.max_tracks:
    tracks = tracks[: options.max_tracks]
  snr_max_db = float(model.config.get("snr_max_db", 30.0)) if model.config else 30.0

  def separator_for(m):
    return Separator(
      m,
      segment_seconds=options.segment_seconds,
      overlap=options.overlap,
      batch_size=options.batch_size,
      progress=options.progress,
    )

  records = score_model(separator_for(model), tracks, options, snr_max_db, with_oracle=True)
  summary = aggregate(records)
  if options.control and model.config is not None:
    control = export_lib.random_init_model(model.config)
    control_records = score_model(
      separator_for(control), tracks, options, snr_max_db, with_oracle=False
    )
    control_summary = aggregate(control_records)
    for record, control_record in zip(records, control_records):
      for key, value in control_record.items():
        if _is_number(value) and key != "duration_seconds":
          record[f"control_{key}"] = value
    for key, value in list(summary.items()):
      if key in control_summary and key != "num_tracks":
        summary[f"control_{key}"] = control_summary[key]
        summary[gain_key(key)] = value - control_summary[key]
    # How far the stem gains can be trusted: the standard error of the per-track (paired)
    # differences. A handful of songs gives an error of a dB or more.
    for key in [k for k in summary if k.startswith("stem_si_snri_db")]:
      differences = [r.get(key, math.nan) - r.get(f"control_{key}", math.nan) for r in records]
      summary[gain_key(key) + "_stderr"] = standard_error(differences)
  return {
    "workdir": str(workdir),
    "checkpoint": str(checkpoint),
    # What was read, not what was asked: "ema" falls back to "raw" where no average was kept.
    "checkpoint_step": model.source.get("step"),
    "weights": model.source.get("weights", weights),
    "model": model.model_name,
    "data": data,
    "split": options.split,
    "sample_rate_hz": sample_rate_hz,
    "channels": channels,
    "silent_estimate_floor_db": SILENT_ESTIMATE_FLOOR_DB,
    "skipped_tracks": [list(s) for s in source.skipped],
    "aggregate": summary,
    "tracks": records,
  }


# --------------------------------------------------------------------------------------------
# Reports

_TABLE_METRICS = (
  "stem_si_snri_db",
  "control_stem_si_snri_db",
  "stem_si_snri_gain_db",
  "stem_si_snr_db",
  *(f"stem_si_snri_db_{s}" for s in STEM_NAMES),
  *(f"stem_si_snri_gain_db_{s}" for s in STEM_NAMES),
  "best_output_si_snri_db",
  "usdr_db",
  "museval_sdr_db",
  "pesq",
  "mom_si_snri_db",
  "control_mom_si_snri_db",
  "mask_overlap",
  "effective_mask_count",
  "oracle_irm_stem_si_snri_db",
)


def markdown_table(results: list[dict[str, Any]]) -> str:
  """Metrics as rows, workdirs as columns."""
  names = [pathlib.Path(r["workdir"]).name or r["workdir"] for r in results]
  header = "| metric | " + " | ".join(names) + " |"
  lines = [header, "|---|" + "---:|" * len(names)]
  shown = [m for m in _TABLE_METRICS if any(m in r["aggregate"] for r in results)]
  for metric in shown:
    cells = []
    for r in results:
      value = r["aggregate"].get(metric)
      cell = "" if value is None or not np.isfinite(value) else f"{value:.2f}"
      error = r["aggregate"].get(f"{metric}_stderr")
      if cell and error is not None and np.isfinite(error):
        cell += f" ± {error:.2f}"  # standard error over tracks
      cells.append(cell)
    lines.append(f"| {metric} | " + " | ".join(cells) + " |")
  lines.append(
    "| tracks | " + " | ".join(str(r["aggregate"]["num_tracks"]) for r in results) + " |"
  )
  return "\n".join(lines) + "\n"


def plot_distributions(results: list[dict[str, Any]], path: str | os.PathLike) -> None:
  """Box plots of per-track stem SI-SNRi, one panel per stem, one box per model (+ control,
  + oracle)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(STEM_NAMES), figsize=(3.2 * len(STEM_NAMES), 3.6), squeeze=False)
  for ax, stem in zip(axes[0], STEM_NAMES):
    series, labels = [], []
    for r in results:
      name = pathlib.Path(r["workdir"]).name or r["workdir"]
      for prefix, label in (("", name), ("control_", f"{name}\ncontrol")):
        values = [t.get(f"{prefix}stem_si_snri_db_{stem}", math.nan) for t in r["tracks"]]
        values = [v for v in values if v is not None and np.isfinite(v)]
        if values:
          series.append(values)
          labels.append(label)
    oracle = [t.get(f"oracle_irm_stem_si_snri_db_{stem}") for t in results[0]["tracks"]]
    oracle = [v for v in oracle if v is not None and np.isfinite(v)]
    if oracle:
      series.append(oracle)
      labels.append("oracle\nIRM")
    if series:
      ax.boxplot(series)
      ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_title(stem)
  axes[0][0].set_ylabel("SI-SNRi (dB)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_reports(results: list[dict[str, Any]], out: str | os.PathLike) -> list[pathlib.Path]:
  """``out`` (JSON), ``out`` with ``.md`` and ``.png``; each written whole or not at all."""
  import tempfile

  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  payload = results[0] if len(results) == 1 else results
  export_lib.write_json_atomic(out, _json_safe(payload))
  table = out.with_suffix(".md")
  fd, tmp = tempfile.mkstemp(prefix=f".{table.name}.", dir=out.parent)
  with os.fdopen(fd, "w") as f:
    f.write(markdown_table(results))
  os.replace(tmp, table)
  figure = out.with_suffix(".png")
  fd, tmp = tempfile.mkstemp(prefix=f".{figure.name}.", suffix=".png", dir=out.parent)
  os.close(fd)
  try:
    plot_distributions(results, tmp)
    os.replace(tmp, figure)
  except BaseException:
    os.unlink(tmp)
    raise
  return [out, table, figure]


# --------------------------------------------------------------------------------------------
# CLI


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.evaluate", description="Evaluate separators on whole songs."
  )
  parser.add_argument("--workdir", action="append", required=True, help="repeat to compare")
  parser.add_argument("--checkpoint", type=export_lib.parse_checkpoint, default="best")
  export_lib.add_weights_argument(parser)
  parser.add_argument("--data", required=True, help="musdb:PATH | moisesdb:PATH | chorales:PATH")
  parser.add_argument("--split", default="test")
  parser.add_argument("--out", default=None, help="results JSON (+ .md table, .png plot)")
  parser.add_argument("--museval", action="store_true", help="BSSEval v4 SDR (slow)")
  parser.add_argument("--pesq", action="store_true", help="wide-band PESQ per stem")
  parser.add_argument(
    "--control",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="also score the config at random initialisation (default on)",
  )
  parser.add_argument("--mom-seconds", type=float, default=30.0)
  parser.add_argument("--segment", type=float, default=None, metavar="SECONDS")
  parser.add_argument("--overlap", type=float, default=0.25)
  parser.add_argument("--batch-size", type=int, default=4)
  parser.add_argument("--max-tracks", type=int, default=None)
  parser.add_argument("--no-progress", action="store_true")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = get_parser().parse_args(argv)
  options = EvalOptions(
    split=args.split,
    museval=args.museval,
    pesq=args.pesq,
    control=args.control,
    mom_seconds=args.mom_seconds,
    segment_seconds=args.segment,
    overlap=args.overlap,
    batch_size=args.batch_size,
    max_tracks=args.max_tracks,
    progress=not args.no_progress,
  )
  results = []
  for workdir in args.workdir:
    try:
      results.append(
        evaluate_workdir(
          workdir, args.data, checkpoint=args.checkpoint, weights=args.weights, options=options
        )
      )
    except (ValueError, RuntimeError, OSError) as e:
      print(f"evaluate: {e}", file=sys.stderr)
      return 1
  print(markdown_table(results), end="")
  if args.out:
    for path in write_reports(results, args.out):
      print(f"wrote {path}")
  return 0


# --------------------------------------------------------------------------------------------


def _stem_key(metric: str, stem: str) -> str:
  return f"{metric}_{stem}"


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def _nanmean(values) -> float:
  values = np.asarray(values, np.float64)
  finite = values[~np.isnan(values)]
  return float(finite.mean()) if finite.size else math.nan


def standard_error(values) -> float:
  """Standard error of the mean of the finite ``values`` (NaN for fewer than two)."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  return float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else math.nan


def _nanmedian(values) -> float:
  values = np.asarray(values, np.float64)
  finite = values[~np.isnan(values)]
  return float(np.median(finite)) if finite.size else math.nan


def _json_safe(obj):
  """NaN -> null (strict JSON), numpy scalars -> Python numbers."""
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    return None if not np.isfinite(obj) else float(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


if __name__ == "__main__":
  sys.exit(main())
