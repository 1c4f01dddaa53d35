"""data/resampled.py: copies at the model's rate, made once, renewed when a file changes, and
a training stream that reads them agrees with one that resamples every crop."""

import dataclasses
import itertools
import os

import numpy as np
import pytest

from trackformer_jax import audio, input_pipeline
from trackformer_jax.data import resampled, sources


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_a_copy_is_the_file_resampled_whole_made_once_and_renewed_when_it_changes(tmp_path):
  x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 8000)).astype(np.float32)
  path = str(tmp_path / "song.wav")
  audio.write_audio(path, x, 8000, subtype="FLOAT")
  assert resampled.at_rate(path, 8000, 1) == path  # already at the rate: read as it is
  copy = resampled.at_rate(path, 16000, 1)
  assert copy.startswith(str(tmp_path / "cache" / "trackformer_jax" / "resampled"))
  info = audio.audio_info(copy)
  assert (info.sample_rate_hz, info.channels, info.frames) == (16000, 1, 16000)
  whole = audio.read_audio(path, sample_rate_hz=16000, channels=1)
  np.testing.assert_array_equal(audio.read_audio(copy), whole)
  # A crop of the copy is the crop a resampling read of the original gives, to 2e-4.
  crop = audio.read_audio(path, start_frame=5000, num_frames=4000, sample_rate_hz=16000, channels=1)
  np.testing.assert_allclose(
    audio.read_audio(copy, start_frame=5000, num_frames=4000), crop, atol=2e-4
  )
  made = os.stat(copy).st_mtime_ns
  assert resampled.at_rate(path, 16000, 1) == copy and os.stat(copy).st_mtime_ns == made
  audio.write_audio(path, -x, 8000, subtype="FLOAT")
  os.utime(path, ns=(made + 10**9, made + 10**9))
  renewed = resampled.at_rate(path, 16000, 1)
  assert renewed != copy
  np.testing.assert_array_equal(audio.read_audio(renewed), -whole)


def test_a_file_that_cannot_be_read_whole_leaves_its_track_out(tmp_path, tiny_musdb, caplog):
  source = sources.open_source(f"musdb:{tiny_musdb}", sample_rate_hz=16000, channels=1)
  tracks = source.split("train")[:2]
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
  bad = dataclasses.replace(tracks[0], mixture_files=(str(broken),))
  kept = resampled.tracks_at_rate([bad, tracks[1]], with_stems=False)
  assert [t.track_id for t in kept] == [tracks[1].track_id]
  assert str(broken) in caplog.text


def test_the_stream_from_copies_is_the_resampling_stream(tiny_config, tiny_musdb, monkeypatch):
  config = tiny_config(f"musdb:{tiny_musdb}", sample_rate_hz=16000)  # the files are at 8 kHz
  config.augment.remix_stems = True
  direct = list(itertools.islice(input_pipeline.train_batches(config, with_stems=False), 3))
  config.resampled_copies = True
  read = []
  real = audio.read_audio
  monkeypatch.setattr(
    audio, "read_audio", lambda path, **kw: read.append((path, kw)) or real(path, **kw)
  )
  copied = list(itertools.islice(input_pipeline.train_batches(config, with_stems=False), 3))
  crops = [(p, kw) for p, kw in read if kw.get("num_frames") == 8000]
  assert crops and all(str(resampled.cache_dir()) in str(p) for p, _ in crops)
  assert all(kw["sample_rate_hz"] == 16000 for _, kw in crops)
  for a, b in zip(direct, copied):
    np.testing.assert_allclose(a["mom"], b["mom"], atol=1e-3)
