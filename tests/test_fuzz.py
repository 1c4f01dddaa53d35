"""Bad input for the audio reader, the data sources and ``separate``: a fuzz corpus.

Every file below either reads correctly or gives exactly one line that names it and says
what is wrong; never a traceback, never a hang (each file runs under a time limit), and
memory stays bounded on a two-hour file. docs/reliability.md tabulates what each input gives.

The corpus: random bytes named .wav/.flac/.ogg, a RIFF header with no data, a header
declaring more data than the file holds, zero and one sample, NaN and inf samples, headers
with zero or 65535 channels, a 1 Hz or 4 GHz sample rate, a malformed ``fmt`` chunk, a folder
named like a file; and good files in every sample format (8/16/24/32-bit integer, 32/64-bit
float), 1 to 8 channels and 8 kHz to 192 kHz.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import soundfile

from trackformer_jax import audio, separate
from trackformer_jax.data import sources
from trackformer_jax.inference import exporting, loading

REPO = pathlib.Path(__file__).resolve().parents[1]
RATE_HZ = 8000
SUBTYPE_TOLERANCE = {
  "PCM_U8": 1 / 2**7,
  "PCM_16": 1 / 2**15,
  "PCM_24": 1 / 2**23,
  "PCM_32": 1 / 2**31,
  "FLOAT": 1e-7,
  "DOUBLE": 1e-7,
}
CHANNEL_COUNTS = range(1, 9)
SAMPLE_RATES_HZ = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
PER_FILE_LIMIT_S = 30  # generous: the machine running the tests may be heavily loaded


def wav_bytes(
  channels: int,
  rate_hz: int,
  bits: int,
  payload: bytes,
  *,
  declared_bytes: int | None = None,
  format_tag: int = 1,
) -> bytes:
  """A RIFF/WAVE file written by hand, so that its header can lie."""
  block_align = (channels * bits // 8) & 0xFFFF
  fmt = struct.pack(
    "<HHIIHH",
    format_tag,
    channels,
    rate_hz,
    (rate_hz * block_align) & 0xFFFFFFFF,
    block_align,
    bits,
  )
  declared = len(payload) if declared_bytes is None else declared_bytes
  riff_size = min(4 + 8 + len(fmt) + 8 + declared, 0xFFFFFFFF)
  return (
    b"RIFF"
    + struct.pack("<I", riff_size)
    + b"WAVE"
    + b"fmt "
    + struct.pack("<I", len(fmt))
    + fmt
    + b"data"
    + struct.pack("<I", declared)
    + payload
  )


def sine(frames: int, channels: int, rate_hz: int) -> np.ndarray:
  """``float32 [frames, channels]``: a different 440 Hz-ish tone on each channel, peak 0.5."""
  t = np.arange(frames)[:, None] / rate_hz
  return (0.5 * np.sin(2 * np.pi * (440 + 110 * np.arange(channels)) * t)).astype(np.float32)


def write_fuzz_corpus(folder: pathlib.Path) -> tuple[dict[str, str], dict[str, dict]]:
  """Writes the corpus; returns (bad file -> a word its message must hold, good file -> facts)."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(2024)
  bad: dict[str, str] = {}
  for size in (0, 1, 44, 4096):
    (folder / f"random_{size}_bytes.wav").write_bytes(rng.bytes(size))
    bad[f"random_{size}_bytes.wav"] = "unreadable"
  for extension in ("flac", "ogg"):
    (folder / f"random_bytes_{extension}.{extension}").write_bytes(rng.bytes(4096))
    bad[f"random_bytes_{extension}.{extension}"] = "unreadable"
  (folder / "riff_only.wav").write_bytes(b"RIFF")
  bad["riff_only.wav"] = "unreadable"
  (folder / "header_no_data.wav").write_bytes(wav_bytes(1, RATE_HZ, 16, b""))
  bad["header_no_data.wav"] = "empty"
  declares_more = wav_bytes(1, RATE_HZ, 16, rng.bytes(4000), declared_bytes=0xFFFFFFF0)
  (folder / "header_declares_more.wav").write_bytes(declares_more)
  bad["header_declares_more.wav"] = "truncated"
  soundfile.write(folder / "zero_samples.wav", np.zeros((0, 1), np.float32), RATE_HZ)
  bad["zero_samples.wav"] = "empty"
  for name, value, subtype in (
    ("nan_float32.wav", np.nan, "FLOAT"),
    ("inf_float32.wav", np.inf, "FLOAT"),
    ("minus_inf_float64.wav", -np.inf, "DOUBLE"),
  ):
    samples = sine(RATE_HZ // 2, 1, RATE_HZ).astype(np.float64)
    samples[1234] = value
    soundfile.write(folder / name, samples, RATE_HZ, subtype=subtype)
    bad[name] = "nan or infinite"
  silence = b"\0" * 800
  (folder / "zero_channels.wav").write_bytes(wav_bytes(0, RATE_HZ, 16, silence))
  bad["zero_channels.wav"] = "unreadable"
  (folder / "65535_channels.wav").write_bytes(wav_bytes(65535, RATE_HZ, 16, silence))
  bad["65535_channels.wav"] = "unreadable"
  (folder / "rate_1_hz.wav").write_bytes(wav_bytes(1, 1, 16, silence))
  bad["rate_1_hz.wav"] = "implausible sample rate"
  (folder / "rate_4_ghz.wav").write_bytes(wav_bytes(1, 4_000_000_000, 16, silence))
  bad["rate_4_ghz.wav"] = "unreadable"
  (folder / "unknown_format_tag.wav").write_bytes(wav_bytes(1, RATE_HZ, 16, silence, format_tag=77))
  bad["unknown_format_tag.wav"] = "unreadable"
  (folder / "a_folder.wav").mkdir()
  bad["a_folder.wav"] = "folder"

  good: dict[str, dict] = {}
  for subtype in SUBTYPE_TOLERANCE:
    name = f"format_{subtype.lower()}.wav"
    soundfile.write(folder / name, sine(RATE_HZ // 2, 1, RATE_HZ), RATE_HZ, subtype=subtype)
    good[name] = {"rate": RATE_HZ, "channels": 1, "frames": RATE_HZ // 2, "subtype": subtype}
  for channels in CHANNEL_COUNTS:
    name = f"channels_{channels}.wav"
    soundfile.write(folder / name, sine(RATE_HZ // 2, channels, RATE_HZ), RATE_HZ, subtype="PCM_16")
    good[name] = {"rate": RATE_HZ, "channels": channels, "frames": RATE_HZ // 2}
  for rate in SAMPLE_RATES_HZ:
    name = f"rate_{rate}_hz.flac" if rate <= 96000 else f"rate_{rate}_hz.wav"
    soundfile.write(folder / name, sine(rate // 4, 2, rate), rate, subtype="PCM_16")
    good[name] = {"rate": rate, "channels": 2, "frames": rate // 4}
  for subtype in ("FLOAT", "PCM_16"):
    name = f"one_sample_{subtype.lower()}.wav"
    soundfile.write(folder / name, np.full((1, 1), 0.25, np.float32), RATE_HZ, subtype=subtype)
    good[name] = {"rate": RATE_HZ, "channels": 1, "frames": 1}
  return bad, good


@pytest.fixture(scope="module")
def fuzz_corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp("fuzz")
  bad, good = write_fuzz_corpus(folder)
  return folder, bad, good


@contextlib.contextmanager
def time_limit(seconds: int, what: str):
  """Raises TimeoutError in the test if the block runs longer than ``seconds`` (a hang)."""

  def on_alarm(signum, frame):
    raise TimeoutError(f"{what}: still running after {seconds} s")

  previous = signal.signal(signal.SIGALRM, on_alarm)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def assert_one_clear_line(message: str, path: pathlib.Path, word: str) -> None:
  assert "\n" not in message and "Traceback" not in message, message
  assert message.startswith(str(path)), message
  assert word in message.lower(), (word, message)


# --------------------------------------------------------------------------------------------
# audio.read_audio and audio.verify_audio


def test_the_reader_reads_every_good_file_and_names_every_bad_one(fuzz_corpus):
  folder, bad, good = fuzz_corpus
  for name, word in bad.items():
    path = folder / name
    for check in (
      # The whole file: a segment is checked for NaN/inf only where it reads.
      lambda p: audio.read_audio(p, sample_rate_hz=RATE_HZ, channels=1),
      audio.verify_audio,
    ):
      with time_limit(PER_FILE_LIMIT_S, name), pytest.raises(audio.AudioError) as error:
        check(path)
        pytest.fail(f"{name}: no error")
      assert_one_clear_line(str(error.value), path, word)

  for name, facts in good.items():
    path = folder / name
    with time_limit(PER_FILE_LIMIT_S, name):
      info = audio.verify_audio(path)
      native = audio.read_audio(path)
      # As training reads: a segment at the model's rate and channel count.
      segment = audio.read_audio(path, start_frame=0, num_frames=1000, sample_rate_hz=RATE_HZ)
    assert (info.sample_rate_hz, info.channels, info.frames) == (
      facts["rate"],
      facts["channels"],
      facts["frames"],
    ), name
    assert native.shape == (facts["channels"], facts["frames"]) and native.dtype == np.float32
    assert segment.shape == (facts["channels"], 1000) and np.isfinite(segment).all(), name
    if facts["frames"] == 1:
      assert native[0, 0] == pytest.approx(0.25, abs=1 / 2**15)
      assert np.all(segment[:, 1:] == 0.0)  # padded past the end
    elif "subtype" in facts:
      expected = sine(facts["frames"], 1, RATE_HZ).T
      np.testing.assert_allclose(native, expected, atol=SUBTYPE_TOLERANCE[facts["subtype"]] * 1.01)
    elif facts["rate"] != RATE_HZ:
      # Resampled, a 440 Hz tone stays a 440 Hz tone of the same level (away from the edges).
      expected = sine(facts["frames"] * RATE_HZ // facts["rate"], 2, RATE_HZ).T
      error = segment[:, 200:-200] - expected[:, 200 : segment.shape[1] - 200]
      assert np.abs(error).max() < 0.01, (name, np.abs(error).max())


# --------------------------------------------------------------------------------------------
# Data sources


def test_a_folder_source_skips_each_bad_file_and_strict_mode_names_one(fuzz_corpus):
  folder, bad, good = fuzz_corpus
  with time_limit(4 * PER_FILE_LIMIT_S, "open_source"):
    source = sources.open_source(f"folder:{folder}", sample_rate_hz=RATE_HZ, channels=1)
  tracks = {track.track_id for split in sources.SPLITS for track in source.split(split)}
  skipped = dict(source.skipped)
  # Listing reads headers only: NaN/inf files are tracks, refused when a crop is read (the
  # input pipeline then draws another track); the folder named .wav is not a file at all.
  sample_faults = {name for name, word in bad.items() if word == "nan or infinite"}
  assert tracks == set(good) | sample_faults
  assert set(skipped) == set(bad) - sample_faults - {"a_folder.wav"}
  for name, problem in skipped.items():
    assert_one_clear_line(problem, folder / name, bad[name])
  for name in sample_faults:
    track = next(t for t in source.tracks if t.track_id == name)
    with pytest.raises(audio.AudioError, match="NaN or infinite"):
      track.read_mixture(0, RATE_HZ // 2)

  with time_limit(4 * PER_FILE_LIMIT_S, "strict open_source"):
    with pytest.raises(sources.DataError) as error:
      sources.open_source(f"folder:{folder}", sample_rate_hz=RATE_HZ, channels=1, strict=True)
  message = str(error.value)
  assert "\n" not in message and "strict data" in message
  assert any(f"{folder / name}: " in message for name in bad), message


# --------------------------------------------------------------------------------------------
# separate


def fixed_split_model(num_outputs: int = 4) -> loading.LoadedModel:
  """A stand-in mono 8 kHz model: output i is the input times w_i (the w_i sum to 1)."""
  weights = np.arange(1, num_outputs + 1, dtype=np.float32)
  weights /= weights.sum()

  def apply_fn(mix, want_masks=False):
    return mix[:, None] * weights[None, :, None, None], None

  return loading.LoadedModel(
    name="split",
    model_name="split",
    sample_rate_hz=RATE_HZ,
    channels=1,
    num_outputs=num_outputs,
    apply_fn=apply_fn,
  )


def test_separate_writes_every_good_file_and_names_every_bad_one(fuzz_corpus, tmp_path):
  folder, bad, good = fuzz_corpus
  separator = separate.Separator(fixed_split_model(), segment_seconds=0.25, batch_size=2)
  for name, word in bad.items():
    with time_limit(PER_FILE_LIMIT_S, name), pytest.raises(ValueError) as error:
      separator.separate_to_folder(folder / name, tmp_path / name)
    # AudioError and SeparationError are both ValueErrors with a one-line message.
    assert isinstance(error.value, audio.AudioError | separate.SeparationError), error.value
    assert_one_clear_line(str(error.value), folder / name, word)
    assert not (tmp_path / name).exists()
  for name, facts in good.items():
    with time_limit(PER_FILE_LIMIT_S, name):
      written = separator.separate_to_folder(folder / name, tmp_path / name, subtype="FLOAT")
    outputs = [soundfile.read(path, dtype="float32", always_2d=True) for path in written.values()]
    assert len(outputs) == 4
    for samples, rate in outputs:
      assert rate == facts["rate"] and samples.shape == (facts["frames"], facts["channels"])
      assert np.isfinite(samples).all()
    # Whatever the rate and channel count, the outputs add up to the input.
    mixture, _ = soundfile.read(folder / name, dtype="float32", always_2d=True)
    np.testing.assert_allclose(sum(samples for samples, _ in outputs), mixture, atol=2e-3)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_the_separate_cli_prints_one_line_per_bad_file(fuzz_corpus, tmp_path, monkeypatch, capsys):
  folder, bad, good = fuzz_corpus
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: fixed_split_model())
  tracks = sorted(str(folder / name) for name in [*bad, *good])
  out = tmp_path / "separated"
  with time_limit(len(tracks) * PER_FILE_LIMIT_S, "separate CLI"):
    code = separate.main([*tracks, "--model", "m", "-o", str(out), "--no-progress"])
  err = capsys.readouterr().err.splitlines()
  assert code == 1
  for name, word in bad.items():
    lines = [line for line in err if f"{folder / name}:" in line]
    assert len(lines) == 1, (name, err)
    assert lines[0].startswith("separate: ") and word in lines[0].lower(), lines[0]
  assert err[-1] == f"separate: {len(bad)} of {len(tracks)} tracks failed"
  assert len(err) == len(bad) + 1 and not any("Traceback" in line for line in err)
  written = sorted(p.name for p in (out / "split").iterdir())
  assert written == sorted(pathlib.Path(name).stem for name in good)


# --------------------------------------------------------------------------------------------
# A two-hour file


TWO_HOURS_FRAMES = 2 * 3600 * RATE_HZ


@pytest.fixture(scope="module")
def two_hour_file(tmp_path_factory) -> pathlib.Path:
  """8 kHz mono 16-bit, two hours (115 MB): a real header, then a sparse run of zero bytes
  (``truncate`` allocates nothing) with one second of tone written at the 1 h mark."""
  path = tmp_path_factory.mktemp("long") / "two_hours.wav"
  data_bytes = TWO_HOURS_FRAMES * 2
  header = wav_bytes(1, RATE_HZ, 16, b"", declared_bytes=data_bytes)
  with open(path, "wb") as f:
    f.write(header)
    f.truncate(len(header) + data_bytes)
    f.seek(len(header) + 3600 * RATE_HZ * 2)
    tone = (sine(RATE_HZ, 1, RATE_HZ)[:, 0] * 32767).astype("<i2")
    f.write(tone.tobytes())
  return path


def _peak_traced_bytes(function) -> tuple[object, int]:
  tracemalloc.start()
  try:
    result = function()
    return result, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def test_a_two_hour_file_is_read_a_segment_at_a_time(two_hour_file):
  info = audio.audio_info(two_hour_file)
  assert info.frames == TWO_HOURS_FRAMES and info.duration_seconds == 7200.0
  start = 3600 * RATE_HZ
  with time_limit(PER_FILE_LIMIT_S, "segment of a two-hour file"):
    segment, native_peak = _peak_traced_bytes(
      lambda: audio.read_audio(two_hour_file, start_frame=start, num_frames=RATE_HZ)
    )
    # Resampled to 44.1 kHz stereo: 10 s at the 1 h mark, as a training crop at that rate.
    resampled, resampled_peak = _peak_traced_bytes(
      lambda: audio.read_audio(
        two_hour_file,
        start_frame=3600 * 44100 - 44100,
        num_frames=10 * 44100,
        sample_rate_hz=44100,
        channels=2,
      )
    )
  np.testing.assert_allclose(segment[0], sine(RATE_HZ, 1, RATE_HZ)[:, 0], atol=2 / 2**15)
  assert resampled.shape == (2, 10 * 44100) and np.abs(resampled[:, 44100:88200]).max() > 0.4
  # The whole file as float32 would be 230 MB; a segment costs what the segment holds.
  assert native_peak < 4 * RATE_HZ * 4 + 1_000_000, native_peak
  assert resampled_peak < 4 * (2 * 10 * 44100 * 4) + 1_000_000, resampled_peak


def test_separating_a_two_hour_file_streams(two_hour_file, monkeypatch):
  # The first 40 blocks (10 s) of the stream, then stop: memory and reads set by a segment.
  separator = separate.Separator(fixed_split_model(), segment_seconds=0.25, batch_size=2)
  requested = []
  read_audio = audio.read_audio

  def recording_read_audio(path, **kwargs):
    requested.append(kwargs["num_frames"])
    return read_audio(path, **kwargs)

  monkeypatch.setattr(separate.audio, "read_audio", recording_read_audio)

  def first_blocks():
    info = separator._checked_info(two_hour_file)
    blocks = separator.iter_blocks(
      separator._file_reader(two_hour_file), info.frames, 1, info.sample_rate_hz
    )
    return [next(blocks).shape for _ in range(40)]

  with time_limit(PER_FILE_LIMIT_S, "separating a two-hour file"):
    shapes, peak = _peak_traced_bytes(first_blocks)
  assert sum(shape[-1] for shape in shapes) < 20 * RATE_HZ
  assert max(requested) <= separator.segment_frames and sum(requested) < 20 * RATE_HZ
  assert peak < 2_000_000, peak


def test_a_whole_two_hour_file_is_verified_in_bounded_memory(two_hour_file):
  # The strict data check scans every sample, a block at a time.
  with time_limit(10 * PER_FILE_LIMIT_S, "verify_audio of a two-hour file"):
    started = time.perf_counter()
    info, peak = _peak_traced_bytes(lambda: audio.verify_audio(two_hour_file))
    seconds = time.perf_counter() - started
  assert info.frames == TWO_HOURS_FRAMES
  block_bytes = audio._SCAN_BLOCK_FRAMES * 4
  assert peak < 3 * block_bytes, (peak, seconds)


# --------------------------------------------------------------------------------------------
# The real CLI, in its own process, with a real (randomly initialised, exported) model


@pytest.mark.slow
def test_python_m_separate_on_a_folder_of_bad_files(fuzz_corpus, tmp_path):
  folder, bad, good = fuzz_corpus
  from configs import test as test_config

  config = test_config.get_config()
  model = loading.random_init_model(config)
  exporting.export_model(config, model.variables, tmp_path / "model")
  # A sample of the corpus: the CLI's own process pays JAX start-up and compilation.
  bad_names = [
    "random_44_bytes.wav",
    "header_no_data.wav",
    "header_declares_more.wav",
    "nan_float32.wav",
    "rate_1_hz.wav",
    "65535_channels.wav",
  ]
  good_names = ["channels_3.wav", "rate_44100_hz.flac", "one_sample_pcm_16.wav"]
  tracks = [str(folder / name) for name in bad_names + good_names]
  out = tmp_path / "separated"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
    [sys.executable, "-m", "trackformer_jax.separate", *tracks, "--model", str(tmp_path / "model")]
    + ["-o", str(out), "--no-progress", "--segment", "0.5"],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
    env=env,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith("separate: ")]
  for name in bad_names:
    mine = [line for line in lines if f"{folder / name}:" in line]
    assert len(mine) == 1 and bad[name] in mine[0].lower(), (name, lines)
  assert lines[-1] == f"separate: {len(bad_names)} of {len(tracks)} tracks failed"
  assert len(lines) == len(bad_names) + 1
  for name in good_names:
    stems = sorted((out / "model" / pathlib.Path(name).stem).iterdir())
    assert [p.name for p in stems] == [f"output_{i}.wav" for i in range(8)]
    info = soundfile.info(stems[0])
    assert (info.samplerate, info.channels, info.frames) == (
      good[name]["rate"],
      good[name]["channels"],
      good[name]["frames"],
    )
  assert re.search(r"channels_3\.wav -> .*channels_3/", result.stdout)
