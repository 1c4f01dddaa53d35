"""separate as users run it: Ctrl-C through a real signal, compressed inputs, loud inputs,
the options (--filename, -n, -d, --model/--workdir, -j), --help, the umask, a full disk.

The SIGINT tests and those of the options run ``python -m trackformer_jax.separate`` (and
the other tools, through ``run_tool``) in a subprocess on a real exported model (the tiny
Performer of configs/test.py, randomly initialised); the format tests call ``separate.main``
with the band-splitting stand-in model (``helpers.band_split_model``).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from helpers import RATE_HZ, REPO, START_UP_NOISE, band_split_model, encode, run_tool

from trackformer_jax import audio, separate
from trackformer_jax.inference import loading


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
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: model)
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


@pytest.mark.parametrize("tool", ["separate", "evaluate", "export", "calibrate"])
def test_help_imports_no_jax(tool):
  result = run_tool("-X", "importtime", "-m", f"trackformer_jax.{tool}", "--help")
  assert result.returncode == 0, result.stderr
  assert "--model MODEL" in result.stdout and "--workdir" not in result.stdout
  imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
  assert not imported & {"jax", "flax", "orbax.checkpoint", "tensorflow"}, imported


@pytest.mark.slow
def test_a_workdir_under_the_old_option_name_with_two_jobs(exported, tmp_path):
  # --workdir (the older spelling of --model) on the workdir the model was exported from:
  # orbax's restore prints WARNING:absl lines there unless they are silenced.
  songs = [tmp_path / "song0.wav", tmp_path / "song1.wav"]
  for i, song in enumerate(songs):
    audio.write_audio(song, _tone(2.0, i), RATE_HZ)
  out = tmp_path / "sep"
  result = run_tool(
    "trackformer_jax.separate", *songs, "--workdir", exported.parent / "workdir", "-d", "cpu",
    "-o", out, "-j", "2", "--plots", umask=0o027,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert not [word for word in START_UP_NOISE if word in result.stderr], result.stderr
  # Both songs' progress bars, though they ran side by side.
  for song in songs:
    assert re.search(rf"{song.name}:\s+\d+%\|", result.stderr), result.stderr
  folder = out / "workdir"
  for song in songs:
    files = sorted(p.name for p in (folder / song.stem).iterdir())
    assert files == [*(f"output_{i}.wav" for i in range(8)), "plot.png"]
    # The umask's modes (0750 and 0640 under 027), not tempfile's 0700.
    assert (folder / song.stem).stat().st_mode & 0o777 == 0o750
    assert (folder / song.stem / "output_0.wav").stat().st_mode & 0o777 == 0o640


@pytest.mark.slow
def test_filename_template_keeps_songs_of_one_name_apart(exported, tmp_path):
  songs = []
  for i, folder in enumerate(("a", "b")):
    songs.append(tmp_path / folder / "song.wav")
    audio.write_audio(songs[-1], _tone(1.0, i), RATE_HZ)
  out = tmp_path / "sep"
  model = ["--model", exported, "-o", out, "--no-progress"]
  # The default template, Demucs's {track}/{stem}.{ext}: the second song is refused first.
  result = run_tool("trackformer_jax.separate", *songs, *model)
  assert result.returncode == 1, result.stderr
  assert result.stderr.splitlines()[0] == (
    f"separate: {songs[1]}: would write {out}/tiny/song/output_0.wav, as {songs[0]} does; "
    'tell them apart with --filename, e.g. "{folder}/{track}/{stem}.{ext}"'
  )
  assert sorted(p.name for p in (out / "tiny").iterdir()) == ["song"]
  # The input's folder in the template, and the model's folder named with -n.
  template = ["--filename", "{folder}/{track}/{stem}.{ext}", "-n", "mine"]
  result = run_tool("trackformer_jax.separate", *songs, *model, *template)
  assert result.returncode == 0, result.stderr
  for folder in ("a", "b"):
    assert len(list((out / "mine" / folder / "song").glob("output_*.wav"))) == 8
  # Stems in folders of their own: each file is put in place, no staging folder stays.
  result = run_tool(
    "trackformer_jax.separate", *songs, *model, "--filename", "{stem}/{folder}-{track}.{ext}"
  )
  assert result.returncode == 0, result.stderr
  assert f"{songs[0]} -> {out}/tiny/ (output_0/a-song.wav, output_1/a-song.wav" in result.stdout
  assert sorted(p.name for p in (out / "tiny/output_3").iterdir()) == ["a-song.wav", "b-song.wav"]
  assert not [p for p in (out / "tiny").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_refusals_before_any_work_are_one_line(exported, tmp_path):
  song = tmp_path / "song.wav"
  audio.write_audio(song, _tone(1.0, 0), RATE_HZ)
  out = tmp_path / "sep"
  cases = {
    ("--filename", "{track}.{ext}"): "--filename '{track}.{ext}': needs {stem}, or every "
    "stem would write one file",
    ("--filename", "{song}/{stem}.{ext}"): "--filename '{song}/{stem}.{ext}': unknown field "
    "{song}; the fields are {track}, {trackext}, {folder}, {stem}, {ext}",
    ("--filename", "../{stem}.{ext}"): "--filename '../{stem}.{ext}': must stay inside the "
    "output folder (no / or ..)",
    ("-n", "../elsewhere"): "-n/--name '../elsewhere': must be a folder name, not a path",
  }
  import jax

  if not [d for d in jax.devices() if d.platform == "gpu"]:
    cases[("-d", "gpu")] = (
      "--device gpu: JAX finds no GPU here (only cpu); install JAX with CUDA "
      "(pip install 'jax[cuda12]') or use --device cpu"
    )
  for flags, message in cases.items():
    result = run_tool("trackformer_jax.separate", song, "--model", exported, "-o", out, *flags)
    assert (result.returncode, result.stderr) == (2, f"separate: {message}\n"), flags
  assert not out.exists()


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_enospc_and_the_folder(exported, tmp_path):
  # A 200 kB tmpfs, mounted in a user namespace of the command's own (no root needed).
  if shutil.which("unshare") is None:
    pytest.skip("no unshare")
  small = tmp_path / "small"
  small.mkdir()
  mount = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=200k none {small} && exec "$@"']
  if subprocess.run([*mount, "sh", "true"], capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs in a user namespace here")
  song = tmp_path / "song.wav"
  audio.write_audio(song, _tone(10.0, 0), RATE_HZ)  # 8 stems of 160 kB
  for flags, folder in (
    ([], "tiny/song"),
    (["--mp3"], "tiny/song"),
    (["--filename", "{stem}/{track}.{ext}"], "tiny"),
  ):
    command = [*mount, "sh", sys.executable, "-m", "trackformer_jax.separate", str(song)]
    command += ["--model", str(exported), "-o", str(small), "--no-progress", *flags]
    result = subprocess.run(
      command, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
      text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
      f"separate: {song}: ENOSPC: no space left on device for {small}/{folder}; nothing of "
      "this track was kept",
      "separate: 1 of 1 tracks failed",
    ], flags
