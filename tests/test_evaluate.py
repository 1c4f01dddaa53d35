"""evaluate: the constrained assignment against MixIT's, scores, control, oracle, reports, CLI."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
from helpers import START_UP_NOISE, band_tones, run_tool

from trackformer_jax import evaluate
from trackformer_jax.losses.mixit import mixit_loss


def thresholded_loss(outputs, references, labels, snr_max_db=30.0):
  """MixIT's loss of one assignment, from the signals directly (the obvious formula)."""
  total = 0.0
  tau = 10 ** (-snr_max_db / 10)
  for k, reference in enumerate(references):
    estimate = outputs[labels == k].sum(axis=0) if np.any(labels == k) else 0 * reference
    residual = np.sum((reference - estimate) ** 2)
    energy = np.sum(reference**2)
    total += 10 * np.log10(residual + tau * energy + 1e-8) - 10 * np.log10(energy + 1e-8)
  return total


@pytest.mark.slow  # mixit_loss compiles its search (~5 s)
@pytest.mark.parametrize("seed", range(3))
def test_assignment_agrees_with_mixit_loss(seed):
  rng = np.random.default_rng(seed)
  references = rng.standard_normal((4, 2, 300)).astype(np.float32)
  scales = rng.uniform(0.1, 0.5, (8, 1, 1))
  outputs = np.stack([references[k] for k in rng.integers(0, 4, 8)]) * scales
  outputs = (outputs + 0.3 * rng.standard_normal(outputs.shape)).astype(np.float32)
  loss, mixing = mixit_loss(outputs[None], references[None], 30.0)
  mixit_labels = np.argmax(np.asarray(mixing[0]), axis=0)
  labels = evaluate.best_assignment(outputs, references)
  assert thresholded_loss(outputs, references, labels) == pytest.approx(
    thresholded_loss(outputs, references, mixit_labels), abs=1e-3
  )
  assert thresholded_loss(outputs, references, labels) == pytest.approx(float(loss[0]), abs=1e-2)


def test_every_non_silent_stem_gets_an_output():
  rng = np.random.default_rng(0)
  references = rng.standard_normal((3, 1, 200))
  references[2] *= 0.01  # quiet and unrelated to any output: best left empty unconstrained
  outputs = np.concatenate([references[:2], references[:2] * 0.1, rng.standard_normal((1, 1, 200))])
  free = evaluate.best_assignment(outputs, references)
  forced = evaluate.best_assignment(outputs, references, required=np.ones(3, bool))
  assert 2 not in free and 2 in forced
  # The forced choice is the best of the allowed ones (brute force).
  allowed = [np.array(p) for p in itertools.product(range(3), repeat=5) if set(p) == {0, 1, 2}]
  best = min(thresholded_loss(outputs, references, p) for p in allowed)
  assert thresholded_loss(outputs, references, forced) == pytest.approx(best, abs=1e-6)


def test_silent_estimate_scores_the_floor_not_zero():
  reference = np.random.default_rng(0).standard_normal((2, 500))
  assert evaluate.si_snr_db(np.zeros_like(reference), reference) == pytest.approx(
    evaluate.SILENT_ESTIMATE_FLOOR_DB, abs=0.01
  )


def test_stem_scores_perfect_and_silent_stems():
  stems = band_tones(1.0, num_bands=4, channels=2, seed=1)
  stems[2] = 0.0  # a silent stem: left out of the scores
  mixture = stems.sum(axis=0)
  outputs = np.concatenate([stems, np.zeros_like(stems)])[[0, 4, 1, 5, 2, 6, 3, 7]]
  scores = evaluate.stem_scores(outputs, stems, mixture, 8000)
  assert scores["stem_si_snr_db_vocals"] > 60 and scores["best_output_si_snr_db_bass"] > 60
  assert math.isnan(scores["stem_si_snr_db_drums"]) and scores["silent_stems"] == ["drums"]
  input_scores = [evaluate.si_snr_db(mixture, stems[k]) for k in (0, 1, 3)]
  assert scores["stem_si_snri_db"] == pytest.approx(
    np.mean([scores[f"stem_si_snr_db_{s}"] for s in ("vocals", "bass", "other")])
    - np.mean(input_scores),
    abs=1e-3,
  )
  assert scores["usdr_db_other"] > 60


def test_oracle_ratio_mask_is_a_high_ceiling_on_separable_stems():
  stems = band_tones(2.0, num_bands=4, channels=1, seed=2)
  mixture = stems.sum(axis=0)
  oracle = evaluate.oracle_scores(stems, mixture, 8000)
  assert oracle["oracle_irm_stem_si_snr_db"] > 20
  assert oracle["oracle_irm_stem_si_snri_db"] > oracle["oracle_irm_stem_si_snr_db"]


def test_gain_keys():
  assert evaluate.gain_key("stem_si_snri_db") == "stem_si_snri_gain_db"
  assert evaluate.gain_key("stem_si_snri_db_vocals") == "stem_si_snri_gain_db_vocals"
  assert evaluate.gain_key("mask_overlap") == "mask_overlap_gain"


def test_standard_error_skips_missing_values():
  assert evaluate.standard_error([1.0, 3.0, np.nan]) == pytest.approx(1.0)  # sd sqrt(2), n 2
  assert np.isnan(evaluate.standard_error([2.0, np.nan]))


@pytest.mark.slow
def test_cli_compares_workdirs_against_control_and_writes_reports(
  tmp_path, tiny_musdb, stand_in_models, capsys
):
  out = tmp_path / "results.json"
  code = evaluate.main(
    [
      "--workdir",
      "runs/a",
      "--workdir",
      "runs/b",
      "--data",
      f"musdb:{tiny_musdb}",
      "--out",
      str(out),
      "--segment",
      "0.5",
      "--pesq",
      "--no-progress",
    ]
  )
  assert code == 0
  results = json.loads(out.read_text())
  assert [r["workdir"] for r in results] == ["runs/a", "runs/b"]
  result = results[0]
  assert (result["sample_rate_hz"], result["channels"]) == (8000, 2)  # the data's own
  aggregate = result["aggregate"]
  assert aggregate["num_tracks"] == len(result["tracks"]) == 2
  for key in (
    "stem_si_snri_db",
    "stem_si_snr_db",
    "usdr_db",
    "mom_si_snri_db",
    "effective_mask_count",
    "oracle_irm_stem_si_snri_db",
    "best_output_si_snri_db",
    *(f"stem_si_snri_db_{s}" for s in evaluate.STEM_NAMES),
  ):
    assert isinstance(aggregate[key], float), key
  # The equal-split control scores the input exactly; the gain is the model's own score.
  assert aggregate["control_stem_si_snri_db"] == pytest.approx(0.0, abs=1e-3)
  assert aggregate["stem_si_snri_gain_db"] == pytest.approx(
    aggregate["stem_si_snri_db"] - aggregate["control_stem_si_snri_db"]
  )
  # The gain's standard error is that of the paired per-track differences.
  differences = [t["stem_si_snri_db_vocals"] - t["control_stem_si_snri_db_vocals"]
                 for t in result["tracks"]]  # fmt: skip
  assert aggregate["stem_si_snri_gain_db_vocals_stderr"] == pytest.approx(
    np.std(differences, ddof=1) / np.sqrt(len(differences))
  )
  # Band splitting separates the high vocals and the broadband drums of these stems.
  assert aggregate["stem_si_snri_db_vocals"] > 5 and aggregate["stem_si_snri_db_drums"] > 5
  assert "pesq_vocals" in track_keys(result)
  assert aggregate["oracle_irm_stem_si_snri_db"] > aggregate["stem_si_snri_db"]
  track = result["tracks"][0]
  assert track["track"].startswith("test/") and len(track["assignment"]) == 8
  assert set(track["assignment"]) == set(evaluate.STEM_NAMES)
  assert np.mean([t["stem_si_snri_db"] for t in result["tracks"]]) == pytest.approx(
    aggregate["stem_si_snri_db"]
  )
  table = out.with_suffix(".md").read_text()
  assert "| metric | a | b |" in table and "stem_si_snri_gain_db" in table
  assert "| stem_si_snri_gain_db_vocals | " in table and " ± " in table
  assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
  assert "stem_si_snri_db" in capsys.readouterr().out


def track_keys(result):
  return set().union(*(t.keys() for t in result["tracks"]))


@pytest.mark.slow
def test_museval_sdr_of_a_near_perfect_separation():
  stems = band_tones(1.5, num_bands=4, channels=1, seed=3)
  mixture = stems.sum(axis=0)
  noise = 1e-3 * np.random.default_rng(0).standard_normal(stems.shape).astype(np.float32)
  outputs = np.concatenate([stems + noise, np.zeros_like(stems)])
  scores = evaluate.stem_scores(outputs, stems, mixture, 8000, museval=True)
  assert scores["museval_sdr_db"] > 25
  assert scores["museval_sdr_db"] == pytest.approx(scores["usdr_db"], abs=6)


def test_cli_single_workdir_writes_one_object_and_bad_data_fails(
  tmp_path, tiny_musdb, stand_in_models, capsys
):
  out = tmp_path / "one.json"
  code = evaluate.main(
    [
      "--workdir",
      "runs/a",
      "--data",
      f"musdb:{tiny_musdb}",
      "--out",
      str(out),
      "--segment",
      "0.5",
      "--no-control",
      "--mom-seconds",
      "0",
      "--max-tracks",
      "1",
      "--no-progress",
    ]
  )
  assert code == 0
  result = json.loads(out.read_text())
  assert (
    result["aggregate"]["num_tracks"] == 1 and "control_stem_si_snri_db" not in result["aggregate"]
  )
  code = evaluate.main(["--workdir", "runs/a", "--data", f"musdb:{tmp_path}/nowhere"])
  assert code == 1
  assert "nowhere" in capsys.readouterr().err


@pytest.mark.slow
def test_unlabelled_data_gives_the_label_free_scores(tmp_path, tiny_folder, stand_in_models):
  out = tmp_path / "folder.json"
  code = evaluate.main(
    [
      "--workdir",
      "runs/a",
      "--data",
      f"folder:{tiny_folder}",
      "--split",
      "train",
      "--out",
      str(out),
      "--segment",
      "0.5",
      "--mom-seconds",
      "1",
      "--no-progress",
    ]
  )
  assert code == 0
  aggregate = json.loads(out.read_text())["aggregate"]
  assert aggregate["num_tracks"] >= 2
  assert 1.0 <= aggregate["effective_mask_count"] <= 8.0
  assert np.isfinite(aggregate["mom_si_snri_db"]) and "control_mom_si_snri_db" in aggregate
  assert not [key for key in aggregate if key.startswith("stem_")]


@pytest.mark.slow
def test_progress_bars_name_the_model_and_the_song(exported, tiny_musdb):
  # As a user runs it, with --workdir (the older spelling of --model).
  result = run_tool(
    "trackformer_jax.evaluate", "--workdir", exported, "--data", f"musdb:{tiny_musdb}",
    "--no-nmf", "--mom-seconds", "1", "-d", "cpu",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  bars = set(re.findall(r"(?:^|\r)([^\r\n|]*?):\s+\d+%\|", result.stderr, re.M))
  assert "<array>" not in result.stderr, bars
  assert {bar.split(": ")[0] for bar in bars} == {"tiny", "tiny control"}, bars
  assert [bar for bar in bars if " + " in bar], bars  # the mixture-of-mixtures songs
  assert not [word for word in START_UP_NOISE if word in result.stderr], result.stderr
