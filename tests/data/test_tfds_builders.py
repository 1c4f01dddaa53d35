"""TFDS builders prepared from tiny fake MUSDB18-HQ / MOISESDB trees in the real layouts."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from trackformer_jax.data import sources, tfds_builders


def _prepare(builder_cls, manual_dir, data_dir, **config):
  config = tfds_builders.MultiStemConfig(name="tiny", sample_rate_hz=8000, channels=1, **config)
  builder = builder_cls(data_dir=str(data_dir), config=config)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
  )
  return builder


def _records(builder, split):
  # ArrayRecord (the builders' default) is read by random access, not as_dataset.
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def prepared_musdb(tiny_musdb, tmp_path_factory):
  """tiny_musdb prepared at 8 kHz mono in 0.75 s chunks (ArrayRecord, unshuffled)."""
  out = tmp_path_factory.mktemp("tfds")
  return _prepare(tfds_builders.Musdb18Hq, tiny_musdb, out, chunk_seconds=0.75)


@pytest.mark.slow
def test_musdb_builder_round_trips_chunks(tiny_musdb, prepared_musdb):
  builder = prepared_musdb
  assert set(builder.info.splits) == {"train", "validation", "test"}
  source = sources.open_source(f"musdb:{tiny_musdb}", sample_rate_hz=8000, channels=1)
  for split in ("train", "validation", "test"):
    records = _records(builder, split)
    tracks = {t.track_id: t for t in source.split(split)}
    assert {r["track_id"].decode() for r in records} == set(tracks)
    # Chunks tile each track exactly; each matches the source read, to 16-bit precision.
    for track_id, track in tracks.items():
      chunks = sorted(
        (r for r in records if r["track_id"].decode() == track_id), key=lambda r: r["chunk"]
      )
      assert sum(len(r["mixture"]) for r in chunks) == track.num_frames
      assert [r["start_frame"] for r in chunks] == [6000 * i for i in range(len(chunks))]
      last = chunks[-1]
      stems = track.read_stems(int(last["start_frame"]), len(last["mixture"]))
      for name, stem in zip(sources.STEM_NAMES, stems):
        assert last[name].shape == (len(last["mixture"]), 1)
        np.testing.assert_allclose(last[name][:, 0] / 32768, stem[0], atol=1 / 32768)


@pytest.mark.slow
def test_moisesdb_builder_splits_by_song(tiny_moisesdb, tmp_path):
  builder = _prepare(tfds_builders.Moisesdb, tiny_moisesdb, tmp_path, chunk_seconds=5.0)
  train = _records(builder, "train")
  held_out = _records(builder, "validation")
  assert len(train) + len(held_out) == 6  # one chunk per short song
  train_songs = {r["song_id"] for r in train}
  assert train_songs and not train_songs & {r["song_id"] for r in held_out}
  for r in train:
    # The mixture is the sum of the stems (each rounded to 16 bits separately).
    total = sum(r[name].astype(np.int32) for name in sources.STEM_NAMES)
    assert np.abs(total - r["mixture"]).max() <= 3


def test_missing_or_wrong_manual_dir_is_named(tmp_path, tiny_folder):
  # tfds checks the manual dir exists itself, naming it; the layout check is ours.
  with pytest.raises(AssertionError, match=r"nowhere does not exist or is empty"):
    _prepare(tfds_builders.Musdb18Hq, tmp_path / "nowhere", tmp_path / "out")
  with pytest.raises(sources.DataError, match=f"{tiny_folder}: wrong layout for musdb"):
    _prepare(tfds_builders.Musdb18Hq, tiny_folder, tmp_path / "out")


@pytest.mark.slow
def test_prepared_dataset_is_a_data_source(tiny_musdb, prepared_musdb, tiny_config):
  from trackformer_jax import input_pipeline

  directory = str(prepared_musdb.data_dir)
  prepared = sources.open_source(f"tfds:{directory}", sample_rate_hz=8000, channels=1)
  direct = sources.open_source(f"musdb:{tiny_musdb}", sample_rate_hz=8000, channels=1)
  assert prepared.has_stems and prepared.kind == "tfds"
  for split in sources.SPLITS:
    chunks = prepared.split(split)
    tracks = {t.track_id: t for t in direct.split(split)}
    assert {c.track_id.split("@")[0] for c in chunks} == set(tracks)
    # Record i is the chunk the metadata index says (records kept in generation order).
    for chunk in chunks[:: max(len(chunks) // 3, 1)]:
      track_id, start = chunk.track_id.split("@")
      expected = tracks[track_id].read_stems(int(start) + 100, 1000)
      np.testing.assert_allclose(chunk.read_stems(100, 1000), expected, atol=1 / 32768)
      np.testing.assert_array_equal(chunk.read_stem(2, 100, 1000), chunk.read_stems(100, 1000)[2])
  (batch,) = [next(input_pipeline.train_batches(tiny_config(f"tfds:{directory}")))]
  assert batch["stems"].shape == (2, 2, 4, 1, 4000)
  np.testing.assert_array_equal(batch["mom"], batch["mixtures"].sum(1))


@pytest.mark.slow
def test_tfds_spec_errors(tmp_path, prepared_musdb):
  with pytest.raises(sources.DataError, match="prepared TFDS folder does not exist"):
    sources.open_source(f"tfds:{tmp_path / 'none'}", sample_rate_hz=8000, channels=1)
  with pytest.raises(sources.DataError, match="not a prepared TFDS dataset"):
    sources.open_source(f"tfds:{tmp_path}", sample_rate_hz=8000, channels=1)
  with pytest.raises(sources.DataError, match="prepared at 8000 Hz but 44100 Hz"):
    sources.open_source(f"tfds:{prepared_musdb.data_dir}", sample_rate_hz=44100, channels=1)
