"""audio.py: segment reads, resampling, channel conversion, atomic writes, bad files."""

import os

import numpy as np
import pytest
import soundfile as sf
import soxr

from trackformer_jax import audio


def _noise_file(path, frames=4000, rate=8000, channels=2, subtype="FLOAT", seed=0):
  x = np.random.default_rng(seed).uniform(-0.5, 0.5, (channels, frames)).astype(np.float32)
  audio.write_audio(path, x, rate, subtype=subtype)
  return x


def test_round_trip_float_is_exact(tmp_path):
  x = _noise_file(tmp_path / "a.wav")
  y = audio.read_audio(tmp_path / "a.wav")
  assert y.dtype == np.float32 and y.shape == x.shape
  np.testing.assert_array_equal(y, x)
  info = audio.audio_info(tmp_path / "a.wav")
  assert (info.sample_rate_hz, info.channels, info.frames) == (8000, 2, 4000)


def test_int16_is_written_verbatim(tmp_path):
  ints = np.array([[-32767, -1, 0, 1, 12345, 32767]], np.int16)
  audio.write_audio(tmp_path / "i.wav", ints, 8000, "PCM_16")
  y = audio.read_audio(tmp_path / "i.wav")
  np.testing.assert_array_equal(y, ints.astype(np.float32) / 32768)


@pytest.mark.parametrize("start,frames", [(0, 100), (1234, 500), (3900, 300)])
def test_segment_equals_slice_of_whole_file(tmp_path, start, frames):
  x = _noise_file(tmp_path / "a.wav")
  y = audio.read_audio(tmp_path / "a.wav", start_frame=start, num_frames=frames)
  assert y.shape == (2, frames)
  expected = x[:, start : start + frames]
  np.testing.assert_array_equal(y[:, : expected.shape[1]], expected)
  # Past the end: zero-padded to the requested length.
  assert not y[:, expected.shape[1] :].any()


@pytest.mark.parametrize("rate_in,rate_out", [(8000, 16000), (44100, 16000), (16000, 44100)])
def test_resampled_segment_matches_whole_file_resampling(tmp_path, rate_in, rate_out):
  t = np.arange(rate_in) / rate_in
  x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 97 * t))[None]
  audio.write_audio(tmp_path / "s.wav", x.astype(np.float32), rate_in, "FLOAT")
  whole = soxr.resample(x[0].astype(np.float32), rate_in, rate_out, quality="HQ")
  start, frames = rate_out // 3, rate_out // 4
  seg = audio.read_audio(
    tmp_path / "s.wav", start_frame=start, num_frames=frames, sample_rate_hz=rate_out
  )
  assert seg.shape == (1, frames)
  np.testing.assert_allclose(seg[0], whole[start : start + frames], atol=2e-4)
  info = audio.audio_info(tmp_path / "s.wav")
  assert audio.output_frames(info.frames, rate_in, rate_out) == rate_out


def test_channel_conversion(tmp_path):
  x = _noise_file(tmp_path / "st.wav", channels=2)
  mono = audio.read_audio(tmp_path / "st.wav", channels=1)
  np.testing.assert_allclose(mono[0], x.mean(0), atol=1e-7)
  _noise_file(tmp_path / "mono.wav", channels=1)
  stereo = audio.read_audio(tmp_path / "mono.wav", channels=2)
  np.testing.assert_array_equal(stereo[0], stereo[1])
  with pytest.raises(audio.AudioError, match="cannot convert 2 channels to 3"):
    audio.read_audio(tmp_path / "st.wav", channels=3)


def test_write_is_atomic_and_leaves_no_temporaries(tmp_path):
  _noise_file(tmp_path / "a.wav")
  # A failing write (clipping) must leave the earlier file intact and no temp file behind.
  with pytest.raises(audio.AudioError, match="would clip"):
    audio.write_audio(tmp_path / "a.wav", np.full((1, 10), 1.5, np.float32), 8000)
  assert sorted(os.listdir(tmp_path)) == ["a.wav"]
  assert audio.audio_info(tmp_path / "a.wav").frames == 4000


@pytest.mark.parametrize(
  "array,match",
  [
    (np.zeros((4000, 2), np.float32), r"looks like \[time, channels\]"),
    (np.full((1, 5), np.nan, np.float32), "NaN"),
    (np.zeros(5, np.float32), r"expected audio \[channels, time\]"),
  ],
)
def test_write_rejects_bad_arrays(tmp_path, array, match):
  with pytest.raises(audio.AudioError, match=match):
    audio.write_audio(tmp_path / "x.wav", array, 8000, "FLOAT")


def _bad_files(tmp_path):
  """Each kind of bad file, with the words its error must contain."""
  _noise_file(tmp_path / "good.wav", subtype="PCM_16")
  data = (tmp_path / "good.wav").read_bytes()
  (tmp_path / "truncated.wav").write_bytes(data[: len(data) // 2])
  (tmp_path / "empty.wav").write_bytes(data[:44])
  (tmp_path / "junk.wav").write_bytes(b"this is not audio" * 50)
  (tmp_path / "zero.wav").write_bytes(b"")
  nan = np.zeros((1, 100), np.float32)
  nan[0, 42] = np.nan
  sf.write(tmp_path / "nan.wav", nan.T, 8000, subtype="FLOAT")  # bypasses write_audio's check
  return {
    "truncated.wav": "truncated: the header declares 4000 frames",
    "empty.wav": "empty",
    "junk.wav": "unreadable audio",
    "zero.wav": "unreadable audio",
    "missing.wav": "no such file",
    "nan.wav": "NaN or infinite sample at frame 42",
  }


def test_bad_files_each_give_their_message(tmp_path):
  for name, words in _bad_files(tmp_path).items():
    with pytest.raises(audio.AudioError) as e:
      audio.read_audio(tmp_path / name)
    assert str(tmp_path / name) in str(e.value), name
    assert words in str(e.value), (name, str(e.value))
  # verify_audio scans every block: NaN found even though the header is fine.
  assert audio.audio_info(tmp_path / "nan.wav").frames == 100
  with pytest.raises(audio.AudioError, match="NaN"):
    audio.verify_audio(tmp_path / "nan.wav")
