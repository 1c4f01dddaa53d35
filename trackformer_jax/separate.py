"""Separate songs of any length with a trained (exported) separator: the CLI.

Python API::

  from trackformer_jax.separate import Separator
  separator = Separator("exported/quick")
  result = separator.separate_file("song.flac")       # result.stems: {name: [C, T]}
  separator.separate_to_folder("song.flac", "separated/quick/song")   # streams to disk

CLI::

  python -m trackformer_jax.separate TRACK... --model MODEL [-o separated] [-n NAME]
      [--filename "{track}/{stem}.{ext}"] [-d cpu|gpu] [--segment SECONDS]
      [--overlap 0.25] [--flac|--int24|--float32|--ogg|--mp3 [--mp3-bitrate 320]]
      [--clip-mode rescale|clamp] [--plots] [-j N]
      [--checkpoint best|latest|STEP] [--weights ema|raw]   (the last two: for a workdir)
  -> separated/<model>/<track>/<stem>.wav   (<model>: the model folder's name, or NAME;
                                            <track>: the file's stem; for .../<song>/mixture.wav,
                                            the song's folder name)

``--workdir`` is the older name of ``--model``. ``--filename`` places each stem below
``OUT/NAME`` from ``{track}``, ``{trackext}`` (the input's extension), ``{folder}`` (the
input's folder), ``{stem}`` and ``{ext}``, as Demucs's option does; a track whose files
another track of the run would write is refused before any work, with a line naming the file.

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
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trackformer_jax import command_line, interrupts

if TYPE_CHECKING:  # imported on first use instead, by __getattr__ below
  from trackformer_jax.separator import (
    FrameReader,
    SegmentCallback,
    SeparationError,
    SeparationResult,
    Separator,
    track_name,
  )
  from trackformer_jax.stitching import (
    best_permutation,
    overlap_add_weights,
    share_residual,
    spread_over_channels,
  )

if __name__ == "__main__":
  # Ctrl-C while the libraries load (seconds: JAX): nothing has started yet.
  interrupts.leave_quietly_on_signal("separate: interrupted while starting; nothing written")

# The library names this module has always offered, imported on first use: --help stays fast.
_SEPARATOR_NAMES = ("FrameReader", "SegmentCallback", "SeparationError", "SeparationResult")
_STITCHING_NAMES = ("best_permutation", "overlap_add_weights", "share_residual")
_LAZY_NAMES = {
  "audio": "trackformer_jax.audio",  # tests patch separate.audio.read_audio
  "stem_files": "trackformer_jax.stem_files",
  "Separator": "trackformer_jax.separator:Separator",
  "track_name": "trackformer_jax.separator:track_name",
  "spread_over_channels": "trackformer_jax.stitching:spread_over_channels",
  **{name: f"trackformer_jax.separator:{name}" for name in _SEPARATOR_NAMES},
  **{name: f"trackformer_jax.stitching:{name}" for name in _STITCHING_NAMES},
}

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


def __getattr__(name: str):
  return command_line.lazy_attribute(globals(), _LAZY_NAMES, name)


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.separate",
    description="Separate songs into the model's outputs (or stems, with a stem map).",
  )
  parser.add_argument("tracks", nargs="+", metavar="TRACK", help="audio files (any FFmpeg decodes)")
  command_line.add_model_argument(parser, "exported folder or training workdir")
  parser.add_argument("--checkpoint", default="best", help="workdir checkpoint: best|latest|STEP")
  command_line.add_weights_argument(parser)
  command_line.add_device_argument(parser)
  parser.add_argument("-o", "--out", default="separated", help="output root (default separated)")
  parser.add_argument(
    "-n",
    "--name",
    default=None,
    help="the model's folder in the output path, OUT/NAME/... (default: the model folder's name)",
  )
  parser.add_argument(
    "--filename",
    default="{track}/{stem}.{ext}",
    metavar="TEMPLATE",
    help="each stem's path below OUT/NAME, from {track}, {trackext}, {folder} (the input's "
    "folder), {stem} and {ext} (default {track}/{stem}.{ext}); two inputs of one name from "
    'different folders: "{folder}/{track}/{stem}.{ext}"',
  )
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
    choices=command_line.CLIP_MODES,
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
      raise ValueError("--mp3 excludes --flac, --int24, --float32 and --ogg")
    if not 8 <= args.mp3_bitrate <= 320:
      raise ValueError(f"--mp3-bitrate must be 8 to 320 kbit/s, got {args.mp3_bitrate}")
    return "MP3", "MP3"
  if args.ogg:
    if args.flac or args.int24 or args.float32:
      raise ValueError("--ogg (Vorbis) excludes --flac, --int24 and --float32")
    return "VORBIS", "OGG"
  if args.int24 and args.float32:
    raise ValueError("--int24 and --float32 exclude each other")
  if args.flac and args.float32:
    raise ValueError("FLAC cannot hold float samples: use --int24 or 16 bit with --flac")
  subtype = "PCM_24" if args.int24 else "FLOAT" if args.float32 else "PCM_16"
  return subtype, "FLAC" if args.flac else "WAV"


def _name_stems(model, stem_map, args) -> None:
  """Applies ``--stem-map`` and ``--two-stems`` to ``model`` (ValueError when they cannot)."""
  from trackformer_jax.inference import model_folder

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
  args = command_line.parse_tool_args(get_parser, argv)
  # Signals are taken from here on: the first one stops the work at its next check.
  with interrupts.graceful() as stop:
    return _separate_all(args, stop)


def _load(args):
  """(separator, output format) from the command line; ValueError for what is wrong."""
  from trackformer_jax import stem_files
  from trackformer_jax.inference import loading, model_folder
  from trackformer_jax.separator import Separator

  output_format = _output_format(args)
  stem_files.check_filename_template(args.filename)
  command_line.check_folder_name("-n/--name", args.name)
  checkpoint = command_line.parse_checkpoint(args.checkpoint)
  # A stem map file is read before the model, so a bad one costs no loading.
  stem_map = model_folder.read_stem_map_file(args.stem_map) if args.stem_map else None
  command_line.select_device(args.device)
  model = loading.load_model(args.model, checkpoint=checkpoint, weights=args.weights)
  _name_stems(model, stem_map, args)
  separator = Separator(
    model,
    segment_seconds=args.segment,
    overlap=args.overlap,
    batch_size=args.batch_size,
    progress=not args.no_progress,
  )
  return separator, output_format


def _plan(args, separator, root: pathlib.Path, extension: str) -> tuple[list, list[str]]:
  """``[(track, {stem: file})]`` for the tracks to separate, and a line for each track
  refused because a file of it is one an earlier track writes."""
  from trackformer_jax import stem_files

  planned, refused = [], []
  writer_of: dict[str, str] = {}  # output file (absolute) -> the track writing it
  for track in args.tracks:
    files = stem_files.output_files(
      args.filename, root, track, separator.output_names, extension, args.plots
    )
    clash = next((f for f in files.values() if os.path.abspath(f) in writer_of), None)
    if clash is not None:
      refused.append(
        f"separate: {track}: would write {clash}, as {writer_of[os.path.abspath(clash)]} "
        'does; tell them apart with --filename, e.g. "{folder}/{track}/{stem}.{ext}"'
      )
      continue
    writer_of.update(dict.fromkeys(map(os.path.abspath, files.values()), track))
    planned.append((track, files))
  return planned, refused


def _separate_all(args, stop: interrupts.StopRequest) -> int:
  try:
    separator, (subtype, file_format) = _load(args)
  except (ValueError, argparse.ArgumentTypeError) as e:
    if not stop.is_set():  # a Ctrl-C while loading is answered below, as one
      print(f"separate: {e}", file=sys.stderr)
      return 2
    separator = None
  if stop.is_set():
    print(
      f"separate: interrupted: 0 of {len(args.tracks)} tracks written; nothing partial left",
      file=sys.stderr,
    )
    return interrupts.EXIT_STATUS
  from trackformer_jax import stem_files

  root = pathlib.Path(args.out) / (args.name or separator.model.name)
  planned, refused = _plan(args, separator, root, stem_files.EXTENSIONS[file_format])
  for line in refused:
    print(line, file=sys.stderr)
  failures = len(refused)

  def warn(message: str) -> None:
    _say(f"separate: warning: {message}", sys.stderr)

  options = dict(
    subtype=subtype,
    file_format=file_format,
    clip_mode=args.clip_mode,
    mp3_bitrate_kbps=args.mp3_bitrate,
    stop=stop,
    warn=warn,
  )

  def separate_one(track: str, files: dict[str, pathlib.Path]) -> str:
    stop.raise_if_set(track)
    folder = stem_files.track_folder(args.filename, root, track)
    if folder is not None:
      paths = separator.separate_to_folder(track, folder, plots=args.plots, **options)
      return f"{track} -> {folder}/ ({', '.join(p.name for p in paths.values())})"
    stem_files.write_stem_files(separator, track, files, **options)
    return f"{track} -> {root}/ ({', '.join(str(p.relative_to(root)) for p in files.values())})"

  written = reported = 0
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs))
  try:
    futures = {} if stop.is_set() else {pool.submit(separate_one, *p): p[0] for p in planned}
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
  sys.exit(status)
