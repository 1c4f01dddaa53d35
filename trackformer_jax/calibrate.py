"""Learn which model outputs make which stem from a few labelled songs, and store it.

CLI::

  python -m trackformer_jax.calibrate --model MODEL --data musdb:PATH [--tracks 5]
      [--split train] [--excerpts 4] [--excerpt-seconds 10] [--out STEM_MAP.json]
      [-d cpu|gpu]                        (--workdir: the older name of --model)

MixIT trains without labels, so output ``i`` has no name. A trained network still gives each
output slot a stable role, and a few labelled songs are enough to name them: each song is
cut into ``--excerpts`` excerpts; each excerpt is separated and its outputs are assigned to
the four stems by the K = 4 MixIT assignment (``scoring.best_assignment``: every non-silent
stem gets at least one output); each output votes for the stem it went to (outputs carrying
under 1 % of the excerpt's output energy abstain: where an all but silent output goes is
arbitrary). The stem map sends each output to the stem it was most often assigned to; a stem
that no output won takes the output that voted for it most among those whose stem has
outputs to spare, so every stem has at least one output.

The map is written to ``MODEL/stem_map.json`` (exported folder or workdir), after which
``separate`` writes ``vocals``, ``bass``, ``drums``, ``other`` instead of ``output_i``; or,
with ``--out FILE`` (a read-only model, say), to ``FILE``, for ``separate --stem-map FILE``.
Where it is written is checked before any work. Each output's line shows its votes by stem,
and a warning follows any output whose stem won under ``WEAK_AGREEMENT`` of its votes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from trackformer_jax import command_line
from trackformer_jax.data.tracks import STEM_NAMES

if TYPE_CHECKING:
  from trackformer_jax.inference.loading import LoadedModel
  from trackformer_jax.inference.model_folder import StemMap

_ABSTAIN_ENERGY_SHARE = 0.01
# An output whose stem won fewer of its votes than this is named with a warning: the map may
# change with other songs.
WEAK_AGREEMENT = 0.6


def excerpt_starts(num_frames: int, excerpt_frames: int, count: int) -> list[int]:
  """``count`` evenly spread starts of excerpts of ``excerpt_frames`` (fewer in short songs)."""
  if num_frames <= excerpt_frames:
    return [0]
  count = max(1, min(count, num_frames // excerpt_frames))
  return [int(x) for x in np.linspace(0, num_frames - excerpt_frames, count).round()]


def output_votes(
  outputs: np.ndarray, stems: np.ndarray, mixture: np.ndarray, snr_max_db: float = 30.0
) -> np.ndarray:
  """One excerpt's votes ``[N, K]``: 1 where output ``n`` was assigned to stem ``k``."""
  from trackformer_jax import scoring

  silent = scoring.is_silent(stems)
  labels = scoring.best_assignment(outputs, stems, snr_max_db=snr_max_db, required=~silent)
  energy = np.sum(outputs.reshape(outputs.shape[0], -1).astype(np.float64) ** 2, axis=-1)
  voting = energy >= _ABSTAIN_ENERGY_SHARE * max(energy.sum(), 1e-20)
  votes = np.zeros((outputs.shape[0], stems.shape[0]))
  votes[np.arange(outputs.shape[0]), labels] = voting
  return votes


def stem_map_from_votes(votes: np.ndarray, stems: Sequence[str] = STEM_NAMES) -> StemMap:
  """Majority vote per output, then every stem given at least one output (see module doc)."""
  from trackformer_jax.inference.model_folder import StemMap

  num_outputs, num_stems = votes.shape
  choice = np.argmax(votes, axis=1)
  if num_outputs >= num_stems:
    for _ in range(num_stems):
      counts = np.bincount(choice, minlength=num_stems)
      empty = np.flatnonzero(counts == 0)
      if not empty.size:
        break
      k = empty[0]
      spare = counts[choice] > 1  # outputs whose stem keeps another output if they move
      candidates = np.flatnonzero(spare)
      # Prefer the output most often assigned to k; break ties by its weakest own majority.
      best = candidates[
        np.lexsort((votes[candidates, choice[candidates]], -votes[candidates, k]))[0]
      ]
      choice[best] = k
  return StemMap(
    output_to_stem=tuple(stems[k] for k in choice),
    stems=tuple(stems),
    votes=tuple(tuple(float(v) for v in row) for row in votes),
  )


def calibrate(
  model: LoadedModel,
  data: str,
  *,
  num_tracks: int = 5,
  split: str = "train",
  excerpts: int = 4,
  excerpt_seconds: float = 10.0,
  segment_seconds: float | None = None,
) -> StemMap:
  """Votes over ``num_tracks`` songs of ``data``'s ``split``; returns the stem map."""
  from trackformer_jax.data import sources
  from trackformer_jax.separator import Separator

  source = sources.open_source(data, sample_rate_hz=model.sample_rate_hz, channels=model.channels)
  if not source.has_stems:
    raise sources.DataError(
      f"{data}: calibration needs the labelled stems {'/'.join(STEM_NAMES)}; this source has "
      "none, or other stems"
    )
  tracks = source.split(split)[:num_tracks]
  if not tracks:
    raise sources.DataError(f"{data}: split {split!r} has no tracks")
  separator = Separator(model, segment_seconds=segment_seconds)
  snr_max_db = float(model.config.get("snr_max_db", 30.0)) if model.config else 30.0
  excerpt_frames = round(excerpt_seconds * model.sample_rate_hz)
  votes = np.zeros((model.num_outputs, len(STEM_NAMES)))
  for track in tracks:
    for start in excerpt_starts(track.num_frames, excerpt_frames, excerpts):
      frames = min(excerpt_frames, track.num_frames - start)
      mixture = track.read_mixture(start, frames)
      stems = track.read_stems(start, frames)
      outputs = separator.separate_array(mixture, model.sample_rate_hz, name=track.track_id).outputs
      votes += output_votes(outputs, stems, mixture, snr_max_db)
  if not votes.any():
    raise sources.DataError(f"{data}: no excerpt had audible outputs to vote with")
  return stem_map_from_votes(votes)


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.calibrate",
    description="Name a model's outputs (vocals, bass, drums, other) from a few labelled songs.",
  )
  command_line.add_model_argument(parser, "exported folder or training workdir")
  parser.add_argument("--checkpoint", type=command_line.parse_checkpoint, default="best")
  command_line.add_device_argument(parser)
  parser.add_argument("--data", required=True, help="labelled data: musdb:PATH | chorales:PATH ...")
  parser.add_argument("--tracks", type=int, default=5, help="songs to learn from")
  parser.add_argument("--split", default="train")
  parser.add_argument("--excerpts", type=int, default=4, help="excerpts per song")
  parser.add_argument("--excerpt-seconds", type=float, default=10.0)
  parser.add_argument("--segment", type=float, default=None, metavar="SECONDS")
  parser.add_argument(
    "--out",
    default=None,
    metavar="STEM_MAP.json",
    help="write the stem map here (for separate --stem-map) instead of into the model folder",
  )
  return parser


def stem_map_destination(model: str, out: str | None) -> pathlib.Path:
  """Where the map goes; ValueError naming the folder when it cannot be written there."""
  from trackformer_jax.inference.model_folder import STEM_MAP_FILE

  path = pathlib.Path(out) if out else pathlib.Path(model) / STEM_MAP_FILE
  folder = path.parent
  if not folder.is_dir():
    raise ValueError(f"{folder}: no such folder for the stem map")
  if not os.access(folder, os.W_OK):
    hint = "; give --out STEM_MAP.json to write it elsewhere" if out is None else ""
    raise ValueError(f"{folder}: not writable, the stem map cannot be written there{hint}")
  return path


def describe(stem_map: StemMap) -> tuple[list[str], list[str]]:
  """(one line per output with its votes by stem, warnings for weakly agreed outputs)."""
  votes = np.asarray(stem_map.votes)
  lines, warnings = [], []
  for i, stem in enumerate(stem_map.output_to_stem):
    total = votes[i].sum()
    share = votes[i][stem_map.stems.index(stem)] / max(total, 1)
    by_stem = ", ".join(f"{name} {int(v)}" for name, v in zip(stem_map.stems, votes[i]))
    lines.append(f"output_{i} -> {stem:6s} (votes {by_stem}; {share:.0%} agree)")
    if share < WEAK_AGREEMENT:
      warnings.append(
        f"calibrate: warning: output_{i} -> {stem} has {share:.0%} of its {int(total)} votes, "
        f"under {WEAK_AGREEMENT:.0%}; calibrate on more songs (--tracks) before trusting it"
      )
  return lines, warnings


def main(argv: Sequence[str] | None = None) -> int:
  args = command_line.parse_tool_args(get_parser, argv)
  from trackformer_jax.atomic_files import write_json_atomic
  from trackformer_jax.inference import loading

  try:
    path = stem_map_destination(args.model, args.out)
    command_line.select_device(args.device)
    model = loading.load_model(args.model, checkpoint=args.checkpoint)
    stem_map = calibrate(
      model,
      args.data,
      num_tracks=args.tracks,
      split=args.split,
      excerpts=args.excerpts,
      excerpt_seconds=args.excerpt_seconds,
      segment_seconds=args.segment,
    )
    write_json_atomic(path, stem_map.to_json())
  except (ValueError, RuntimeError, OSError) as e:
    print(f"calibrate: {e}", file=sys.stderr)
    return 1
  lines, warnings = describe(stem_map)
  print("\n".join(lines))
  for warning in warnings:
    print(warning, file=sys.stderr)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  status = main()
  sys.exit(status)
