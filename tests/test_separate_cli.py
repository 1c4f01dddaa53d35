"""separate as users run it: Ctrl-C through a real signal, compressed inputs, loud inputs.

The SIGINT tests run ``python -m trackformer_jax.separate`` in a subprocess on a real
exported model (the tiny Performer of configs/test.py, randomly initialised); the others
call ``separate.main`` with the band-splitting stand-in model of test_separate.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import flax
import jax
import numpy as np
import pytest
import soundfile
from test_decode import encode
from test_separate import band_split_model

from trackformer_jax import audio, checkpoints, separate
from trackformer_jax import export as export_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
RATE_HZ = 8000


@flax.struct.dataclass
class _SavedState:
  step: jax.Array
  params: dict


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_config):
  """An exported tiny model (8 kHz mono), through a two-step workdir as training leaves it."""
  from configs import test as test_config

  config = tiny_config("chorales")
  config.model = test_config.get_config().model
  root = tmp_path_factory.mktemp("model")
  workdir = root / "workdir"
  workdir.mkdir()
  _, variables = export_lib.init_variables(config, jax.random.key(3))
  checkpoints.write_config(workdir, config)
  manager = checkpoints.create_manager(workdir, keep_checkpoints=2)
  checkpoints.save(
    manager, _SavedState(step=np.int32(1), params=variables["params"]), 1, {"score": 1.0}
  )
  manager.wait_until_finished()
  manager.close()
  out = root / "tiny"
  export_lib.export_workdir(workdir, out)
  return out


def _tone(seconds: float, seed: int, rate_hz: int = RATE_HZ) -> np.ndarray:
  t = np.arange(round(seconds * rate_hz)) / rate_hz
  rng = np.random.default_rng(seed)
  signal_ = 0.2 * np.sin(2 * np.pi * rng.uniform(200, 900) * t) + 0.05 * rng.standard_normal(t.size)
  return signal_[None].astype(np.float32)


def _start(exported, tracks, out, *extra):
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "trackformer_jax.separate", *map(str, tracks)]
  command += ["--model", str(exported), "-o", str(out), "--no-progress", *extra]
  return subprocess.Popen(
    command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


def _wait_for_first_track(process, timeout_s=240.0) -> list[str]:
  lines = []
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    line = process.stdout.readline()
    if not line:
      break
    lines.append(line)
    if " -> " in line:
      return lines
  process.kill()
  raise AssertionError(f"the first track was never written: {lines} {process.stderr.read()}")


def _songs(folder: pathlib.Path) -> list[pathlib.Path]:
  folder.mkdir()
  tracks = []
  # At about 100x real time (the tiny model, one CPU core) the long ones take seconds.
  for i, seconds in enumerate((1.0, 600.0, 600.0)):  # the first ends soon, the others not
    path = folder / f"song{i}.wav"
    audio.write_audio(path, _tone(seconds, i), RATE_HZ)
    tracks.append(path)
  return tracks


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_stops_at_once_keeps_earlier_results_and_leaves_nothing_partial(
  exported, tmp_path, jobs
):
  tracks = _songs(tmp_path / "in")
  out = tmp_path / "sep"
  earlier = out / "tiny/song1"  # a result of an earlier run, of a track this run will not finish
  earlier.mkdir(parents=True)
  (earlier / "output_0.wav").write_bytes(b"earlier result")
  process = _start(exported, tracks, out, "-j", jobs)
  _wait_for_first_track(process)
  time.sleep(0.5)  # well into the second track
  sent = time.monotonic()
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=60)
  took = time.monotonic() - sent
  assert process.returncode == 130, err
  lines = [line for line in err.splitlines() if line.strip()]
  assert lines == ["separate: interrupted: 1 of 3 tracks written; nothing partial left"], err
  print(f"stopped {took:.2f} s after SIGINT")
  assert took < 5.0, took
  assert sorted(p.name for p in (out / "tiny").iterdir()) == ["song0", "song1"]
  assert len(list((out / "tiny/song0").glob("output_*.wav"))) == 8
  assert [p.name for p in earlier.iterdir()] == ["output_0.wav"]
  assert (earlier / "output_0.wav").read_bytes() == b"earlier result"


@pytest.mark.slow
def test_a_second_ctrl_c_leaves_at_once_without_an_abort(exported, tmp_path):
  tracks = _songs(tmp_path / "in")
  out = tmp_path / "sep"
  process = _start(exported, tracks, out)
  _wait_for_first_track(process)
  time.sleep(0.5)
  process.send_signal(signal.SIGINT)
  time.sleep(0.01)
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=60)
  assert process.returncode == 130, err
  assert "terminate called" not in err and "Traceback" not in err, err
  assert re.search(r"interrupted", err), err
  assert sorted(p.name for p in (out / "tiny").iterdir()) == ["song0"]  # no hidden folder


def _run_cli(monkeypatch, tmp_path, tracks, *flags, model=None):
  model = model or band_split_model(channels=2)
  monkeypatch.setattr(separate.export_lib, "load_model", lambda *a, **k: model)
  args = [*map(str, tracks), "--model", "m", "-o", str(tmp_path / "sep"), "--segment", "0.25"]
  return separate.main([*args, "--no-progress", *flags])


def _loud_song(path: pathlib.Path) -> np.ndarray:
  t = np.arange(2 * RATE_HZ) / RATE_HZ
  left = 3.0 * np.sin(2 * np.pi * 300 * t)  # peak 3.0: a float WAV holds it
  right = 1.5 * np.sin(2 * np.pi * 1700 * t) + 0.5 * np.sin(2 * np.pi * 3100 * t)
  mixture = np.stack([left, right]).astype(np.float32)
  audio.write_audio(path, mixture, RATE_HZ, subtype="FLOAT")
  return mixture


def _stems(folder: pathlib.Path) -> np.ndarray:
  return np.stack([audio.read_audio(folder / f"output_{i}.wav") for i in range(8)])


def test_loud_input_is_rescaled_by_one_factor_with_a_warning(tmp_path, monkeypatch, capsys):
  song = tmp_path / "loud.wav"
  mixture = _loud_song(song)
  assert _run_cli(monkeypatch, tmp_path, [song]) == 0
  err = capsys.readouterr().err
  match = re.search(r"every stem scaled by ([0-9.]+) \(--clip-mode rescale\)", err)
  assert match, err
  assert err.count("separate: warning:") == 1 and f"separate: warning: {song}:" in err
  factor = float(match.group(1))
  stems = _stems(tmp_path / "sep/bands/loud")
  assert np.abs(stems).max() <= 1.0
  # The stems still sum to the input scaled by one factor, the one printed: apart from the
  # 8 stems' 16-bit steps (libsndfile: up to one each) and the factor's 4 printed decimals.
  total = stems.sum(axis=0).astype(np.float64)
  fitted = float((total * mixture).sum() / (mixture.astype(np.float64) ** 2).sum())
  assert abs(fitted - factor) < 1e-4, (fitted, factor)
  np.testing.assert_allclose(total, factor * mixture, atol=8 * 2**-15 + 3.0 * 5e-5)
  assert 0.2 < factor < 1.0


def test_loud_input_clamped_counts_the_samples(tmp_path, monkeypatch, capsys):
  song = tmp_path / "loud.wav"
  _loud_song(song)
  assert _run_cli(monkeypatch, tmp_path, [song], "--float32", "-o", str(tmp_path / "f")) == 0
  assert "warning" not in capsys.readouterr().err  # float WAV holds it: nothing changed
  floats = _stems(tmp_path / "f/bands/loud")
  beyond = int(np.count_nonzero(np.abs(floats) > 1.0))
  assert beyond > 0
  assert _run_cli(monkeypatch, tmp_path, [song], "--clip-mode", "clamp") == 0
  err = capsys.readouterr().err
  assert f"separate: warning: {song}: {beyond} samples beyond ±1 (peak " in err, err
  assert "clamped to ±1 (--clip-mode clamp)" in err
  clamped = _stems(tmp_path / "sep/bands/loud")
  np.testing.assert_allclose(clamped, np.clip(floats, -1, 1), atol=2 * 2**-15)


def test_a_quiet_input_gives_no_warning(tmp_path, monkeypatch, capsys):
  song = tmp_path / "quiet.wav"
  audio.write_audio(song, _tone(1.0, 0).repeat(2, axis=0), RATE_HZ)
  assert _run_cli(monkeypatch, tmp_path, [song]) == 0
  assert "warning" not in capsys.readouterr().err


def test_compressed_inputs_and_a_truncated_one_through_the_cli(tmp_path, monkeypatch, capsys):
  rate = 16000
  t = np.arange(3 * rate) / rate
  mixture = 0.3 * np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)])
  tracks = []
  for name, codec, options in (
    ("noxing.mp3", "libmp3lame", {"write_xing": "0"}),
    ("song.m4a", "aac", {}),
  ):
    tracks.append(tmp_path / name)
    encode(tracks[-1], mixture, rate, codec, container_options=options)
  whole = tmp_path / "whole.mp3"
  encode(whole, mixture, rate, "libmp3lame")
  cut = tmp_path / "cut.mp3"
  cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
  tracks.append(cut)
  model = band_split_model(sample_rate_hz=rate, channels=2)
  assert _run_cli(monkeypatch, tmp_path, tracks, "--flac", model=model) == 0
  err = capsys.readouterr().err
  warnings = [line for line in err.splitlines() if "warning" in line]
  assert len(warnings) == 1, err
  assert re.fullmatch(
    rf"separate: warning: {re.escape(str(cut))}: truncated: 1\.\d s of 3\.0 s could be "
    r"decoded; separating what was read",
    warnings[0],
  ), warnings
  for track in tracks:
    info = audio.audio_info(track)
    folder = tmp_path / "sep/bands" / track.stem
    stems = np.stack([soundfile.read(f, always_2d=True)[0].T for f in folder.glob("*.flac")])
    assert stems.shape == (8, 2, info.frames)
    np.testing.assert_allclose(stems.sum(axis=0), audio.read_audio(track), atol=8 * 2**-15)


def test_mp3_output(tmp_path, monkeypatch):
  song = tmp_path / "song.wav"
  audio.write_audio(song, _tone(2.0, 1).repeat(2, axis=0), RATE_HZ)
  assert _run_cli(monkeypatch, tmp_path, [song], "--mp3", "--mp3-bitrate", "128") == 0
  folder = tmp_path / "sep/bands/song"
  files = sorted(folder.glob("output_*.mp3"))
  assert len(files) == 8
  decoded = [audio.read_audio(f) for f in files]
  info = audio.audio_info(files[0])
  assert (info.sample_rate_hz, info.channels, info.format) == (RATE_HZ, 2, "MP3")
  assert abs(info.frames - 2 * RATE_HZ) < 1200  # LAME's padding, at most a frame
  n = min(d.shape[1] for d in decoded)
  total = np.sum([d[:, :n] for d in decoded], axis=0)
  reference = audio.read_audio(song)[:, :n]
  snr = 10 * np.log10((reference**2).sum() / ((total - reference) ** 2).sum())
  assert snr > 10, snr


def test_mp3_output_refuses_what_mp3_cannot_hold(tmp_path, monkeypatch, capsys):
  song = tmp_path / "song.wav"
  audio.write_audio(song, _tone(1.0, 1), 96000)
  assert _run_cli(monkeypatch, tmp_path, [song], "--mp3") == 1
  assert "MP3 cannot hold 96000 Hz" in capsys.readouterr().err
  assert not (tmp_path / "sep/bands/song").exists()


def test_ctrl_c_while_starting_up_is_one_line_too(tmp_path):
  song = tmp_path / "song.wav"
  audio.write_audio(song, _tone(1.0, 0), RATE_HZ)
  process = _start(tmp_path / "no-model-needed-yet", [song], tmp_path / "sep")
  time.sleep(0.5)  # in the imports (JAX takes seconds), or at worst loading the model
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=60)
  assert process.returncode == 130, err
  assert err.strip() in (
    "separate: interrupted while starting; nothing written",
    "separate: interrupted: 0 of 1 tracks written; nothing partial left",
  ), err
  assert not (tmp_path / "sep").exists()
