"""Faults in training, injected on purpose.

* ``kill -9`` at seeded random moments and once in the middle of a checkpoint save, then a
  restart: the run ends with the parameters of a run never stopped (bitwise, CPU), and the
  half-written save is never what a restart restores.
* A truncated or corrupted latest checkpoint: the previous good one is restored with a
  warning naming the bad one, which is moved aside so that its step can be saved again.
* NaN/inf in a batch (through the CLI): the step is skipped and counted, training goes on;
  a run of them stops with one line.
* An unwritable or full workdir: one clear error before anything is built or compiled.
  Two trainings on one workdir: the second refuses (checked across processes).

The training runs are real ``python -m trackformer_jax.main`` processes on
``configs/test.py`` and the tiny MUSDB-layout corpus, started in the background by a module
fixture so that they overlap; they share one persistent compilation cache, which the first
run fills before the others start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import send_orphaned_read_reports

from trackformer_jax import checkpoints, train
from trackformer_jax.training import state as state_lib
from trackformer_jax.training import steps
from trackformer_jax.training import workdir as workdir_lib
from trackformer_jax.training.tasks import mae as mae_task

REPO = pathlib.Path(__file__).resolve().parents[2]

# A short schedule saved at every step, so that a kill lands among saves; evaluation only at
# the start (the untrained control) and the end; the newest two steps kept.
RUN_FLAGS = (
  "--config=configs/test.py",
  "--config.num_train_steps=10",
  "--config.checkpoint_every_steps=1",
  "--config.eval_every_steps=1000",
  "--config.log_every_steps=1",
  "--config.num_eval_examples=4",
  "--config.keep_checkpoints=2",
)
LAST_STEP = 10
# Start-up under a loaded machine (imports, compilation on the first run) can be slow.
PROCESS_TIMEOUT_S = 540
ORBAX_PARTIAL_MARK = ".orbax-checkpoint-tmp"


# --------------------------------------------------------------------------------------------
# Training processes.


def _training_env(cache_dir: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env.pop("XLA_FLAGS", None)  # one CPU device in every run, whatever the caller set
  return env


def _start(args: list[str], log: pathlib.Path, cache_dir: pathlib.Path) -> subprocess.Popen:
  log.parent.mkdir(parents=True, exist_ok=True)
  with open(log, "ab") as sink:
    return subprocess.Popen(
      args, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=_training_env(cache_dir)
    )


def _train_command(data: str, workdir: pathlib.Path, *extra: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "trackformer_jax.main",
    *RUN_FLAGS,
    f"--config.data={data}",
    f"--workdir={workdir}",
    *extra,
  ]


def finished_steps(workdir: pathlib.Path) -> list[int]:
  """Steps orbax has finalised (renamed from their temporary name)."""
  folder = workdir / checkpoints.CHECKPOINT_DIR
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def partial_saves(workdir: pathlib.Path) -> list[pathlib.Path]:
  folder = workdir / checkpoints.CHECKPOINT_DIR
  if not folder.is_dir():
    return []
  return [p for p in folder.iterdir() if ORBAX_PARTIAL_MARK in p.name]


def _wait_until(condition, process: subprocess.Popen, log: pathlib.Path, poll_s: float) -> None:
  deadline = time.monotonic() + PROCESS_TIMEOUT_S
  while not condition():
    if process.poll() is not None:
      pytest.fail(f"training exited ({process.returncode}) too early:\n{log.read_text()[-3000:]}")
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail(f"timed out waiting on training:\n{log.read_text()[-3000:]}")
    time.sleep(poll_s)


def _kill_9(process: subprocess.Popen) -> None:
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL


def _train_rows(workdir: pathlib.Path) -> dict[int, dict]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {row["step"]: row for row in rows if "train/loss" in row}


# Runs the CLI with a batch stream that injects inf into one batch's reference mixtures and
# NaN into a run of inputs: the in-process monkeypatch of tests/training/test_loop.py, but through
# main's error handling and with the other input poisoned.
_CLI_WITH_BAD_BATCHES = textwrap.dedent(
  """
  import sys
  import numpy as np
  from absl import app
  from trackformer_jax import main
  from trackformer_jax.training import loop

  real_batches = loop.train_batches

  def poisoned(config, start_step):
    for step, batch in enumerate(real_batches(config, start_step), start=start_step):
      if step == 2:
        batch = dict(batch, mixtures=batch["mixtures"] * np.inf)
      elif step >= 5:
        batch = dict(batch, mom=batch["mom"] * np.nan)
      yield batch

  loop.train_batches = poisoned
  sys.argv = ["main"] + sys.argv[1:]
  app.run(main.main)
  """
)


@pytest.fixture(scope="module")
def background_runs(tiny_musdb, tmp_path_factory):
  """Starts a run never stopped, a second training on a workdir this process holds (the
  lock) and, once the first has filled the compilation cache, a run fed bad batches.
  Yields their handles; kills what is left at the end."""
  root = tmp_path_factory.mktemp("faults")
  cache = root / "jax_cache"
  data = f"musdb:{tiny_musdb}"
  runs = {"root": root, "cache": cache, "data": data}
  lock = None
  try:
    runs["reference"] = root / "reference"
    runs["reference_process"] = _start(
      _train_command(data, runs["reference"]), root / "reference.log", cache
    )
    runs["busy"] = root / "busy"
    runs["busy"].mkdir()
    lock = workdir_lib.lock_workdir(runs["busy"])
    runs["intruder_process"] = subprocess.Popen(
      _train_command(data, runs["busy"]),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=_training_env(cache),
    )
    # The reference's first checkpoint means every program (init, evaluation, train step) is
    # compiled and in the cache: the runs started from now on load them instead of compiling
    # the same programs side by side on a shared machine.
    _wait_until(
      lambda: finished_steps(runs["reference"]),
      runs["reference_process"],
      root / "reference.log",
      0.2,
    )
    runs["nonfinite"] = root / "nonfinite"
    runs["nonfinite_process"] = _start(
      [
        sys.executable,
        "-c",
        _CLI_WITH_BAD_BATCHES,
        *_train_command(data, runs["nonfinite"], "--config.max_consecutive_nonfinite=3")[3:],
      ],
      root / "nonfinite.log",
      cache,
    )
    yield runs
  finally:
    if lock is not None:
      lock.close()
    for name in ("reference_process", "nonfinite_process", "intruder_process"):
      process = runs.get(name)
      if process is not None and process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_kill_9_at_random_moments_and_mid_save_then_resume_equals_a_run_never_stopped(
  background_runs,
):
  runs = background_runs
  workdir = runs["root"] / "killed"
  log = runs["root"] / "killed.log"
  rng = np.random.default_rng(10)
  kill_moments = []

  # Seeded random moments: a random number of saves into the run, then a random delay, so
  # the kill lands in a step, a save, a deletion of an old step or a metrics write.
  for _ in range(2):
    process = _start(_train_command(runs["data"], workdir), log, runs["cache"])
    target = max(finished_steps(workdir), default=0) + int(rng.integers(1, 4))
    _wait_until(lambda t=target: max(finished_steps(workdir), default=0) >= t, process, log, 0.01)
    time.sleep(float(rng.uniform(0.0, 0.4)))
    _kill_9(process)
    kill_moments.append(max(finished_steps(workdir)))
  assert kill_moments[-1] < LAST_STEP, "the run finished before it could be killed"

  # In the middle of a save: as soon as orbax's temporary folder appears. Should the save
  # complete between seeing the folder and the kill, try again on the next run.
  partial_step = None
  for _ in range(3):
    process = _start(_train_command(runs["data"], workdir), log, runs["cache"])
    before = set(partial_saves(workdir))
    _wait_until(lambda b=before: set(partial_saves(workdir)) - b, process, log, 0.001)
    _kill_9(process)
    left = sorted(set(partial_saves(workdir)) - before)
    if left:
      partial_step = int(left[0].name.split(".")[0])
      break
  assert partial_step is not None, "no kill landed inside a save in 3 tries"
  assert partial_step not in finished_steps(workdir)
  good_steps = finished_steps(workdir)

  # The restart: resumes from the newest finished step, never from the partial one.
  log.write_text("")
  final = _start(_train_command(runs["data"], workdir), log, runs["cache"])
  assert final.wait(timeout=PROCESS_TIMEOUT_S) == 0, log.read_text()[-3000:]
  output = log.read_text()
  resumed_at = int(re.search(r"resuming at step (\d+)", output).group(1))
  assert resumed_at == max(good_steps) < partial_step
  restored = re.findall(r"restored checkpoint (\S+)", output)
  assert restored == [str(workdir.absolute() / checkpoints.CHECKPOINT_DIR / str(resumed_at))]
  assert partial_saves(workdir) == []  # the restart cleared what the kills left

  reference = runs["reference"]
  assert runs["reference_process"].wait(timeout=PROCESS_TIMEOUT_S) == 0
  assert max(finished_steps(workdir)) == max(finished_steps(reference)) == LAST_STEP
  _, params = checkpoints.load_params(workdir, "latest")
  _, reference_params = checkpoints.load_params(reference, "latest")
  leaves, tree = jax.tree.flatten(params)
  reference_leaves, reference_tree = jax.tree.flatten(reference_params)
  assert tree == reference_tree
  for leaf, reference_leaf in zip(leaves, reference_leaves):
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(reference_leaf))
  # Every step's logged loss too: the same batches and dropout keys, step for step.
  rows, reference_rows = _train_rows(workdir), _train_rows(reference)
  assert sorted(rows) == sorted(reference_rows) == list(range(1, LAST_STEP + 1))
  assert [rows[s]["train/loss"] for s in rows] == [reference_rows[s]["train/loss"] for s in rows]


@pytest.mark.slow
def test_nonfinite_batches_through_the_cli_are_skipped_then_stop_in_one_line(background_runs):
  runs = background_runs
  process = runs["nonfinite_process"]
  assert process.wait(timeout=PROCESS_TIMEOUT_S) == 2
  output = (runs["root"] / "nonfinite.log").read_text()
  assert "Traceback" not in output
  last_line = output.strip().splitlines()[-1]
  assert re.fullmatch(
    r"error: stopped at step \d+: 3 consecutive steps had a non-finite loss or gradient "
    r"\(config\.max_consecutive_nonfinite = 3\); the last good checkpoint in \S+ is kept",
    last_line,
  ), last_line
  rows = _train_rows(runs["nonfinite"])
  # Step 3 ran batch 2 (inf in the reference mixtures): skipped, counted; the next trained.
  assert rows[3]["train/skipped"] == 1.0 and rows[3]["train/nonfinite_steps"] == 1
  assert rows[4]["train/skipped"] == 0.0 and np.isfinite(rows[4]["train/loss"])
  assert rows[5]["train/nonfinite_steps"] == 1 and rows[5]["train/consecutive_nonfinite"] == 0
  assert rows[6]["train/consecutive_nonfinite"] == 1
  # Saved: steps that ended a good step only; the newest is 5, before the bad run.
  assert max(finished_steps(runs["nonfinite"])) == 5


@pytest.mark.slow
def test_a_second_training_process_on_a_busy_workdir_refuses_in_one_line(background_runs):
  process = background_runs["intruder_process"]
  _, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
  assert process.returncode == 2
  assert "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == (
    f"error: {background_runs['busy']}: another training is using this workdir"
  )
  assert not (background_runs["busy"] / checkpoints.CHECKPOINT_DIR).exists()


# --------------------------------------------------------------------------------------------
# Corrupted and partial checkpoints (the checkpoint layer alone: no model, no compilation).


@flax.struct.dataclass
class SmallState:
  step: jax.Array
  params: dict
  rng: jax.Array


def small_state(step: int) -> SmallState:
  return SmallState(
    step=jnp.int32(step),
    params={"w": jnp.full((3, 4), float(step)), "b": jnp.arange(4.0) + step},
    rng=jnp.array([step, 7], jnp.uint32),
  )


def save_steps(workdir: pathlib.Path, steps) -> None:
  manager = checkpoints.create_manager(workdir, keep_checkpoints=5)
  for step in steps:
    checkpoints.save(manager, small_state(step), step)
  manager.wait_until_finished()
  manager.close()


def restore(workdir: pathlib.Path, abstract=None):
  manager = checkpoints.create_manager(workdir, keep_checkpoints=5)
  try:
    return checkpoints.restore_latest(
      manager, abstract or jax.eval_shape(lambda: small_state(0)), SmallState
    )
  finally:
    manager.close()


def _truncate_files(folder: pathlib.Path, select) -> None:
  for path in folder.rglob("*"):
    if path.is_file() and select(path):
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
  # A disk that filled while the array data was written.
  "truncated array data": lambda step: _truncate_files(step / "params", lambda p: "/d/" in str(p)),
  # Every file cut in half.
  "truncated everything": lambda step: _truncate_files(step, lambda p: True),
  # One of the two items gone (e.g. a copy that was interrupted).
  "missing item": lambda step: shutil.rmtree(step / "train"),
  # Random bytes in place of every file.
  "garbage": lambda step: [
    p.write_bytes(np.random.default_rng(0).bytes(max(p.stat().st_size, 1)))
    for p in step.rglob("*")
    if p.is_file()
  ],
  # A folder with the step's name and nothing in it.
  "empty folder": lambda step: [shutil.rmtree(step), step.mkdir()],
}


def test_the_fallback_silences_the_reads_the_damaged_step_left_and_nothing_else(
  tmp_path, monkeypatch
):
  # As for a damaged model folder (tests/inference/test_model_folder_cli.py): the reads orbax
  # leaves running in the failed step report later, naming its folder; the rest goes through.
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])  # put back afterwards
  save_steps(tmp_path, [1, 2])
  bad = tmp_path / checkpoints.CHECKPOINT_DIR / "2"
  CORRUPTIONS["truncated array data"](bad)
  assert int(restore(tmp_path).step) == 1
  errors = send_orphaned_read_reports(bad / "params")
  assert [r.exc_value for r in reported if r.exc_value in errors] == errors[2:]
  good = tmp_path / checkpoints.CHECKPOINT_DIR / "1"
  sys.unraisablehook(report := types.SimpleNamespace(exc_value=ValueError(f"{good}"), object=None))
  assert reported[-1] is report  # the step that restored is not silenced


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, corruption):
  save_steps(tmp_path, [1, 2, 3])
  bad = tmp_path / checkpoints.CHECKPOINT_DIR / "3"
  CORRUPTIONS[corruption](bad)
  with caplog.at_level(logging.WARNING):
    state = restore(tmp_path)
  assert int(state.step) == 2
  np.testing.assert_array_equal(np.asarray(state.params["w"]), np.full((3, 4), 2.0))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(w.startswith(f"checkpoint {bad} is unreadable (") for w in warnings), warnings
  # Moved aside (kept for inspection, inside the workdir), so the resumed run can save step
  # 3 again: left in place, save() would skip a step that already exists.
  aside = list((tmp_path / checkpoints.UNREADABLE_DIR).iterdir())
  assert [p.name.split(".")[0] for p in aside] == ["3"]
  assert any(f"{bad}" in w and f"moved to {aside[0]}" in w for w in warnings), warnings
  assert finished_steps(tmp_path) == [1, 2]
  save_steps(tmp_path, [3])
  assert int(restore(tmp_path).step) == 3


def test_when_no_step_restores_nothing_is_moved(tmp_path):
  # Every step fails alike when the config changed (other shapes): that is not corruption,
  # so the checkpoints stay where they are and the error says so.
  save_steps(tmp_path, [1, 2])
  other_shapes = jax.eval_shape(
    lambda: small_state(0).replace(params={"w": jnp.zeros((5, 4)), "b": jnp.zeros(4)})
  )
  with pytest.raises(checkpoints.CheckpointError, match=r"none of the steps \[2, 1\]"):
    restore(tmp_path, other_shapes)
  assert finished_steps(tmp_path) == [1, 2]
  assert not (tmp_path / checkpoints.UNREADABLE_DIR).exists()


def test_a_partial_save_is_never_restored(tmp_path):
  # What a kill in the middle of a save leaves: orbax's temporary folder for a newer step,
  # here with the newer step's data fully written but never renamed (not committed).
  save_steps(tmp_path, [1, 2])
  source = tmp_path / checkpoints.CHECKPOINT_DIR / "2"
  shutil.copytree(source, source.with_name(f"3{ORBAX_PARTIAL_MARK}-1764000000"))
  state = restore(tmp_path)
  assert int(state.step) == 2
  assert finished_steps(tmp_path) == [1, 2]
  # A training manager deletes it in the background; its next save waits for that.
  save_steps(tmp_path, [3])
  assert partial_saves(tmp_path) == []
  assert finished_steps(tmp_path) == [1, 2, 3] and int(restore(tmp_path).step) == 3


# --------------------------------------------------------------------------------------------
# The workdir: unwritable, full, or a file.


@contextlib.contextmanager
def mounted_tmpfs(path: pathlib.Path, options: str):
  """A tmpfs at ``path`` (root only); yields False where mounting is not allowed."""
  path.mkdir(parents=True, exist_ok=True)
  mounted = False
  if os.geteuid() == 0 and shutil.which("mount"):
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    mounted = subprocess.run(command, capture_output=True).returncode == 0
  try:
    yield mounted
  finally:
    if mounted:
      subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def nothing_built(monkeypatch):
  """Fails the test if training gets as far as building a state or compiling a step."""

  def too_far(*args, **kwargs):
    raise AssertionError("training went past the workdir checks")

  monkeypatch.setattr(state_lib, "init_train_state", too_far)
  monkeypatch.setattr(steps, "compile_train_step", too_far)


def _test_config(tiny_musdb):
  from configs import test as test_config

  config = test_config.get_config()
  config.data = f"musdb:{tiny_musdb}"
  return config


def test_an_unwritable_workdir_is_refused_before_the_first_step(
  tiny_musdb, tmp_path, monkeypatch, nothing_built
):
  workdir = tmp_path / "readonly"
  # As root a chmod stops nothing, so a read-only tmpfs stands in for a read-only disk; as
  # another user, a folder without write permission; as root where mounting is not allowed
  # (a container), folder creation fails as on a read-only disk.
  as_root = os.geteuid() == 0
  with mounted_tmpfs(workdir, "ro,size=1m") as mounted:
    if not mounted and as_root:
      real_mkdir = pathlib.Path.mkdir

      def read_only_mkdir(self, *args, **kwargs):
        if self.is_relative_to(workdir):
          raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

      monkeypatch.setattr(pathlib.Path, "mkdir", read_only_mkdir)
    elif not mounted:
      workdir.chmod(0o500)
    try:
      with pytest.raises(train.WorkdirError) as error:
        train.train_and_evaluate(_test_config(tiny_musdb), workdir / "run")
    finally:
      if not mounted:
        workdir.chmod(0o700)
  message = str(error.value)
  assert "\n" not in message
  expected = "Read-only file system" if mounted or as_root else "Permission denied"
  assert message == f"{workdir / 'run'}: not writable ({expected})"


def test_a_full_workdir_is_refused_before_the_first_step(
  tiny_musdb, tmp_path, monkeypatch, nothing_built
):
  workdir = tmp_path / "small_disk"
  # A real 256 KiB tmpfs as root; otherwise the free space the check reads is faked.
  with mounted_tmpfs(workdir, "size=256k") as mounted:
    if not mounted:
      usage = shutil.disk_usage(tmp_path)._replace(free=256 * 1024)
      monkeypatch.setattr(workdir_lib.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(train.WorkdirError) as error:
      train.train_and_evaluate(_test_config(tiny_musdb), workdir / "run")
    leftovers = sorted(p.name for p in (workdir / "run").iterdir())
    # The refused run let go of the workdir: a corrected retry in the same process may lock it.
    workdir_lib.lock_workdir(workdir / "run").close()
  message = str(error.value)
  assert "\n" not in message
  assert re.fullmatch(
    rf"{re.escape(str(workdir / 'run'))}: 0\.\d MiB free, but checkpoints need \d+\.\d MiB "
    r"more \(5 of \d+\.\d MiB: config\.keep_checkpoints = 3, the best one and the one being "
    r"written\)",
    message,
  ), message
  assert "checkpoints" not in leftovers  # nothing was saved


def test_a_full_disk_at_the_write_probe_is_a_clear_error(tiny_musdb, tmp_path, monkeypatch):
  # A disk with no byte left fails already at the probe: ENOSPC from the write itself.
  real_write_text = pathlib.Path.write_text

  def no_space(self, *args, **kwargs):
    if self.name.startswith(".write_probe"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return real_write_text(self, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, "write_text", no_space)
  with pytest.raises(train.WorkdirError, match=r": not writable \(No space left on device\)$"):
    train.train_and_evaluate(_test_config(tiny_musdb), tmp_path / "run")


def test_a_workdir_that_is_a_file_is_refused(tiny_musdb, tmp_path):
  path = tmp_path / "run"
  path.write_text("not a folder")
  with pytest.raises(train.WorkdirError, match=r"run: not writable \(File exists\)$"):
    train.train_and_evaluate(_test_config(tiny_musdb), path)


def test_pretraining_lets_go_of_the_workdir_after_an_error(tiny_musdb, tmp_path, monkeypatch):
  config = _test_config(tiny_musdb)
  config.task = "mae"

  def broken_model(config):
    raise RuntimeError("model construction failed")

  monkeypatch.setattr(mae_task.mae_lib, "create_mae", broken_model)
  with pytest.raises(RuntimeError, match="model construction failed"):
    train.train_and_evaluate(config, tmp_path / "run")
  # A corrected retry in the same process (a notebook) must not be told the workdir is busy.
  workdir_lib.lock_workdir(tmp_path / "run").close()
