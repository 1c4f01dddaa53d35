"""Arranged songs in many styles, rendered stem by stem, produced, in the MUSDB18-HQ layout.

Each track is a new song from ``data.arrange`` (rock, pop, funk, metal, swing, electronic,
latin, ballad, folk, waltz, hip-hop, reggae, shuffle), drawn from
``np.random.default_rng((seed, index))``. Every part (one instrument) is synthesised on its
own with FluidSynth through a SoundFont drawn per part, then processed (``data.production``:
overdrive on guitars, chorus on keys; then per stem EQ, compression, reverb, and a loudness
of its own). With ``drum_kits`` (SoundFonts of one multisampled acoustic kit each, as Debian's
avldrums.lv2-soundfont ships), half the acoustic drum parts are played on one of those kits
instead of a General MIDI font's. The stems are summed into the mixture after all
processing, so the mixture is still their exact sum (``data.multitrack.write_track``)::

  <out>/{train,test}/<NNNN>-<style>/{mixture,vocals,bass,drums,other}.wav + meta.json

A track goes to ``test`` when the hash of ``song-<index>`` falls in the top 20 %; a held-out
set of new songs is the test split rendered with another seed and SoundFont.

Command line::

  python -m trackformer_jax.data.songs --out data/songs --tracks 128 --seconds 30 \
      --drum-kit /usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2
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
# The bundled corpus's kit. The package's other kit, Red_Zeppelin_4_LV2.sf2, is kept for a
# held-out set: drums played on a real kit that training never heard.
DEFAULT_DRUM_KITS = ("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2",)
# General MIDI drum programs of drum machines (TR-808 and electronic): no acoustic kit plays
# those parts.
_MACHINE_KITS = (24, 25)


def song_name(index: int) -> str:
  """The name a track's split is drawn from (independent of the seed and style)."""
  return f"song-{index:04d}"


def _instrument(pretty_midi, part: arrange.Part, rng, on_kit: bool = False):
  # A kit SoundFont holds its one preset at bank 0, program 0, where a melodic channel looks.
  instrument = (
    pretty_midi.Instrument(program=0, is_drum=False)
    if on_kit
    else pretty_midi.Instrument(program=part.program, is_drum=part.is_drum)
  )
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
  drum_kits: tuple[str, ...] = (),
) -> str | None:
  """Renders track ``index`` (skipped if already finished) -> its folder, or None when
  ``only_split`` leaves it out. ``drum_kits``: those of ``soundfonts`` that are acoustic
  kits (played by drum parts only)."""
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
  general_midi = tuple(font for font in soundfonts if font not in drum_kits)
  with tempfile.TemporaryDirectory(prefix=f"song-{index:04d}-") as workdir:
    for stem, parts in song.stems.items():
      total = np.zeros((2, frames))
      described[stem] = []
      for j, part in enumerate(parts):
        font = general_midi[int(rng.integers(len(general_midi)))]
        acoustic_drums = bool(drum_kits) and part.is_drum and part.program not in _MACHINE_KITS
        # Drawn only for those parts, so that a render without kits stays as it was.
        on_kit = acoustic_drums and rng.random() < 0.5
        if on_kit:
          font = drum_kits[int(rng.integers(len(drum_kits)))]
        signal = multitrack.synthesise(
          pretty_midi,
          [_instrument(pretty_midi, part, rng, on_kit)],
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
  drum_kits=(),
) -> list[str]:
  """Renders songs ``0 .. tracks-1`` into ``out_dir`` (finished ones are skipped); returns
  their folders in index order. ``soundfont``: one General MIDI SoundFont or a list, one
  drawn per part; ``drum_kits``: kit SoundFonts, one drawn for half the acoustic drum parts
  (a corpus records both lists, and refuses to grow with others)."""
  fonts = multitrack.check_soundfonts(soundfont)
  kits = tuple(str(kit) for kit in drum_kits)  # checked with the fonts by render_prepared
  return render.render_prepared(
    render_song,
    out_dir,
    tracks,
    seconds,
    seed,
    fonts + tuple(kit for kit in kits if kit not in fonts),
    only_split,
    jobs=jobs,
    progress=progress,
    fields=lambda: {"drum_kits": kits},
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
    drum_kits=True,
  )


if __name__ == "__main__":
  sys.exit(main())
