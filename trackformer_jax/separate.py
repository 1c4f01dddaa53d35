"""Separate songs of any length with a trained (exported) separator: the CLI.

Python API::

  from trackformer_jax.separate import Separator
  separator = Separator("exported/quick")
  result = separator.separate_file("song.flac")       # result.stems: {name: [C, T]}
  separator.separate_to_folder("song.flac", "separated/quick/song")   # streams to disk

CLI::

  python -m trackformer_jax.separate TRACK... --model MODEL [-o separated] [--segment SECONDS]
      [--overlap 0.25] [--flac|--int24|--float32|--ogg|--mp3 [--mp3-bitrate 320]]
      [--clip-mode rescale|clamp] [--plots] [-j N]
      [--checkpoint best|latest|STEP] [--weights ema|raw]   (the last two: for a workdir)
  -> separated/<model>/<track>/<stem>.wav   (<track>: the file's stem; for .../<song>/mixture.wav,
                                            the song's folder name)

Inputs: anything FFmpeg decodes (WAV, FLAC, AIFF, Ogg, MP3, AAC/M4A, Opus, ALAC, WMA, ...;
see ``audio``); a truncated file is separated as far as it decodes, with a warning. Stems
too loud for the output format are rescaled or clamped with a warning (see ``stem_files``).
Ctrl-C stops at the next block: the tracks finished stay, nothing partial is left, one line
says how many were written and the exit status is 130 (see ``interrupts``).

How a song is stitched from segments is described in ``separator``; the pieces are in
``stitching``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import pathlib
import sys
from collections.abc import Sequence

from trackformer_jax import interrupts

if __name__ == "__main__":
  # Ctrl-C while the libraries below load (seconds: JAX): nothing has started yet.
  interrupts.leave_quietly_on_signal("separate: interrupted while starting; nothing written")

from trackformer_jax import (  # noqa: E402 - after the handler above
  audio,  # noqa: F401 - tests patch separate.audio.read_audio
  stem_files,
)
from trackformer_jax import export as export_lib  # noqa: E402
from trackformer_jax.inference import loading, model_folder  # noqa: E402
from trackformer_jax.separator import (  # noqa: E402
  FrameReader,
  SegmentCallback,
  SeparationError,
  SeparationResult,
  Separator,
  track_name,
)
from trackformer_jax.stitching import (  # noqa: E402
  best_permutation,
  overlap_add_weights,
  share_residual,
  spread_over_channels,
)

__all__ = [
  "FrameReader",
  "SegmentCallback",
  "SeparationError",
  "SeparationResult",
  "Separator",
  "best_permutation",
  "get_parser",
  "main",
  "overlap_add_weights",
  "share_residual",
  "spread_over_channels",
  "track_name",
]


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.separate",
    description="Separate songs into the model's outputs (or stems, with a stem map).",
  )
  parser.add_argument("tracks", nargs="+", metavar="TRACK", help="audio files (any FFmpeg decodes)")
  parser.add_argument("--model", required=True, help="exported folder or training workdir")
  parser.add_argument("--checkpoint", default="best", help="workdir checkpoint: best|latest|STEP")
  export_lib.add_weights_argument(parser)
  parser.add_argument("-o", "--out", default="separated", help="output root (default separated)")
  parser.add_argument("--segment", type=float, default=None, metavar="SECONDS")
  parser.add_argument("--overlap", type=float, default=0.25)
  parser.add_argument("--batch-size", type=int, default=4, help="segments per model call")
  fmt = parser.add_argument_group("output format (default 16-bit wav)")
  fmt.add_argument("--flac", action="store_true", help="write FLAC")
  fmt.add_argument("--int24", action="store_true", help="24-bit integer samples")
  fmt.add_argument("--float32", action="store_true", help="32-bit float samples (wav only)")
  fmt.add_argument("--ogg", action="store_true", help="write Ogg Vorbis (lossy)")
  fmt.add_argument("--mp3", action="store_true", help="write MP3 (lossy, constant bitrate)")
  fmt.add_argument("--mp3-bitrate", type=int, default=320, metavar="KBPS", help="default 320")
  parser.add_argument(
    "--clip-mode",
    choices=stem_files.CLIP_MODES,
    default="rescale",
    help="stems beyond what the format holds: scale every stem of the track by one factor "
    "(rescale, the default) or clamp the samples; a warning says which was needed",
  )
  parser.add_argument(
    "--stem-map",
    default=None,
    metavar="FILE",
    help="name the outputs with this stem map (from calibrate --out) instead of the model's",
  )
  parser.add_argument(
    "--two-stems",
    default=None,
    metavar="STEM",
    help="write STEM and no_STEM (everything else) only; needs a stem map",
  )
  parser.add_argument("--plots", action="store_true", help="one PNG per track")
  parser.add_argument("-j", "--jobs", type=int, default=1, help="tracks separated in parallel")
  parser.add_argument("--no-progress", action="store_true")
  return parser


def _say(message: str, stream) -> None:
  # The worker thread may be drawing a progress bar; tqdm.write clears it first, so a
  # message never lands on the end of a bar's line.
  from tqdm import tqdm

  tqdm.write(message, file=stream)


def _output_format(args) -> tuple[str, str]:
  if args.mp3:
    if args.flac or args.int24 or args.float32 or args.ogg:
      raise SeparationError("--mp3 excludes --flac, --int24, --float32 and --ogg")
    if not 8 <= args.mp3_bitrate <= 320:
      raise SeparationError(f"--mp3-bitrate must be 8 to 320 kbit/s, got {args.mp3_bitrate}")
    return "MP3", "MP3"
  if args.ogg:
    if args.flac or args.int24 or args.float32:
      raise SeparationError("--ogg (Vorbis) excludes --flac, --int24 and --float32")
    return "VORBIS", "OGG"
  if args.int24 and args.float32:
    raise SeparationError("--int24 and --float32 exclude each other")
  if args.flac and args.float32:
    raise SeparationError("FLAC cannot hold float samples: use --int24 or 16 bit with --flac")
  subtype = "PCM_24" if args.int24 else "FLOAT" if args.float32 else "PCM_16"
  return subtype, "FLAC" if args.flac else "WAV"


def _name_stems(model, stem_map, args) -> None:
  """Applies ``--stem-map`` and ``--two-stems`` to ``model`` (ValueError when they cannot)."""
  if stem_map is not None:
    model_folder.check_stem_map(args.stem_map, stem_map, model.num_outputs)
    model.stem_map = stem_map
  if args.two_stems:
    if model.stem_map is None:
      raise ValueError(
        f"--two-stems {args.two_stems}: {args.model} has no stem map; run calibrate first, "
        "or give --stem-map FILE"
      )
    model.stem_map = model_folder.two_stem_map(model.stem_map, args.two_stems)


def main(argv: Sequence[str] | None = None) -> int:
  args = get_parser().parse_args(argv)
  # Signals are taken from here on: the first one stops the work at its next check.
  with interrupts.graceful() as stop:
    return _separate_all(args, stop)


def _separate_all(args, stop: interrupts.StopRequest) -> int:
  try:
    subtype, file_format = _output_format(args)
    checkpoint = export_lib.parse_checkpoint(args.checkpoint)
    # A stem map file is read before the model, so a bad one costs no loading.
    stem_map = model_folder.read_stem_map_file(args.stem_map) if args.stem_map else None
    model = export_lib.load_model(args.model, checkpoint=checkpoint, weights=args.weights)
    _name_stems(model, stem_map, args)
    separator = Separator(
      model,
      segment_seconds=args.segment,
      overlap=args.overlap,
      batch_size=args.batch_size,
      progress=not args.no_progress and args.jobs == 1,
    )
  except (ValueError, argparse.ArgumentTypeError) as e:
    print(f"separate: {e}", file=sys.stderr)
    return 2

  root = pathlib.Path(args.out) / model.name

  def warn(message: str) -> None:
    _say(f"separate: warning: {message}", sys.stderr)

  def separate_one(track: str) -> str:
    stop.raise_if_set(track)
    out_dir = root / track_name(track)
    paths = separator.separate_to_folder(
      track,
      out_dir,
      subtype=subtype,
      file_format=file_format,
      plots=args.plots,
      clip_mode=args.clip_mode,
      mp3_bitrate_kbps=args.mp3_bitrate,
      stop=stop,
      warn=warn,
    )
    return f"{track} -> {out_dir}/ ({', '.join(p.name for p in paths.values())})"

  failures = written = reported = 0
  # Two tracks with one name would write one folder; the later ones are refused, not lost.
  first_with_name: dict[str, str] = {}
  unique = []
  for track in args.tracks:
    other = first_with_name.setdefault(track_name(track), track)
    if other != track:
      failures += 1
      print(f"separate: {track}: same name as {other}; would overwrite it", file=sys.stderr)
    else:
      unique.append(track)
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs))
  try:
    futures = {} if stop.is_set() else {pool.submit(separate_one, t): t for t in unique}
    for future in futures:  # in the order given, so messages are reproducible
      # Waiting in short steps lets the signal handler's stop request be seen at once.
      while not stop.is_set() and not concurrent.futures.wait([future], timeout=0.1)[0]:
        pass
      if stop.is_set():
        break
      ok, message = _outcome(future, futures[future])
      reported += 1
      written += ok
      failures += not ok
      _say(message, sys.stdout if ok else sys.stderr)
  finally:
    # Tracks not started are dropped; running ones stop at their next block and clean up.
    pool.shutdown(wait=True, cancel_futures=True)
  if stop.is_set():
    for future in list(futures)[reported:]:  # finished before they saw the stop request
      if not future.done() or future.cancelled():
        continue
      if isinstance(future.exception(), interrupts.Interrupted):
        continue
      ok, message = _outcome(future, futures[future])
      written += ok
      _say(message, sys.stdout if ok else sys.stderr)
    print(
      f"separate: interrupted: {written} of {len(args.tracks)} tracks written; "
      "nothing partial left",
      file=sys.stderr,
    )
    return interrupts.EXIT_STATUS
  if failures:
    print(f"separate: {failures} of {len(args.tracks)} tracks failed", file=sys.stderr)
    return 1
  return 0


def _outcome(future: concurrent.futures.Future, track: str) -> tuple[bool, str]:
  """(written, the line to print) for a finished track."""
  try:
    return True, future.result()
  except Exception as e:  # noqa: BLE001 - one bad track must not stop the others
    message = str(e) if track in str(e) else f"{track}: {type(e).__name__}: {e}"
    if isinstance(e, (ValueError, OSError)):
      message = str(e) if track in str(e) else f"{track}: {e}"
    return False, f"separate: {message}"


if __name__ == "__main__":
  status = main()
  interrupts.leave_quietly_on_signal("")  # a Ctrl-C while the interpreter shuts down
  loading.exit_now_if_reads_abandoned(status)
  sys.exit(status)
