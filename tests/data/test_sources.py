"""data/sources.py: the four layouts, splits by song, resampling, bad-input messages."""

import json
import logging
import shutil

import numpy as np
import pytest
from helpers import TINY_MUSDB_TEST, TINY_MUSDB_TRAIN

from trackformer_jax import audio
from trackformer_jax.data import sources
from trackformer_jax.data.sources import DataError


def _open(spec, **kw):
  return sources.open_source(spec, sample_rate_hz=8000, channels=1, **kw)


def test_musdb_splits_and_stems(tiny_musdb):
  source = _open(f"musdb:{tiny_musdb}")
  assert source.has_stems and not source.skipped
  names = {s: sorted(t.track_id.split("/", 1)[1] for t in source.split(s)) for s in sources.SPLITS}
  assert names["validation"] == ["Actions - One Minute Smile", "Leaf - Summerghost"]
  assert names["train"] == sorted(TINY_MUSDB_TRAIN[2:])
  assert names["test"] == sorted(TINY_MUSDB_TEST)
  track = source.split("train")[0]
  stems = track.read_stems(100, 800)
  mixture = track.read_mixture(100, 800)
  assert stems.shape == (4, 1, 800) and mixture.shape == (1, 800)
  # The fixture's mixture.wav is the exact sum of its stems (float32 rounding apart).
  np.testing.assert_allclose(stems.sum(0), mixture, atol=1e-6)
  assert all(np.abs(s).max() > 0.01 for s in stems)


def test_musdb_stereo_and_resampled(tiny_musdb):
  source = sources.open_source(f"musdb:{tiny_musdb}", sample_rate_hz=16000, channels=2)
  track = source.tracks[0]
  native = sources.open_source(f"musdb:{tiny_musdb}", sample_rate_hz=8000, channels=2).tracks[0]
  assert track.num_frames == 2 * native.num_frames
  assert track.read_stems(0, 1000).shape == (4, 2, 1000)


def test_moisesdb_maps_eleven_kinds_to_four(tiny_moisesdb):
  source = _open(f"moisesdb:{tiny_moisesdb}")
  assert len(source.tracks) == 6 and source.has_stems
  track = next(t for t in source.tracks if t.song_id == "Tiny Artist - Song 0")
  names = [[f.split("/")[-2] for f in group] for group in track.stem_files]
  assert names == [["vocals"], ["bass"], ["drums"], ["guitar", "percussion", "piano"]]
  stems = track.read_stems(0, 2000)
  np.testing.assert_array_equal(track.read_stem(3, 0, 2000), stems[3])  # a group's sum, alone
  # MOISESDB has no mixture file: the mixture is the sum of every stem file.
  np.testing.assert_allclose(track.read_mixture(0, 2000), stems.sum(0), atol=1e-6)
  # The song without drums has a silent drums stem, and is left out by moisesdb4.
  no_drums = next(t for t in source.tracks if t.song_id == "Tiny Artist - Song 5")
  assert not no_drums.read_stems(0, 2000)[2].any()
  four = _open(f"moisesdb4:{tiny_moisesdb}")
  assert len(four.tracks) == 5 and not four.skipped
  assert "Tiny Artist - Song 5" not in {t.song_id for t in four.tracks}


def test_folder_is_recursive_unlabeled_and_resampled(tiny_folder):
  source = _open(f"folder:{tiny_folder}")
  assert not source.has_stems and len(source.tracks) == 6
  assert {t.track_id for t in source.tracks} >= {"b/c/three.wav", "a/two.flac"}
  three = next(t for t in source.tracks if t.track_id == "b/c/three.wav")
  assert three.num_frames == 12000  # 1.5 s of a 16 kHz file, read at 8 kHz
  assert three.read_mixture(0, 500).shape == (1, 500)
  assert three.read_stems(0, 10) is None


def test_hash_split_is_disjoint_stable_and_about_80_20():
  songs = [f"artist {i} - song {i}" for i in range(2000)]
  held_out = [s for s in songs if sources.hash_split(s) == "validation"]
  assert 0.17 < len(held_out) / len(songs) < 0.23
  # Stable: a pure function of the id (not Python's per-process salted hash).
  assert [sources.hash_split(s) for s in songs[:50]] == [sources.hash_split(s) for s in songs[:50]]
  assert sources.holdout_fraction("x") == sources.holdout_fraction("x")


@pytest.mark.parametrize("fixture", ["tiny_moisesdb", "tiny_folder", "tiny_musdb"])
def test_no_song_in_two_splits(request, fixture):
  kind = {"tiny_moisesdb": "moisesdb", "tiny_folder": "folder", "tiny_musdb": "musdb"}[fixture]
  source = _open(f"{kind}:{request.getfixturevalue(fixture)}")
  train = {t.song_id for t in source.split("train")}
  held = {t.song_id for t in source.split("validation")} | {t.song_id for t in source.split("test")}
  assert train and held and not train & held
  # Opening again gives the same assignment.
  again = _open(f"{kind}:{request.getfixturevalue(fixture)}")
  assert [(t.track_id, t.split) for t in again.tracks] == [
    (t.track_id, t.split) for t in source.tracks
  ]


@pytest.mark.parametrize(
  "spec,words",
  [
    ("nonsense:/x", "unknown kind 'nonsense'"),
    ("musdb", "musdb needs a path"),
    ("musdb:/no/such/folder", "/no/such/folder: data root does not exist"),
  ],
)
def test_bad_specs(spec, words):
  with pytest.raises(DataError, match=words):
    _open(spec)


def test_wrong_layouts(tmp_path, tiny_folder):
  with pytest.raises(DataError, match="wrong layout for musdb"):
    _open(f"musdb:{tiny_folder}")
  with pytest.raises(DataError, match="wrong layout for moisesdb"):
    _open(f"moisesdb:{tiny_folder}")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no audio files"):
    _open(f"folder:{tmp_path / 'empty'}")


@pytest.fixture
def damaged_musdb(tiny_musdb, tmp_path):
  """A copy of tiny_musdb with one track damaged in each way."""
  root = tmp_path / "musdb"
  shutil.copytree(tiny_musdb, root)
  train = root / "train"
  damage = {}
  # Truncated stem.
  path = train / TINY_MUSDB_TRAIN[2] / "bass.wav"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  damage[TINY_MUSDB_TRAIN[2]] = f"{path}: truncated"
  # Stems of different lengths.
  path = train / TINY_MUSDB_TRAIN[3] / "drums.wav"
  audio.write_audio(path, np.zeros((2, 100), np.float32), 8000, "FLOAT")
  damage[TINY_MUSDB_TRAIN[3]] = "stems have different lengths"
  # Different sample rate.
  path = train / TINY_MUSDB_TRAIN[0] / "vocals.wav"
  x = audio.read_audio(path)
  audio.write_audio(path, x, 16000, "FLOAT")
  damage[TINY_MUSDB_TRAIN[0]] = "stems have different sample rates"
  # Missing stem.
  path = root / "test" / TINY_MUSDB_TEST[0] / "other.wav"
  path.unlink()
  damage[TINY_MUSDB_TEST[0]] = f"{path}: no such file"
  return root, damage


def test_bad_tracks_skipped_counted_and_named(damaged_musdb, caplog):
  root, damage = damaged_musdb
  with caplog.at_level(logging.WARNING):
    source = _open(f"musdb:{root}")
  assert len(source.skipped) == len(damage) and len(source.tracks) == 6 - len(damage)
  problems = dict((tid.split("/", 1)[1], msg) for tid, msg in source.skipped)
  for name, words in damage.items():
    assert words in problems[name], (name, problems[name])
  assert f"skipped {len(damage)} bad track(s)" in caplog.text


def test_strict_raises_before_training(damaged_musdb):
  root, _ = damaged_musdb
  with pytest.raises(DataError, match="strict data"):
    _open(f"musdb:{root}", strict=True)


def test_strict_finds_nan_samples(tiny_folder, tmp_path):
  import soundfile as sf

  root = tmp_path / "f"
  shutil.copytree(tiny_folder, root)
  x = np.zeros((3000, 1), np.float32)
  x[2999] = np.inf
  sf.write(root / "a" / "bad.wav", x, 8000, subtype="FLOAT")
  assert len(_open(f"folder:{root}").tracks) == 7  # headers alone look fine
  with pytest.raises(DataError, match=r"bad.wav: NaN or infinite sample at frame 2999"):
    _open(f"folder:{root}", strict=True)


def test_moisesdb_bad_json_is_named(tiny_moisesdb, tmp_path):
  root = tmp_path / "m"
  shutil.copytree(tiny_moisesdb, root)
  track = sorted((root / "moisesdb_v0.1").iterdir())[0]
  (track / "data.json").write_text("{not json")
  source = _open(f"moisesdb:{root}")
  assert len(source.skipped) == 1 and "data.json: unreadable JSON" in source.skipped[0][1]
  meta = json.loads(sorted((root / "moisesdb_v0.1").iterdir())[1].joinpath("data.json").read_text())
  assert meta["artist"] == "Tiny Artist"


@pytest.mark.slow
def test_default_chorales_is_rendered_on_first_use(tmp_path, monkeypatch):
  from trackformer_jax.data import render

  root = tmp_path / "repo" / "data" / "chorales"
  monkeypatch.setattr(sources, "default_chorales_dir", lambda: root)
  monkeypatch.setattr(render, "QUICKSTART_TRACKS", 1)
  monkeypatch.setattr(render, "QUICKSTART_SECONDS", 1.0)
  source = _open("chorales")
  assert len(source.tracks) == 1 and source.has_stems and source.root == str(root)
  assert source.tracks[0].num_frames == 8000  # 1 s at the requested 8 kHz
  assert len(list(root.glob("*/*/mixture.wav"))) == 1
  # A corpus rendered with other settings is not grown into a mixed one: a clear error.
  monkeypatch.setattr(render, "QUICKSTART_TRACKS", 2)
  monkeypatch.setattr(render, "QUICKSTART_SECONDS", 2.0)
  with pytest.raises(sources.DataError, match="cannot build the bundled corpus: .*holds 1 tracks"):
    _open("chorales")


def test_a_musdb_layout_without_musdb_names_holds_out_a_share_of_its_training_songs(
  tmp_path, caplog
):
  from helpers import synthetic_stems

  root = tmp_path / "corpus"
  songs = [f"Someone Else - Song {i}" for i in range(10)]
  for i, name in enumerate(songs + ["Someone Else - Test Song"]):
    track = root / ("test" if i == len(songs) else "train") / name
    stems = synthetic_stems(i, 4000, 1, 8000)
    for stem_name, stem in zip(("vocals", "bass", "drums", "other"), stems):
      audio.write_audio(track / f"{stem_name}.wav", stem, 8000, subtype="FLOAT")
    audio.write_audio(track / "mixture.wav", stems.sum(0), 8000, subtype="FLOAT")
  with caplog.at_level(logging.WARNING):
    source = _open(f"musdb:{root}")
  held = sorted(t.track_id.split("/", 1)[1] for t in source.split("validation"))
  # The songs the 80/20 hash holds out (two of these ten).
  assert held == sorted(n for n in songs if sources.hash_split(n) == "validation")
  assert len(held) == 2 and len(source.split("train")) == len(songs) - len(held)
  assert [t.track_id for t in source.split("test")] == ["test/Someone Else - Test Song"]
  lines = [r.getMessage() for r in caplog.records if "validation tracks" in r.getMessage()]
  assert lines == [
    f"musdb:{root}: none of MUSDB18's 14 validation tracks is here; validation is {len(held)} "
    f"of the 10 training songs instead (the 20 % chosen by a hash of the song name)"
  ]


def test_a_partial_musdb18_keeps_its_own_validation_names(tiny_musdb, caplog):
  with caplog.at_level(logging.WARNING):
    source = _open(f"musdb:{tiny_musdb}")
  assert len(source.split("validation")) == 2
  assert "validation tracks" not in caplog.text
