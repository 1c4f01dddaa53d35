"""Whole-song evaluation of a model on a data split: the library under ``evaluate``.

``evaluate_workdir`` loads a model, separates each song of the split whole
(``separator.Separator``), scores it (``scoring``: the output-to-stem assignment, SI-SNR(i),
uSDR, the ideal-ratio-mask ceiling and the NMF baseline; the metrics are described in
``evaluate``), and scores the same config at random initialisation as a control.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import numpy as np

from trackformer_jax.inference import loading
from trackformer_jax.metrics import nanmedian
from trackformer_jax.scoring import (
  SILENT_ESTIMATE_FLOOR_DB,
  SILENT_STEM_DBFS,
  STEM_NAMES,
  best_assignment,
  is_number,
  nanmean,
  nmf_scores,
  oracle_scores,
  remix,
  si_snr_db,
  standard_error,
  stem_scores,
)
from trackformer_jax.separator import Separator


def mom_si_snri(
  separator: Separator,
  first: np.ndarray,
  second: np.ndarray,
  sample_rate_hz: int,
  snr_max_db: float = 30.0,
  name: str = "mixture of mixtures",
) -> float:
  """Mixture-of-mixtures SI-SNR improvement: separate ``first + second`` (``[C, T]`` each),
  assign the outputs to the two mixtures (each gets at least one), mean improvement.
  ``name`` labels its progress bar and errors."""
  references = np.stack([first, second])
  mom = first + second
  outputs = separator.separate_array(mom, sample_rate_hz, name=name).outputs
  labels = best_assignment(outputs, references, snr_max_db=snr_max_db, required=np.ones(2, bool))
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
    return {"mask_overlap": nanmean(self.overlap), "effective_mask_count": nanmean(self.count)}


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
  nmf: bool = True  # score the NMF baseline beside the oracle


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
      names = tuple(getattr(track, "stem_names", STEM_NAMES))
      record["stem_names"] = list(names)
      record.update(
        stem_scores(
          outputs,
          stems,
          mixture,
          track.sample_rate_hz,
          snr_max_db=snr_max_db,
          museval=options.museval,
          pesq=options.pesq,
          stem_names=names,
        )
      )
      if with_oracle:
        record.update(oracle_scores(stems, mixture, track.sample_rate_hz, stem_names=names))
      if with_oracle and options.nmf:
        record.update(nmf_margins(record, stems, mixture, track.sample_rate_hz, snr_max_db, names))
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
        # The bar shows a name's last part: these two, not the partner's path alone.
        name=f"{pathlib.PurePath(track.track_id).name} + {pathlib.PurePath(partner.track_id).name}",
      )
    records.append(record)
  return records


def nmf_margins(record, stems, mixture, sample_rate_hz, snr_max_db, names) -> dict[str, Any]:
  """The NMF baseline's scores (``nmf_*``) and the model's margin over it
  (``stem_si_snri_vs_nmf_db[_<stem>]``, per track: model minus NMF) for one track."""
  result = nmf_scores(stems, mixture, sample_rate_hz, snr_max_db=snr_max_db, stem_names=names)
  for suffix in ["", *(f"_{n}" for n in names)]:
    model = record.get(f"stem_si_snri_db{suffix}", math.nan)
    result[f"stem_si_snri_vs_nmf_db{suffix}"] = model - result[f"nmf_stem_si_snri_db{suffix}"]
  return result


def aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
  """Means over tracks (NaN-aware); BSSEval SDRs as the median, as SiSEC reports them."""
  keys = [k for k, v in records[0].items() if is_number(v)] if records else []
  for record in records[1:]:
    keys += [k for k, v in record.items() if is_number(v) and k not in keys]
  result: dict[str, float] = {"num_tracks": len(records)}
  for key in keys:
    if key == "duration_seconds":
      continue
    values = np.array([r.get(key, math.nan) for r in records], np.float64)
    if key.startswith("museval_"):
      result[key] = nanmedian(values)
    else:
      result[key] = nanmean(values)
  return result


def gain_key(key: str) -> str:
  """``stem_si_snri_db -> stem_si_snri_gain_db``, ``stem_si_snri_db_guitar ->
  stem_si_snri_gain_db_guitar``; ``mask_overlap -> mask_overlap_gain``."""
  if "_db_" in key:
    head, _, stem = key.partition("_db_")
    return f"{head}_gain_db_{stem}"
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
  model = loading.load_model(workdir, checkpoint=checkpoint, weights=weights)
  sample_rate_hz, channels = native_format(data)
  source = sources.open_source(data, sample_rate_hz=sample_rate_hz, channels=channels)
  tracks = source.split(options.split)
  if not tracks:
    raise sources.DataError(f"{data}: split {options.split!r} has no tracks")
  if options.max_tracks:
    tracks = tracks[: options.max_tracks]
  snr_max_db = float(model.config.get("snr_max_db", 30.0)) if model.config else 30.0

  def separator_for(m, label):
    return Separator(
      m,
      segment_seconds=options.segment_seconds,
      overlap=options.overlap,
      batch_size=options.batch_size,
      progress=options.progress,
      progress_label=label,
    )

  # Bars say which model and which song: "<model>: <track>", "<model> control: <track>".
  label = f"{model.name}:"
  records = score_model(separator_for(model, label), tracks, options, snr_max_db, with_oracle=True)
  summary = aggregate(records)
  if options.control and model.config is not None:
    control = loading.random_init_model(model.config)
    control_records = score_model(
      separator_for(control, f"{model.name} control:"), tracks, options, snr_max_db,
      with_oracle=False,
    )  # fmt: skip
    control_summary = aggregate(control_records)
    for record, control_record in zip(records, control_records):
      for key, value in control_record.items():
        if is_number(value) and key != "duration_seconds":
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
  for key in [k for k in summary if k.startswith("stem_si_snri_vs_nmf_db")]:
    summary[key + "_stderr"] = standard_error([r.get(key, math.nan) for r in records])
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
    "silent_stem_dbfs": SILENT_STEM_DBFS,
    "skipped_tracks": [list(s) for s in source.skipped],
    "aggregate": summary,
    "tracks": records,
  }
