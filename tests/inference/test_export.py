"""export and load_model with the real tiny model (configs/test.py), and the tools end to end.

One randomly initialised Performer separator is saved as a training workdir (two steps,
through ``checkpoints``), exported, and run through separate, evaluate and calibrate.
"""

from __future__ import annotations

import json

import flax
import jax
import numpy as np
import pytest
import soundfile
from helpers import START_UP_NOISE, calibrate_args, run_tool, write_tiny_workdir

from trackformer_jax import audio, calibrate, checkpoints, evaluate, separate
from trackformer_jax import export as export_lib


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_config):
  """A workdir with step 10 (best score) and step 20 (latest, params halved)."""
  path = tmp_path_factory.mktemp("runs") / "tiny"
  best = checkpoints.BEST_METRIC
  write_tiny_workdir(path, tiny_config, [(10, 1.0, {best: 2.0}), (20, 0.5, {best: 1.0})], 3)
  return path


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_export_round_trip_and_checkpoint_choice(workdir, tmp_path):
  stem_map = export_lib.StemMap(
    output_to_stem=("drums", "bass", "other", "vocals", "other", "other", "bass", "vocals"),
    votes=tuple((float(i), 1.0, 0.0, 2.0) for i in range(8)),
  )
  export_lib.save_stem_map(workdir, stem_map)
  out = tmp_path / "exported"
  assert export_lib.main(["--workdir", str(workdir), "--out", str(out)]) == 0
  assert sorted(p.name for p in out.iterdir()) == [
    "config.json",
    "metadata.json",
    "params",
    "stem_map.json",
  ]
  metadata = json.loads((out / "metadata.json").read_text())
  assert metadata["sample_rate_hz"] == 8000 and metadata["channels"] == 1
  assert metadata["model_name"] == "performer" and metadata["num_outputs"] == 8
  assert metadata["version"] == __import__("trackformer_jax").__version__
  exported = export_lib.load_model(out)
  assert exported.stem_map == stem_map  # the stem map round-trips
  assert exported.output_names == list(export_lib.STEM_NAMES)
  best = export_lib.load_model(workdir, checkpoint="best")
  latest = export_lib.load_model(workdir, checkpoint="latest")
  for a, b, c in zip(leaves(exported.variables), leaves(best.variables), leaves(latest.variables)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(c, 0.5 * a, rtol=1e-6)
  mix = np.random.default_rng(0).uniform(-0.3, 0.3, (1, 1, 4000)).astype(np.float32)
  np.testing.assert_allclose(exported.apply_fn(mix)[0], best.apply_fn(mix)[0], atol=1e-6)
  # Overwriting needs --overwrite; nothing else is touched when it is refused.
  assert export_lib.main(["--workdir", str(workdir), "--out", str(out)]) == 1
  assert (
    export_lib.main(
      ["--workdir", str(workdir), "--out", str(out), "--overwrite", "--checkpoint", "20"]
    )
    == 0
  )
  np.testing.assert_allclose(
    leaves(export_lib.load_model(out).variables)[0], leaves(latest.variables)[0]
  )
  (workdir / export_lib.STEM_MAP_FILE).unlink()


@flax.struct.dataclass
class _SavedStateWithAverage:
  step: jax.Array
  params: dict
  ema_params: dict


def test_weights_choice_reaches_every_tool_and_the_export_records_it(workdir, tmp_path):
  """--weights ema|raw in export and separate; what was read is recorded where it is written."""
  config = checkpoints.read_config(workdir)
  _, variables = export_lib.init_variables(config, jax.random.key(3))
  averaged = tmp_path / "averaged"
  averaged.mkdir()
  checkpoints.write_config(averaged, config)
  manager = checkpoints.create_manager(averaged, keep_checkpoints=3)
  average = jax.tree.map(lambda x: 0.25 * x, variables["params"])
  checkpoints.save(
    manager,
    _SavedStateWithAverage(step=np.int32(30), params=variables["params"], ema_params=average),
    30,
    {checkpoints.BEST_METRIC: 1.0},
  )
  manager.wait_until_finished()
  manager.close()

  for weights, want in (("ema", average), ("raw", variables["params"])):
    out = tmp_path / f"exported_{weights}"
    assert (
      export_lib.main(["--workdir", str(averaged), "--out", str(out), "--weights", weights]) == 0
    )
    metadata = json.loads((out / "metadata.json").read_text())
    assert (metadata["weights"], metadata["checkpoint_step"]) == (weights, 30)
    exported = export_lib.load_model(out)
    assert exported.source == {"step": 30, "weights": weights}
    for got, expected in zip(leaves(exported.variables["params"]), leaves(want)):
      np.testing.assert_array_equal(got, expected)
    separator = separate.Separator(averaged, weights=weights)
    assert separator.model.source == {"step": 30, "weights": weights}
  # A workdir without an average serves its raw weights, and says so.
  assert export_lib.load_model(workdir).source == {"step": 10, "weights": "raw"}
  with pytest.raises(SystemExit):
    separate.get_parser().parse_args(["song.wav", "--model", "m", "--weights", "average"])


@pytest.mark.slow
def test_exported_function_runs_without_model_code(workdir, tmp_path):
  out = tmp_path / "exported"
  assert (
    export_lib.main(
      [
        "--workdir",
        str(workdir),
        "--out",
        str(out),
        "--jax-export",
        "0.5",
        "--jax-export-batch",
        "2",
      ]
    )
    == 0
  )
  model = export_lib.load_model(out, use_exported_function=True)
  assert model.fixed_input_shape == (2, 1, 4000)
  metadata = json.loads((out / "metadata.json").read_text())
  assert metadata["exported_function"]["platforms"] == ["cpu", "cuda"]
  reference = export_lib.load_model(out)
  mixture = np.random.default_rng(1).uniform(-0.3, 0.3, (1, 9000)).astype(np.float32)
  a = separate.Separator(model).separate_array(mixture, 8000).outputs
  b = (
    separate.Separator(reference, segment_seconds=0.5, batch_size=2)
    .separate_array(mixture, 8000)
    .outputs
  )
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_load_model_errors_name_the_path(tmp_path):
  with pytest.raises(export_lib.ModelLoadError, match="no such model"):
    export_lib.load_model(tmp_path / "missing")
  with pytest.raises(export_lib.ModelLoadError, match="no config.json"):
    export_lib.load_model(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(export_lib.ModelLoadError, match="config.json"):
    export_lib.load_model(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "metadata.json").write_text(json.dumps({"format": "something else"}))
  with pytest.raises(export_lib.ModelLoadError, match="metadata.json"):
    export_lib.load_model(tmp_path)
  (tmp_path / "metadata.json").unlink()
  (tmp_path / "stem_map.json").write_text(json.dumps({"output_to_stem": ["guitar"]}))
  with pytest.raises(export_lib.ModelLoadError, match="stem_map.json"):
    export_lib.load_model(tmp_path)


def test_stem_map_json_round_trip_and_combine():
  stem_map = export_lib.StemMap(output_to_stem=("bass", "bass", "drums"))
  again = export_lib.StemMap.from_json(json.loads(json.dumps(stem_map.to_json())))
  assert again == stem_map
  outputs = np.arange(3 * 2 * 5, dtype=np.float32).reshape(3, 2, 5)
  stems = stem_map.combine(outputs)
  np.testing.assert_array_equal(stems["bass"], outputs[0] + outputs[1])
  assert not stems["vocals"].any() and not stems["other"].any()


@pytest.mark.slow
def test_separate_cli_with_the_real_model_keeps_44k_stereo(workdir, tmp_path):
  out = tmp_path / "exported"
  export_lib.export_workdir(workdir, out)
  rate = 44100
  t = np.arange(int(1.3 * rate)) / rate
  mixture = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 220 * t)])
  song = tmp_path / "song.flac"
  audio.write_audio(song, mixture.astype(np.float32), rate, subtype="PCM_24")
  code = separate.main(
    [
      str(song),
      "--model",
      str(out),
      "-o",
      str(tmp_path / "sep"),
      "--float32",
      "--plots",
      "--segment",
      "0.5",
      "--no-progress",
    ]
  )
  assert code == 0
  folder = tmp_path / "sep/exported/song"
  stems = []
  for i in range(8):
    info = soundfile.info(folder / f"output_{i}.wav")
    assert (info.samplerate, info.channels) == (rate, 2)
    stems.append(audio.read_audio(folder / f"output_{i}.wav"))
  np.testing.assert_allclose(np.sum(stems, axis=0), audio.read_audio(song), atol=1e-4)
  assert (folder / "plot.png").exists()


@pytest.mark.slow
def test_evaluate_and_calibrate_with_the_real_model(workdir, tmp_path, tiny_musdb):
  out = tmp_path / "results.json"
  code = evaluate.main(
    [
      "--workdir",
      str(workdir),
      "--data",
      f"musdb:{tiny_musdb}",
      "--out",
      str(out),
      "--mom-seconds",
      "1",
      "--no-progress",
    ]
  )
  assert code == 0
  result = json.loads(out.read_text())
  # The run kept no moving average: what was read is recorded, not what was asked ("ema").
  assert result["weights"] == "raw" and result["checkpoint_step"] == 10
  aggregate = result["aggregate"]
  assert 0.0 <= aggregate["mask_overlap"] <= 1.0  # the model's own masks
  assert 1.0 <= aggregate["effective_mask_count"] <= 8.0
  assert aggregate["stem_si_snri_gain_db"] == pytest.approx(
    aggregate["stem_si_snri_db"] - aggregate["control_stem_si_snri_db"], abs=1e-9
  )
  model_dir = tmp_path / "exported"
  export_lib.export_workdir(workdir, model_dir)
  code = calibrate.main(calibrate_args(model_dir, tiny_musdb))
  assert code == 0
  stem_map = export_lib.load_model(model_dir).stem_map
  assert len(stem_map.output_to_stem) == 8
  assert set(stem_map.output_to_stem) == set(export_lib.STEM_NAMES)


def test_the_tools_spell_the_weights_choice_as_checkpoints_does():
  from trackformer_jax import command_line

  assert command_line.WEIGHTS == checkpoints.WEIGHTS


@pytest.mark.slow
def test_export_under_either_option_name_follows_the_umask(workdir, tmp_path):
  for option in ("--model", "--workdir"):  # --workdir: the older spelling
    out = tmp_path / option.strip("-")
    result = run_tool(
      "trackformer_jax.export", option, workdir, "--out", out, "-d", "cpu", umask=0o027
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"exported {workdir} (best) to {out}\n"
    assert not [word for word in START_UP_NOISE if word in result.stderr], result.stderr
    assert out.stat().st_mode & 0o777 == 0o750  # not tempfile's 0700
    assert (out / "metadata.json").stat().st_mode & 0o777 == 0o640  # not 0600
