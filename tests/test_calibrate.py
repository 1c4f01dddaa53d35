"""calibrate: learns a known output -> stem map, fills empty stems, stores it with the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import band_split_model, band_tones, calibrate_args, run_tool

from trackformer_jax import audio, calibrate
from trackformer_jax.inference import loading, model_folder

# Which band (= which output of band_split_model) each stem of the corpus below lives in.
TRUE_MAP = ("other", "bass", "vocals", "drums", "other", "vocals", "bass", "drums")


@pytest.fixture
def banded_musdb(tmp_path):
  """A MUSDB-layout corpus whose stem k is the tones of the bands TRUE_MAP gives it."""
  root = tmp_path / "banded"
  for i in range(3):
    tones = band_tones(2.5, seed=10 + i)  # [8, 1, T]
    stems = np.stack(
      [
        tones[[b for b, s in enumerate(TRUE_MAP) if s == stem]].sum(axis=0)
        for stem in model_folder.STEM_NAMES
      ]
    )
    folder = root / "train" / f"Song {i}"
    for stem, signal in zip(model_folder.STEM_NAMES, stems):
      audio.write_audio(folder / f"{stem}.wav", signal, 8000, subtype="FLOAT")
    audio.write_audio(folder / "mixture.wav", stems.sum(axis=0), 8000, subtype="FLOAT")
  return root


def test_calibration_recovers_the_true_map(banded_musdb):
  stem_map = calibrate.calibrate(
    band_split_model(),
    f"musdb:{banded_musdb}",
    num_tracks=3,
    excerpts=2,
    excerpt_seconds=1.0,
    segment_seconds=0.5,
  )
  assert stem_map.output_to_stem == TRUE_MAP
  votes = np.asarray(stem_map.votes)
  # Every output voted in every excerpt of the two training songs: the corpus has none of
  # MUSDB18's validation names, so one of its three songs is held out for validation.
  assert votes.sum() == 8 * 2 * 2


def test_empty_stem_takes_the_output_that_voted_for_it_most():
  votes = np.array(
    [[5, 0, 0, 0], [4, 0, 1, 0], [0, 5, 0, 0], [0, 0, 0, 5], [3, 0, 2, 0], [5, 0, 0, 0]], float
  )
  stem_map = calibrate.stem_map_from_votes(votes)
  # Nobody won "drums" (index 2); output 4 voted for it most and "vocals" has outputs to spare.
  assert stem_map.output_to_stem == ("vocals", "vocals", "bass", "other", "drums", "vocals")


def test_cli_stores_the_map_with_the_model_and_separate_uses_it(
  tmp_path, banded_musdb, monkeypatch, capsys
):
  model_dir = tmp_path / "model"
  model_dir.mkdir()
  model = band_split_model()
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: model)
  code = calibrate.main(calibrate_args(model_dir, banded_musdb, "--segment", "0.5"))
  assert code == 0, capsys.readouterr().err
  stored = model_folder.read_stem_map(model_dir)
  assert stored.output_to_stem == TRUE_MAP
  assert "output_2 -> vocals" in capsys.readouterr().out
  # separate names its files by stem once the model carries the map.
  from trackformer_jax import separate

  model.stem_map = stored
  song = tmp_path / "song.wav"
  audio.write_audio(song, band_tones(1.0, seed=99).sum(axis=0), 8000)
  code = separate.main(
    [str(song), "--model", str(model_dir), "-o", str(tmp_path / "sep"), "--no-progress"]
  )
  assert code == 0
  assert sorted(p.stem for p in (tmp_path / "sep/bands/song").iterdir()) == sorted(
    model_folder.STEM_NAMES
  )


def test_cli_rejects_unlabelled_data(tmp_path, tiny_folder, monkeypatch, capsys):
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: band_split_model())
  code = calibrate.main(["--model", str(tmp_path), "--data", f"folder:{tiny_folder}"])
  assert code == 1
  assert "labelled" in capsys.readouterr().err


def test_a_read_only_model_is_refused_before_any_work_and_out_writes_elsewhere(
  tmp_path, banded_musdb, monkeypatch, capsys
):
  from trackformer_jax import separate

  model_dir = tmp_path / "model"
  model_dir.mkdir()
  real_access = calibrate.os.access
  # Root can write anywhere, so "read-only" is what os.access answers for the model folder.
  monkeypatch.setattr(
    calibrate.os, "access", lambda p, mode: p != model_dir and real_access(p, mode)
  )

  def no_loading(*a, **k):
    raise AssertionError("loaded the model before checking where the map goes")

  monkeypatch.setattr(loading, "load_model", no_loading)
  assert calibrate.main(calibrate_args(model_dir, banded_musdb, "--segment", "0.5")) == 1
  assert capsys.readouterr().err.strip() == (
    f"calibrate: {model_dir}: not writable, the stem map cannot be written there; give --out "
    "STEM_MAP.json to write it elsewhere"
  )

  model = band_split_model()
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: model)
  out = tmp_path / "maps" / "bands.json"
  out.parent.mkdir()
  args = calibrate_args(model_dir, banded_musdb, "--segment", "0.5", "--out", str(out))
  assert calibrate.main(args) == 0
  printed = capsys.readouterr()
  assert not (model_dir / model_folder.STEM_MAP_FILE).exists()
  assert model_folder.StemMap.from_json(json.loads(out.read_text())).output_to_stem == (TRUE_MAP)
  assert "output_2 -> vocals (votes vocals 2, bass 0, drums 0, other 0; 100% agree)" in printed.out
  assert "warning" not in printed.err

  # separate takes the map from the file; --two-stems makes the stem and the rest.
  song = tmp_path / "song.wav"
  mix = band_tones(1.0, seed=99).sum(axis=0)
  audio.write_audio(song, mix, 8000, subtype="FLOAT")
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: model)
  common = [str(song), "--model", str(model_dir), "--no-progress", "--stem-map", str(out)]
  assert separate.main([*common, "-o", str(tmp_path / "four")]) == 0
  four = tmp_path / "four/bands/song"
  assert sorted(p.stem for p in four.iterdir()) == sorted(model_folder.STEM_NAMES)
  model.stem_map = None
  assert separate.main([*common, "-o", str(tmp_path / "two"), "--two-stems", "vocals"]) == 0
  two = tmp_path / "two/bands/song"
  assert sorted(p.stem for p in two.iterdir()) == ["no_vocals", "vocals"]
  np.testing.assert_allclose(
    audio.read_audio(two / "vocals.wav"), audio.read_audio(four / "vocals.wav"), atol=1e-4
  )


def test_weak_agreement_is_named_with_a_warning():
  others = [[0, 0, 0, 4]] * 3 + [[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0], [0, 4, 0, 0]]
  votes = np.array([[6, 1, 2, 5], *others])
  lines, warnings = calibrate.describe(calibrate.stem_map_from_votes(votes))
  assert lines[0] == "output_0 -> vocals (votes vocals 6, bass 1, drums 2, other 5; 43% agree)"
  assert warnings == [
    "calibrate: warning: output_0 -> vocals has 43% of its 14 votes, under 60%; calibrate on "
    "more songs (--tracks) before trusting it"
  ]


def test_separate_refuses_a_stem_map_that_does_not_fit_and_two_stems_without_one(
  tmp_path, monkeypatch, capsys
):
  from trackformer_jax import separate

  monkeypatch.setattr(loading, "load_model", lambda *a, **k: band_split_model())
  song = tmp_path / "song.wav"
  audio.write_audio(song, band_tones(0.5, seed=1).sum(axis=0), 8000)
  four = tmp_path / "four.json"
  stems = list(model_folder.STEM_NAMES)
  four.write_text(json.dumps({"stems": stems, "output_to_stem": stems}))
  args = [str(song), "--model", "m", "-o", str(tmp_path / "out"), "--no-progress"]
  assert separate.main([*args, "--stem-map", str(four)]) == 2
  assert capsys.readouterr().err.strip() == (
    f"separate: {four}: maps 4 outputs, but the model has 8; rerun calibrate on this model"
  )
  assert separate.main([*args, "--two-stems", "vocals"]) == 2
  assert capsys.readouterr().err.strip() == (
    "separate: --two-stems vocals: m has no stem map; run calibrate first, or give --stem-map FILE"
  )
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_calibrate_takes_the_older_option_name_and_writes_a_readable_map(
  exported,
  tiny_musdb,
  tmp_path,
):
  out = tmp_path / "map.json"
  result = run_tool(
    "trackformer_jax.calibrate", "--workdir", exported, "--data", f"musdb:{tiny_musdb}",
    "--tracks", "1", "--excerpts", "1", "--excerpt-seconds", "1", "--out", out, "-d", "cpu",
    umask=0o022,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1] == f"wrote {out}"
  assert out.stat().st_mode & 0o777 == 0o644  # the umask's, not tempfile's 0600
  assert len(json.loads(out.read_text())["output_to_stem"]) == 8
