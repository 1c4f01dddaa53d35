"""baselines.nmf_separate and the multitrack evaluation: NMF sums to the mixture, separates
an easy mixture, is deterministic; evaluate reports it, per stem, for any stems a folder has."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers import synthetic_stems

from trackformer_jax import audio, baselines, evaluate, scoring
from trackformer_jax.data import sources

RATE_HZ = 8000


def two_tones(seconds=2.0, channels=2):
  """``[2, C, T]``: a low tone and a high tone (disjoint spectra) that alternate in loudness,
  so an NMF of the magnitude can tell them apart by spectrum and by activity."""
  t = np.arange(round(seconds * RATE_HZ)) / RATE_HZ
  low = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))
  high = 0.2 * np.sin(2 * np.pi * 1870 * t) * (0.6 + 0.4 * np.cos(2 * np.pi * 2.5 * t))
  gains = np.array([[1.0, 0.7], [0.5, 1.0]])[:, :channels]
  return (np.stack([low, high])[:, None, :] * gains[:, :, None]).astype(np.float32)


def test_nmf_outputs_sum_to_the_mixture_and_are_deterministic():
  stems = synthetic_stems(0, 2 * RATE_HZ, 2, RATE_HZ)
  mixture = stems.sum(axis=0)
  first = baselines.nmf_separate(mixture, RATE_HZ, iterations=30)
  assert first.shape == (8, 2, mixture.shape[-1]) and first.dtype == np.float32
  np.testing.assert_allclose(first.sum(axis=0), mixture, atol=1e-5)
  np.testing.assert_array_equal(first, baselines.nmf_separate(mixture, RATE_HZ, iterations=30))
  other_seed = baselines.nmf_separate(mixture, RATE_HZ, iterations=30, seed=1)
  assert not np.array_equal(first, other_seed)
  # Digital silence: equal shares, no NaN.
  silent = baselines.nmf_separate(np.zeros((1, 4000), np.float32), RATE_HZ, iterations=5)
  assert np.isfinite(silent).all() and not silent.any()


def test_nmf_separates_two_tones_with_disjoint_spectra():
  stems = two_tones()
  mixture = stems.sum(axis=0)
  scores = scoring.nmf_scores(stems, mixture, RATE_HZ, stem_names=("low", "high"))
  # The untrained level (every output mixture / 8) scores 0 dB SI-SNRi.
  untrained = scoring.stem_scores(
    np.repeat(mixture[None] / 8, 8, axis=0), stems, mixture, RATE_HZ, stem_names=("low", "high")
  )
  assert untrained["stem_si_snri_db"] == pytest.approx(0.0, abs=1e-3)
  assert scores["nmf_stem_si_snri_db_low"] > 5 and scores["nmf_stem_si_snri_db_high"] > 5
  assert set(scores["nmf_assignment"]) == {"low", "high"}


def write_track(folder, stems: dict[str, np.ndarray]):
  for name, stem in stems.items():
    audio.write_audio(folder / f"{name}.wav", stem, RATE_HZ, subtype="FLOAT")
  audio.write_audio(folder / "mixture.wav", sum(stems.values()), RATE_HZ, subtype="FLOAT")


@pytest.fixture
def guitar_multitrack(tmp_path):
  """A MUSDB layout whose songs have guitar + backing stems (one also has vocals)."""
  root = tmp_path / "multitrack"
  for i in range(3):
    tones = two_tones(seconds=1.5 + 0.25 * i)
    stems = {"guitar": tones[1], "backing": tones[0]}
    if i == 2:
      stems["vocals"] = 0.5 * synthetic_stems(i, tones.shape[-1], 2, RATE_HZ)[0]
    folder = root / "test" / f"song{i}"
    folder.mkdir(parents=True)
    write_track(folder, stems)
  return root


def test_a_folder_with_other_stems_is_listed_with_their_names(guitar_multitrack, caplog):
  with caplog.at_level(logging.WARNING):
    source = sources.open_source(f"musdb:{guitar_multitrack}", sample_rate_hz=8000, channels=2)
  names = {t.track_id: t.stem_names for t in source.tracks}
  assert names["test/song0"] == ("backing", "guitar")
  assert names["test/song2"] == ("vocals", "backing", "guitar")  # standard names first
  track = source.tracks[0]
  assert track.read_stems().shape == (2, 2, track.num_frames)
  np.testing.assert_allclose(track.read_stems().sum(0), track.read_mixture(), atol=1e-6)
  # Training's labelled validation needs the four standard stems: unlabeled to it.
  assert track.has_any_stems and not track.has_stems and not source.has_stems
  assert "training treats this source as unlabeled" in caplog.text


def test_a_stem_of_another_length_is_named(guitar_multitrack):
  folder = guitar_multitrack / "test" / "song1"
  audio.write_audio(folder / "keys.wav", np.zeros((2, 100), np.float32), RATE_HZ, "FLOAT")
  source = sources.open_source(f"musdb:{guitar_multitrack}", sample_rate_hz=8000, channels=2)
  (problem,) = [p for track_id, p in source.skipped if track_id == "test/song1"]
  assert (
    "stems have different lengths" in problem and "keys.wav not as long as mixture.wav" in problem
  )
  with pytest.raises(sources.DataError, match="keys.wav not as long as mixture.wav"):
    sources.open_source(f"musdb:{guitar_multitrack}", sample_rate_hz=8000, channels=2, strict=True)


def test_evaluate_scores_any_stems_with_nmf_beside_control_and_ceiling(
  tmp_path,
  guitar_multitrack,
  stand_in_models,
):
  out = tmp_path / "results.json"
  code = evaluate.main(
    ["--workdir", "runs/a", "--data", f"musdb:{guitar_multitrack}", "--out", str(out),
     "--segment", "0.5", "--mom-seconds", "0", "--no-progress"]
  )  # fmt: skip
  assert code == 0
  result = json.loads(out.read_text())
  aggregate = result["aggregate"]
  tracks = {t["track"]: t for t in result["tracks"]}
  assert tracks["test/song0"]["stem_names"] == ["backing", "guitar"]
  assert set(tracks["test/song0"]["assignment"]) == {"backing", "guitar"}
  for stem in ("backing", "guitar", "vocals"):
    for prefix in ("", "control_", "nmf_", "oracle_irm_"):
      assert isinstance(aggregate[f"{prefix}stem_si_snri_db_{stem}"], float), (prefix, stem)
  # Vocals exist on one song only: its mean is that song's (NaN-aware, keyed by name).
  assert aggregate["stem_si_snri_db_vocals"] == pytest.approx(
    tracks["test/song2"]["stem_si_snri_db_vocals"]
  )
  assert "stem_si_snri_db_vocals" not in tracks["test/song0"]
  assert "nmf_stem_si_snr_db" in aggregate and aggregate["nmf_stem_si_snri_db_guitar"] > 5
  assert aggregate["stem_si_snri_vs_nmf_db"] == pytest.approx(
    aggregate["stem_si_snri_db"] - aggregate["nmf_stem_si_snri_db"], abs=1e-6
  )
  table = out.with_suffix(".md").read_text()
  assert "| nmf_stem_si_snri_db |" in table and "| stem_si_snri_vs_nmf_db_guitar |" in table
  header = "| stem (SI-SNRi, dB) | a | a control | NMF (8 components) | ideal ratio mask |"
  assert header in table
  rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
  assert rows[-4:] == ["| mean", "| vocals", "| backing", "| guitar"]
  assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_no_nmf_leaves_the_baseline_out(tmp_path, tiny_musdb, stand_in_models):
  out = tmp_path / "plain.json"
  args = ["--workdir", "runs/a", "--data", f"musdb:{tiny_musdb}", "--out", str(out),
          "--segment", "0.5", "--mom-seconds", "0", "--no-control", "--max-tracks", "1",
          "--no-progress"]  # fmt: skip
  assert evaluate.main([*args, "--no-nmf"]) == 0
  aggregate = json.loads(out.read_text())["aggregate"]
  assert not [k for k in aggregate if "nmf" in k] and "oracle_irm_stem_si_snri_db" in aggregate
  assert evaluate.main(args) == 0
  aggregate = json.loads(out.read_text())["aggregate"]
  for stem in evaluate.STEM_NAMES:
    assert np.isfinite(aggregate[f"nmf_stem_si_snri_db_{stem}"]), stem
  assert "NMF (8 components)" in out.with_suffix(".md").read_text()


def test_too_many_stems_for_the_exact_search_is_a_clear_error():
  with pytest.raises(ValueError, match="more than the exact search handles"):
    scoring.all_assignments(7, 8)
