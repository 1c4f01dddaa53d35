"""tf.data input pipeline: mixtures of mixtures (MixIT) from any data source.

Order (docs/architecture.md): track index -> shard per host -> shuffle -> repeat -> random
crop -> drop near-silent crops -> mixture of mixtures -> batch -> prefetch.

The first four steps are arithmetic on indices, done in numpy so that example ``i`` is a
pure function of ``(seed, host, i)``: the host's tracks are put in a fresh seeded order
every epoch (shuffle + repeat), and example ``i`` takes the tracks at positions ``2i`` and
``2i + 1`` of that endless stream. This is what lets training resume *bitwise* at any step
without replaying the stream. tf.data then runs the decoding (``tf.numpy_function``
calling :func:`trackformer_jax.audio.read_audio` on just the crop) on parallel threads
with ``deterministic=True``, batches and prefetches, so decoding never happens in the
train step and memory is bounded by the crop length, not the songs' lengths.

Each batch is a dict of numpy arrays::

  mom       float32 [B, C, T]        the mixture of mixtures, exactly mixtures.sum(1)
  mixtures  float32 [B, 2, C, T]     two crops from different songs
  stems     float32 [B, 2, 4, C, T]  (only when the source has stems) vocals, bass,
                                     drums, other of each mixture; they sum to it

with ``T = round(segment_seconds * sample_rate_hz)`` and ``C = channels``. Where a source
has stems, each mixture *is* the sum of its stems (MUSDB's mixture.wav differs from that
sum only by rounding), so the stems are exact references for evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf

from trackformer_jax import audio
from trackformer_jax.data import resampled, sources
from trackformer_jax.training.config_files import segment_samples

log = logging.getLogger(__name__)

# Evaluation examples do not depend on the training seed, so runs with different seeds
# are scored on the same examples.
EVAL_SEED = 20240917
# Redraws before giving up on finding a crop louder than the silence threshold (the last
# crop is then used as is: the pipeline never dies because a corpus is quiet).
_MAX_CROP_ATTEMPTS = 16
# After this many silent crops of one track, draw a different track.
_ATTEMPTS_PER_TRACK = 4

# The pipeline's own threads are enough; TF must not reserve an accelerator JAX needs.
try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # already initialised by the caller: nothing to do
  pass


@dataclasses.dataclass(frozen=True)
class Augment:
  """Per-mixture augmentations (``config.augment``); all off for evaluation."""

  gain_db: tuple[float, float] | None = None
  channel_swap: bool = False
  polarity: bool = False
  remix_stems: bool = False
  # With remix_stems: the chance that each stem of a remixed mixture is left out (at least
  # one sounding stem stays), so mixtures hold one to four stems instead of always four.
  # In [0, 1) (training.config_checks); without remix_stems it leaves nothing out.
  stem_dropout: float = 0.0

  @classmethod
  def from_config(cls, augment) -> Augment:
    if augment is None:
      return cls()
    gain = augment.get("gain_db", None)
    return cls(
      gain_db=None if gain is None else (float(gain[0]), float(gain[1])),
      channel_swap=bool(augment.get("channel_swap", False)),
      polarity=bool(augment.get("polarity", False)),
      remix_stems=bool(augment.get("remix_stems", False)),
      stem_dropout=float(augment.get("stem_dropout", 0.0)),
    )


def rms_db(x: np.ndarray) -> float:
  """RMS level of ``x`` in dBFS (-inf-safe)."""
  return 10.0 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-20)


@functools.lru_cache(maxsize=8)
def _epoch_order(seed: int, host: int, epoch: int, num_tracks: int) -> np.ndarray:
  """The seeded track order of one epoch (cached: consecutive examples share an epoch)."""
  return np.random.default_rng((seed, host, 1, epoch)).permutation(num_tracks)


@dataclasses.dataclass(frozen=True)
class ExampleMaker:
  """Builds example ``i`` of one host's stream, a pure function of ``(seed, host, i)``."""

  tracks: tuple[sources.Track, ...]
  segment_frames: int
  channels: int
  seed: int
  host: int
  silence_threshold_db: float
  augment: Augment
  with_stems: bool  # read stems (the source has them) and put them in the example
  remix_only: bool = False  # read stems only to remix them; the example has no "stems"

  def track_at(self, position: int) -> int:
    """Shuffle + repeat: a fresh seeded order of the tracks for every epoch."""
    epoch, offset = divmod(int(position), len(self.tracks))
    return int(_epoch_order(self.seed, self.host, epoch, len(self.tracks))[offset])

  def _crop(self, track: sources.Track, rng: np.random.Generator, stem: int | None) -> np.ndarray:
    """A random crop -> ``[4, C, T]`` stems, or ``[1, C, T]`` mixture when unlabeled, or with
    ``stem`` the pair ``[2, C, T]`` of the mixture and that one stem (what a remix takes)."""
    start = int(rng.integers(0, max(track.num_frames - self.segment_frames, 0) + 1))
    frames = self.segment_frames
    if stem is not None:
      # Two reads (the mixture for the loudness check, the stem) instead of four, where the
      # mixture is one file: a remixed mixture reads four tracks, so reads set its speed.
      if len(track.mixture_files) == 1:
        return np.stack([track.read_mixture(start, frames), track.read_stem(stem, start, frames)])
      stems = track.read_stems(start, frames)
      return np.stack([stems.sum(0), stems[stem]])
    if self.with_stems:
      return track.read_stems(start, frames)
    return track.read_mixture(start, frames)[None]

  def _loud_crop(
    self, index: int, slot: int, first: int, avoid_song: str | None, stem: int | None = None
  ):
    """A crop (see ``_crop``) whose mixture is above the silence threshold, from track
    ``first`` (or a redrawn one)."""
    track_index = first
    tried = {first}
    crop = None
    for attempt in range(_MAX_CROP_ATTEMPTS):
      rng = np.random.default_rng((self.seed, self.host, 2, index, slot, attempt))
      if attempt and attempt % _ATTEMPTS_PER_TRACK == 0:
        track_index = self._other_track(rng, avoid_song, tried)
        tried.add(track_index)
      track = self.tracks[track_index]
      try:
        crop = self._crop(track, rng, stem)
      except audio.AudioError as e:
        # A file that broke after the source was opened: warn, and draw another track.
        _warn_once(track.track_id, str(e))
        track_index = self._other_track(rng, avoid_song, tried)
        tried.add(track_index)
        continue
      if rms_db(crop[0] if stem is not None else crop.sum(0)) >= self.silence_threshold_db:
        break
    if crop is None:
      raise audio.AudioError(self.tracks[first].mixture_files[0], "no readable crop")
    return track_index, crop

  def _remixed_crop(self, index: int, slot: int, first: int, avoid_song: str | None):
    """Stems ``[K, C, T]``: the vocals of track ``first`` (or a redrawn one) and bass, drums
    and other each from another random track: new combinations of real parts, as a remixed
    song would be."""
    track_index, pair = self._loud_crop(index, slot, first, avoid_song, stem=0)
    parts = [pair[1]]
    rng = np.random.default_rng((self.seed, self.host, 4, index, slot))
    for k in range(1, len(sources.STEM_NAMES)):
      donor = self._other_track(rng, None)
      parts.append(self._loud_crop(index, 10 * (slot + 1) + k, donor, None, stem=k)[1][1])
    stems = np.stack(parts)
    if self.augment.stem_dropout:
      stems = self._drop_stems(stems, np.random.default_rng((self.seed, self.host, 6, index, slot)))
    return track_index, stems

  def _drop_stems(self, stems: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zero each stem of ``[K, C, T]`` with probability ``stem_dropout``, keeping at least
    one stem above the silence threshold (a random one when the draw drops them all)."""
    sounding = np.array([rms_db(stem) >= self.silence_threshold_db for stem in stems])
    if not sounding.any():
      return stems
    keep = (rng.random(len(stems)) >= self.augment.stem_dropout) & sounding
    if not keep.any():
      keep[rng.choice(np.flatnonzero(sounding))] = True
    return stems * keep[:, None, None].astype(stems.dtype)

  def _other_track(self, rng: np.random.Generator, avoid_song: str | None, tried=()) -> int:
    """A random track of another song, preferring ones not tried yet."""
    candidates = [i for i, t in enumerate(self.tracks) if t.song_id != avoid_song]
    fresh = [i for i in candidates if i not in tried]
    return int(rng.choice(fresh or candidates or range(len(self.tracks))))

  def _augment(self, stems: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain, channel swap, polarity on ``[K, C, T]``: the same for every stem of a mixture."""
    a = self.augment
    factor = 1.0
    if a.gain_db is not None:
      factor = 10 ** (rng.uniform(*a.gain_db) / 20)
    if a.channel_swap and stems.shape[1] == 2 and rng.random() < 0.5:
      stems = stems[:, ::-1]
    if a.polarity and rng.random() < 0.5:
      factor = -factor
    # One multiply (and one copy) for all three: 30 s crops make copies count.
    return np.multiply(stems, np.float32(factor), dtype=np.float32)

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    parts = []
    first_song = None
    for slot in range(2):
      track_index = self.track_at(2 * index + slot)
      if slot == 1 and self.tracks[track_index].song_id == first_song:
        # Two crops of one song would make MixIT's task ill-posed: take another song.
        rng = np.random.default_rng((self.seed, self.host, 3, index))
        track_index = self._other_track(rng, first_song)
      if self.augment.remix_stems and self.with_stems:
        track_index, crop = self._remixed_crop(index, slot, track_index, first_song)
      else:
        track_index, crop = self._loud_crop(index, slot, track_index, first_song)
      first_song = self.tracks[track_index].song_id
      rng = np.random.default_rng((self.seed, self.host, 5, index, slot))
      parts.append(self._augment(crop, rng))
    parts = np.stack(parts)  # [2, K, C, T]
    mixtures = parts.sum(1)
    example = {"mom": mixtures[0] + mixtures[1], "mixtures": mixtures}
    if self.with_stems and not self.remix_only:
      example["stems"] = parts
    return example


_warned: set[str] = set()


def _warn_once(track_id: str, message: str) -> None:
  if track_id not in _warned:
    _warned.add(track_id)
    log.warning("Skipping a crop of %s: %s", track_id, message)


def open_config_source(config) -> sources.Source:
  """``config.data`` through :func:`sources.open_source` at the config's rate and channels."""
  return sources.open_source(
    config.data,
    sample_rate_hz=int(config.sample_rate_hz),
    channels=int(config.channels),
    strict=bool(config.get("strict_data", False)),
  )


def _dataset(maker: ExampleMaker, indices: tf.data.Dataset, batch_size: int, drop_remainder: bool):
  """indices -> parallel deterministic decode -> batch -> prefetch."""
  keys = ["mom", "mixtures"] + (["stems"] if maker.with_stems and not maker.remix_only else [])
  c, t = maker.channels, maker.segment_frames
  shapes = {"mom": (c, t), "mixtures": (2, c, t), "stems": (2, 4, c, t)}

  def make(i):
    example = maker(int(i))
    return tuple(example[k] for k in keys)

  def decode(i):
    arrays = tf.numpy_function(make, [i], [tf.float32] * len(keys), stateful=False)
    return {k: tf.ensure_shape(a, shapes[k]) for k, a in zip(keys, arrays)}

  ds = indices.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return ds.prefetch(tf.data.AUTOTUNE)


def _host_tracks(tracks: list[sources.Track], host: int, hosts: int) -> list[sources.Track]:
  # Shard by track so hosts read different files; a corpus too small to give each host
  # two songs is shared whole (the host index still makes the streams differ).
  shard = tracks[host::hosts]
  return shard if len({t.song_id for t in shard}) >= 2 else tracks


def train_batches(
  config, start_step: int = 0, *, with_stems: bool | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """The endless training stream for this host, starting at batch ``start_step``.

  Batch ``s`` depends only on ``(config.seed, s, jax.process_index())``. Per-host batch
  size is ``config.batch_size // jax.process_count()``. The source is opened (and, with
  ``config.strict_data``, fully checked) here, before the first batch is asked for.

  ``with_stems``: None (default) gives ``stems`` whenever the source has them;
  False leaves them out and reads only each track's mixture file, which is ~4x less
  decoding for MixIT training, which never looks at stems (the two streams then differ
  slightly for MUSDB, whose mixture.wav is the stems' sum only up to rounding).
  """
  host, hosts = jax.process_index(), jax.process_count()
  batch_size = config.batch_size // hosts
  if batch_size < 1:
    raise ValueError(f"config.batch_size={config.batch_size} < {hosts} hosts")
  source = open_config_source(config)
  tracks = source.split("train")
  if not tracks:
    raise sources.DataError(f"{config.data}: the train split is empty")
  tracks = _host_tracks(tracks, host, hosts)
  if len({t.song_id for t in tracks}) < 2:
    log.warning("%s: one song only; mixtures of mixtures will mix it with itself", config.data)
  augment = Augment.from_config(config.get("augment", None))
  output_stems = source.has_stems if with_stems is None else with_stems and source.has_stems
  # Remixing needs the stems even when the batches do not carry them.
  read_stems = output_stems or (augment.remix_stems and source.has_stems)
  if config.get("resampled_copies", False):
    tracks = resampled.tracks_at_rate(tracks, with_stems=read_stems)
    if not tracks:
      raise sources.DataError(f"{config.data}: no train track could be read whole")
  maker = ExampleMaker(
    tracks=tuple(tracks),
    segment_frames=segment_samples(config),
    channels=int(config.channels),
    seed=int(config.seed),
    host=host,
    silence_threshold_db=float(config.silence_threshold_db),
    augment=augment,
    with_stems=read_stems,
    remix_only=read_stems and not output_stems,
  )
  indices = tf.data.Dataset.range(int(start_step) * batch_size, np.iinfo(np.int64).max)
  return _dataset(maker, indices, batch_size, drop_remainder=True).as_numpy_iterator()


class EvalBatches:
  """A fixed set of evaluation batches, re-decoded on each pass (memory stays bounded).

  ``num_eval_examples`` is rounded up to whole batches; host ``h`` of ``P`` gets examples
  ``h, h + P, ...`` in batches of ``batch_size // P``. No augmentation; the examples depend
  on ``EVAL_SEED`` only, never the training seed.
  """

  def __init__(self, config, split: str = "validation"):
    host, hosts = jax.process_index(), jax.process_count()
    self.batch_size = max(config.batch_size // hosts, 1)
    source = open_config_source(config)
    tracks = source.split(split)
    if not tracks:
      raise sources.DataError(f"{config.data}: the {split!r} split is empty")
    self.source = source
    self.has_stems = source.has_stems
    self.num_batches = max(math.ceil(config.num_eval_examples / config.batch_size), 1)
    self._host, self._hosts = host, hosts
    self._maker = ExampleMaker(
      tracks=tuple(tracks),
      segment_frames=segment_samples(config),
      channels=int(config.channels),
      seed=EVAL_SEED,
      host=0,
      silence_threshold_db=float(config.silence_threshold_db),
      augment=Augment(),
      with_stems=source.has_stems,
    )

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    total = self.num_batches * self.batch_size * self._hosts
    indices = tf.data.Dataset.range(self._host, total, self._hosts)
    return _dataset(self._maker, indices, self.batch_size, drop_remainder=True).as_numpy_iterator()


def eval_batches(config, split: str = "validation") -> EvalBatches:
  """The fixed evaluation batches of ``split`` (an iterable; iterate it once per eval)."""
  return EvalBatches(config, split)


def run_pipeline_benchmark(
  config, num_batches: int = 20, *, with_stems: bool | None = None
) -> dict:
  """Training-pipeline throughput: times ``num_batches`` batches after a warm-up batch.

  Returns a dict: ``batches_per_second``, ``examples_per_second``,
  ``audio_seconds_per_second`` (mixture-of-mixture audio made per wall second),
  ``cpu_seconds_per_batch`` (load-independent cost; cores / this = the rate's ceiling),
  ``first_batch_seconds`` (opening the source and the first decode), and the sizes used.
  ``with_stems`` as in :func:`train_batches`.
  """
  t0 = time.perf_counter()
  stream = train_batches(config, with_stems=with_stems)
  first = next(stream)
  t1, cpu1 = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(stream)
  t2, cpu2 = time.perf_counter(), time.process_time()
  batch = first["mom"].shape[0]
  rate = num_batches / (t2 - t1)
  return {
    "data": config.data,
    "segment_seconds": float(config.segment_seconds),
    "sample_rate_hz": int(config.sample_rate_hz),
    "channels": int(config.channels),
    "batch_size": int(batch),
    "num_batches": int(num_batches),
    "has_stems": "stems" in first,
    "first_batch_seconds": t1 - t0,
    "batches_per_second": rate,
    "examples_per_second": rate * batch,
    "audio_seconds_per_second": rate * batch * float(config.segment_seconds),
    # CPU time of this process (all decode threads) per batch: unlike the rate, it does
    # not depend on how busy the machine is, so it predicts throughput on other hosts.
    "cpu_seconds_per_batch": (cpu2 - cpu1) / num_batches,
  }
