"""The records a data source is made of: ``Track`` (one song with its segment readers) and
``Source`` (a parsed data spec's tracks), and ``DataError``; ``data.sources`` builds them."""

from __future__ import annotations

import dataclasses

import numpy as np

from trackformer_jax import audio

STEM_NAMES = ("vocals", "bass", "drums", "other")
SPLITS = ("train", "validation", "test")


class DataError(ValueError):
  """A data spec or corpus that cannot be used; the message names the path and problem."""


@dataclasses.dataclass(frozen=True)
class TrackIdentity:
  """What every kind of track has: its ids, split, length, format and the files (or
  pseudo-paths) that messages name. ``num_frames`` counts frames at ``sample_rate_hz``."""

  track_id: str
  song_id: str
  split: str
  num_frames: int
  sample_rate_hz: int
  channels: int
  mixture_files: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Track(TrackIdentity):
  """One song (or one file) of a source, read at the source's rate and channel count.

  ``mixture_files`` are summed to make the mixture (one file for MUSDB and folders, all
  stem files for MOISESDB). ``stem_files`` holds, per stem in ``stem_names`` order (by
  default ``STEM_NAMES``), the files summed into that stem (an empty group is a silent
  stem), or None when unlabeled.
  """

  stem_files: tuple[tuple[str, ...], ...] | None = None
  stem_names: tuple[str, ...] = STEM_NAMES

  @property
  def has_stems(self) -> bool:
    """Labelled with the four standard stems, as training and its validation need."""
    return self.stem_files is not None and tuple(self.stem_names) == STEM_NAMES

  @property
  def has_any_stems(self) -> bool:
    """Labelled with any stems (``stem_names``): what evaluate scores against."""
    return self.stem_files is not None

  @property
  def duration_seconds(self) -> float:
    return self.num_frames / self.sample_rate_hz

  def _read_sum(self, files: tuple[str, ...], start: int, frames: int) -> np.ndarray:
    read = dict(
      start_frame=start,
      num_frames=frames,
      sample_rate_hz=self.sample_rate_hz,
      channels=self.channels,
    )
    if len(files) == 1:
      return audio.read_audio(files[0], **read)
    total = np.zeros((self.channels, frames), np.float32)
    for path in files:
      total += audio.read_audio(path, **read)
    return total

  def read_mixture(self, start: int = 0, frames: int | None = None) -> np.ndarray:
    """The mixture's frames ``[start, start + frames)`` -> ``float32 [channels, frames]``
    (zero-padded past the end; ``frames=None`` reads to the end)."""
    frames = self.num_frames - start if frames is None else frames
    return self._read_sum(self.mixture_files, start, frames)

  def read_stem(self, index: int, start: int = 0, frames: int | None = None) -> np.ndarray:
    """Stem ``index`` of ``stem_names`` -> ``float32 [channels, frames]`` (needs stems)."""
    frames = self.num_frames - start if frames is None else frames
    return self._read_sum(self.stem_files[index], start, frames)

  def read_stems(self, start: int = 0, frames: int | None = None) -> np.ndarray | None:
    """The stems -> ``float32 [K, channels, frames]`` in ``stem_names`` order, or None."""
    if self.stem_files is None:
      return None
    frames = self.num_frames - start if frames is None else frames
    return np.stack([self._read_sum(group, start, frames) for group in self.stem_files])


@dataclasses.dataclass
class Source:
  """A parsed data spec: its valid tracks and the bad ones that were skipped."""

  spec: str
  kind: str
  root: str
  sample_rate_hz: int
  channels: int
  tracks: list[Track]
  skipped: list[tuple[str, str]]  # (track path, problem)
  # Sources without a separate test set serve their held-out 20 % as both.
  test_is_validation: bool = False

  @property
  def has_stems(self) -> bool:
    return bool(self.tracks) and all(t.has_stems for t in self.tracks)

  def split(self, name: str) -> list[Track]:
    """The tracks of one split, in a stable (sorted by id) order."""
    if name not in SPLITS:
      raise DataError(f"{self.spec}: unknown split {name!r}; expected one of {SPLITS}")
    if name == "test" and self.test_is_validation:
      name = "validation"
    return [t for t in self.tracks if t.split == name]
