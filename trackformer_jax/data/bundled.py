"""The bundled training corpus: arranged songs in many styles, plus chorales.

``data/bundled/`` holds one MUSDB18-HQ-layout corpus per kind of music, each built offline
from Debian packages by its own renderer:

* ``songs/``: arranged songs in thirteen styles with production (``data.songs``), half their
  acoustic drum parts on a multisampled kit (``songs.DEFAULT_DRUM_KITS``);
* ``chorales/``: four-part chorales and other polyphony from music21 (``data.render``);
* ``modules/`` (with ``--modules``; not in the quickstart's, whose half hour it would
  overrun): the training split of the tracker modules that Debian's game packages ship,
  rendered instrument by instrument (``data.modules``). Their test split is never rendered
  here: it is the quickstart's held-out set of music written by people.

The data spec ``bundled`` (or ``bundled:PATH``) reads every such sub-corpus of the folder as
one source; ``chorales`` still names the chorales alone.

Command line (what the quickstart runs; finished tracks are skipped, so it resumes)::

  python -m trackformer_jax.data.bundled --out data/bundled
  python -m trackformer_jax.data.bundled --out data/bundled_full --songs 640 --modules
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trackformer_jax.data import render, songs

# Quickstart size: 96 songs and 64 chorales of 30 s (1.3 h of audio).
QUICKSTART_SONGS = 96
QUICKSTART_CHORALES = 64
QUICKSTART_SECONDS = 30.0


def default_dir() -> Path:
  """Where the bundled corpus lives: ``<repo>/data/bundled``."""
  return Path(__file__).resolve().parents[2] / "data" / "bundled"


def is_complete(
  root: Path, num_songs: int = QUICKSTART_SONGS, num_chorales: int = QUICKSTART_CHORALES
) -> bool:
  """Whether ``root`` holds at least the quickstart's finished tracks of each kind."""
  done = {sub: len(list((root / sub).glob("*/*/meta.json"))) for sub in ("songs", "chorales")}
  return done["songs"] >= num_songs and done["chorales"] >= num_chorales


def build(
  root: str | os.PathLike,
  *,
  num_songs: int = QUICKSTART_SONGS,
  num_chorales: int = QUICKSTART_CHORALES,
  seconds: float = QUICKSTART_SECONDS,
  seed: int = 0,
  jobs: int = 1,
  progress: bool = True,
  with_modules: bool = False,
  module_sources=None,
) -> dict[str, int]:
  """Renders (or finishes) the corpus in ``root`` -> ``{sub-corpus: number of tracks}``.

  ``module_sources``: folders or files of tracker modules (default: the Debian packages').
  """
  root = Path(root)
  counts = {}
  if num_songs:
    folders = songs.render_songs(
      root / "songs",
      num_songs,
      seconds,
      seed,
      jobs,
      progress=progress,
      drum_kits=songs.DEFAULT_DRUM_KITS,
    )
    counts["songs"] = len(folders)
  if num_chorales:
    folders = render.render_corpus(
      root / "chorales", num_chorales, seconds, seed, jobs, progress=progress
    )
    counts["chorales"] = len(folders)
  if with_modules:
    from trackformer_jax.data import modules

    folders, problems = modules.render_corpus(
      root / "modules", module_sources, seconds, progress=progress, only_split="train"
    )
    for problem in problems:
      print(f"warning: {problem}", file=sys.stderr)
    counts["modules"] = len(folders)
  return counts


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.data.bundled",
    description="Render the bundled training corpus: arranged songs and chorales.",
  )
  parser.add_argument("--out", default=str(default_dir()), help="output folder")
  parser.add_argument("--songs", type=int, default=QUICKSTART_SONGS)
  parser.add_argument("--chorales", type=int, default=QUICKSTART_CHORALES)
  parser.add_argument("--seconds", type=float, default=QUICKSTART_SECONDS)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
  parser.add_argument(
    "--modules", action="store_true", help="also the training split of the tracker modules"
  )
  args = parser.parse_args(argv)
  try:
    counts = build(
      args.out,
      num_songs=args.songs,
      num_chorales=args.chorales,
      seconds=args.seconds,
      seed=args.seed,
      jobs=args.jobs,
      with_modules=args.modules,
    )
  except (RuntimeError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  total = sum(counts.values())
  detail = ", ".join(f"{n} {kind}" for kind, n in counts.items())
  print(f"{total} tracks ({detail}), {total * args.seconds / 3600:.2f} h of audio in {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
