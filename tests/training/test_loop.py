"""Training: the loss falls, many devices agree with one, a resumed run equals one never stopped.

Every run here uses ``configs/test.py`` on the tiny MUSDB-layout corpus from ``conftest.py``.
Compiled programs are shared between runs through a persistent compilation cache in a
temporary folder, so each distinct train step is compiled once per session.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from trackformer_jax import checkpoints, train
from trackformer_jax.training import loop
from trackformer_jax.training import state as state_lib
from trackformer_jax.training import workdir as workdir_lib
from trackformer_jax.training.tasks import mixit as mixit_task

REPO = pathlib.Path(__file__).resolve().parents[2]


# configs/test.py fixes the schedule (20 steps); every run below keeps it, so they all compile
# the same programs: the first test pays for compilation, the others hit the cache.
def load_test_config(data_spec: str, **overrides):
  from configs import test as test_config

  config = test_config.get_config()
  config.data = data_spec
  for name, value in overrides.items():
    setattr(config, name, value)
  return config


pytestmark = pytest.mark.usefixtures("compilation_cache")


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_trees_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_twenty_steps_lower_the_loss_and_write_everything(tiny_musdb, tmp_path):
  config = load_test_config(
    f"musdb:{tiny_musdb}",
    log_every_steps=5,
    eval_every_steps=10,
    checkpoint_every_steps=10,
  )
  workdir = tmp_path / "run"
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 20

  rows = read_metrics(workdir)
  train_rows = [row for row in rows if "train/loss" in row]
  eval_rows = {row["step"]: row for row in rows if "eval/mixit_loss" in row}
  assert [row["step"] for row in train_rows] == [5, 10, 15, 20]
  assert sorted(eval_rows) == [0, 10, 20]  # step 0 is the untrained control
  # The training loss, averaged over 5 steps, and the validation MixIT loss both fall.
  assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"]
  assert eval_rows[20]["eval/mixit_loss"] < eval_rows[0]["eval/mixit_loss"] - 0.1
  for part in ("mixit", "diversity", "sparsity", "grad_norm", "learning_rate"):
    assert np.isfinite(train_rows[-1][f"train/{part}"]), part
  assert train_rows[-1]["train/peak_memory_gib"] > 0
  # clu's ReportProgress: steps/s at every log step after the first (it starts the clock).
  rates = [row for row in rows if "steps_per_sec" in row]
  assert [row["step"] for row in rates] == [5, 10, 15, 20]
  assert all(row["steps_per_sec"] > 0 for row in rates)
  # The tiny corpus has stems, so every stem score is there, and the diagnostics are in range.
  last_eval = eval_rows[20]
  for stem in mixit_task.STEM_NAMES:
    assert np.isfinite(last_eval[f"eval/stem_si_snri_db_{stem}"]), stem
  assert np.isfinite(last_eval["eval/usdr_db"])
  # The NMF baseline on the same clips, computed once: the same at every validation.
  nmf = [eval_rows[step]["eval/nmf_stem_si_snri_db"] for step in (0, 10, 20)]
  assert np.isfinite(nmf[0]) and nmf == [nmf[0]] * 3
  assert np.isfinite(last_eval["eval/nmf_stem_si_snri_db_vocals"])
  assert 0.0 <= last_eval["eval/mask_overlap"] <= 1.0
  assert 1.0 <= last_eval["eval/effective_masks"] <= config.model.num_outputs
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

  # The workdir is what the tools read: config.json and params by best / latest / step.
  saved_config, params = checkpoints.load_params(workdir, "latest")
  assert saved_config.to_dict() == json.loads(json.dumps(config.to_dict(), default=list))
  assert_trees_equal(params, state.params)
  best_step = max(eval_rows, key=lambda step: eval_rows[step]["eval/best_score"])
  _, best_params = checkpoints.load_params(workdir, "best")
  if best_step > 0:  # step 0 is never saved: it is the untrained control
    _, expected = checkpoints.load_params(workdir, best_step)
    assert_trees_equal(best_params, expected)
  with pytest.raises(checkpoints.CheckpointError, match="no step 7"):
    checkpoints.load_params(workdir, 7)
  with pytest.raises(checkpoints.CheckpointError, match="config.json"):
    checkpoints.load_params(tmp_path / "nowhere")


@pytest.mark.slow
def test_a_resumed_run_equals_an_uninterrupted_one_bitwise(tiny_musdb, tmp_path):
  # With a moving average of the weights: it is part of the state that must resume exactly.
  config = load_test_config(
    f"musdb:{tiny_musdb}",
    log_every_steps=1,
    eval_every_steps=3,
    checkpoint_every_steps=2,
    ema_decay=0.9,
  )
  # 6 of the schedule's 20 steps, straight; then 4, stopped, and resumed up to 6.
  straight = train.train_and_evaluate(config, tmp_path / "straight", stop_after_step=6)
  interrupted = tmp_path / "interrupted"
  stopped = train.train_and_evaluate(config, interrupted, stop_after_step=4)
  assert int(stopped.step) == 4
  # A metrics row written after the last checkpoint, as a run killed then would leave.
  with open(interrupted / "metrics.jsonl", "a") as handle:
    handle.write(json.dumps({"step": 5, "train/loss": 123.0}) + "\n")
  resumed = train.train_and_evaluate(config, interrupted, stop_after_step=6)

  assert int(resumed.step) == 6
  assert_trees_equal(resumed.params, straight.params)
  assert_trees_equal(resumed.opt_state, straight.opt_state)
  assert_trees_equal(resumed.ema_params, straight.ema_params)
  # Tools read the average by default and the raw weights on request; they differ.
  _, served = checkpoints.load_params(interrupted, "latest")
  _, raw = checkpoints.load_params(interrupted, "latest", weights="raw")
  assert_trees_equal(served, resumed.ema_params)
  assert_trees_equal(raw, resumed.params)
  assert not np.array_equal(jax.tree.leaves(served)[0], jax.tree.leaves(raw)[0])
  with pytest.raises(checkpoints.CheckpointError, match="expected one of"):
    checkpoints.load_params(interrupted, "latest", weights="average")
  # The resumed run rewrote what came after its checkpoint: one row per (step, metric).
  rows = read_metrics(interrupted)
  keys = [(row["step"], name) for row in rows for name in row if name != "step"]
  assert len(keys) == len(set(keys))
  assert 123.0 not in [row.get("train/loss") for row in rows]
  assert [row["train/loss"] for row in rows if "train/loss" in row] == [
    row["train/loss"] for row in read_metrics(tmp_path / "straight") if "train/loss" in row
  ]


@pytest.mark.slow
def test_non_finite_steps_are_skipped_and_a_run_of_them_stops(tiny_musdb, tmp_path, monkeypatch):
  config = load_test_config(
    f"musdb:{tiny_musdb}",
    log_every_steps=2,
    eval_every_steps=100,
    checkpoint_every_steps=2,
    max_consecutive_nonfinite=3,
  )
  real_batches = loop.train_batches
  poisoned = {1, 4, 5, 6, 7, 8, 9}  # one isolated bad batch, then a run of them

  def batches_with_nan(config, start_step):
    for step, batch in enumerate(real_batches(config, start_step), start=start_step):
      if step in poisoned:
        batch = dict(batch, mom=batch["mom"] * np.nan)
      yield batch

  monkeypatch.setattr(loop, "train_batches", batches_with_nan)
  workdir = tmp_path / "run"
  with pytest.raises(train.NonFiniteError, match="3 consecutive steps had a non-finite"):
    train.train_and_evaluate(config, workdir)

  rows = {row["step"]: row for row in read_metrics(workdir) if "train/loss" in row}
  assert rows[2]["train/nonfinite_steps"] == 1  # the isolated one, skipped and counted
  assert rows[4]["train/nonfinite_steps"] == 1  # training went on after it
  assert rows[6]["train/consecutive_nonfinite"] == 2
  # Step 2 followed a skipped step and step 6 is inside the bad run: neither is saved; the
  # last good checkpoint (step 4) is what a restart finds.
  manager = checkpoints.create_manager(workdir, read_only=True)
  assert manager.all_steps() == [4]
  manager.close()
  _, params = checkpoints.load_params(workdir, "latest")
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))


def test_a_skipped_step_changes_nothing_but_the_counters(tiny_musdb):
  config = load_test_config(f"musdb:{tiny_musdb}")
  from trackformer_jax import input_pipeline, models

  model = models.create_model(config.model)
  optimizer = train.create_optimizer(config)
  mesh = train.create_mesh()
  step_fn = train.compile_train_step(config, model, optimizer, mesh)
  state = train.init_train_state(config, model, optimizer, mesh)
  before = jax.device_get(state)
  batch = next(input_pipeline.train_batches(config))
  bad = {"mom": batch["mom"] * np.inf, "mixtures": batch["mixtures"]}
  state, metrics = step_fn(state, state_lib.to_global(bad, mesh), jax.random.PRNGKey(1))
  assert float(metrics["skipped"]) == 1.0
  assert int(state.step) == 1 and int(state.nonfinite_steps) == 1
  assert int(state.consecutive_nonfinite) == 1
  assert_trees_equal(state.params, before.params)
  assert_trees_equal(state.opt_state, before.opt_state)
  good = {"mom": batch["mom"], "mixtures": batch["mixtures"]}
  state, metrics = step_fn(state, state_lib.to_global(good, mesh), jax.random.PRNGKey(2))
  assert float(metrics["skipped"]) == 0.0
  assert int(state.consecutive_nonfinite) == 0 and int(state.nonfinite_steps) == 1
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params, before.params)
  assert any(jax.tree.leaves(moved))


def test_the_moving_average_follows_good_steps_only(tiny_musdb):
  config = load_test_config(f"musdb:{tiny_musdb}", ema_decay=0.5)
  from trackformer_jax import input_pipeline, models

  model = models.create_model(config.model)
  optimizer = train.create_optimizer(config)
  mesh = train.create_mesh()
  step_fn = train.compile_train_step(config, model, optimizer, mesh)
  state = train.init_train_state(config, model, optimizer, mesh)
  p0 = jax.device_get(state.params)
  assert_trees_equal(state.ema_params, p0)  # the average starts at the initial weights
  batch = next(input_pipeline.train_batches(config))
  good = state_lib.to_global({"mom": batch["mom"], "mixtures": batch["mixtures"]}, mesh)
  state, _ = step_fn(state, good, jax.random.PRNGKey(1))
  p1 = jax.device_get(state.params)
  # Step 0's decay is ramped down to min(0.5, 1/10): the average mostly takes the new weights.
  expected = jax.tree.map(lambda a, b: 0.1 * a + 0.9 * b, p0, p1)
  for got, want in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
  ema1 = jax.device_get(state.ema_params)
  bad = state_lib.to_global({"mom": batch["mom"] * np.inf, "mixtures": batch["mixtures"]}, mesh)
  state, metrics = step_fn(state, bad, jax.random.PRNGKey(2))
  assert float(metrics["skipped"]) == 1.0
  assert_trees_equal(state.ema_params, ema1)
  state, _ = step_fn(state, good, jax.random.PRNGKey(3))
  p3 = jax.device_get(state.params)
  decay = min(0.5, 3 / 12)  # the ramp at step 2: (1 + 2) / (10 + 2)
  expected = jax.tree.map(lambda a, b: decay * a + (1 - decay) * b, ema1, p3)
  for got, want in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)


# Runs a few train steps (no evaluation, no checkpoints) and saves the params: the sharded
# step itself, under whatever device count the process started with.
_STEPS_IN_SUBPROCESS = textwrap.dedent(
  """
  import json, sys
  import jax, numpy as np
  from trackformer_jax import input_pipeline, models, train
  from trackformer_jax.training import config_files
  from trackformer_jax.training import state as state_lib
  assert jax.device_count() == int(sys.argv[3]), jax.devices()
  config = config_files.load_config("test")
  config.update_from_flattened_dict(json.loads(sys.argv[2]))
  model = models.create_model(config.model)
  optimizer = train.create_optimizer(config)
  mesh = train.create_mesh()
  step_fn = train.compile_train_step(config, model, optimizer, mesh)
  state = train.init_train_state(config, model, optimizer, mesh)
  batches = input_pipeline.train_batches(config)
  for step in range(3):
    batch = {name: value for name, value in next(batches).items() if name != "stems"}
    rng = jax.random.fold_in(state.rng, step)
    state, _ = step_fn(state, state_lib.to_global(batch, mesh), rng)
  leaves = jax.tree.leaves(jax.device_get(state.params))
  np.savez(sys.argv[1], *leaves)
  """
)


@pytest.mark.slow
def test_four_devices_give_the_same_params_as_one(tiny_musdb, tmp_path):
  overrides = {"data": f"musdb:{tiny_musdb}"}
  params = {}
  for devices in (1, 4):
    # The device count is fixed when jax starts, so each count gets its own process.
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    out = tmp_path / f"params{devices}.npz"
    result = subprocess.run(
      [sys.executable, "-c", _STEPS_IN_SUBPROCESS, str(out)]
      + [json.dumps(overrides), str(devices)],
      capture_output=True,
      text=True,
      env=env,
      timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as saved:
      params[devices] = [saved[name] for name in saved.files]
  assert len(params[1]) == len(params[4])
  # The gradient all-reduce sums in another order, so the params differ by rounding only:
  # far below one step's update (learning rate ~1e-3).
  for a, b in zip(params[1], params[4]):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)


@pytest.mark.parametrize(
  ("field", "value", "reason"),
  [
    ("learning_rate", -1.0, "must be positive"),
    ("batch_size", 0, "at least 1"),
    ("num_train_steps", 0, "at least 1"),
    ("channels", 3, "mono"),
    ("data", "nonsense:/x", "unknown kind"),
    ("data", "musdb:/no/such/folder", "does not exist"),
    ("segment_seconds", 0.001, "shorter than one STFT window"),
    ("sparsity_kind", "l1", "expected one of"),
    ("ema_decay", 1.0, "must be in"),
  ],
)
def test_impossible_configs_name_the_field(tiny_musdb, field, value, reason):
  config = load_test_config(f"musdb:{tiny_musdb}")
  setattr(config, field, value)
  with pytest.raises(train.ConfigError, match=reason) as error:
    train.validate_config(config, num_devices=1)
  message = str(error.value)
  assert message.startswith(f"config.{field}") and "\n" not in message


def test_batch_must_split_over_the_devices(tiny_musdb):
  config = load_test_config(f"musdb:{tiny_musdb}", batch_size=6)
  with pytest.raises(train.ConfigError, match="multiple of the 4 devices"):
    train.validate_config(config, num_devices=4)


@pytest.mark.slow  # the subprocess imports jax and TensorFlow
def test_the_cli_reports_a_bad_config_in_one_line(tiny_musdb, tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "trackformer_jax.main",
      "--config=configs/test.py",
      f"--config.data=musdb:{tiny_musdb}",
      "--config.learning_rate=-0.5",
      f"--workdir={tmp_path / 'run'}",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
    "error: config.learning_rate = -0.5: must be positive"
  )
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_second_training_on_a_busy_workdir_refuses(tiny_musdb, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  lock = workdir_lib.lock_workdir(workdir)
  try:
    with pytest.raises(train.WorkdirError, match="another training"):
      train.train_and_evaluate(load_test_config(f"musdb:{tiny_musdb}"), workdir)
  finally:
    lock.close()


@pytest.mark.slow
def test_the_colab_notebook_runs_in_tiny_mode(tiny_musdb, tmp_path, monkeypatch):
  notebook = json.loads((REPO / "launch" / "colab.ipynb").read_text())
  assert notebook["nbformat"] == 4
  cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
  workdir = tmp_path / "runs" / "colab"
  monkeypatch.setenv("TRACKFORMER_COLAB_TINY", "1")
  monkeypatch.setenv("TRACKFORMER_COLAB_DATA", f"musdb:{tiny_musdb}")
  monkeypatch.setenv("TRACKFORMER_COLAB_WORKDIR", str(workdir))
  monkeypatch.setenv("TRACKFORMER_REPO", str(REPO))
  # The notebook's training subprocess reuses what this module already compiled.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  monkeypatch.chdir(tmp_path)  # the notebook changes directory; this restores it
  namespace: dict = {}
  for index, cell in enumerate(cells):
    source = "".join(cell["source"])
    exec(compile(source, f"colab.ipynb code cell {index}", "exec"), namespace)  # noqa: S102
  assert namespace["evaluations"], "the notebook printed no evaluation"
  assert (workdir / "config.json").is_file()
  # The same one command as perf*.py: the encoder was pre-trained first, beside the run.
  assert (tmp_path / "runs" / "colab_pretrain" / "config.json").is_file()
  exported = pathlib.Path(namespace["EXPORT_DIR"])
  assert exported.is_dir() and any(exported.iterdir())


def test_resuming_as_another_model_is_refused_by_field(tiny_musdb, tmp_path):
  saved = load_test_config(f"musdb:{tiny_musdb}")
  checkpoints.write_config(tmp_path, saved)
  # Another schedule, interval or dataset is a continuation, not another model.
  longer = load_test_config(f"musdb:{tiny_musdb}", num_train_steps=saved.num_train_steps * 2)
  longer.eval_every_steps = 7
  workdir_lib.check_same_model(tmp_path, longer)
  newer = load_test_config(f"musdb:{tiny_musdb}")
  newer.model.a_field_added_later = 1  # a newer version's field, absent from config.json
  workdir_lib.check_same_model(tmp_path, newer)
  other = load_test_config(f"musdb:{tiny_musdb}")
  other.model.hop = saved.model.hop * 2  # same parameter shapes: would restore silently
  with pytest.raises(train.WorkdirError) as error:
    workdir_lib.check_same_model(tmp_path, other)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{tmp_path}: ")
  assert f"model.hop {saved.model.hop} -> {other.model.hop}" in message
  assert "new --workdir" in message


@pytest.mark.slow
def test_a_run_fine_tunes_from_a_separator_run_and_refuses_another_model(tiny_musdb, tmp_path):
  config = load_test_config(f"musdb:{tiny_musdb}")
  config.ema_decay = 0.9  # the first run evaluates its moving average: fine-tuning starts there
  first = train.train_and_evaluate(config, tmp_path / "first")
  tuned = load_test_config(f"musdb:{tiny_musdb}", init_from=str(tmp_path / "first"))
  tuned.seed = 1  # another stream and initialisation: the start must still be the first run's
  state = train.train_and_evaluate(tuned, tmp_path / "tuned", stop_after_step=0)
  assert int(state.step) == 0
  assert_trees_equal(state.params, first.ema_params)
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(first.ema_params))
  )
  # Its step-0 validation is the first run's last one: the same weights on the same clips.
  train.train_and_evaluate(tuned, tmp_path / "one_step", stop_after_step=1)
  before = {r["step"]: r for r in read_metrics(tmp_path / "first") if "eval/mixit_loss" in r}
  after = {r["step"]: r for r in read_metrics(tmp_path / "one_step") if "eval/mixit_loss" in r}
  np.testing.assert_allclose(after[0]["eval/mixit_loss"], before[20]["eval/mixit_loss"], rtol=1e-5)

  other = load_test_config(f"musdb:{tiny_musdb}", init_from=str(tmp_path / "first"))
  other.model.hop = config.model.hop * 2  # the same parameter shapes, another model
  with pytest.raises(checkpoints.CheckpointError) as error:
    train.train_and_evaluate(other, tmp_path / "other", stop_after_step=0)
  message = str(error.value)
  assert "\n" not in message and "init_from" in message
  assert f"model.hop {config.model.hop} -> {other.model.hop}" in message
