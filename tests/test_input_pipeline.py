"""input_pipeline.py: batch layout, exact mixture-of-mixtures sums, determinism and resume,
different songs per mixture, silence redraws, bad files mid-stream, bounded reads."""

import dataclasses
import itertools

import numpy as np
import pytest

from trackformer_jax import audio, input_pipeline
from trackformer_jax.data import sources


def _take(stream, n):
  return list(itertools.islice(stream, n))


def test_batch_layout_and_exact_sums(tiny_config, tiny_musdb):
  config = tiny_config(f"musdb:{tiny_musdb}", channels=2)
  (batch,) = _take(input_pipeline.train_batches(config), 1)
  t = 4000  # 0.5 s at 8 kHz
  assert batch["mom"].shape == (2, 2, t) and batch["mom"].dtype == np.float32
  assert batch["mixtures"].shape == (2, 2, 2, t)
  assert batch["stems"].shape == (2, 2, 4, 2, t)
  # mom is exactly the sum of its two mixtures; each mixture the sum of its stems.
  np.testing.assert_array_equal(batch["mom"], batch["mixtures"][:, 0] + batch["mixtures"][:, 1])
  np.testing.assert_allclose(batch["stems"].sum(2), batch["mixtures"], atol=1e-6)
  assert (np.abs(batch["mixtures"]).max(axis=(2, 3)) > 0.01).all()


def test_without_stems_reads_mixture_files_only(tiny_config, tiny_musdb, monkeypatch):
  config = tiny_config(f"musdb:{tiny_musdb}")
  with_stems = _take(input_pipeline.train_batches(config), 1)[0]
  read = []
  real = audio.read_audio
  monkeypatch.setattr(audio, "read_audio", lambda path, **kw: read.append(path) or real(path, **kw))
  (batch,) = _take(input_pipeline.train_batches(config, with_stems=False), 1)
  assert set(batch) == {"mom", "mixtures"}
  assert read and all(str(p).endswith("mixture.wav") for p in read)
  # Same crops as the stream with stems: the fixture's mixture.wav is the stems' sum.
  np.testing.assert_allclose(batch["mom"], with_stems["mom"], atol=1e-6)
  # Remixing still reads stems, but the batches stay without them.
  config.augment.remix_stems = True
  (remixed,) = _take(input_pipeline.train_batches(config, with_stems=False), 1)
  assert set(remixed) == {"mom", "mixtures"}
  assert any(str(p).endswith("bass.wav") for p in read)


def test_unlabeled_source_has_no_stems(tiny_config, tiny_folder):
  (batch,) = _take(input_pipeline.train_batches(tiny_config(f"folder:{tiny_folder}")), 1)
  assert set(batch) == {"mom", "mixtures"}
  np.testing.assert_array_equal(batch["mom"], batch["mixtures"].sum(1))


def test_deterministic_and_resumes_bitwise(tiny_config, tiny_moisesdb):
  config = tiny_config(f"moisesdb:{tiny_moisesdb}")
  first = _take(input_pipeline.train_batches(config), 4)
  again = _take(input_pipeline.train_batches(config), 4)
  resumed = _take(input_pipeline.train_batches(config, start_step=2), 2)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(first[2:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # The stream moves on, and another seed gives another stream.
  assert not np.array_equal(first[0]["mom"], first[1]["mom"])
  other = _take(input_pipeline.train_batches(tiny_config(config.data, seed=1)), 1)[0]
  assert not np.array_equal(other["mom"], first[0]["mom"])


def test_eval_batches_fixed_and_independent_of_training_seed(tiny_config, tiny_musdb):
  config = tiny_config(f"musdb:{tiny_musdb}", num_eval_examples=3)
  batches = input_pipeline.eval_batches(config, "validation")
  assert len(batches) == 2  # 3 examples rounded up to whole batches of 2
  first, second = list(batches), list(batches)
  reseeded = list(
    input_pipeline.eval_batches(tiny_config(config.data, seed=7, num_eval_examples=3))
  )
  assert len(first) == 2
  for a, b, c in zip(first, second, reseeded):
    assert a["stems"].shape == (2, 2, 4, 1, 4000)
    np.testing.assert_array_equal(a["mom"], b["mom"])
    np.testing.assert_array_equal(a["mom"], c["mom"])


@dataclasses.dataclass(frozen=True)
class FakeTrack:
  """A stand-in track whose every sample is its song number (or silent/broken on request)."""

  song: int
  num_frames: int = 100_000
  silent_before: int = 0  # frames before this are silent
  broken: bool = False

  @property
  def song_id(self):
    return f"song {self.song}"

  @property
  def track_id(self):
    return f"track {self.song}"

  @property
  def mixture_files(self):
    return (f"/fake/{self.song}.wav",)

  def read_mixture(self, start, frames):
    if self.broken:
      raise audio.AudioError(self.mixture_files[0], "truncated: simulated")
    assert frames == 1000  # only the crop is ever read
    level = 0.0 if start < self.silent_before else 0.1 * (self.song + 1)
    return np.full((1, frames), level, np.float32)

  def read_stems(self, start, frames):
    return np.stack([self.read_mixture(start, frames) / 4] * 4)

  def read_stem(self, index, start, frames):
    return self.read_stems(start, frames)[index]


def _maker(tracks, **kw):
  defaults = dict(
    segment_frames=1000,
    channels=1,
    seed=0,
    host=0,
    silence_threshold_db=-50.0,
    augment=input_pipeline.Augment(),
    with_stems=False,
  )
  return input_pipeline.ExampleMaker(tracks=tuple(tracks), **{**defaults, **kw})


def test_two_mixtures_always_from_different_songs():
  # Tracks 0/1 are two renditions of one song: they must never be paired.
  tracks = [FakeTrack(0), FakeTrack(0), FakeTrack(1), FakeTrack(2)]
  maker = _maker(tracks)
  for i in range(60):
    levels = maker(i)["mixtures"][:, 0, 0]
    assert levels[0] != levels[1], (i, levels)


def test_shuffle_repeat_visits_every_track_each_epoch():
  maker = _maker([FakeTrack(i) for i in range(5)])
  epochs = [sorted(maker.track_at(p) for p in range(5 * e, 5 * e + 5)) for e in range(3)]
  assert epochs == [list(range(5))] * 3
  assert [maker.track_at(p) for p in range(5)] != [maker.track_at(p) for p in range(5, 10)]


def test_silent_crops_are_redrawn():
  # Half of track 0 is silent; a whole-silent track 1 forces a switch to another track.
  tracks = [
    FakeTrack(0, silent_before=50_000),
    FakeTrack(1, silent_before=10**9),
    FakeTrack(2),
    FakeTrack(3),
  ]
  maker = _maker(tracks)
  for i in range(40):
    mixtures = maker(i)["mixtures"]
    assert (np.abs(mixtures).max(axis=(1, 2)) > 0).all(), i


def test_bad_file_mid_stream_is_skipped(caplog):
  tracks = [FakeTrack(0, broken=True), FakeTrack(1), FakeTrack(2)]
  maker = _maker(tracks)
  for i in range(10):
    levels = maker(i)["mixtures"][:, 0, 0]
    assert levels.min() > 0 and levels[0] != levels[1]
  assert "truncated: simulated" in caplog.text


def test_augmentations_keep_sums_and_change_signal(tiny_config, tiny_musdb):
  base = tiny_config(f"musdb:{tiny_musdb}", channels=2)
  base.augment.gain_db = None
  base.augment.channel_swap = False
  base.augment.polarity = False
  plain = _take(input_pipeline.train_batches(base), 1)[0]
  augmented_config = tiny_config(f"musdb:{tiny_musdb}", channels=2)
  augmented_config.augment.remix_stems = True
  augmented = _take(input_pipeline.train_batches(augmented_config), 2)
  for batch in augmented:
    np.testing.assert_allclose(batch["stems"].sum(2), batch["mixtures"], atol=1e-6)
    np.testing.assert_array_equal(batch["mom"], batch["mixtures"].sum(1))
  assert not np.allclose(augmented[0]["mixtures"], plain["mixtures"])


def test_remixed_mixtures_take_each_part_from_a_loud_crop_of_some_song(caplog):
  # Track 1 is silent and track 2 broken: neither may give a part; the rest are songs 0, 3, 4.
  tracks = [FakeTrack(0), FakeTrack(1, silent_before=10**9), FakeTrack(2, broken=True)]
  tracks += [FakeTrack(3), FakeTrack(4)]
  maker = _maker(tracks, with_stems=True, augment=input_pipeline.Augment(remix_stems=True))
  mixed_songs = 0
  for i in range(40):
    example = maker(i)
    stems = example["stems"]  # [2, 4, 1, T]
    np.testing.assert_allclose(stems.sum(1), example["mixtures"], atol=1e-7)
    songs = np.round(stems[:, :, 0, 0] * 4 / 0.1 - 1).astype(int)  # each part's song
    assert set(songs.ravel()) <= {0, 3, 4}, (i, songs)
    assert songs[0, 0] != songs[1, 0]  # the two vocals (the slots' own songs) differ
    mixed_songs += sum(len(set(row)) > 1 for row in songs)
  assert mixed_songs > 40  # most remixed mixtures hold parts of several songs


def test_stem_dropout_leaves_out_stems_but_keeps_one_and_the_sums():
  tracks = [FakeTrack(i) for i in range(5)]
  dropout = input_pipeline.Augment(remix_stems=True, stem_dropout=0.5)
  maker = _maker(tracks, with_stems=True, augment=dropout)
  full = _maker(tracks, with_stems=True, augment=input_pipeline.Augment(remix_stems=True))
  counts = []
  for i in range(60):
    example, whole = maker(i), full(i)
    stems = example["stems"]  # [2, 4, 1, T]
    np.testing.assert_allclose(stems.sum(1), example["mixtures"], atol=1e-7)
    np.testing.assert_array_equal(example["mom"], example["mixtures"].sum(0))
    kept = np.abs(stems).max(axis=(2, 3)) > 0  # [2, 4]
    assert kept.any(axis=1).all(), i  # never an empty mixture
    # A kept stem is the very part the full remix drew; a dropped one is zero.
    np.testing.assert_array_equal(stems[kept], whole["stems"][kept])
    counts.extend(kept.sum(axis=1))
  assert 1.5 < np.mean(counts) < 3.0 and min(counts) == 1 and max(counts) == 4
  assert np.array_equal(maker(7)["stems"], maker(7)["stems"])  # a pure function of i


def test_a_remix_reads_one_stem_per_track_beside_its_mixture(tiny_config, tiny_musdb, monkeypatch):
  config = tiny_config(f"musdb:{tiny_musdb}")
  tracks = input_pipeline.open_config_source(config).split("train")
  maker = _maker(
    tracks,
    segment_frames=4000,
    with_stems=True,
    remix_only=True,
    augment=input_pipeline.Augment(remix_stems=True),
  )
  read = []
  real = audio.read_audio
  monkeypatch.setattr(audio, "read_audio", lambda path, **kw: read.append(path) or real(path, **kw))
  example = maker(0)
  assert set(example) == {"mom", "mixtures"}
  names = [str(p).rsplit("/", 1)[1] for p in read]
  # Each crop: the mixture (for the loudness check), then one stem, the slot's vocals first.
  assert names[0::2] == ["mixture.wav"] * (len(names) // 2), names
  assert names[1::2][:4] == ["vocals.wav", "bass.wav", "drums.wav", "other.wav"], names


def test_gain_polarity_swap_are_applied():
  maker = _maker(
    [FakeTrack(0), FakeTrack(1)],
    channels=2,
    augment=input_pipeline.Augment(gain_db=(-6.0, 3.0), polarity=True),
  )
  ratios = []
  for i in range(30):
    example = maker(i)
    for mixture in example["mixtures"]:
      value = mixture[0, 0]
      base = 0.1 if abs(abs(value) - 0.1) < abs(abs(value) - 0.2) else 0.2
      ratios.append(value / base)
  ratios = np.array(ratios)
  assert (ratios < 0).any() and (ratios > 0).any()  # polarity flips, sometimes
  assert 10 ** (-6 / 20) - 0.15 < np.abs(ratios).min() < np.abs(ratios).max() < 10 ** (3 / 20) + 0.3


def test_reads_only_the_crop(tiny_config, tiny_musdb, monkeypatch):
  calls = []
  real = audio.read_audio

  def spy(path, **kw):
    calls.append(kw.get("num_frames"))
    return real(path, **kw)

  monkeypatch.setattr(audio, "read_audio", spy)
  _take(input_pipeline.train_batches(tiny_config(f"musdb:{tiny_musdb}")), 1)
  assert calls and set(calls) == {4000}


def test_empty_split_is_a_clear_error(tiny_config, tiny_folder):
  config = tiny_config(f"folder:{tiny_folder}")
  with pytest.raises(sources.DataError, match="split"):
    input_pipeline.eval_batches(config, "nonsense")


@pytest.mark.slow
def test_benchmark_reports_throughput(tiny_config, tiny_musdb):
  result = input_pipeline.run_pipeline_benchmark(tiny_config(f"musdb:{tiny_musdb}"), 3)
  assert result["batches_per_second"] > 0 and result["batch_size"] == 2
  assert result["has_stems"] and result["segment_seconds"] == 0.5
  assert result["cpu_seconds_per_batch"] > 0
