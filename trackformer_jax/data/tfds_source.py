"""The ``tfds:DIR`` data source: a dataset prepared by ``data.tfds_builders``, read by random
access, one prepared chunk a track."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from trackformer_jax import audio
from trackformer_jax.data.tracks import STEM_NAMES, DataError, Source, TrackIdentity


class TfdsSplit:
  """One split of a prepared TFDS dataset, opened for random access on first read."""

  def __init__(self, directory: str, split: str):
    self.directory, self.split = directory, split
    self._records = None
    self._lock = threading.Lock()

  def record(self, index: int) -> dict:
    if self._records is None:
      with self._lock:
        if self._records is None:
          import tensorflow_datasets as tfds

          self._records = tfds.builder_from_directory(self.directory).as_data_source(self.split)
    return self._records[index]


@dataclasses.dataclass(frozen=True)
class TfdsTrack(TrackIdentity):
  """One prepared chunk, read like a :class:`Track` (same fields and readers);
  ``mixture_files`` is one pseudo-path naming the record, for messages."""

  records: TfdsSplit
  index: int
  has_stems: bool = True
  has_any_stems: bool = True
  stem_names: tuple[str, ...] = STEM_NAMES

  def _read(self, names: tuple[str, ...], start: int, frames: int) -> np.ndarray:
    """``[len(names), channels, frames]`` float32, zero-padded past the chunk's end."""
    record = self.records.record(self.index)
    out = np.zeros((len(names), self.channels, frames), np.float32)
    for k, name in enumerate(names):
      data = record[name][start : start + frames].T.astype(np.float32) / 32768.0
      out[k, :, : data.shape[1]] = audio.convert_channels(
        data, self.channels, path=self.mixture_files[0]
      )
    return out

  def read_mixture(self, start: int = 0, frames: int | None = None) -> np.ndarray:
    frames = self.num_frames - start if frames is None else frames
    return self._read(("mixture",), start, frames)[0]

  def read_stem(self, index: int, start: int = 0, frames: int | None = None) -> np.ndarray:
    frames = self.num_frames - start if frames is None else frames
    return self._read((STEM_NAMES[index],), start, frames)[0]

  def read_stems(self, start: int = 0, frames: int | None = None) -> np.ndarray:
    frames = self.num_frames - start if frames is None else frames
    return self._read(STEM_NAMES, start, frames)


def open_tfds(spec: str, directory: str, *, sample_rate_hz: int, channels: int) -> Source:
  import tensorflow as tf
  import tensorflow_datasets as tfds

  if not tf.io.gfile.isdir(directory):
    raise DataError(f"{directory}: prepared TFDS folder does not exist (from {spec!r})")
  try:
    builder = tfds.builder_from_directory(directory)
  except Exception as e:  # tfds raises several types for a folder that is not a dataset
    raise DataError(f"{directory}: not a prepared TFDS dataset ({type(e).__name__}: {e})") from None
  metadata = builder.info.metadata or {}
  if "chunks" not in metadata:
    raise DataError(
      f"{directory}: no chunk index in metadata.json; prepare it with "
      "trackformer_jax.data.tfds_builders"
    )
  prepared_rate = int(metadata["sample_rate_hz"])
  if prepared_rate != sample_rate_hz:
    raise DataError(
      f"{directory}: prepared at {prepared_rate} Hz but {sample_rate_hz} Hz is asked for; "
      "prepare a builder config at that rate"
    )
  if str(builder.info.file_format) not in ("array_record", "FileFormat.ARRAY_RECORD"):
    raise DataError(f"{directory}: records are {builder.info.file_format}, not array_record")
  tracks = []
  for split, chunks in metadata["chunks"].items():
    records = TfdsSplit(directory, split)
    for index, (track_id, song_id, start, frames) in enumerate(chunks):
      tracks.append(
        TfdsTrack(
          track_id=f"{track_id}@{start}",
          song_id=song_id,
          split=split,
          num_frames=int(frames),
          sample_rate_hz=sample_rate_hz,
          channels=channels,
          mixture_files=(f"{directory}[{split}][{index}]",),
          records=records,
          index=index,
        )
      )
  if not tracks:
    raise DataError(f"{directory}: the prepared dataset holds no chunks")
  return Source(
    spec=spec,
    kind="tfds",
    root=directory,
    sample_rate_hz=sample_rate_hz,
    channels=channels,
    tracks=tracks,
    skipped=[],
    test_is_validation="test" not in metadata["chunks"],
  )
