"""Training as a user runs it: ``python -m trackformer_jax.main`` in a subprocess, stopped by a
real Ctrl-C (SIGINT), resumed, and rerun once finished."""

from __future__ import annotations

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


@pytest.mark.slow  # three subprocesses that import jax and TensorFlow, and compile
def test_ctrl_c_saves_the_step_and_the_rerun_resumes_then_says_it_is_done(tiny_musdb, tmp_path):
  env = dict(os.environ)
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  workdir = tmp_path / "run"
  data = f"musdb:{tiny_musdb}"
  process = subprocess.Popen(
    command(data, workdir, 100000),
    stderr=subprocess.PIPE,
    stdout=subprocess.DEVNULL,
    text=True,
    cwd=REPO,
    env=env,
  )
  lines = []
  try:
    for line in process.stderr:
      lines.append(line)
      if re.search(r"\bstep 5/100000\b", line):
        process.send_signal(signal.SIGINT)
        break
    rest = process.communicate(timeout=120)[1]
  finally:
    if process.poll() is None:
      process.kill()
  stderr = "".join(lines) + rest
  assert process.returncode == 130, stderr
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
