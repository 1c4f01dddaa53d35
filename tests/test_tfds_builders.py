"""TFDS builders prepared from tiny fake MUSDB18-HQ / MOISESDB trees in the real layouts."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from trackformer_jax.data import sources, tfds_builders


def _prepare(builder_cls, manual_dir, data_dir, **config):
  config = tfds_builders.MultiStemConfig(name="tiny", sample_rate_hz=8000, channels=1, **config)
  builder = builder_cls(data_dir=str(data_dir), config=config)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  return builder


def _records(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@pytest.mark.slow
def test_musdb_builder_round_trips_chunks(tiny_musdb, tmp_path):
  builder = _prepare(tfds_builders.Musdb18Hq, tiny_musdb, tmp_path, chunk_seconds=0.75)
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
