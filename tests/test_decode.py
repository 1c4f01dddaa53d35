"""decode (FFmpeg through PyAV) and audio's use of it: MP3 without a Xing header, M4A and
Opus round trips, truncated files, segment reads equal to whole reads, unreadable files."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
import soundfile
from helpers import encode

from trackformer_jax import audio, decode


def chirp(seconds, rate_hz, channels=2):
  t = np.arange(round(seconds * rate_hz)) / rate_hz
  tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t)
  return np.stack([tone * (1 - 0.3 * c) for c in range(channels)]).astype(np.float32)


def best_lag_snr(decoded, reference, max_lag=3000):
  """SNR (dB) of ``decoded`` against ``reference`` at the codec delay that fits best."""
  best = -np.inf
  for lag in range(0, max_lag):
    n = min(decoded.shape[1] - lag, reference.shape[1])
    if n < reference.shape[1] // 2:
      break
    d, r = decoded[:, lag : lag + n], reference[:, :n]
    best = max(best, 10 * np.log10((r**2).sum() / max(((d - r) ** 2).sum(), 1e-20)))
  return best


def test_mp3_without_xing_header_has_the_length_that_decodes(tmp_path):
  rate = 44100
  path = tmp_path / "noxing.mp3"
  encode(path, chirp(5.0, rate), rate, "libmp3lame", container_options={"write_xing": "0"})
  head = path.read_bytes()[:4096]
  assert b"Xing" not in head and b"Info" not in head
  info = audio.audio_info(path)
  whole = audio.read_audio(path)
  assert info.decoder == "ffmpeg" and info.warning is None
  assert whole.shape == (2, info.frames)
  # libsndfile's header estimate is not what decodes: reads by it run past the end.
  assert soundfile.info(str(path)).frames != info.frames
  # Blocks read front to back (as the separator reads) are the whole file, exactly.
  blocks = [audio.read_audio(path, start_frame=s, num_frames=7000) for s in range(0, 230000, 7000)]
  np.testing.assert_array_equal(np.concatenate(blocks, axis=1)[:, : info.frames], whole)
  # A segment read out of order (decoded from the start again) is the same samples.
  np.testing.assert_array_equal(
    audio.read_audio(path, start_frame=12345, num_frames=999), whole[:, 12345 : 12345 + 999]
  )
  assert best_lag_snr(whole, chirp(5.0, rate)) > 15


@pytest.mark.parametrize(
  "name, codec, rate",
  [("song.m4a", "aac", 44100), ("song.opus", "libopus", 48000), ("song.mka", "flac", 22050)],
)
def test_compressed_round_trip(tmp_path, name, codec, rate):
  path = tmp_path / name
  reference = chirp(2.0, rate)
  encode(path, reference, rate, codec)
  info = audio.audio_info(path)
  assert (info.sample_rate_hz, info.channels) == (rate, 2)
  assert abs(info.frames - reference.shape[1]) <= 2048  # codec priming and padding
  decoded = audio.read_audio(path)
  assert decoded.shape == (2, info.frames)
  assert best_lag_snr(decoded, reference) > (60 if codec == "flac" else 15)
  resampled = audio.read_audio(path, sample_rate_hz=16000, start_frame=8000, num_frames=4000)
  assert resampled.shape == (2, 4000)


def test_truncated_files_are_read_as_far_as_they_decode_with_a_warning(tmp_path):
  rate = 44100
  cases = {"cut.mp3": "libmp3lame", "cut.m4a": "aac", "cut.opus": "libopus"}
  for name, codec in cases.items():
    whole = tmp_path / f"whole{pathlib.Path(name).suffix}"
    options = {"movflags": "faststart"} if codec == "aac" else None  # moov first, as streamed
    encode(
      whole,
      chirp(6.0, 48000 if codec == "libopus" else rate),
      48000 if codec == "libopus" else rate,
      codec,
      container_options=options,
    )
    data = whole.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
  for name in cases:
    info = audio.audio_info(tmp_path / name)
    assert info.warning is not None and info.warning.startswith("truncated: "), (name, info)
    seconds = info.frames / info.sample_rate_hz
    assert 2.0 < seconds < 4.0, (name, seconds)
    assert f"{seconds:.1f} s" in info.warning, info.warning
    assert audio.read_audio(tmp_path / name).shape[1] == info.frames
  # The whole files give no warning.
  for suffix in (".mp3", ".m4a", ".opus"):
    assert audio.audio_info(tmp_path / f"whole{suffix}").warning is None


def test_a_truncated_ogg_vorbis_read_by_soundfile_warns_too(tmp_path):
  whole = tmp_path / "whole.ogg"
  soundfile.write(whole, chirp(6.0, 44100).T, 44100, subtype="VORBIS")
  data = whole.read_bytes()
  cut = tmp_path / "cut.ogg"
  cut.write_bytes(data[: len(data) * 2 // 3])
  assert audio.audio_info(whole).warning is None
  info = audio.audio_info(cut)
  assert info.decoder == "soundfile"
  assert info.warning == (
    f"truncated: the Ogg stream ends without its end mark after "
    f"{info.frames / info.sample_rate_hz:.1f} s"
  )


def test_unreadable_files_name_both_decoders(tmp_path):
  junk = tmp_path / "junk.m4a"
  junk.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(audio.AudioError, match=r"junk\.m4a: unreadable audio \(FFmpeg: "):
    audio.audio_info(junk)
  text = tmp_path / "notes.txt"
  text.write_text("not audio\n" * 100)
  with pytest.raises(audio.AudioError, match=r"libsndfile: Format not recognised\. FFmpeg: "):
    audio.audio_info(text)


def test_decoded_sample_formats_become_float(tmp_path):
  # 16-bit PCM in a Matroska file: integers scaled to [-1, 1).
  path = tmp_path / "pcm.mka"
  reference = chirp(0.5, 8000, channels=1)
  encode(path, reference, 8000, "pcm_s16le")
  decoded = decode.read_frames(path, 0, 4000)
  assert decoded.dtype == np.float32
  np.testing.assert_allclose(decoded, reference, atol=2 / 32768)


@pytest.mark.parametrize("extension", ["flac", "aiff"])
def test_a_cut_flac_or_aiff_is_read_as_far_as_it_goes_with_a_warning(tmp_path, extension):
  # libsndfile would lose sync at the cut of a FLAC (after all the work) and shorten an
  # AIFF silently.
  whole = tmp_path / f"whole.{extension}"
  soundfile.write(whole, chirp(6.0, 44100).T, 44100, subtype="PCM_16")
  data = whole.read_bytes()
  cut = tmp_path / f"cut.{extension}"
  cut.write_bytes(data[: len(data) // 2])
  assert audio.audio_info(whole).warning is None
  info = audio.audio_info(cut)
  seconds = info.frames / info.sample_rate_hz
  assert 2.5 < seconds < 3.5
  assert re.fullmatch(
    rf"truncated: {seconds:.1f} s of 6\.0 s could be (read|decoded)", info.warning
  )
  np.testing.assert_allclose(
    audio.read_audio(cut), audio.read_audio(whole)[:, : info.frames], atol=1e-4
  )
