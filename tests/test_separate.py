"""separate: segment stitching, alignment, mixture consistency, formats, bad input, CLI.

Most tests use a stand-in model with a known answer (``helpers.band_split_model``, an FFT
band splitter, optionally
shuffling its outputs in every segment, as a MixIT model may), so that a stitching error
shows as a wrong number rather than as a slightly different random output.
"""

from __future__ import annotations

import itertools
import pathlib
import re
import tracemalloc

import numpy as np
import pytest
import soundfile
from helpers import RATE_HZ, band_split_model, band_tones

from trackformer_jax import audio, separate
from trackformer_jax.inference import loading
from trackformer_jax.inference.model_folder import StemMap
from trackformer_jax.separate import Separator


def si_snr(estimate, reference):
  estimate, reference = estimate.ravel().astype(np.float64), reference.ravel().astype(np.float64)
  target = estimate @ reference / (reference @ reference) * reference
  return 10 * np.log10(target @ target / ((estimate - target) @ (estimate - target)))


def test_best_permutation_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(5):
    reference = rng.standard_normal((6, 2, 50))
    candidate = rng.standard_normal((6, 2, 50))
    best = max(
      itertools.permutations(range(6)),
      key=lambda p: sum(np.sum(reference[i] * candidate[p[i]]) for i in range(6)),
    )
    assert tuple(separate.best_permutation(reference, candidate)) == best


def test_overlap_add_weights_are_positive_ramps():
  weights = separate.overlap_add_weights(100, 25)
  assert weights.min() > 0 and weights.max() == 1.0
  assert np.all(np.diff(weights[:26]) > 0) and np.all(np.diff(weights[-26:]) < 0)


@pytest.mark.parametrize("seconds", [0.3, 2.0, 5.37])
def test_outputs_sum_to_input_and_keep_length(seconds):
  mixture = np.random.default_rng(1).uniform(-0.5, 0.5, (1, round(seconds * RATE_HZ)))
  separator = Separator(band_split_model(shuffle_seed=3), segment_seconds=1.0, batch_size=3)
  result = separator.separate_array(mixture, RATE_HZ)
  assert result.outputs.shape == (8, 1, mixture.shape[-1])
  np.testing.assert_allclose(result.outputs.sum(axis=0), mixture, atol=1e-4)
  assert sorted(result.stems) == sorted(f"output_{i}" for i in range(8))


def test_shuffled_outputs_are_aligned_across_segments():
  # Each segment's outputs come in a random order; an unaligned join would swap the tones
  # between outputs every second. Aligned, each output holds one tone for the whole song.
  tones = band_tones(12.0)
  mixture = tones.sum(axis=0)
  calls = []
  separator = Separator(
    band_split_model(shuffle_seed=7, calls=calls), segment_seconds=1.0, overlap=0.25
  )
  outputs = separator.separate_array(mixture, RATE_HZ).outputs
  orders = [o for batch in calls for o in batch]
  assert len(orders) >= 15
  assert any(not np.array_equal(o, orders[0]) for o in orders[1:])  # the case is real
  # Output i of the song is the band the first segment put there, throughout.
  for i, band in enumerate(orders[0]):
    assert si_snr(outputs[i], tones[band]) > 20.0
    for start in range(0, mixture.shape[-1] - RATE_HZ, RATE_HZ):  # and in every second
      window = slice(start, start + RATE_HZ)
      assert si_snr(outputs[i][..., window], tones[band][..., window]) > 15.0


def test_mono_model_on_stereo_file_at_other_rate_keeps_rate_and_channels(tmp_path):
  # 44.1 kHz stereo through an 8 kHz mono model: left holds a tone of the model's band 0,
  # right one of its band 5. The model sees the downmix; each channel keeps its own part.
  rate = 44100
  t = np.arange(int(2.0 * rate)) / rate
  left, right = 0.3 * np.sin(2 * np.pi * 250 * t), 0.2 * np.sin(2 * np.pi * 2750 * t)
  mixture = np.stack([left, right]).astype(np.float32)
  path = tmp_path / "stereo.wav"
  audio.write_audio(path, mixture, rate, subtype="FLOAT")
  separator = Separator(band_split_model(), segment_seconds=1.0)
  written = separator.separate_to_folder(path, tmp_path / "out", subtype="FLOAT")
  stems = []
  for stem_path in written.values():
    info = soundfile.info(stem_path)
    assert (info.samplerate, info.channels, info.frames) == (rate, 2, mixture.shape[-1])
    stems.append(audio.read_audio(stem_path))
  np.testing.assert_allclose(np.sum(stems, axis=0), mixture, atol=1e-4)
  inner = slice(rate // 10, -rate // 10)  # away from the resampler's edges
  assert si_snr(stems[0][0, inner], left[inner]) > 20
  assert si_snr(stems[5][1, inner], right[inner]) > 20
  assert np.mean(stems[0][1, inner] ** 2) < 1e-3 * np.mean(right**2)  # no band 0 on the right
  assert np.mean(stems[5][0, inner] ** 2) < 1e-3 * np.mean(left**2)


def test_spread_over_channels_sums_to_each_channel():
  rng = np.random.default_rng(0)
  channels_audio = rng.standard_normal((2, 3000)).astype(np.float32)
  estimates = rng.standard_normal((4, 3000)).astype(np.float32)
  spread = separate.spread_over_channels(estimates, channels_audio, n_fft=256)
  assert spread.shape == (4, 2, 3000)
  np.testing.assert_allclose(spread.sum(axis=0), channels_audio, atol=1e-4)


def test_stereo_model_on_mono_input():
  mixture = band_tones(1.5, seed=4).sum(axis=0)  # [1, T]
  separator = Separator(band_split_model(channels=2), segment_seconds=0.5)
  outputs = separator.separate_array(mixture, RATE_HZ).outputs
  assert outputs.shape == (8, 1, mixture.shape[-1])
  np.testing.assert_allclose(outputs.sum(axis=0), mixture, atol=1e-4)


def test_stem_map_names_and_sums_outputs():
  model = band_split_model()
  model.stem_map = StemMap(
    output_to_stem=("bass", "bass", "other", "vocals", "vocals", "other", "drums", "other")
  )
  mixture = band_tones(1.0, seed=5).sum(axis=0)
  result = Separator(model, segment_seconds=0.5).separate_array(mixture, RATE_HZ)
  assert list(result.stems) == ["vocals", "bass", "drums", "other"]
  np.testing.assert_allclose(result.stems["bass"], result.outputs[:2].sum(axis=0), atol=1e-6)
  np.testing.assert_allclose(sum(result.stems.values()), mixture, atol=1e-4)


def _separate_file_tracing_memory(path, separator):
  tracemalloc.start()
  written = separator.separate_to_folder(path, path.parent / f"{path.stem}_out", subtype="FLOAT")
  _, peak_bytes = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  return written, peak_bytes


@pytest.mark.slow
def test_ten_minute_file_streams_with_bounded_memory(tmp_path, monkeypatch):
  rate = 1000  # low rate: ten minutes is 600k frames
  rng = np.random.default_rng(0)
  paths = {}
  for minutes in (1, 10):
    mixture = (0.1 * rng.standard_normal((1, minutes * 60 * rate))).astype(np.float32)
    paths[minutes] = tmp_path / f"{minutes}min.wav"
    audio.write_audio(paths[minutes], mixture, rate, subtype="FLOAT")
  del mixture
  model = band_split_model(sample_rate_hz=2000, shuffle_seed=0)  # resampled both ways too
  separator = Separator(model, segment_seconds=4.0, batch_size=8)
  requested = []
  read_audio = audio.read_audio

  def recording_read_audio(p, **kwargs):
    requested.append(kwargs.get("num_frames"))
    return read_audio(p, **kwargs)

  monkeypatch.setattr(separate.audio, "read_audio", recording_read_audio)
  _, peak_one_minute = _separate_file_tracing_memory(paths[1], separator)
  requested.clear()
  written, peak_ten_minutes = _separate_file_tracing_memory(paths[10], separator)
  segment_plus_overlap = (separator.segment_frames + separator.overlap_frames) * rate // 2000
  assert requested and None not in requested
  assert max(requested) <= segment_plus_overlap
  assert sum(requested) == 10 * 60 * rate  # every frame read once
  # Memory is set by the batch of segments, not the song: ten times longer, same peak. (The
  # outputs alone would be 8 x 600k float32 = 19 MB if they were held.)
  assert peak_ten_minutes < 1.2 * peak_one_minute + 500_000, (peak_one_minute, peak_ten_minutes)
  total = sum(soundfile.read(p, dtype="float32")[0] for p in written.values())
  np.testing.assert_allclose(total, soundfile.read(paths[10], dtype="float32")[0], atol=1e-4)


def write_bad_inputs(folder: pathlib.Path) -> dict[str, str]:
  """Bad files -> the words their error line must contain."""
  folder.mkdir(parents=True, exist_ok=True)
  good = band_tones(0.5).sum(axis=0)
  audio.write_audio(folder / "good.wav", good, RATE_HZ, subtype="FLOAT")
  data = (folder / "good.wav").read_bytes()
  (folder / "truncated.wav").write_bytes(data[: len(data) // 2])
  (folder / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
  (folder / "notes.txt").write_text("hello")
  soundfile.write(folder / "empty.wav", np.zeros((0, 1), np.float32), RATE_HZ, subtype="FLOAT")
  nan = good.copy()
  nan[0, 100:200] = np.nan
  soundfile.write(folder / "nan.wav", nan.T, RATE_HZ, subtype="FLOAT")
  soundfile.write(folder / "six.wav", np.zeros((800, 6), np.float32), RATE_HZ, subtype="FLOAT")
  return {
    "truncated.wav": "truncated",
    "garbage.wav": "unreadable",
    "notes.txt": "unreadable",
    "empty.wav": "empty",
    "nan.wav": "nan",
    "six.wav": "channel",
    "missing.wav": "no such file",
  }


def test_every_bad_input_gives_its_message_and_the_others_go_on(tmp_path, monkeypatch, capsys):
  expected = write_bad_inputs(tmp_path / "in")
  model = band_split_model(channels=2)
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: model)
  (tmp_path / "in/sub").mkdir()
  duplicate = tmp_path / "in/sub/good.wav"  # same name as in/good.wav
  duplicate.write_bytes((tmp_path / "in/good.wav").read_bytes())
  tracks = [str(tmp_path / "in" / name) for name in expected]
  tracks += [str(tmp_path / "in/good.wav"), str(duplicate)]
  code = separate.main(
    [*tracks, "--model", "unused", "-o", str(tmp_path / "sep"), "--segment", "0.25"]
  )
  # tqdm redraws with carriage returns: a message may share a "line" with a cleared bar.
  err = re.split(r"[\r\n]", capsys.readouterr().err)
  err = [line for line in err if line.startswith("separate:")]
  assert code == 1
  for name, words in expected.items():
    lines = [line for line in err if name in line]
    assert len(lines) == 1, (name, err)
    assert words in lines[0].lower(), (name, lines[0])
  assert sorted(p.name for p in (tmp_path / "sep/bands/good").iterdir()) == sorted(
    f"output_{i}.wav" for i in range(8)
  )
  for name in expected:  # nothing half-written for a bad file
    assert not (tmp_path / "sep/bands" / pathlib.Path(name).stem).exists()
  assert not [p for p in (tmp_path / "sep/bands").iterdir() if p.name.startswith(".")]
  assert [line for line in err if str(duplicate) in line] == [
    f"separate: {duplicate}: would write {tmp_path / 'sep/bands/good/output_0.wav'}, as "
    f"{tmp_path / 'in/good.wav'} does; tell them apart with --filename, e.g. "
    '"{folder}/{track}/{stem}.{ext}"'
  ]
  assert err[-1] == f"separate: {len(expected) + 1} of {len(tracks)} tracks failed"


def test_soundfiles_time_channels_layout_is_refused_with_the_layout_expected(tmp_path):
  # soundfile.read gives [time, channels]; the API takes [channels, time] (audio.read_audio).
  path = tmp_path / "song.wav"
  mixture = band_tones(0.5).sum(axis=0)  # [1, T]
  soundfile.write(path, np.repeat(mixture, 2, axis=0).T, RATE_HZ)
  data, rate = soundfile.read(path, dtype="float32")
  separator = Separator(band_split_model(channels=2), segment_seconds=0.25)
  message = (
    r"song: expected audio \[channels, time\], got shape \(4000, 2\), which looks like "
    r"soundfile's \[time, channels\]: pass mixture.T"
  )
  with pytest.raises(separate.SeparationError, match=message):
    separator.separate_array(data, rate, name="song")
  result = separator.separate_array(data.T, rate, name="song")
  np.testing.assert_allclose(result.outputs.sum(axis=0), data.T, atol=1e-5)


def test_nan_in_array_is_reported():
  mixture = np.zeros((1, 4000), np.float32)
  mixture[0, 1234] = np.nan
  with pytest.raises(separate.SeparationError, match="NaN"):
    Separator(band_split_model(), segment_seconds=0.25).separate_array(mixture, RATE_HZ, name="x")


@pytest.mark.parametrize(
  "flags, subtype, extension",
  [
    ([], "PCM_16", "wav"),
    (["--int24"], "PCM_24", "wav"),
    (["--float32"], "FLOAT", "wav"),
    (["--flac"], "PCM_16", "flac"),
    (["--flac", "--int24"], "PCM_24", "flac"),
    (["--ogg"], "VORBIS", "ogg"),
  ],
)
def test_cli_formats_jobs_and_plots(tmp_path, monkeypatch, flags, subtype, extension):
  model = band_split_model()
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: model)
  tracks = []
  for i, extension_in in enumerate(("flac", "ogg")):  # inputs in two containers too
    path = tmp_path / f"song{i}.{extension_in}"
    # audio.write_audio offers no Vorbis subtype; soundfile writes the Ogg input directly.
    subtype_in = "VORBIS" if extension_in == "ogg" else "PCM_16"
    soundfile.write(path, band_tones(0.7, seed=i).sum(axis=0).T, RATE_HZ, subtype=subtype_in)
    tracks.append(str(path))
  plots = ["--plots"] if not flags else []
  code = separate.main(
    [
      *tracks,
      "--model",
      "m",
      "-o",
      str(tmp_path / "sep"),
      "-j",
      "2",
      "--segment",
      "0.3",
      *flags,
      *plots,
    ]
  )
  assert code == 0
  for i in range(2):
    folder = tmp_path / "sep/bands" / f"song{i}"
    info = soundfile.info(folder / f"output_0.{extension}")
    assert info.subtype == subtype and info.samplerate == RATE_HZ
    assert (folder / "plot.png").exists() == bool(plots)
    if plots:
      assert (folder / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_track_names():
  assert separate.track_name("a/b/song.flac") == "song"
  assert separate.track_name("musdb/test/Some Artist - Song/mixture.wav") == "Some Artist - Song"


def test_cli_rejects_float_flac(tmp_path, capsys):
  assert separate.main(["x.wav", "--model", "m", "--flac", "--float32"]) == 2
  assert "FLAC" in capsys.readouterr().err
