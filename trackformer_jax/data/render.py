"""The bundled multi-stem corpus: music21 scores rendered stem by stem with FluidSynth.

Nothing can be downloaded on the machines this project runs on, yet evaluation needs
mixtures with their true stems. So the project renders its own: polyphonic scores from
music21's corpus (Bach chorales first, then other 3-5 part works it ships), each voice
synthesised *separately* through a General MIDI SoundFont, plus a generated drum part:

* ``vocals``: the top voice, on a voice or lead patch;
* ``bass``: the lowest voice, on a bass patch;
* ``other``: the inner voices, each on a randomly drawn instrument;
* ``drums``: a GM drum-kit part following the piece's meter and tempo.

Instruments, tempo, transposition, velocities, pan, reverb and per-stem gains are drawn
per track from ``np.random.default_rng((seed, track_index))``, so a corpus is a pure
function of its seed and size. Output is the MUSDB18-HQ layout::

  <out>/{train,test}/<NNNN>-<score>/{mixture,vocals,bass,drums,other}.wav  + meta.json

at 44.1 kHz stereo, PCM_16. The stems are quantised to 16 bits first and the mixture is
their integer sum, so ``mixture == vocals + bass + drums + other`` holds *exactly* after
reading back as float32; a common scale keeps the mixture's peak at most 0.9 full scale,
so nothing clips. A score goes to ``test`` when the hash of its name falls in the top
20 %, so no score is in both splits. ``meta.json`` is written last and marks a finished
track: rerunning skips finished tracks (resumable), and every file is written to a
temporary name and renamed. ``<out>/render.json`` keeps the seed, length and SoundFonts, and
a folder refuses tracks rendered with others.

Each stem is drawn from the SoundFonts given (by default FluidR3, MuseScore General Lite and
sf_GMbank), so every instrument is heard in several renderings. An .sf3 is decompressed once
into the user's cache first (``data.soundfont``): FluidSynth would decode it for every stem.

Command line::

  python -m trackformer_jax.data.render --out data/chorales --tracks 128 --seconds 30 -j 2
  # held-out songs only (the test split of the first 120 scores), another SoundFont and seed:
  python -m trackformer_jax.data.render --out data/heldout --tracks 120 --only-split test \
      --soundfont /usr/share/sounds/sf2/TimGM6mb.sf2 --seed 1
  # one SoundFont only (repeat --soundfont to draw from several)
  python -m trackformer_jax.data.render --out data/chorales_fluid --tracks 24 \
      --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from trackformer_jax.data import multitrack, reserved
from trackformer_jax.data import soundfont as soundfont_files

SAMPLE_RATE_HZ = multitrack.SAMPLE_RATE_HZ
STEM_NAMES = multitrack.STEM_NAMES
# The corpus's SoundFonts, one drawn per stem: every instrument has three renderings, so a
# model trained on them carries over to a SoundFont it never heard (README: with FluidR3
# alone, quick.py missed the held-out target on some stems for both seeds tried). The order
# is part of the draw. Held-out sets use TimGM6mb, which no corpus default uses.
DEFAULT_SOUNDFONTS = (
  "/usr/share/sounds/sf2/FluidR3_GM.sf2",
  "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",
  "/usr/share/sounds/sf2/sf_GMbank.sf2",
)
SOUNDFONT_PACKAGES = multitrack.SOUNDFONT_PACKAGES
# Quickstart size: the corpus `chorales` builds on first use (103 train and 25 test songs;
# about 3 minutes on 2 cores).
QUICKSTART_TRACKS = 128
QUICKSTART_SECONDS = 30.0
# Full default build: 640 tracks x 30 s = 5.3 hours of audio.
DEFAULT_TRACKS = 640
DEFAULT_SECONDS = 30.0
TEST_FRACTION = 0.2

# Composers in the order their works are used: Bach first (the chorales), then other
# polyphonic music. Only parseable score formats (not analyses such as .rntxt).
_COMPOSERS = ("bach", "monteverdi", "palestrina", "haydn", "mozart", "beethoven", "trecento")
_SCORE_EXTENSIONS = (".mxl", ".xml", ".musicxml", ".krn")
_MIN_PARTS, _MAX_PARTS = 3, 5

# General MIDI programs (0-based), grouped by the role they play.
_VOCAL_PROGRAMS = (52, 53, 54, 85, 80, 81, 73, 68, 56, 64, 65, 40)
_BASS_PROGRAMS = (32, 33, 34, 35, 38, 39, 43, 70, 58)
_INNER_PROGRAMS = (0, 4, 6, 11, 16, 19, 24, 25, 26, 41, 42, 46, 48, 49, 60, 61, 68, 71, 88, 89)
# GM drum notes.
_KICK, _SNARE, _HAT, _OPEN_HAT, _RIDE, _CRASH = 36, 38, 42, 46, 51, 49
_TOMS = (50, 48, 47, 45, 43)
_DRUMS_OFFSET_DB = 10.0


def score_paths() -> list[str]:
  """The ordered list of corpus scores a track index draws from (deterministic)."""
  from music21 import corpus

  paths = []
  for composer in _COMPOSERS:
    found = sorted(str(p) for p in corpus.getComposer(composer))
    paths.extend(p for p in found if p.endswith(_SCORE_EXTENSIONS))
  return paths


def score_name(path: str) -> str:
  """A short, filesystem-safe name for a score, e.g. ``bach-bwv1.6``."""
  p = Path(path)
  name = f"{p.parent.name}-{p.stem}"
  return "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)


def split_of_song(song: str) -> str:
  """``train`` or ``test`` from a stable hash of the song's name (80 / 20)."""
  fraction = int.from_bytes(hashlib.sha1(song.encode()).digest()[:8], "big") / 2**64
  return "test" if fraction >= 1.0 - TEST_FRACTION else "train"


def _load_voices(path: str):
  """Parses a score into its pitched voices, top first.

  Returns ``(voices, beats_per_bar, beat_quarters, length_quarters)`` where each voice is
  a list of ``(onset_quarters, duration_quarters, [midi pitches])``, or None when the
  score is unusable (parse error, too few or too many voices).
  """
  from music21 import converter, meter

  try:
    score = converter.parse(path)
  except Exception:  # music21 raises many types on odd files; any of them means "skip".
    return None
  voices = []
  for part in score.parts:
    notes = []
    for n in part.stripTies().flatten().notes:
      pitches = [p.midi for p in n.pitches]
      duration = float(n.duration.quarterLength)
      if pitches and duration > 0:
        notes.append((float(n.offset), duration, pitches))
    if notes:
      voices.append(notes)
  if not _MIN_PARTS <= len(voices) <= _MAX_PARTS:
    return None
  signatures = list(score.recurse().getElementsByClass(meter.TimeSignature))
  numerator, denominator = (4, 4)
  if signatures:
    numerator, denominator = signatures[0].numerator, signatures[0].denominator
  # Compound meters (6/8, 9/8, 12/8) have dotted-quarter beats.
  if denominator == 8 and numerator % 3 == 0 and numerator > 3:
    beats_per_bar, beat_quarters = numerator // 3, 1.5
  else:
    beats_per_bar, beat_quarters = max(numerator, 1), 4.0 / denominator
  length = max(onset + duration for v in voices for onset, duration, _ in v)
  return voices, beats_per_bar, beat_quarters, length


def _pitched_instrument(
  pretty_midi,
  program: int,
  notes,
  *,
  rng,
  transpose: int,
  seconds_per_quarter: float,
  offset_quarters: float,
  loop_quarters: float,
  duration_s: float,
  octave_shift: int = 0,
):
  """A pretty_midi instrument playing ``notes`` looped from ``offset_quarters`` on."""
  instrument = pretty_midi.Instrument(program=program)
  base_velocity = int(rng.integers(60, 111))
  instrument.control_changes.append(pretty_midi.ControlChange(10, int(rng.integers(24, 105)), 0.0))
  instrument.control_changes.append(pretty_midi.ControlChange(91, int(rng.integers(10, 70)), 0.0))
  repeat = 0
  while True:
    shift = repeat * loop_quarters - offset_quarters
    if shift * seconds_per_quarter >= duration_s:
      break
    for onset, duration, pitches in notes:
      start = (onset + shift) * seconds_per_quarter
      end = start + duration * seconds_per_quarter * 0.95
      if end <= 0 or start >= duration_s:
        continue
      for pitch in pitches:
        pitch = int(np.clip(pitch + transpose + 12 * octave_shift, 21, 108))
        velocity = int(np.clip(base_velocity + rng.integers(-12, 13), 1, 127))
        instrument.notes.append(pretty_midi.Note(velocity, pitch, max(start, 0.0), end))
    repeat += 1
  return instrument


def _drum_instrument(
  pretty_midi, *, rng, beats_per_bar: int, beat_seconds: float, duration_s: float
):
  """A GM drum-kit part: kick on strong beats, snare on back-beats, hats or ride."""
  kit = pretty_midi.Instrument(program=0, is_drum=True)
  cymbal = _RIDE if rng.random() < 0.3 else _HAT
  subdivision = int(rng.choice([1, 2, 2, 4]))  # cymbal hits per beat
  base_velocity = int(rng.integers(60, 105))
  fill_every = int(rng.choice([4, 8]))

  def hit(note: int, time: float, accent: int = 0):
    if time < duration_s:
      velocity = int(np.clip(base_velocity + accent + rng.integers(-10, 11), 1, 127))
      kit.notes.append(pretty_midi.Note(velocity, note, time, min(time + 0.1, duration_s)))

  bar_seconds = beats_per_bar * beat_seconds
  num_bars = int(np.ceil(duration_s / bar_seconds))
  for bar in range(num_bars):
    bar_start = bar * bar_seconds
    if bar % fill_every == 0:
      hit(_CRASH, bar_start, 10)
    fill = bar % fill_every == fill_every - 1
    for beat in range(beats_per_bar):
      t = bar_start + beat * beat_seconds
      if fill and beat == beats_per_bar - 1:
        for i, tom in enumerate(_TOMS[:4]):
          hit(tom, t + i * beat_seconds / 4, 5)
        continue
      strong = beat == 0 or (beats_per_bar == 4 and beat == 2)
      if strong:
        hit(_KICK, t, 15)
      elif beats_per_bar >= 2 and (beat % 2 == 1 or beats_per_bar == 3):
        hit(_SNARE, t, 5)
      for s in range(subdivision):
        open_hat = cymbal == _HAT and s == subdivision - 1 and rng.random() < 0.1
        hit(_OPEN_HAT if open_hat else cymbal, t + s * beat_seconds / subdivision, 0 if s else 8)
  return kit


def check_settings(out: Path, seed: int, seconds: float, soundfonts: tuple[str, ...]) -> None:
  """One corpus folder, one rendering: refuses to add tracks made with other settings.

  The settings are kept in ``<out>/render.json``. A folder rendered before that file existed
  is judged by its tracks' ``meta.json``: their seed and length, and the set of SoundFonts
  they drew (a one-SoundFont corpus must not grow into a three-SoundFont one).
  """
  wanted = {
    "seed": seed,
    "seconds": seconds,
    "soundfonts": [os.path.basename(f) for f in soundfonts],
  }
  settings = out / "render.json"
  finished = sorted(out.glob("*/*/meta.json"))
  if finished and settings.is_file():
    found = json.loads(settings.read_text())
    same = all(found.get(key) == value for key, value in wanted.items())
  elif finished:
    metas = [json.loads(p.read_text()) for p in finished]
    used = set()
    for meta in metas:
      # `soundfont` (one path) is the key of corpora rendered before several were possible.
      used |= set(meta.get("soundfonts", {}).values()) or {os.path.basename(meta["soundfont"])}
    found = {
      "seed": sorted({meta["seed"] for meta in metas}),
      "seconds": sorted({meta["seconds"] for meta in metas}),
      "soundfonts": sorted(used),
    }
    same = (
      found["seed"] == [seed]
      and found["seconds"] == [seconds]
      and (
        used == set(wanted["soundfonts"]) or (len(metas) == 1 and used <= set(wanted["soundfonts"]))
      )
    )
  if finished and not same:
    raise ValueError(
      f"{out} holds {len(finished)} tracks rendered with {found}; this render asks for "
      f"{wanted}. Render into another folder, or delete this one to rebuild it"
    )
  if not finished or not settings.is_file():
    multitrack.write_json_whole(settings, wanted)


def render_track(
  index: int,
  out_dir: str,
  seconds: float,
  seed: int,
  soundfonts: tuple[str, ...],
  scores: list[str],
  only_split: str | None = None,
  font_files: dict[str, str] | None = None,
) -> str | None:
  """Renders track ``index`` (skipped if already finished); returns its folder.

  Each stem is synthesised with one of ``soundfonts``, drawn per stem when there are
  several, so one corpus holds many renderings of every instrument. ``font_files`` maps a
  SoundFont to the file FluidSynth loads for it (``soundfont.playable_soundfont``: an .sf3's
  decompressed copy); the draw and ``meta.json`` use the names in ``soundfonts``. With
  ``only_split`` ("train" or "test"), a track whose song falls in the other split is not
  rendered and None is returned.
  """
  import pretty_midi

  done = multitrack.finished_track(Path(out_dir), index)
  if done:
    return done
  if only_split and split_of_song(score_name(scores[index % len(scores)])) != only_split:
    return None  # decided before parsing: most tracks of a held-out set are skipped
  out = Path(out_dir)
  rng = np.random.default_rng((seed, index))
  # Track i uses score i (then again with new draws once the list is used up); a score
  # that cannot be parsed or has the wrong number of voices passes to the next one.
  loaded = None
  for attempt in range(len(scores)):
    path = scores[(index + attempt) % len(scores)]
    loaded = _load_voices(path)
    if loaded is not None:
      break
  if loaded is None:
    raise RuntimeError("no usable score in the music21 corpus")
  voices, beats_per_bar, beat_quarters, length_quarters = loaded
  song = score_name(path)
  split = split_of_song(song)
  if only_split and split != only_split:
    return None  # the track's own score was unusable and the next one is of the other split
  track_dir = out / split / f"{index:04d}-{song}"

  frames = int(round(seconds * SAMPLE_RATE_HZ))
  quarter_bpm = float(rng.uniform(66.0, 126.0))
  seconds_per_quarter = 60.0 / quarter_bpm
  transpose = int(rng.integers(-5, 6))
  bar_quarters = beats_per_bar * beat_quarters
  # Long works start at a random bar, so different tracks of one score differ in content.
  piece_seconds = length_quarters * seconds_per_quarter
  offset_quarters = 0.0
  if piece_seconds > 2 * seconds:
    last_bar = int((length_quarters - seconds / seconds_per_quarter) // bar_quarters)
    offset_quarters = bar_quarters * int(rng.integers(0, max(last_bar, 0) + 1))
  # Loop on a whole number of bars, like a repeated verse.
  loop_quarters = bar_quarters * np.ceil(length_quarters / bar_quarters)
  common = dict(
    rng=rng,
    transpose=transpose,
    seconds_per_quarter=seconds_per_quarter,
    offset_quarters=offset_quarters,
    loop_quarters=loop_quarters,
    duration_s=seconds,
  )

  programs = {
    "vocals": [int(rng.choice(_VOCAL_PROGRAMS))],
    "bass": [int(rng.choice(_BASS_PROGRAMS))],
    "other": [int(rng.choice(_INNER_PROGRAMS)) for _ in voices[1:-1]],
  }
  bass_mean = np.mean([p for _, _, ps in voices[-1] for p in ps])
  parts = {
    "vocals": [_pitched_instrument(pretty_midi, programs["vocals"][0], voices[0], **common)],
    "bass": [
      _pitched_instrument(
        pretty_midi,
        programs["bass"][0],
        voices[-1],
        octave_shift=-1 if bass_mean + transpose > 50 else 0,
        **common,
      )
    ],
    "other": [
      _pitched_instrument(pretty_midi, program, voice, **common)
      for program, voice in zip(programs["other"], voices[1:-1])
    ],
    "drums": [
      _drum_instrument(
        pretty_midi,
        rng=rng,
        beats_per_bar=beats_per_bar,
        beat_seconds=beat_quarters * seconds_per_quarter,
        duration_s=seconds,
      )
    ],
  }
  # FluidR3's kit at the velocities above sits ~15 dB under the pitched patches (measured
  # on rendered tracks); the offset brings drums to a pop-mix level before the random gain.
  gains_db = {
    name: float(rng.uniform(-8.0, 0.0)) + (_DRUMS_OFFSET_DB if name == "drums" else 0.0)
    for name in STEM_NAMES
  }
  peak_target = float(rng.uniform(0.5, 0.9))
  # Drawn last and only when there is a choice: a one-SoundFont corpus stays the same
  # function of (seed, index) it always was.
  if len(soundfonts) == 1:
    stem_fonts = {name: soundfonts[0] for name in STEM_NAMES}
  else:
    stem_fonts = {name: soundfonts[int(rng.integers(len(soundfonts)))] for name in STEM_NAMES}

  with tempfile.TemporaryDirectory(prefix=f"render-{index:04d}-") as workdir:
    stems = np.stack(
      [
        multitrack.synthesise(
          pretty_midi,
          parts[name],
          (font_files or {}).get(stem_fonts[name], stem_fonts[name]),
          workdir,
          name,
          frames,
        )
        * 10 ** (gains_db[name] / 20)
        for name in STEM_NAMES
      ]
    )  # [4, 2, frames]
  meta = dict(
    index=index,
    song=song,
    score=os.path.relpath(path, Path(path).parents[1]),
    split=split,
    seed=seed,
    seconds=seconds,
    quarter_bpm=quarter_bpm,
    transpose=transpose,
    meter=[beats_per_bar, beat_quarters],
    offset_quarters=offset_quarters,
    programs=programs,
    gains_db=gains_db,
    peak=peak_target,
    soundfonts={name: os.path.basename(font) for name, font in stem_fonts.items()},
  )
  multitrack.write_track(track_dir, stems, peak_target, meta)
  return str(track_dir)


def prepare_corpus(out_dir, tracks: int, seconds: float, seed: int, soundfont, only_split):
  """What a FluidSynth corpus render checks and sets up before its workers start.

  Refuses a bad ``only_split``, size or SoundFont (a missing one, or one reserved for
  evaluation in a render with a train split: ``data.reserved``), creates ``out_dir``,
  refuses one rendered with other settings (``check_settings``) and decompresses each .sf3
  once (about 10 s for a 34 MB file). Returns ``(soundfonts, font_files)``: the SoundFont
  names, and the file FluidSynth loads for each.
  """
  if only_split not in (None, "train", "test"):
    raise ValueError(f"only_split must be 'train' or 'test', got {only_split!r}")
  soundfonts = multitrack.check_soundfonts(soundfont)
  reserved.refuse_reserved_soundfonts(soundfonts, only_split)
  if tracks < 1 or seconds <= 0:
    raise ValueError(f"need tracks >= 1 and seconds > 0, got {tracks}, {seconds}")
  os.makedirs(out_dir, exist_ok=True)
  check_settings(Path(out_dir), int(seed), float(seconds), soundfonts)
  # Decompressed once here, before the workers start (about 10 s for a 34 MB .sf3).
  font_files = {font: soundfont_files.playable_soundfont(font) for font in soundfonts}
  return soundfonts, font_files


def render_prepared(
  render_one,
  out_dir,
  tracks: int,
  seconds,
  seed,
  soundfont,
  only_split,
  *,
  jobs,
  progress,
  fields=dict,
) -> list[str]:
  """What every FluidSynth corpus render does: :func:`prepare_corpus`, then
  ``render_one(index, out_dir=, seconds=, seed=, soundfonts=, only_split=, font_files=,
  **fields())`` for each track through ``multitrack.render_all``. ``fields`` is called after
  the checks, so that a refused render costs nothing more."""
  soundfonts, font_files = prepare_corpus(out_dir, tracks, seconds, seed, soundfont, only_split)
  work = functools.partial(
    render_one,
    out_dir=str(out_dir),
    seconds=float(seconds),
    seed=int(seed),
    soundfonts=soundfonts,
    only_split=only_split,
    font_files=font_files,
    **fields(),
  )
  return multitrack.render_all(work, tracks, out_dir, jobs=jobs, progress=progress)


def render_corpus(
  out_dir: str | os.PathLike,
  tracks: int = DEFAULT_TRACKS,
  seconds: float = DEFAULT_SECONDS,
  seed: int = 0,
  jobs: int = 1,
  soundfont: str | os.PathLike | list[str | os.PathLike] | tuple = DEFAULT_SOUNDFONTS,
  progress: bool = True,
  only_split: str | None = None,
) -> list[str]:
  """Renders tracks ``0 .. tracks-1`` into ``out_dir`` (finished ones are skipped).

  ``only_split`` ("train" or "test") renders just the tracks whose song falls in that split:
  ``only_split="test"`` with another ``soundfont`` and ``seed`` makes a held-out set of songs
  that training on a corpus of the same scores never heard, rendered differently.

  ``soundfont`` is one General MIDI SoundFont (.sf2 / .sf3) or a list of them; with a list,
  each stem of each track is synthesised with one drawn from it.

  Returns the rendered track folders in index order.
  """
  return render_prepared(
    render_track,
    out_dir,
    tracks,
    seconds,
    seed,
    soundfont,
    only_split,
    jobs=jobs,
    progress=progress,
    fields=lambda: {"scores": score_paths()},
  )


def main(argv: list[str] | None = None) -> int:
  return multitrack.corpus_main(
    argv,
    prog="python -m trackformer_jax.data.render",
    description="Render the chorale multi-stem corpus (MUSDB18-HQ layout).",
    render=render_corpus,
    tracks=DEFAULT_TRACKS,
    seconds=DEFAULT_SECONDS,
    fonts=DEFAULT_SOUNDFONTS,
  )


if __name__ == "__main__":
  sys.exit(main())
