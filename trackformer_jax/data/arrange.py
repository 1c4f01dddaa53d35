"""Arranged songs in many styles, written as General MIDI parts grouped by stem.

A song is drawn from ``numpy.random.Generator`` alone (no files): a style (its meter and
feel, tempo range, drum grooves, bass and comping kinds and instrument pools), a key and
mode, a chord progression, and a form of sections (intro, verse, chorus, break, outro) in
which parts drop out and come back. Each stem is a list of parts, one part being one
instrument (``Part``): ``vocals`` a lead melody phrased like a singer (and sometimes a
backing line in the chorus), ``bass`` a bass line on the chords, ``drums`` a General MIDI kit
with grooves, fills and crashes at section changes, ``other`` one to three comping parts
(strummed or arpeggiated guitar, keys, pads, stabs, sections).

Times are in seconds from the start of the excerpt; the excerpt starts at a random bar of
the song, so one track holds section changes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Scales as semitones above the tonic.
_MODES = {
  "major": (0, 2, 4, 5, 7, 9, 11),
  "minor": (0, 2, 3, 5, 7, 8, 10),
  "dorian": (0, 2, 3, 5, 7, 9, 10),
  "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
# Progressions as 0-based scale degrees, one chord a bar.
_PROGRESSIONS = {
  "pop": ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3), (0, 4, 5, 2, 3, 0, 3, 4)),
  "rock": ((0, 6, 3, 0), (0, 3, 4, 4), (0, 2, 3, 4), (5, 3, 4, 0), (0, 0, 3, 4)),
  "blues": ((0, 0, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4),),
  "jazz": ((1, 4, 0, 0), (0, 5, 1, 4), (2, 5, 1, 4), (0, 3, 1, 4)),
  "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4)),
  "vamp": ((0, 0, 3, 3), (0, 6, 0, 6), (0, 3, 0, 3)),
}
# General MIDI programs (0-based) by role.
_LEAD_VOICE = (52, 53, 54, 85, 91)  # choir aahs, voice oohs, synth voice, voice lead, pad
_LEAD_INSTRUMENT = (56, 64, 65, 66, 73, 71, 80, 81, 40, 68, 22, 84)
_DISTORTED_GUITAR = (29, 30)
_CLEAN_GUITAR = (24, 25, 26, 27, 28)
_KEYS = (0, 1, 2, 4, 5, 7, 16, 17, 18, 11)
_PADS = (48, 49, 50, 51, 88, 89, 90, 92, 94, 95, 19)
_SECTIONS = (61, 56, 57, 60, 48, 62)  # brass, trumpet, trombone, horn, strings, synth brass
_SYNTHS = (81, 80, 87, 38, 62, 63, 50)
# General MIDI drum notes.
KICK, SNARE, RIM, CLAP, HAT, PEDAL_HAT, OPEN_HAT = 36, 38, 37, 39, 42, 44, 46
CRASH, RIDE, SPLASH, TAMBOURINE, SHAKER, CONGA_HI, CONGA_LO = 49, 51, 55, 54, 70, 62, 64
TOMS = (50, 48, 47, 45, 43, 41)


@dataclasses.dataclass(frozen=True)
class Style:
  """How a style plays. Grooves are step lists within one bar of ``steps_per_beat`` steps a
  beat; several per instrument are variants drawn per song."""

  name: str
  bpm: tuple[float, float]
  beats_per_bar: int
  steps_per_beat: int  # 4: straight sixteenths; 3: triplets (swing, shuffle, compound); 2
  kick: tuple[tuple[int, ...], ...]
  snare: tuple[tuple[int, ...], ...]
  cymbal: tuple[tuple[int, ...], ...]
  cymbal_notes: tuple[int, ...]
  kits: tuple[int, ...]  # GM drum-kit programs: 0 standard, 8 room, 16 power, 24/25 electronic
  bass: tuple[str, ...]  # bass-line kinds
  bass_programs: tuple[int, ...]
  comp: tuple[tuple[str, tuple[int, ...]], ...]  # (comping kind, its programs)
  modes: tuple[str, ...]
  progressions: tuple[str, ...]
  lead_density: float  # chance that a step of a phrase starts a note
  swing: float = 0.0  # delay of off-beat eighths, as a fraction of a step


def _s(*steps):
  return tuple(steps)


STYLES = (
  Style("rock", (96, 150), 4, 4, (_s(0, 8), _s(0, 6, 8), _s(0, 8, 10)), (_s(4, 12),),
        (_s(0, 2, 4, 6, 8, 10, 12, 14),), (HAT, RIDE), (0, 8, 16), ("eighths", "root_fifth"),
        (33, 34, 29), (("power", _DISTORTED_GUITAR), ("strum", _CLEAN_GUITAR), ("pad", _KEYS)),
        ("major", "minor", "mixolydian"), ("rock", "pop"), 0.35),
  Style("pop", (84, 128), 4, 4, (_s(0, 8), _s(0, 7, 8), _s(0, 10)), (_s(4, 12),),
        (_s(0, 2, 4, 6, 8, 10, 12, 14), _s(*range(16))), (HAT, SHAKER), (0, 8, 24),
        ("eighths", "sustain", "syncopated"), (33, 38, 39, 35),
        (("arpeggio", _KEYS + _CLEAN_GUITAR), ("pad", _PADS), ("block", _KEYS)),
        ("major", "minor"), ("pop",), 0.4),
  Style("funk", (90, 118), 4, 4, (_s(0, 3, 10), _s(0, 6, 10, 11), _s(0, 7, 10)),
        (_s(4, 12), _s(4, 7, 12, 15)), (_s(*range(16)),), (HAT,), (0, 8),
        ("syncopated",), (36, 37, 33, 38),
        (("stabs", _SECTIONS), ("scratch", _CLEAN_GUITAR), ("stabs", (4, 5, 16))),
        ("dorian", "mixolydian"), ("vamp",), 0.45),
  Style("metal", (120, 190), 4, 4, (_s(0, 2, 4, 6, 8, 10, 12, 14), _s(*range(16))),
        (_s(4, 12),), (_s(0, 4, 8, 12),), (CRASH, RIDE), (16, 0), ("riff",), (33, 34, 30),
        (("power", _DISTORTED_GUITAR), ("power", _DISTORTED_GUITAR), ("pad", _PADS)),
        ("minor",), ("minor",), 0.3),
  Style("swing", (110, 190), 4, 3, (_s(0, 6), _s(0,)), (_s(3, 9), _s(9, 11)),
        (_s(0, 3, 5, 6, 9, 11),), (RIDE,), (32, 40), ("walking",), (32, 33),
        (("block", (0, 1, 4, 16)), ("stabs", _SECTIONS), ("comp_guitar", (26,))),
        ("major", "dorian"), ("jazz",), 0.5, 0.0),
  Style("electronic", (118, 135), 4, 4, (_s(0, 4, 8, 12),), (_s(4, 12),),
        (_s(2, 6, 10, 14), _s(*range(0, 16, 2))), (OPEN_HAT, HAT), (24, 25),
        ("offbeat_eighths", "sub"), (38, 39, 87),
        (("arpeggio", _SYNTHS), ("pad", _PADS), ("stabs", _SYNTHS)),
        ("minor", "dorian"), ("minor", "vamp"), 0.35),
  Style("latin", (90, 140), 4, 4, (_s(0, 3, 8, 11),), (_s(3, 6, 10, 12), _s(4, 12)),
        (_s(*range(0, 16, 2)),), (SHAKER, CONGA_HI), (0, 8), ("tumbao",), (32, 33, 35),
        (("arpeggio", (24, 25, 0)), ("stabs", _SECTIONS), ("block", (0, 4))),
        ("minor", "major"), ("minor", "pop"), 0.45),
  Style("ballad", (60, 84), 4, 4, (_s(0, 10), _s(0,)), (_s(8,),), (_s(0, 2, 4, 6, 8, 10, 12, 14),),
        (HAT, RIDE), (0, 8, 40), ("sustain", "root_fifth"), (32, 33, 35),
        (("arpeggio", (0, 1, 24, 46)), ("pad", (48, 49, 89))), ("major", "minor"),
        ("pop", "minor"), 0.3),
  Style("folk", (84, 132), 2, 3, (_s(0,), _s(0, 3)), (_s(3,),), (_s(0, 1, 2, 3, 4, 5),),
        (HAT, TAMBOURINE), (0, 8, 40), ("root_fifth",), (32, 43, 33),
        (("strum", (25, 24)), ("arpeggio", (105, 46, 21)), ("pad", (48, 40, 42))),
        ("major", "mixolydian", "minor"), ("pop", "vamp"), 0.4),
  Style("waltz", (84, 160), 3, 2, (_s(0,),), (_s(2, 4),), (_s(0, 2, 4),), (HAT, RIDE), (0, 40),
        ("root_fifth",), (32, 33, 58), (("block", (0, 21, 4)), ("pad", (48, 49, 52))),
        ("major", "minor"), ("pop", "jazz"), 0.35),
  Style("hiphop", (80, 98), 4, 4, (_s(0, 7, 10), _s(0, 3, 10), _s(0, 10, 11)),
        (_s(4, 12),), (_s(*range(0, 16, 2)), _s(*range(16))), (HAT,), (25, 24, 0),
        ("sub", "syncopated"), (38, 39, 33), (("pad", _PADS), ("block", (4, 5, 0, 11))),
        ("minor", "dorian"), ("minor", "vamp"), 0.5, 0.3),
  Style("reggae", (70, 90), 4, 4, (_s(8,), _s(4, 12)), (_s(8,),), (_s(*range(0, 16, 2)),),
        (HAT, RIM), (0, 8), ("offbeat",), (33, 32),
        (("skank", (27, 28, 16, 0)), ("pad", (16, 17))),
        ("major", "minor"), ("vamp", "pop"), 0.35, 0.2),
  Style("shuffle", (90, 140), 4, 3, (_s(0, 6), _s(0, 5, 6)), (_s(3, 9),),
        (_s(0, 2, 3, 5, 6, 8, 9, 11),), (HAT, RIDE), (0, 8), ("walking", "eighths"), (33, 34),
        (("strum", _CLEAN_GUITAR + _DISTORTED_GUITAR), ("block", (0, 16, 17))),
        ("mixolydian", "major"), ("blues",), 0.4),
)  # fmt: skip
STYLE_NAMES = tuple(s.name for s in STYLES)


@dataclasses.dataclass
class Part:
  """One instrument of a stem: notes ``(pitch, start_s, end_s, velocity)`` on a GM program,
  ``kind`` naming what it plays (e.g. ``power`` for power chords, which are distorted)."""

  program: int
  kind: str
  notes: list[tuple[int, float, float, int]] = dataclasses.field(default_factory=list)
  is_drum: bool = False
  pan: int = 64


@dataclasses.dataclass
class Song:
  style: str
  bpm: float
  key: int
  mode: str
  form: list[str]  # section name of every bar of the excerpt, in order
  stems: dict[str, list[Part]]


class _Grid:
  """Step times of the excerpt: bar ``b``, step ``s`` -> seconds, with swing and jitter."""

  def __init__(self, style: Style, bpm: float, first_bar: int, rng):
    self.style, self.rng = style, rng
    self.step_s = 60.0 / bpm / style.steps_per_beat
    self.bar_steps = style.beats_per_bar * style.steps_per_beat
    self.first_bar = first_bar

  def time(self, bar: int, step: float, jitter_s: float = 0.006) -> float:
    t = ((bar - self.first_bar) * self.bar_steps + step) * self.step_s
    if self.style.swing and self.style.steps_per_beat == 4 and int(step) % 4 == 2:
      t += self.style.swing * self.step_s
    return t + float(self.rng.normal(0.0, jitter_s))


def _form(rng) -> list[tuple[str, int]]:
  """Sections ``(name, bars)`` of a whole song."""
  verse, chorus = int(rng.choice([4, 8])), int(rng.choice([4, 8]))
  form = [("intro", int(rng.choice([2, 4])))]
  for i in range(int(rng.integers(2, 4))):
    form += [("verse", verse), ("chorus", chorus)]
    if i == 0 and rng.random() < 0.6:
      form.append(("break", int(rng.choice([2, 4]))))
  return form + [("outro", int(rng.choice([2, 4])))]


# Which parts play in each section (a break drops some, drawn per song).
def _active(section: str, rng_break: dict) -> set[str]:
  every = {"vocals", "bass", "drums", "other", "backing"}
  return {
    "intro": {"drums", "other"} | ({"bass"} if rng_break["intro_bass"] else set()),
    "verse": every - {"backing"},
    "chorus": every,
    "break": rng_break["break"],
    "outro": {"bass", "other", "drums"},
  }[section]


def _chord(key: int, mode: str, degree: int, size: int = 3) -> list[int]:
  """Pitch classes above ``key`` (MIDI number of the tonic) of a diatonic chord, stacked in
  thirds from ``degree``: ``[root, third, fifth(, seventh)]`` as semitones above ``key``."""
  scale = _MODES[mode]
  return [scale[(degree + 2 * i) % 7] + 12 * ((degree + 2 * i) // 7) for i in range(size)]


def _in_range(pitch: int, low: int, high: int) -> int:
  while pitch < low:
    pitch += 12
  while pitch > high:
    pitch -= 12
  return pitch


def _drums(part: Part, style: Style, grid: _Grid, bars, rng) -> None:
  kick = style.kick[int(rng.integers(len(style.kick)))]
  snare = style.snare[int(rng.integers(len(style.snare)))]
  cymbal = style.cymbal[int(rng.integers(len(style.cymbal)))]
  cymbal_note = int(rng.choice(style.cymbal_notes))
  velocity = int(rng.integers(70, 110))

  def hit(note, bar, step, accent=0):
    t = max(grid.time(bar, step, 0.004), 0.0)
    v = int(np.clip(velocity + accent + rng.integers(-12, 10), 1, 127))
    part.notes.append((note, t, t + 0.12, v))

  previous = None
  for i, (bar, section, active) in enumerate(bars):
    if "drums" not in active:
      previous = section
      continue
    if section != previous:
      hit(CRASH, bar, 0, 15)
    next_section = bars[i + 1][1] if i + 1 < len(bars) else section
    fill = next_section != section or (bar % 8 == 7 and rng.random() < 0.5)
    fill_from = grid.bar_steps - grid.style.steps_per_beat * int(rng.choice([1, 1, 2]))
    for step in range(grid.bar_steps):
      if fill and step >= fill_from:
        if rng.random() < 0.8:
          tom = TOMS[min((step - fill_from) * len(TOMS) // (grid.bar_steps - fill_from), 5)]
          hit(SNARE if rng.random() < 0.3 else tom, bar, step, 5)
        continue
      if step in kick:
        hit(KICK, bar, step, 12)
      if step in snare:
        hit(CLAP if style.name in ("electronic", "hiphop") and rng.random() < 0.5 else SNARE,
            bar, step, 8)  # fmt: skip
      elif style.name in ("funk", "hiphop", "rock") and rng.random() < 0.06:
        hit(SNARE, bar, step, -40)  # a ghost note
      if step in cymbal:
        note = cymbal_note
        if section == "chorus" and note == HAT and step % grid.style.steps_per_beat == 2:
          note = OPEN_HAT if rng.random() < 0.3 else note
        hit(note, bar, step, 6 if step % grid.style.steps_per_beat == 0 else -8)
    previous = section


def _bass(part: Part, style: Style, grid: _Grid, bars, chords, key, mode, rng) -> None:
  kind = str(rng.choice(style.bass))
  velocity = int(rng.integers(80, 115))
  spb = style.steps_per_beat
  scale = _MODES[mode]

  def note(pitch, bar, step, steps, accent=0):
    start = max(grid.time(bar, step), 0.0)
    end = max(grid.time(bar, step + steps * 0.9, 0.0), start + 0.05)
    v = int(np.clip(velocity + accent + rng.integers(-10, 10), 1, 127))
    part.notes.append((_in_range(pitch, 28, 55), start, end, v))

  for i, (bar, _, active) in enumerate(bars):
    if "bass" not in active:
      continue
    root = key + chords[i][0] - 12
    fifth = key + chords[i][2] - 12
    n = grid.bar_steps
    if kind == "eighths":
      for step in range(0, n, max(spb // 2, 1)):
        note(root, bar, step, max(spb // 2, 1), 8 if step % spb == 0 else 0)
    elif kind == "riff":
      for step in range(0, n, 2 if rng.random() < 0.7 else 1):
        note(root if rng.random() < 0.85 else fifth, bar, step, 1, 6)
    elif kind == "root_fifth":
      for beat in range(style.beats_per_bar):
        note(root if beat % 2 == 0 else fifth, bar, beat * spb, spb)
    elif kind == "walking":
      target = key + chords[(i + 1) % len(chords)][0] - 12
      walk = [root, key + chords[i][1] - 12, fifth, target + int(rng.choice([-1, 1, 2]))]
      for beat in range(style.beats_per_bar):
        note(walk[beat % 4], bar, beat * spb, spb)
    elif kind == "sustain":
      note(root, bar, 0, n if rng.random() < 0.6 else n // 2)
      if rng.random() < 0.4:
        note(fifth, bar, n // 2, n // 2)
    elif kind == "syncopated":
      for step in (0, 3, 6, 8, 10, 11, 14):
        if step < n and (step == 0 or rng.random() < 0.55):
          octave = 12 if rng.random() < 0.2 else 0
          pitch = root + octave if rng.random() < 0.8 else key + scale[int(rng.integers(7))] - 12
          note(pitch, bar, step, 1.5, 10 if step == 0 else 0)
    elif kind == "tumbao":
      note(fifth, bar, 6, 4)
      note(root, bar, 12 % n, 4)
    elif kind == "offbeat":
      for step in (2, 3, 6, 10, 11, 14):
        if step < n and rng.random() < 0.7:
          note(root if step < 8 else fifth, bar, step, 1)
    elif kind == "offbeat_eighths":
      for step in range(2, n, 4):
        note(root, bar, step, 2, 6)
    else:  # "sub": long low notes
      note(root - 12, bar, 0, n * 0.75, 10)


def _comp(part: Part, style: Style, grid: _Grid, bars, chords, key, rng) -> None:
  velocity = int(rng.integers(60, 100))
  spb, n = style.steps_per_beat, grid.bar_steps
  low = int(rng.integers(50, 60))

  def chord(i, pitches, bar, step, steps, accent=0, spread_s=0.0):
    start = max(grid.time(bar, step), 0.0)
    end = max(grid.time(bar, step + steps * 0.92, 0.0), start + 0.05)
    for j, p in enumerate(pitches):
      v = int(np.clip(velocity + accent + rng.integers(-8, 8), 1, 127))
      part.notes.append((p, start + j * spread_s, end, v))

  pattern = [int(s) for s in np.flatnonzero(rng.random(n) < 0.35)] or [0]
  for i, (bar, section, active) in enumerate(bars):
    if "other" not in active:
      continue
    tones = [_in_range(key + c, low, low + 14) for c in chords[i]]
    root = _in_range(key + chords[i][0], 40, 52)
    if part.kind == "power":
      for step in range(0, n, 2 if section != "chorus" or rng.random() < 0.5 else 1):
        chord(i, [root, root + 7, root + 12], bar, step, 2 if step % 2 == 0 else 1, 6)
    elif part.kind in ("strum", "comp_guitar"):
      strokes = range(0, n, max(spb // 2, 1)) if part.kind == "strum" else (0, spb * 2)
      voicing = sorted(tones + [tones[0] + 12, root])
      for step in strokes:
        down = step % spb == 0
        chord(i, voicing if down else voicing[::-1][:4], bar, step, spb // 2 or 1,
              8 if down else -6, spread_s=float(rng.uniform(0.006, 0.018)))  # fmt: skip
    elif part.kind == "arpeggio":
      notes = tones + [tones[0] + 12, tones[1] + 12]
      rate = int(rng.choice([1, 2])) if spb == 4 else 1
      for j, step in enumerate(range(0, n, rate)):
        chord(i, [notes[j % len(notes)]], bar, step, rate * 2)
    elif part.kind == "pad":
      chord(i, tones + ([tones[0] - 12] if rng.random() < 0.5 else []), bar, 0, n, -10)
    elif part.kind in ("stabs", "scratch"):
      for step in pattern:
        chord(i, tones if part.kind == "stabs" else tones[:2], bar, step, 1, 10)
    elif part.kind == "skank":
      for step in range(spb // 2 or 1, n, spb):
        chord(i, tones, bar, step, 1, 6)
    else:  # "block": chords on the beats
      for beat in range(style.beats_per_bar):
        if beat == 0 or rng.random() < 0.7:
          chord(i, tones, bar, beat * spb, spb, 6 if beat == 0 else 0)


def _melody(part: Part, style: Style, grid: _Grid, bars, chords, key, mode, rng, role) -> None:
  """A sung-like line: phrases of one or two bars with breaths between, chord tones on the
  beats, scale steps between, a long note at the end of each phrase."""
  scale = _MODES[mode]
  velocity = int(rng.integers(75, 110))
  spb, n = style.steps_per_beat, grid.bar_steps
  centre = int(rng.integers(62, 72)) - (5 if role == "backing" else 0)
  degree = int(rng.integers(0, 7))
  phrase_left = 0
  for i, (bar, _, active) in enumerate(bars):
    if role not in active:
      phrase_left = 0
      continue
    if phrase_left <= 0:
      phrase_left = int(rng.choice([1, 2, 2]))
      resting = rng.random() < 0.3
    phrase_left -= 1
    if resting:
      continue
    step = int(rng.integers(0, spb)) if rng.random() < 0.5 else 0
    last = n - spb if phrase_left == 0 else n
    while step < last:
      length = int(rng.choice([1, 2, 2, 3, 4, 4, 6, 8])) if spb == 4 else int(rng.choice([1, 2, 3]))
      if role == "backing":
        length = max(length, spb * 2)
      if step % spb == 0:
        chord_tones = [(c % 12) for c in chords[i]]
        options = [d for d in range(7) if scale[d] in chord_tones]
        degree = min(options, key=lambda d: abs(d - degree)) if options else degree
      else:
        degree += int(rng.choice([-2, -1, -1, 1, 1, 2]))
      pitch = _in_range(key + scale[degree % 7] + 12 * (degree // 7), centre - 7, centre + 9)
      if rng.random() < style.lead_density * 1.6 or step == 0:
        start = max(grid.time(bar, step), 0.0)
        end = grid.time(bar, min(step + length, n) - 0.15, 0.0)
        v = int(np.clip(velocity + rng.integers(-12, 8), 1, 127))
        part.notes.append((pitch, start, max(end, start + 0.08), v))
      step += length


def compose(rng: np.random.Generator, seconds: float, style: str | None = None) -> Song:
  """A new song's excerpt of ``seconds``, drawn from ``rng`` (and ``style`` if given)."""
  chosen = (
    STYLES[int(rng.integers(len(STYLES)))] if style is None else STYLES[STYLE_NAMES.index(style)]
  )
  bpm = float(rng.uniform(*chosen.bpm))
  mode = str(rng.choice(chosen.modes))
  key = int(rng.integers(0, 12)) + 48
  progression_pool = _PROGRESSIONS[str(rng.choice(chosen.progressions))]
  progressions = {
    name: progression_pool[int(rng.integers(len(progression_pool)))]
    for name in ("intro", "verse", "chorus", "break", "outro")
  }
  seventh = chosen.name in ("swing", "funk", "hiphop") or rng.random() < 0.15
  sections = [name for name, count in _form(rng) for _ in range(count)]
  beat_s = 60.0 / bpm * (1.5 if chosen.steps_per_beat == 3 and chosen.beats_per_bar == 2 else 1)
  bar_s = beat_s * chosen.beats_per_bar
  excerpt_bars = int(np.ceil(seconds / bar_s)) + 1
  while len(sections) < excerpt_bars:
    sections += sections[1:]
  first_bar = int(rng.integers(0, len(sections) - excerpt_bars + 1))
  grid = _Grid(chosen, bpm, first_bar, rng)
  # In compound meters the step is an eighth of a dotted-quarter beat.
  grid.step_s = bar_s / grid.bar_steps
  breaks = {
    "intro_bass": rng.random() < 0.5,
    "break": [{"drums", "bass"}, {"other", "vocals"}, {"drums"}, {"other", "bass"}][
      int(rng.integers(4))
    ],
  }
  bars, chords = [], []
  for bar in range(first_bar, first_bar + excerpt_bars):
    section = sections[bar]
    bars.append((bar, section, _active(section, breaks)))
    position = bar - sections.index(section)
    progression = progressions[section]
    chords.append(_chord(0, mode, progression[position % len(progression)], 4 if seventh else 3))

  def pan():
    return int(np.clip(64 + rng.normal(0, 28), 8, 120))

  kit = int(rng.choice(chosen.kits))
  drums = Part(kit, "kit", is_drum=True)
  _drums(drums, chosen, grid, bars, rng)
  bass = Part(int(rng.choice(chosen.bass_programs)), "bass", pan=64)
  _bass(bass, chosen, grid, bars, chords, key, mode, rng)
  other = []
  count = int(rng.integers(1, len(chosen.comp) + 1))
  for j in rng.permutation(len(chosen.comp))[:count]:
    kind, programs = chosen.comp[int(j)]
    part = Part(int(rng.choice(programs)), kind, pan=pan())
    _comp(part, chosen, grid, bars, chords, key, rng)
    other.append(part)
  lead_pool = _LEAD_VOICE if rng.random() < 0.6 else _LEAD_INSTRUMENT
  vocals = [Part(int(rng.choice(lead_pool)), "lead", pan=int(rng.integers(54, 75)))]
  _melody(vocals[0], chosen, grid, bars, chords, key, mode, rng, "vocals")
  if rng.random() < 0.5:
    vocals.append(Part(int(rng.choice(_LEAD_VOICE)), "backing", pan=pan()))
    _melody(vocals[1], chosen, grid, bars, chords, key, mode, rng, "backing")
  stems = {"vocals": vocals, "bass": [bass], "drums": [drums], "other": other}
  for parts in stems.values():
    for part in parts:
      part.notes = [x for x in part.notes if x[1] < seconds]
  return Song(chosen.name, bpm, key, mode, [s for _, s, _ in bars], stems)
