"""Arranged songs in many styles, rendered stem by stem, produced, in the MUSDB18-HQ layout.

Each track is a new song from ``data.arrange`` (rock, pop, funk, metal, swing, electronic,
latin, ballad, folk, waltz, hip-hop, reggae, shuffle), drawn from
``np.random.default_rng((seed, index))``. Every part (one instrument) is synthesised on its
own with FluidSynth through a SoundFont drawn per part, then processed (``data.production``:
overdrive on guitars, chorus on keys; then per stem EQ, compression, reverb, and a loudness
of its own). The stems are summed into the mixture after all processing, so the mixture is
still their exact sum (``data.multitrack.write_track``)::

  <out>/{train,test}/<NNNN>-<style>/{mixture,vocals,bass,drums,other}.wav + meta.json

A track goes to ``test`` when the hash of ``song-<index>`` falls in the top 20 %; a held-out
set of new songs is the test split rendered with another seed and SoundFont.

Command line::

  python -m trackformer_jax.data.songs --out data/songs --tracks 128 --seconds 30
  # held-out songs, never trained on: other seed, other SoundFont
  python -m trackformer_jax.data.songs --out data/heldout_songs --tracks 120 --seconds 20 \
      --only-split test --seed 1 --soundfont /usr/share/sounds/sf2/TimGM6mb.sf2
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from trackformer_jax.data import arrange, multitrack, production, render

DEFAULT_SOUNDFONTS = render.DEFAULT_SOUNDFONTS


def song_name(index: int) -> str:
  """The name a track's split is drawn from (independent of the seed and style)."""
  return f"song-{index:04d}"


def _instrument(pretty_midi, part: arrange.Part, rng):
  instrument = pretty_midi.Instrument(program=part.program, is_drum=part.is_drum)
  instrument.control_changes.append(pretty_midi.ControlChange(10, part.pan, 0.0))
  # FluidSynth's own reverb send, kept small: the stem's reverb comes from production.
  instrument.control_changes.append(pretty_midi.ControlChange(91, int(rng.integers(0, 30)), 0.0))
  for pitch, start, end, velocity in part.notes:
    instrument.notes.append(pretty_midi.Note(velocity, pitch, start, end))
  return instrument


def render_song(
  index: int,
  out_dir: str,
  seconds: float,
  seed: int,
  soundfonts: tuple[str, ...],
  only_split: str | None = None,
  font_files: dict[str, str] | None = None,
) -> str | None:
  """Renders track ``index`` (skipped if already finished) -> its folder, or None when
  ``only_split`` leaves it out."""
  import pretty_midi

  done = multitrack.finished_track(Path(out_dir), index)
  if done:
    return done
  split = render.split_of_song(song_name(index))
  if only_split and split != only_split:
    return None
  rng = np.random.default_rng((seed, index))
  song = arrange.compose(rng, seconds)
  frames = int(round(seconds * multitrack.SAMPLE_RATE_HZ))
  rate = multitrack.SAMPLE_RATE_HZ
  stems, described = {}, {}
  with tempfile.TemporaryDirectory(prefix=f"song-{index:04d}-") as workdir:
    for stem, parts in song.stems.items():
      total = np.zeros((2, frames))
      described[stem] = []
      for j, part in enumerate(parts):
        font = soundfonts[int(rng.integers(len(soundfonts)))]
        signal = multitrack.synthesise(
          pretty_midi,
          [_instrument(pretty_midi, part, rng)],
          (font_files or {}).get(font, font),
          workdir,
          f"{stem}{j}",
          frames,
        )
        effects, names = production.part_effects(part.kind, rng)
        total += production.apply(effects, signal, rate)
        described[stem].append(
          dict(program=part.program, kind=part.kind, soundfont=os.path.basename(font), fx=names)
        )
      effects, names = production.stem_effects(stem, rng)
      stems[stem] = production.apply(effects, total, rate)
      described[stem].append(dict(stem_fx=names))
  stems, gains = production.balance(stems, rate, rng)
  peak = float(rng.uniform(0.5, 0.9))
  track_dir = Path(out_dir) / split / f"{index:04d}-{song.style}"
  meta = dict(
    index=index,
    song=song_name(index),
    split=split,
    seed=seed,
    seconds=seconds,
    style=song.style,
    bpm=round(song.bpm, 2),
    key=song.key,
    mode=song.mode,
    form=song.form,
    parts=described,
    gains_db=gains,
    peak=peak,
  )
  multitrack.write_track(track_dir, np.stack([stems[n] for n in multitrack.STEM_NAMES]), peak, meta)
  return str(track_dir)


def render_songs(
  out_dir: str | os.PathLike,
  tracks: int,
  seconds: float = 30.0,
  seed: int = 0,
  jobs: int = 1,
  soundfont=DEFAULT_SOUNDFONTS,
  progress: bool = True,
  only_split: str | None = None,
) -> list[str]:
  """Renders songs ``0 .. tracks-1`` into ``out_dir`` (finished ones are skipped); returns
  their folders in index order. ``soundfont``: one General MIDI SoundFont or a list, one
  drawn per part."""
  return render.render_prepared(
    render_song, out_dir, tracks, seconds, seed, soundfont, only_split, jobs=jobs, progress=progress
  )


def main(argv: list[str] | None = None) -> int:
  return multitrack.corpus_main(
    argv,
    prog="python -m trackformer_jax.data.songs",
    description="Render arranged songs in many styles, part by part (MUSDB18-HQ layout).",
    render=render_songs,
    tracks=128,
    seconds=30.0,
    fonts=DEFAULT_SOUNDFONTS,
  )


if __name__ == "__main__":
  sys.exit(main())
