"""Evaluate trained separators on whole songs, side by side, against a control and a ceiling.

CLI::

  python -m trackformer_jax.evaluate --model runs/x [--model runs/y ...]
      [--checkpoint best|latest|STEP] --data musdb:PATH|moisesdb:PATH|chorales:PATH
      [--split test] [--out results.json] [--museval] [--pesq] [--no-control] [--no-nmf]
      [-d cpu|gpu]                        (--workdir: the older name of --model)

Each song is separated whole, in overlapping segments (``separate.Separator``), and scored
at the data's own sample rate and channel count. Per track, and averaged over tracks:

* ``stem_si_snr_db`` / ``stem_si_snri_db`` (and ``_<stem>``): the 8 outputs are assigned to
  the track's K stems by MixIT's best assignment (the objective of ``losses.mixit.mixit_loss``)
  with one constraint: every stem that is not silent receives at least one output, so a
  model cannot score by leaving a hard stem empty. Silent stems (mean power below -50 dBFS,
  ``metrics.silent_stems``, the rule of training's validation too) are left out of the stem
  scores. The stems are whatever the track has: the four
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
evaluation is ``trackformer_jax.evaluation``, the scoring ``trackformer_jax.scoring``, the
reports ``trackformer_jax.eval_reports``; their names are importable from here too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trackformer_jax import command_line

_REPORT_NAMES = ("json_safe", "markdown_table", "plot_distributions", "write_reports")
_EVALUATION_NAMES = ("EvalOptions", "aggregate", "evaluate_workdir", "gain_key", "mom_si_snri")
_EVALUATION_NAMES += ("native_format", "nmf_margins", "score_model")
_SCORING_NAMES = ("SILENT_ESTIMATE_FLOOR_DB", "STEM_NAMES", "all_assignments", "best_assignment")
_SCORING_NAMES += ("is_number", "is_silent", "nanmean", "nmf_scores", "SILENT_STEM_DBFS")
_SCORING_NAMES += ("oracle_ratio_mask", "oracle_scores", "remix", "si_snr_db", "standard_error")
_SCORING_NAMES += ("stem_scores",)
# The library names this module has always offered, imported on first use: --help stays fast.
_LAZY_NAMES = {
  "Separator": "trackformer_jax.separator:Separator",
  **{name: f"trackformer_jax.eval_reports:{name}" for name in _REPORT_NAMES},
  **{name: f"trackformer_jax.evaluation:{name}" for name in _EVALUATION_NAMES},
  **{name: f"trackformer_jax.scoring:{name}" for name in _SCORING_NAMES},
  "nanmedian": "trackformer_jax.metrics:nanmedian",
}
__all__ = [*_LAZY_NAMES, "get_parser", "main"]


def __getattr__(name: str):
  return command_line.lazy_attribute(globals(), _LAZY_NAMES, name)


# --------------------------------------------------------------------------------------------
# CLI


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.evaluate", description="Evaluate separators on whole songs."
  )
  command_line.add_model_argument(parser, "exported folder or training workdir", repeat=True)
  parser.add_argument("--checkpoint", type=command_line.parse_checkpoint, default="best")
  command_line.add_weights_argument(parser)
  command_line.add_device_argument(parser)
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
  args = command_line.parse_tool_args(get_parser, argv)
  from trackformer_jax.eval_reports import markdown_table, write_reports
  from trackformer_jax.evaluation import EvalOptions, evaluate_workdir

  try:
    command_line.select_device(args.device)
  except command_line.DeviceError as e:
    print(f"evaluate: {e}", file=sys.stderr)
    return 2
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
  for workdir in args.model:
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
