"""calibrate: learns a known output -> stem map, fills empty stems, stores it with the model."""

from __future__ import annotations

import numpy as np
import pytest
from test_separate import band_split_model, band_tones

from trackformer_jax import audio, calibrate
from trackformer_jax import export as export_lib

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
        for stem in export_lib.STEM_NAMES
      ]
    )
    folder = root / "train" / f"Song {i}"
    for stem, signal in zip(export_lib.STEM_NAMES, stems):
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
  assert votes.sum() == 8 * 3 * 2  # every output voted in every excerpt


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
  monkeypatch.setattr(calibrate.export_lib, "load_model", lambda *a, **k: model)
  code = calibrate.main(
    [
      "--model",
      str(model_dir),
      "--data",
      f"musdb:{banded_musdb}",
      "--tracks",
      "2",
      "--excerpts",
      "1",
      "--excerpt-seconds",
      "1",
      "--segment",
      "0.5",
    ]
  )
  assert code == 0, capsys.readouterr().err
  stored = export_lib.read_stem_map(model_dir)
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
    export_lib.STEM_NAMES
  )


def test_cli_rejects_unlabelled_data(tmp_path, tiny_folder, monkeypatch, capsys):
  monkeypatch.setattr(calibrate.export_lib, "load_model", lambda *a, **k: band_split_model())
  code = calibrate.main(["--model", str(tmp_path), "--data", f"folder:{tiny_folder}"])
  assert code == 1
  assert "labelled" in capsys.readouterr().err
