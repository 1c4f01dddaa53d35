"""Mix production applied to each part and stem before the mixture is summed.

Real mixes are not raw synthesiser output: guitars are overdriven, voices compressed and
sent to reverb, keys chorused, every stem equalised and set to a loudness of its own. Each
stem is processed on its own (Spotify's ``pedalboard`` for the effects, ``pyloudnorm`` for
loudness, ITU-R BS.1770), and the mixture is the sum of the processed stems, so it stays
their exact sum. Every setting is drawn from the ``numpy.random.Generator`` given, and
returned as a description for the track's ``meta.json``.
"""

from __future__ import annotations

import numpy as np

# Each stem's loudness relative to the others' (LUFS offsets, drawn uniformly): a lead
# voice sits on top, bass a little under, as in pop mixes; the whole mix is scaled later.
_LOUDNESS_RANGE_LU = {
  "vocals": (-1.0, 4.0),
  "bass": (-4.0, 1.0),
  "drums": (-2.0, 3.0),
  "other": (-3.0, 2.0),
}
_REFERENCE_LUFS = -22.0
_SILENT_LUFS = -70.0


def _uniform(rng, low, high) -> float:
  return float(rng.uniform(low, high))


def part_effects(kind: str, rng: np.random.Generator):
  """The effect chain of one part (before its stem's chain) and its description.

  ``kind`` is what the part plays (``arrange.Part.kind``): power chords and strummed or
  scratched guitars may be overdriven; keys and pads may get chorus.
  """
  import pedalboard as pb

  effects, described = [], []
  distort = kind == "power" or (kind in ("strum", "scratch", "riff") and rng.random() < 0.35)
  if distort:
    drive = _uniform(rng, 12.0, 30.0) if kind == "power" else _uniform(rng, 6.0, 18.0)
    effects += [
      pb.HighpassFilter(cutoff_frequency_hz=100.0),
      pb.Distortion(drive_db=drive),
      pb.LowpassFilter(cutoff_frequency_hz=_uniform(rng, 4000.0, 7500.0)),
      pb.Gain(gain_db=-drive / 2),
    ]
    described.append(f"distortion {drive:.0f} dB")
  if kind in ("pad", "arpeggio", "block", "skank") and rng.random() < 0.35:
    rate = _uniform(rng, 0.3, 1.5)
    effects.append(pb.Chorus(rate_hz=rate, depth=_uniform(rng, 0.1, 0.4), mix=0.5))
    described.append(f"chorus {rate:.1f} Hz")
  return effects, described


def stem_effects(stem: str, rng: np.random.Generator):
  """The effect chain of one stem and its description: EQ, compression, reverb."""
  import pedalboard as pb

  effects = [pb.HighpassFilter(cutoff_frequency_hz=_uniform(rng, 25.0, 45.0))]
  described = []
  if stem == "vocals":
    effects[0] = pb.HighpassFilter(cutoff_frequency_hz=_uniform(rng, 80.0, 160.0))
    effects.append(pb.PeakFilter(cutoff_frequency_hz=_uniform(rng, 2500, 5000), gain_db=3.0))
  if rng.random() < 0.6:
    effects.append(pb.LowShelfFilter(cutoff_frequency_hz=200.0, gain_db=_uniform(rng, -4, 4)))
    effects.append(pb.HighShelfFilter(cutoff_frequency_hz=6000.0, gain_db=_uniform(rng, -5, 4)))
    described.append("eq")
  if rng.random() < (0.9 if stem in ("vocals", "bass", "drums") else 0.5):
    ratio = _uniform(rng, 2.0, 8.0)
    effects.append(
      pb.Compressor(
        threshold_db=_uniform(rng, -28.0, -12.0),
        ratio=ratio,
        attack_ms=_uniform(rng, 2.0, 20.0),
        release_ms=_uniform(rng, 60.0, 250.0),
      )
    )
    described.append(f"compressor {ratio:.1f}:1")
  reverb_chance = {"vocals": 0.8, "other": 0.6, "drums": 0.4, "bass": 0.1}[stem]
  if rng.random() < reverb_chance:
    wet = _uniform(rng, 0.05, 0.3)
    effects.append(
      pb.Reverb(room_size=_uniform(rng, 0.2, 0.85), damping=0.5, wet_level=wet, dry_level=1.0)
    )
    described.append(f"reverb {wet:.2f}")
  return effects, described


def apply(effects, signal: np.ndarray, sample_rate_hz: int) -> np.ndarray:
  """Runs a chain on ``signal [2, T]`` -> ``float64 [2, T]`` (same length: tails are cut)."""
  import pedalboard as pb

  if not effects or not np.any(signal):
    return np.asarray(signal, np.float64)
  board = pb.Pedalboard(effects)
  out = board(np.ascontiguousarray(signal, np.float32), sample_rate_hz, reset=True)
  out = np.asarray(out, np.float64)[:, : signal.shape[-1]]
  return np.pad(out, ((0, 0), (0, signal.shape[-1] - out.shape[-1])))


def loudness_lufs(signal: np.ndarray, sample_rate_hz: int) -> float:
  """Integrated loudness of ``signal [2, T]`` (BS.1770), or ``-70`` for silence."""
  import pyloudnorm

  if not np.any(signal) or signal.shape[-1] < int(0.4 * sample_rate_hz):
    return _SILENT_LUFS
  value = pyloudnorm.Meter(sample_rate_hz).integrated_loudness(signal.T)
  return float(value) if np.isfinite(value) else _SILENT_LUFS


def balance(stems: dict[str, np.ndarray], sample_rate_hz: int, rng: np.random.Generator):
  """Sets each stem ``[2, T]`` to its own loudness -> ``(stems, {stem: gain_db})``.

  A silent stem stays silent (gain 0 dB).
  """
  out, gains = {}, {}
  for name, signal in stems.items():
    low, high = _LOUDNESS_RANGE_LU[name]
    current = loudness_lufs(signal, sample_rate_hz)
    if current <= _SILENT_LUFS:
      out[name], gains[name] = signal, 0.0
      continue
    gain_db = _REFERENCE_LUFS + _uniform(rng, low, high) - current
    out[name], gains[name] = signal * 10 ** (gain_db / 20), round(gain_db, 2)
  return out, gains
