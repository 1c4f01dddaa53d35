"""Evaluate trained separators on whole songs, side by side, against a control and a ceiling.

CLI::

  python -m trackformer_jax.evaluate --workdir runs/x [--workdir runs/y ...]
      [--checkpoint best|latest|STEP] --data musdb:PATH|moisesdb:PATH|chorales:PATH
      [--split test] [--out results.json] [--museval] [--pesq] [--no-control] [--no-nmf]

Each song is separated whole, in overlapping segments (``separate.Separator``), and scored
at the data's own sample rate and channel count. Per track, and averaged over tracks:

* ``stem_si_snr_db`` / ``stem_si_snri_db`` (and ``_<stem>``): the 8 outputs are assigned to
  the track's K stems by MixIT's best assignment (the objective of ``losses.mixit.mixit_loss``)
  with one constraint: every stem that is not silent receives at least one output, so a
  model cannot score by leaving a hard stem empty. Silent stems (more than 60 dB below the
  mixture) are left out of the stem scores. The stems are whatever the track has: the four
  MUSDB stems, or e.g. ``guitar`` and ``backing`` for a folder holding ``mixture.wav``,
  ``guitar.wav`` and ``backing.wav`` (``data.sources``); per-stem means over tracks take
  each stem's tracks only.
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
* ``nmf_stem_si_snr(i)_db`` (and ``_<stem>``; off with ``--no-nmf``): the classical
  baseline, KL-divergence NMF with 8 components of the STFT magnitude, each component's share
  as a soft mask (``baselines.nmf_separate``), its 8 outputs scored exactly as the model's;
  ``stem_si_snri_vs_nmf_db[_<stem>]`` is the model's margin over it (with ``_stderr``).

A silent estimate scores **-80 dB** SI-SNR: ``metrics.si_snr`` floors its ratio at 1e-8
rather than giving the 0 dB a naive formula gives an all-zero signal.

The best-assignment search flatters any model, so with ``--control`` (on by default) the same
config at random initialisation is scored too, and each metric's gain over it reported:
``control_<metric>`` and ``<metric>_gain_db`` (``<metric>_gain`` for unitless ones). The stem
gains come with ``<gain>_stderr``, the standard error of their per-track differences (shown
as ``gain ± error`` in the table): on a handful of songs it is a dB or more.

Output: JSON, one object ``{"workdir", ..., "aggregate": {...}, "tracks": [{...}]}`` per
workdir (the object itself for one ``--workdir``, a list of them for several), a Markdown
table (``.md`` beside it: the metrics, then per stem the model, its control, NMF and the
ideal ratio mask side by side) and a PNG of the per-stem distributions (``.png``). The
scoring lives in ``trackformer_jax.scoring``, the reports in ``trackformer_jax.eval_reports``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from trackformer_jax import export as export_lib
from trackformer_jax.eval_reports import (  # noqa: F401
  json_safe,
  markdown_table,
  plot_distributions,
  write_reports,
)
from trackformer_jax.scoring import (  # noqa: F401 - evaluate's names, as callers import them
  SILENT_ESTIMATE_FLOOR_DB,
  SILENT_STEM_DB,
  STEM_NAMES,
  all_assignments,
  assign_outputs,
  best_assignment,
  is_number,
  is_silent,
  nanmean,
  nanmedian,
  nmf_scores,
  oracle_ratio_mask,
  oracle_scores,
  remix,
  si_snr_db,
  standard_error,
  stem_scores,
)
from trackformer_jax.separate import Separator


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
    "skipped_tracks": [list(s) for s in source.skipped],
    "aggregate": summary,
    "tracks": records,
  }


# --------------------------------------------------------------------------------------------
# CLI


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.evaluate", description="Evaluate separators on whole songs."
  )
  parser.add_argument("--workdir", action="append", required=True, help="repeat to compare")
  parser.add_argument("--checkpoint", type=export_lib.parse_checkpoint, default="best")
  export_lib.add_weights_argument(parser)
  parser.add_argument(
    "--data", required=True, help="musdb:PATH | moisesdb:PATH | chorales:PATH | tfds:DIR"
  )
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
  parser.add_argument(
    "--nmf",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="also score the KL-NMF baseline, 8 components (default on; a few s per song)",
  )
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
    nmf=args.nmf,
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


if __name__ == "__main__":
  sys.exit(main())
