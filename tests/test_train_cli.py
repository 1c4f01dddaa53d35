"""Training as a user runs it: ``python -m trackformer_jax.main`` in a subprocess, stopped by a
real Ctrl-C (SIGINT), resumed, and rerun once finished."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def command(data: str, workdir: pathlib.Path, steps: int) -> list[str]:
  return [
    sys.executable,
    "-m",
    "trackformer_jax.main",
    "--config=configs/test.py",
    f"--config.data={data}",
    f"--config.num_train_steps={steps}",
    # Only the interrupt writes a checkpoint before the end.
    "--config.eval_every_steps=100000",
    "--config.checkpoint_every_steps=100000",
    "--config.log_every_steps=5",
    f"--workdir={workdir}",
  ]


def saved_steps(workdir: pathlib.Path) -> list[int]:
  folder = workdir / "checkpoints"
  return (
    sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
  )


def interrupted(command: list[str], pattern: str, env: dict) -> tuple[int, str]:
  """Runs ``command``, sends it a real SIGINT once stderr has a line matching ``pattern``;
  (exit status, all of stderr)."""
  process = subprocess.Popen(
    command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO, env=env
  )
  lines = []
  try:
    for line in process.stderr:
      lines.append(line)
      if re.search(pattern, line):
        process.send_signal(signal.SIGINT)
        break
    rest = process.communicate(timeout=120)[1]
  finally:
    if process.poll() is None:
      process.kill()
  return process.returncode, "".join(lines) + rest


@pytest.mark.slow  # three subprocesses that import jax and TensorFlow, and compile
def test_ctrl_c_saves_the_step_and_the_rerun_resumes_then_says_it_is_done(tiny_musdb, tmp_path):
  env = dict(os.environ)
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  workdir = tmp_path / "run"
  data = f"musdb:{tiny_musdb}"
  returncode, stderr = interrupted(command(data, workdir, 100000), r"\bstep 5/100000\b", env)
  assert returncode == 130, stderr
  assert "Traceback" not in stderr
  assert re.search(r"data musdb:\S+: 2 train, 2 validation, 2 test tracks", stderr), stderr
  assert "eval step 0: scoring the untrained control" in stderr
  last = stderr.strip().splitlines()[-1]
  match = re.fullmatch(
    r"training: interrupted at step (\d+); checkpoint saved; rerun the same command to resume",
    last,
  )
  assert match, last
  stopped = int(match.group(1))
  assert stopped >= 5
  assert saved_steps(workdir) == [stopped]

  # The same command with a schedule ending two steps later: resumes there, finishes.
  result = subprocess.run(
    command(data, workdir, stopped + 2), capture_output=True, text=True, cwd=REPO, env=env
  )
  assert result.returncode == 0, result.stderr
  assert f"resuming at step {stopped}" in result.stderr
  assert saved_steps(workdir)[-1] == stopped + 2

  again = subprocess.run(
    command(data, workdir, stopped + 2), capture_output=True, text=True, cwd=REPO, env=env
  )
  assert again.returncode == 0, again.stderr
  assert f"training: already finished at step {stopped + 2} ({workdir}); nothing to do" in (
    again.stderr
  )
  assert "resuming at step" not in again.stderr


def recipe_command(data: str, workdir: pathlib.Path, pretraining: pathlib.Path, steps: int):
  """configs/tiny.py:recipe (MixIT from an Audio-MAE encoder), ``steps`` in phase 1, 2 in 2."""
  return [
    sys.executable,
    "-m",
    "trackformer_jax.main",
    "--config=configs/tiny.py:recipe",
    f"--config.data={data}",
    f"--config.init_from={pretraining}",
    f"--config.pretrain.num_train_steps={steps}",
    "--config.num_train_steps=2",
    "--config.eval_every_steps=100000",
    "--config.checkpoint_every_steps=100000",
    "--config.log_every_steps=1",
    "--config.num_eval_examples=4",
    f"--workdir={workdir}",
  ]


@pytest.mark.slow  # four subprocesses, each compiling two models
def test_the_recipe_pretrains_then_trains_mixit_and_resumes_either_phase(tiny_musdb, tmp_path):
  env = dict(os.environ)
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  data = f"musdb:{tiny_musdb}"
  workdir, pretraining = tmp_path / "run", tmp_path / "pretrain"

  def run(command):
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr

  # A fresh checkout: one command pre-trains, then trains MixIT from that encoder.
  stderr = run(recipe_command(data, workdir, pretraining, 3))
  assert f"phase 1/2, Audio-MAE pre-training: training 3 steps into {pretraining}" in stderr
  assert f"phase 2/2, MixIT: 2 steps into {workdir}, the encoder from {pretraining}" in stderr
  assert re.search(rf"initialised .*transformer from {re.escape(str(pretraining))} step 3", stderr)
  assert saved_steps(pretraining)[-1] == 3 and saved_steps(workdir)[-1] == 2
  assert json.loads((pretraining / "config.json").read_text())["task"] == "mae"

  # Rerun once finished: neither phase trains again, and it says so.
  stderr = run(recipe_command(data, workdir, pretraining, 3))
  assert f"finished in {pretraining} (step 3); its encoder is reused" in stderr
  assert f"training: already finished at step 2 ({workdir}); nothing to do" in stderr
  assert "model performer" not in stderr  # nothing was built to train

  # Ctrl-C during phase 1: its checkpoint is saved; the same command resumes phase 1.
  workdir, pretraining = tmp_path / "run2", tmp_path / "pretrain2"
  command = recipe_command(data, workdir, pretraining, 100000)
  returncode, stderr = interrupted(command, r"\bstep 2/100000\b", env)
  assert returncode == 130, stderr
  match = re.search(r"training: interrupted at step (\d+); checkpoint saved", stderr)
  assert match, stderr
  stopped = int(match.group(1))
  assert saved_steps(pretraining) == [stopped] and not saved_steps(workdir)
  assert "phase 2/2" not in stderr

  stderr = run(recipe_command(data, workdir, pretraining, stopped + 2))
  assert f"resuming at step {stopped} of {stopped + 2} steps into {pretraining}" in stderr
  assert "initialised" in stderr and saved_steps(pretraining)[-1] == stopped + 2
  assert saved_steps(workdir)[-1] == 2
