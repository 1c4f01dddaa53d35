"""Tracker modules rendered stem by stem (trackformer_jax.data.modules, .openmpt, .instruments).

The module is written byte by byte here: a 4-channel ProTracker .mod with a low looped sine
called "bass", a decaying noise burst called "snare", a looped mid tone called "strings"
(a name that says nothing: its sound decides) and a short unnamed noise tick (a hi-hat by
its sound). Needs only libopenmpt0, which launch/setup.sh installs.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from trackformer_jax import audio
from trackformer_jax.data import modules, openmpt, render
from trackformer_jax.data.instruments import assign_stem, sound_features

STEMS = ("vocals", "bass", "drums", "other")
# Amiga periods: C-1, F-1, G-1, A#-1 (bass); C-2 (drums); C-3, E-3, G-3 (strings).
C1, F1, G1, AS1, C2, C3, E3, G3 = 856, 640, 570, 480, 428, 214, 170, 143


def _sample(name: str, data: np.ndarray, loop: bool, volume: int = 64):
  raw = np.clip(np.round(data * 127), -128, 127).astype(np.int8).tobytes()
  if len(raw) % 2:
    raw += b"\0"
  words = len(raw) // 2
  header = name.encode().ljust(22, b"\0") + struct.pack(
    ">HBBHH", words, 0, volume, 0, words if loop else 1
  )
  return header, raw


def _cell(sample: int, period: int) -> bytes:
  return bytes([(sample & 0xF0) | (period >> 8), period & 0xFF, (sample & 0x0F) << 4, 0])


def tiny_mod() -> bytes:
  """Two patterns (64 rows, 0.12 s a row: 15.4 s in all) on four channels."""
  rng = np.random.default_rng(0)
  bass = np.sin(2 * np.pi * np.arange(64 * 50) / 64)  # 65 Hz at C-1
  snare = rng.uniform(-1, 1, 2000) * np.exp(-np.arange(2000) / 400)
  strings = 0.6 * np.sin(2 * np.pi * np.arange(16 * 200) / 16)  # 1 kHz at C-3
  tick = rng.uniform(-1, 1, 400) * np.exp(-np.arange(400) / 80)
  samples = [
    _sample("bass", bass, loop=True),
    _sample("snare", snare, loop=False),
    _sample("strings", strings, loop=True, volume=40),
    _sample("", tick, loop=False, volume=48),
  ]
  headers = b"".join(h for h, _ in samples) + b"".join(
    b"\0" * 22 + struct.pack(">HBBHH", 0, 0, 0, 0, 1) for _ in range(31 - len(samples))
  )
  patterns = b""
  for pattern in range(2):
    for row in range(64):
      bass_note = (C1, F1, G1, AS1)[(row // 16 + pattern) % 4] if row % 8 == 0 else None
      cells = [
        _cell(1, bass_note) if bass_note else bytes(4),
        _cell(2, C2) if row % 8 == 4 else bytes(4),
        _cell(3, (C3, E3, G3)[row // 16 % 3]) if row % 16 == 0 else bytes(4),
        _cell(4, C2) if row % 2 == 0 else bytes(4),
      ]
      patterns += b"".join(cells)
  orders = bytes([0, 1] + [0] * 126)
  head = b"tiny".ljust(20, b"\0") + headers + bytes([2, 127]) + orders + b"M.K."
  return head + patterns + b"".join(raw for _, raw in samples)


def render_tiny_corpus(root):
  """The corpus of ``root/in`` into ``root/out``: the same arguments every time."""
  return modules.render_corpus(
    root / "out",
    [str(root / "in")],
    seconds=4.0,
    max_excerpts=3,
    min_seconds=1.0,
    progress=False,
  )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("mods")
  (root / "in").mkdir()
  (root / "in" / "tiny.mod").write_bytes(tiny_mod())
  folders, problems = render_tiny_corpus(root)
  return root, folders, problems


def test_module_loads_with_its_samples():
  m = openmpt.Module(tiny_mod(), "tiny.mod")
  assert m.type == "mod" and m.channels == 4 and not m.uses_instruments
  assert m.sample_names[:4] == ["bass", "snare", "strings", ""]
  assert 15.0 < m.duration_seconds < 16.0
  notes = m.notes_played()
  assert len(notes[0]) == 4 and len(notes[1]) == 1 and len(notes[2]) == 3


def test_instruments_alone_sum_to_the_whole():
  m = openmpt.Module(tiny_mod(), "tiny.mod")
  full = m.render(3.0, 4.0)
  parts = sum(m.render(3.0, 4.0, solo=i) for i in range(m.num_mutable))
  assert full.shape == (2, 4 * 44100) and np.abs(full).max() > 0.1
  # Measured: the fixed-point mixer's rounding leaves ~1e-6 (SNR ~120 dB).
  assert np.abs(parts - full).max() < 1e-5
  channels = [m.render(3.0, 4.0, mute_channels={0, 1, 2, 3} - {c}) for c in range(4)]
  assert np.abs(sum(channels) - full).max() < 1e-5
  # A muted instrument is gone; the render is deterministic.
  assert np.array_equal(m.render(3.0, 4.0, mute=[0, 2, 3]), m.render(3.0, 4.0, solo=1))


def test_layout_exact_sums_and_stems(corpus):
  root, folders, problems = corpus
  assert problems == []
  split = render.split_of_song("tiny.mod")
  assert [f.split("/")[-2:] for f in folders] == [[split, f"local-tiny-{k}"] for k in range(3)]
  assert json.loads((root / "out" / "modules.json").read_text())["seconds"] == 4.0
  for k, folder in enumerate(folders):
    meta = json.loads((root / "out" / split / f"local-tiny-{k}" / "meta.json").read_text())
    assert meta["song"] == "tiny.mod" and meta["file"] == "tiny.mod" and meta["excerpt"] == k
    assert meta["split"] == split and meta["module"]["muting"] == "samples"
    by_name = {i["name"]: i for i in meta["instruments"] if not i["silent"]}
    assert by_name["bass"]["stem"] == "bass" and "name" in by_name["bass"]["reason"]
    assert by_name["snare"]["stem"] == "drums" and "name" in by_name["snare"]["reason"]
    assert by_name["strings"]["stem"] == "other" and "pitched" in by_name["strings"]["reason"]
    assert by_name[""]["stem"] == "drums"  # the unnamed tick, by its sound
    assert meta["silent_stems"] == ["vocals"]
    assert meta["sum_check"]["max_abs_error"] < 1e-5 and meta["sum_check"]["snr_db"] > 90
    assert meta["sum_check"]["random_instruments_left_out"] == []
    assert audio.audio_info(f"{folder}/mixture.wav").sample_rate_hz == 44100
    mixture = audio.read_audio(f"{folder}/mixture.wav")
    stems = [audio.read_audio(f"{folder}/{s}.wav") for s in STEMS]
    assert mixture.shape == (2, round(meta["seconds"] * 44100))
    assert 3.5 < meta["seconds"] <= 4.0 and (k == 2 or meta["seconds"] == 4.0)
    np.testing.assert_array_equal(mixture, np.sum(stems, axis=0))
    assert 0.85 < np.abs(mixture).max() <= 0.9 + 1e-4
    assert not np.any(stems[0]) and all(np.abs(s).max() > 0.01 for s in stems[1:])


def test_second_run_skips_finished_tracks(corpus):
  root, folders, _ = corpus
  metas = [f"{f}/meta.json" for f in folders]
  before = [os.stat(m).st_mtime_ns for m in metas]
  again, problems = render_tiny_corpus(root)
  assert again == folders and problems == []
  assert [os.stat(m).st_mtime_ns for m in metas] == before
  with pytest.raises(modules.ModuleError, match="rendered with"):
    modules.render_corpus(root / "out", [str(root / "in")], seconds=5.0, progress=False)


def test_corrupt_module_is_named(tmp_path):
  bad = tmp_path / "in" / "broken.xm"
  bad.parent.mkdir()
  bad.write_bytes(b"this is not a tracker module\n" * 20)
  with pytest.raises(modules.ModuleError, match="broken.xm"):
    modules.render_module(str(bad), tmp_path / "out")
  (tmp_path / "in" / "tiny.mod").write_bytes(tiny_mod())
  folders, problems = modules.render_corpus(
    tmp_path / "out", [str(tmp_path / "in")], seconds=8.0, max_excerpts=1, progress=False
  )
  assert len(folders) == 1 and len(problems) == 1 and "broken.xm" in problems[0]


def test_no_modules_is_one_clear_error(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  rc = modules.main(["--out", str(tmp_path / "out"), "--from", str(tmp_path / "empty")])
  err = capsys.readouterr().err.strip()
  assert rc == 1 and err.count("\n") == 0 and "no tracker modules" in err


def test_missing_libopenmpt_is_one_clear_error(tmp_path, monkeypatch, capsys):
  def no_library(name, *args, **kwargs):
    raise OSError(f"{name}: cannot open shared object file")

  openmpt.library.cache_clear()
  monkeypatch.setattr(openmpt.ctypes, "CDLL", no_library)
  try:
    rc = modules.main(["--out", str(tmp_path / "out"), "--from", str(tmp_path)])
  finally:
    monkeypatch.undo()
    openmpt.library.cache_clear()
  err = capsys.readouterr().err.strip()
  assert rc == 1 and err.count("\n") == 0 and "libopenmpt0" in err
  assert openmpt.version().startswith("0.")


def test_sound_rules_and_reserved_packages():
  rng = np.random.default_rng(1)
  t = np.arange(44100 * 4) / 44100
  hits = np.zeros_like(t)
  for start in range(0, t.size, 11025):
    n = min(4000, t.size - start)
    hits[start : start + n] = rng.uniform(-1, 1, n) * np.exp(-np.arange(n) / 800)
  stereo = lambda x: np.stack([x, x]).astype(np.float32)  # noqa: E731
  low = np.sin(2 * np.pi * 60 * t) * 0.5
  mid = np.sin(2 * np.pi * 660 * t) * 0.5
  assert assign_stem("", sound_features(stereo(hits), {60: 16}))[0] == "drums"
  assert assign_stem("", sound_features(stereo(low), {36: 4, 38: 4, 43: 4}))[0] == "bass"
  assert assign_stem("", sound_features(stereo(mid), {60: 4, 64: 4, 67: 4}))[0] == "other"
  assert assign_stem("Jazzbass", None) == ("bass", "name word 'jazzbass'")
  assert assign_stem("BassDrum 2", None)[0] == "drums"
  assert assign_stem("choir aah", None)[0] == "vocals"
  assert assign_stem("", None) == ("other", "silent in every excerpt")
  assert sound_features(np.zeros((2, 44100), np.float32)) is None
  # IT surround plays a voice in antiphase: not silent, though its mono downmix is.
  assert sound_features(np.stack([mid, -mid]).astype(np.float32)) is not None


def test_only_split_renders_that_split_alone(tmp_path):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "tiny.mod").write_bytes(tiny_mod())
  split = render.split_of_song("tiny.mod")
  other = "train" if split == "test" else "test"
  common = dict(seconds=2.0, max_excerpts=1, min_seconds=1.0, progress=False)
  left_out, _ = modules.render_corpus(
    tmp_path / "a", [str(tmp_path / "in")], only_split=other, **common
  )
  kept, _ = modules.render_corpus(
    tmp_path / "b", [str(tmp_path / "in")], only_split=split, **common
  )
  assert left_out == [] and len(kept) == 1 and f"/{split}/" in kept[0]


def test_bundled_takes_the_training_modules_only(tmp_path):
  from trackformer_jax.data import bundled, sources

  (tmp_path / "in").mkdir()
  # By their names' hashes, tune.mod is a training module and tiny.mod a held-out one.
  assert render.split_of_song("tune.mod") == "train" and render.split_of_song("tiny.mod") == "test"
  for name in ("tune.mod", "tiny.mod"):
    (tmp_path / "in" / name).write_bytes(tiny_mod())
  counts = bundled.build(
    tmp_path / "b",
    num_songs=0,
    num_chorales=0,
    seconds=8.0,  # the modules' default shortest excerpt
    progress=False,
    with_modules=True,
    module_sources=[str(tmp_path / "in")],
  )
  assert counts == {"modules": 1}
  source = sources.open_source(f"bundled:{tmp_path / 'b'}", sample_rate_hz=8000, channels=1)
  assert [t.track_id for t in source.tracks] == ["modules/train/local-tune-0"]
