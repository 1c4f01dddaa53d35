"""``launch/multihost.sh``: two processes on this machine form one ``jax.distributed`` run.

Each process is one "host" with one CPU device (the coordinator on 127.0.0.1, CPU
collectives through gloo). Each host reads its own shard of the tracks and its slice of
every batch, so the run is not the single-process stream; what must hold is that the two
form *one* computation (every step's loss, a mean over the global batch, is the same
number on both hosts), that they write one checkpoint, and that a tool on one machine
(``checkpoints.load_params``: evaluate, export) reads it although it names both hosts'
devices.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess

import jax
import numpy as np
import pytest

from trackformer_jax import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 4
TIMEOUT_S = 540


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _run_flags(data: str, workdir: pathlib.Path, task: str) -> list[str]:
  return [
    "--config=configs/test.py",
    f"--config.task={task}",
    f"--config.data={data}",
    f"--config.num_train_steps={STEPS}",
    f"--config.checkpoint_every_steps={STEPS}",
    f"--config.eval_every_steps={STEPS}",
    "--config.log_every_steps=2",
    f"--workdir={workdir}",
  ]


def _logged_losses(log: pathlib.Path, task: str) -> dict[int, str]:
  """``{step: loss}`` from the progress lines, the loss as printed (3 or 4 decimals)."""
  name = {"mixit": "loss", "mae": "reconstruction"}[task]
  found = re.findall(rf"step (\d+)/\d+ .*? {name} (-?[\d.]+)", log.read_text())
  return {int(step): loss for step, loss in found}


@pytest.mark.slow
# Both tasks: each evaluates on both hosts (scores gathered replicated) and saves one checkpoint.
@pytest.mark.parametrize("task", ["mixit", "mae"])
def test_two_hosts_train_as_one_run_and_their_checkpoint_loads_on_one_machine(
  tiny_musdb, tmp_path, task
):
  data = f"musdb:{tiny_musdb}"
  # multihost.sh runs .venv/bin/python, which launch/test.sh (and quickstart.sh) set up.
  coordinator = f"127.0.0.1:{_free_port()}"
  workdir = tmp_path / "two_hosts"
  logs = [tmp_path / f"host{i}.log" for i in range(2)]
  processes = []
  for host, log in enumerate(logs):
    with open(log, "wb") as sink:
      processes.append(
        subprocess.Popen(
          ["bash", "launch/multihost.sh", *_run_flags(data, workdir, task)],
          cwd=REPO,
          stdout=sink,
          stderr=subprocess.STDOUT,
          env=_env(COORDINATOR=coordinator, NUM_HOSTS="2", HOST_ID=str(host)),
        )
      )
  try:
    codes = [p.wait(timeout=TIMEOUT_S) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  for log, code in zip(logs, codes):
    assert code == 0, log.read_text()[-3000:]
  assert "JAX process 1/2" in logs[1].read_text()

  losses = [_logged_losses(log, task) for log in logs]
  assert sorted(losses[0]) == [2, STEPS]
  assert losses[0] == losses[1]
  # Host 0 alone writes the metrics.
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [2, STEPS]
  assert [r["step"] for r in rows if "eval/best_score" in r] == [0, STEPS]

  config, params = checkpoints.load_params(workdir, STEPS)
  assert config.num_train_steps == STEPS
  leaves = jax.tree.leaves(params)
  assert leaves and all(leaf.sharding.device_set == {jax.devices()[0]} for leaf in leaves)
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in leaves)
