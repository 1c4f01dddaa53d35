"""TFDS builders for MUSDB18-HQ and MOISESDB, prepared once from ``manual_dir``.

A large corpus is read track by track through :mod:`trackformer_jax.data.sources` (so
the same layouts, checks, 4-stem mapping and song-level splits apply) and written into
sharded TFRecords that anything ``tf.io.gfile`` reaches can serve. Tracks are cut into
chunks of ``chunk_seconds`` so that one record stays small (a whole MUSDB track would be
~200 MB) and preparing reads one chunk at a time, never a whole song.

Each example::

  track_id  str                        e.g. "train/Actions - One Minute Smile"
  song_id   str                        the split grouping key
  chunk     int                        the record's number within its split
  start_frame int                      its first frame in the track
  mixture   Audio int16 [time, channels]
  vocals, bass, drums, other  Audio int16 [time, channels]

Samples are 16-bit (MUSDB18-HQ and MOISESDB are 16-bit already); a MOISESDB mixture,
being the sum of its stem files, is clipped to full scale in the rare case it exceeds it.

Records are written in ArrayRecord format, unshuffled, with a chunk index in the
dataset's metadata (``metadata.json``: per split, ``[track_id, song_id, start_frame,
frames]`` in record order), so the training pipeline can open a prepared dataset as the
data spec ``tfds:<prepared dir>`` (see sources.py) and read any chunk by random access,
from any filesystem ``tf.io.gfile`` reaches, without scanning the records.

Usage::

  builder = Musdb18Hq(data_dir="/data/tfds")  # or Moisesdb; config="mono_44k"
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir="/data/musdb18hq"))
  # then train with --config.data=tfds:/data/tfds/musdb18_hq/stereo_44k/1.0.0
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from trackformer_jax.data import sources


@dataclasses.dataclass
class MultiStemConfig(tfds.core.BuilderConfig):
  """Output rate, channel count and chunk length of a prepared corpus."""

  sample_rate_hz: int = 44100
  channels: int = 2
  chunk_seconds: float = 30.0


_CONFIGS = [
  MultiStemConfig(name="stereo_44k", description="44.1 kHz stereo, 30 s chunks"),
  MultiStemConfig(name="mono_44k", description="44.1 kHz mono, 30 s chunks", channels=1),
]


def _to_int16(x: np.ndarray) -> np.ndarray:
  """``float32 [C, T] -> int16 [T, C]`` (rounded, clipped to full scale)."""
  return np.clip(np.round(x.T * 32768.0), -32768, 32767).astype(np.int16)


class _MultiStemBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by both corpora; subclasses name the data-spec kind and their splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = _CONFIGS
  SPEC_KIND = ""
  SPLIT_NAMES: tuple[str, ...] = ()

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord gives the random access the training pipeline's crops need.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    audio = tfds.features.Audio(
      shape=(None, config.channels), dtype=np.int16, sample_rate=config.sample_rate_hz
    )
    features = {
      "track_id": tfds.features.Text(),
      "song_id": tfds.features.Text(),
      "chunk": np.int32,
      "start_frame": np.int64,
      "mixture": audio,
    }
    features.update({name: audio for name in sources.STEM_NAMES})
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features),
      supervised_keys=None,
      homepage="https://github.com/",
      # Records stay in generation order, so the chunk index below maps index -> record.
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    source = sources.open_source(
      f"{self.SPEC_KIND}:{dl_manager.manual_dir}",
      sample_rate_hz=config.sample_rate_hz,
      channels=config.channels,
    )
    chunk_frames = int(round(config.chunk_seconds * config.sample_rate_hz))
    chunks = {}
    for split in self.SPLIT_NAMES:
      chunks[split] = [
        [track.track_id, track.song_id, start, min(chunk_frames, track.num_frames - start)]
        for track in source.split(split)
        for start in range(0, track.num_frames, chunk_frames)
      ]
    self.info.metadata["chunks"] = chunks
    self.info.metadata["sample_rate_hz"] = config.sample_rate_hz
    self.info.metadata["channels"] = config.channels
    tracks = {t.track_id: t for t in source.tracks}
    return {split: self._generate_examples(chunks[split], tracks) for split in self.SPLIT_NAMES}

  def _generate_examples(self, chunks, tracks):
    for number, (track_id, song_id, start, frames) in enumerate(chunks):
      track = tracks[track_id]
      stems = track.read_stems(start, frames)
      example = {
        "track_id": track_id,
        "song_id": song_id,
        "chunk": number,
        "start_frame": start,
        "mixture": _to_int16(track.read_mixture(start, frames)),
      }
      example.update({n: _to_int16(s) for n, s in zip(sources.STEM_NAMES, stems)})
      # Zero-padded keys sort in generation order.
      yield f"{number:08d}", example


class Musdb18Hq(_MultiStemBuilder):
  """MUSDB18-HQ (150 tracks, 4 stems): train, validation (the standard 14), test."""

  SPEC_KIND = "musdb"
  SPLIT_NAMES = ("train", "validation", "test")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put the unzipped MUSDB18-HQ in manual_dir: <manual_dir>/{train,test}/<track>/"
    "{mixture,vocals,bass,drums,other}.wav"
  )


class Moisesdb(_MultiStemBuilder):
  """MOISESDB (240 songs, 11 stem kinds mapped to 4): 80 % / 20 % by song."""

  SPEC_KIND = "moisesdb"
  # The held-out 20 % is both validation and test for MOISESDB (see sources.py); it is
  # written once, as "validation".
  SPLIT_NAMES = ("train", "validation")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put the unzipped MOISESDB in manual_dir: <manual_dir>/moisesdb_v0.1/<track-uuid>/"
    "data.json with one folder per stem holding <source-uuid>.wav files"
  )
